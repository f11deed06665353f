"""Manifest validation: every bad-row case names the row and the column; nothing loads a model."""

from __future__ import annotations

from pathlib import Path
from unittest.mock import ANY

import pyarrow.parquet as pq
import pytest
from PIL import Image

from sdfleet.batch.errors import ManifestError
from sdfleet.batch.fingerprint import INPUTS_COLUMN
from sdfleet.batch.manifest import prompt_template_problems, row_problems, validate_manifest
from sdfleet.batch.request import RowDefaults, expand_row
from sdfleet.batch.seeds import derive_seed
from sdfleet.batch.sources import (
    check_out_outside_manifest,
    find_manifest_files,
    manifest_folder,
    table_from_rows,
)

DEFAULTS = RowDefaults(width=64, height=64, num_inference_steps=4)


def write(tmp_path: Path, rows: list[dict], name: str = "m.parquet") -> list[str]:
    path = tmp_path / name
    pq.write_table(table_from_rows(rows), path)
    return [str(path)]


def messages(tmp_path: Path, rows: list[dict], defaults: RowDefaults = DEFAULTS) -> str:
    with pytest.raises(ManifestError) as info:
        validate_manifest(write(tmp_path, rows), defaults, base_dir=tmp_path)
    return str(info.value)


GOOD = {"id": "ok-1", "prompt": "a cat"}

BAD_CASES = [
    # (row overrides, row id shown, column, fragment of the fix)
    ({"id": None}, "None", "id", "non-empty string id"),
    ({"id": ""}, "''", "id", "non-empty string id"),
    ({"id": "../x"}, "'../x'", "id", "ids name files"),
    ({"id": "a/b"}, "'a/b'", "id", "ids name files"),
    ({"id": "bell\x07"}, "'bell\\x07'", "id", "control characters"),
    ({"id": "r-w", "width": 100}, "'r-w'", "width", "multiple of 8"),
    ({"id": "r-h", "height": 100000}, "'r-h'", "height", "between 16 and 4096"),
    ({"id": "r-s", "num_inference_steps": 0}, "'r-s'", "num_inference_steps", "from 1"),
    ({"id": "r-st0", "init_image": b"x", "strength": 0.0}, "'r-st0'", "strength", "0 < strength"),
    ({"id": "r-st2", "init_image": b"x", "strength": 1.5}, "'r-st2'", "strength", "0 < strength"),
    (
        {"id": "r-st3", "init_image": b"x", "strength": 0.0005, "num_inference_steps": 4},
        "'r-st3'",
        "strength",
        "no denoising step reaches a strength this small: use strength >= 0.001",
    ),
    ({"id": "r-p", "prompt": None}, "'r-p'", "prompt", "give a prompt"),
    ({"id": "r-p2", "prompt": "   "}, "'r-p2'", "prompt", "give a prompt"),
    ({"id": "r-img", "init_image": "missing.png"}, "'r-img'", "init_image", "no readable file"),
    ({"id": "r-sch", "scheduler": "eulr"}, "'r-sch'", "scheduler", "unknown scheduler"),
    ({"id": "r-seed", "seed": -5}, "'r-seed'", "seed", "from 0 to"),
    ({"id": "r-n", "num_images": 0}, "'r-n'", "num_images", "from 1 to 64"),
    ({"id": "r-cfg", "guidance_scale": float("nan")}, "'r-cfg'", "guidance_scale", "0 to 100"),
]


@pytest.mark.parametrize("override,shown_id,column,fix", BAD_CASES)
def test_bad_row_names_row_column_value_and_fix(tmp_path, override, shown_id, column, fix):
    text = messages(tmp_path, [GOOD, {**GOOD, **override}])
    line = next(line for line in text.splitlines() if f"column '{column}'" in line)
    assert f"row {shown_id}" in line
    assert "(#1)" in line  # the row's index in its file
    assert "m.parquet" in line
    assert fix in line


def test_duplicate_ids_name_both_places(tmp_path):
    text = messages(tmp_path, [GOOD, {"id": "x", "prompt": "p"}, {**GOOD}])
    assert "row 'ok-1' (#2), column 'id'" in text
    assert "duplicate id (first at" in text and "#0" in text


def test_every_bad_row_is_reported_up_to_the_limit(tmp_path):
    rows = [{"id": f"r{i}", "prompt": "p", "width": 100} for i in range(30)]
    text = messages(tmp_path, rows)
    assert "30 bad row(s)" in text
    assert all(f"row 'r{i}'" in text for i in range(30))
    with pytest.raises(ManifestError) as info:
        validate_manifest(write(tmp_path, rows), DEFAULTS, max_problems=5)
    assert str(info.value).count("column 'width'") == 5
    assert "and more (30 bad rows in all)" in str(info.value)


def test_variant_names_that_collide_with_another_id_are_refused(tmp_path):
    text = messages(
        tmp_path, [{"id": "a", "prompt": "p", "num_images": 2}, {"id": "a_1", "prompt": "q"}]
    )
    assert "row 'a_1'" in text and "collides" in text


def test_prompt_template_needs_its_columns(tmp_path):
    defaults = RowDefaults(prompt_template="{prompt}, {style}")
    text = messages(tmp_path, [GOOD], defaults)
    assert "column 'style'" in text and "prompt_template" in text


def test_prompt_template_takes_the_job_default_where_a_row_has_none(tmp_path):
    defaults = RowDefaults(prompt="a cat", prompt_template="{prompt}, {style}")
    rows = [{"id": "a", "style": "watercolour"}, {"id": "b", "prompt": "a dog", "style": "ink"}]
    assert validate_manifest(write(tmp_path, rows), defaults) == 2
    assert [expand_row(row, defaults, 0)[0].prompt for row in rows] == [
        "a cat, watercolour",
        "a dog, ink",
    ]
    bare = RowDefaults(prompt_template="{prompt}")  # no default prompt: the row must give one
    text = messages(tmp_path, [{"id": "c", "style": "ink"}], bare)
    assert "column 'prompt'" in text and "prompt_template uses {prompt}" in text


def test_defaults_fill_missing_values_and_count_outputs(tmp_path):
    rows = [{"id": "a", "prompt": None}, {"id": "b", "prompt": "own", "num_images": 3}]
    defaults = RowDefaults(prompt="default prompt", width=64, height=64)
    assert validate_manifest(write(tmp_path, rows), defaults) == 4
    (only,) = expand_row(rows[0], defaults, job_seed=9)
    assert only.prompt == "default prompt" and only.width == 64


def test_expand_row_variants_seeds_and_carried_columns():
    row = {"id": "sku", "prompt": "mug", "seed": 10, "num_images": 3, "label": "cup", "w": 1.5}
    requests = expand_row(row, DEFAULTS, job_seed=1)
    assert [r.output_name for r in requests] == ["sku_0", "sku_1", "sku_2"]
    assert [r.seed for r in requests] == [10, 11, 12]
    assert requests[0].carried == {"label": "cup", "w": 1.5, INPUTS_COLUMN: ANY}
    derived = expand_row({"id": "sku", "prompt": "mug"}, DEFAULTS, job_seed=1)
    assert derived[0].seed == derive_seed(1, "sku", 0) and derived[0].output_name == "sku"


def test_derive_seed_is_stable_and_spread():
    assert derive_seed(0, "a", 0) == derive_seed(0, "a", 0)
    assert len({derive_seed(0, f"r{i}", 0) for i in range(1000)}) == 1000
    assert derive_seed(0, "a", 0) != derive_seed(1, "a", 0) != derive_seed(0, "a", 1)
    assert derive_seed(3, "row-7", 2) == 2245987487  # pinned: must never change across versions


def test_relative_init_image_paths_resolve_from_manifest_folder(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "img.png")
    rows = [{"id": "a", "prompt": "p", "init_image": "img.png"}]
    assert validate_manifest(write(tmp_path, rows), DEFAULTS, base_dir=tmp_path) == 1
    (req,) = expand_row(rows[0], DEFAULTS, 0, base_dir=tmp_path)
    assert req.init_image == str(tmp_path / "img.png") and req.mode == "img2img"


def test_good_row_has_no_problems():
    assert row_problems({"id": "fine.v2", "prompt": "ok", "width": 512}, DEFAULTS) == []


def test_manifest_file_folder_and_glob(tmp_path):
    write(tmp_path, [GOOD], "a.parquet")
    write(tmp_path, [{"id": "two", "prompt": "p"}], "b.parquet")
    assert len(find_manifest_files(str(tmp_path))) == 2
    assert len(find_manifest_files(str(tmp_path / "*.parquet"))) == 2
    assert find_manifest_files("a.parquet", base_dir=tmp_path) == [str(tmp_path / "a.parquet")]
    with pytest.raises(ManifestError, match="matches no Parquet file"):
        find_manifest_files(str(tmp_path / "nope.parquet"))


def test_glob_characters_in_a_real_name_or_in_the_job_folder(tmp_path):
    base = tmp_path / "jobs[v2]"  # the job file's folder
    (base / "run[1]").mkdir(parents=True)
    write(base / "run[1]", [GOOD])
    found = [str(base / "run[1]" / "m.parquet")]
    assert find_manifest_files("run[1]/m.parquet", base_dir=base) == found  # exists: not a glob
    assert find_manifest_files("run*/m.parquet", base_dir=base) == found  # only the spec globs


def test_relative_paths_are_read_from_the_manifest_folder_given(tmp_path):
    (tmp_path / "data" / "a").mkdir(parents=True)
    write(tmp_path / "data" / "a", [GOOD])
    data = str(tmp_path / "data")
    assert manifest_folder("data", tmp_path) == data  # a folder: itself, for every file below
    assert manifest_folder("data/a/m.parquet", tmp_path) == data + "/a"
    assert manifest_folder("data/*/m.parquet", tmp_path) == data
    assert manifest_folder(f"file://{data}/a/m.parquet") == data + "/a"
    assert manifest_folder("s3://bucket/m.parquet") is None


def test_out_inside_a_folder_manifest_is_refused(tmp_path):
    (tmp_path / "data").mkdir()
    with pytest.raises(ManifestError, match="inside the manifest folder.*Put OUT outside"):
        check_out_outside_manifest("data", tmp_path, str(tmp_path / "data" / "out"))
    check_out_outside_manifest("data", tmp_path, str(tmp_path / "out"))
    check_out_outside_manifest("data/*.parquet", tmp_path, str(tmp_path / "data" / "out"))


def test_unreadable_parquet_names_the_file(tmp_path):
    bad = tmp_path / "bad.parquet"
    bad.write_text("not parquet")
    with pytest.raises(ManifestError, match="bad.parquet"):
        validate_manifest([str(bad)], DEFAULTS)


@pytest.mark.parametrize("column", ["status", "image", "seed_used", "model"])
def test_carried_columns_may_not_clash_with_result_columns(tmp_path, column):
    rows = [{"id": "a", "prompt": "p", column: "x"}]
    if column == "seed_used":  # not a result column: carried as is
        assert validate_manifest(write(tmp_path, rows), DEFAULTS) == 1
        return
    with pytest.raises(ManifestError, match=f"'{column}' would be carried.*rename"):
        validate_manifest(write(tmp_path, rows), DEFAULTS)


def test_whole_number_floats_are_accepted_and_hints_stay_in_range(tmp_path):
    rows = [{"id": "a", "prompt": "p", "width": 64.0, "seed": 5.0}]
    assert validate_manifest(write(tmp_path, rows), DEFAULTS) == 1
    (req,) = expand_row(rows[0], DEFAULTS, 0)
    assert (req.width, req.seed) == (64, 5) and isinstance(req.width, int)
    text = messages(tmp_path, [{"id": "b", "prompt": "p", "width": 100000}])
    assert "e.g. 4096" in text


def test_prompt_template_rows_with_an_empty_field_are_reported(tmp_path):
    defaults = RowDefaults(prompt_template="{prompt}, {style}")
    text = messages(tmp_path, [{"id": "a", "prompt": "mug", "style": None}], defaults)
    assert "row 'a' (#0), column 'style'" in text and "empty in this row" in text


@pytest.mark.parametrize(
    "template,fragment",
    [
        ("{prompt, {style}", "unexpected '{'"),
        ("{prompt.upper}", "not a plain column"),
        ("{0}", "not a plain column"),
        ("{prompt!r}", "not a plain column"),
        ("plain", "no column"),
    ],
)
def test_bad_prompt_templates_are_refused(template, fragment):
    (problem,) = prompt_template_problems(template)
    assert fragment in problem
    assert prompt_template_problems("{prompt}, {style} style, {{braces}}") == []


def test_template_that_makes_a_blank_prompt_is_refused(tmp_path):
    text = messages(tmp_path, [{"id": "a", "style": "  "}], RowDefaults(prompt_template="{style}"))
    assert "row 'a'" in text and "makes a blank prompt from this row" in text

"""`sdfleet expand`: matrix -> manifest (product, sample, ids, Dynamic Prompts, bad input)."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from dynamicprompts.generators import RandomPromptGenerator
from dynamicprompts.wildcards import WildcardManager

from sdfleet.jobs.aspects import SDXL_BUCKETS, aspect_size
from sdfleet.jobs.cli import main
from sdfleet.jobs.dynamic_prompts import PromptSampler
from sdfleet.jobs.expand import expand_matrix

EXAMPLE = Path(__file__).resolve().parents[2] / "jobs" / "examples" / "marketing_matrix.yaml"


def write_matrix(folder: Path, **fields) -> Path:
    data = {
        "kind": "matrix",
        "seed": 7,
        "axes": {"product": ["a mug", "a lamp"], "style": ["watercolor", "studio photo"]},
        "prompt": "{product}, {style}",
    } | fields
    path = folder / "m.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_product_of_axes_times_seeds_with_axis_columns(tmp_path: Path) -> None:
    path = write_matrix(
        tmp_path,
        axes={"product": ["a", "b", "c"], "style": ["x", "y"], "guidance_scale": [4.0, 7.5]},
        seeds=3,
    )
    table = expand_matrix(path)
    assert table.num_rows == 3 * 2 * 2 * 3
    rows = table.to_pylist()
    combos = {(r["product"], r["style"], r["guidance_scale"], r["seed_index"]) for r in rows}
    assert len(combos) == table.num_rows  # every combination once
    assert len(set(table.column("id").to_pylist())) == table.num_rows
    assert {r["prompt"] for r in rows if r["product"] == "b" and r["style"] == "y"} == {"b, y"}
    # seeds: the k-th seed is the same in every combination (cells differ by their axes only)
    assert len({r["seed"] for r in rows}) == 3


def test_seeds_vary_by_combination_when_asked(tmp_path: Path) -> None:
    table = expand_matrix(write_matrix(tmp_path, seeds=2, seeds_vary_by_combination=True))
    assert len(set(table.column("seed").to_pylist())) == table.num_rows


def test_ids_stable_when_an_axis_value_is_added(tmp_path: Path) -> None:
    before = expand_matrix(write_matrix(tmp_path, seeds=2)).to_pylist()
    grown_axes = {"product": ["a mug", "a lamp", "a kettle"], "style": ["oil", "watercolor",
                  "studio photo"]}  # fmt: skip
    after = expand_matrix(write_matrix(tmp_path, seeds=3, axes=grown_axes)).to_pylist()
    by_id = {r["id"]: r for r in after}
    assert len(after) == 3 * 3 * 3
    for row in before:  # every old row is there under its old id, with the same content
        assert by_id[row["id"]] == row


def test_axis_order_does_not_change_ids(tmp_path: Path) -> None:
    a = expand_matrix(write_matrix(tmp_path)).column("id").to_pylist()
    swapped = {"style": ["watercolor", "studio photo"], "product": ["a mug", "a lamp"]}
    b = expand_matrix(write_matrix(tmp_path, axes=swapped)).column("id").to_pylist()
    assert {i.rsplit("-", 2)[-2] for i in a} == {i.rsplit("-", 2)[-2] for i in b}  # hashes


def test_seeded_sample_is_a_subset_and_repeatable(tmp_path: Path) -> None:
    axes = {"a": list(range(10)), "b": list(range(10)), "c": list(range(10))}
    full = expand_matrix(write_matrix(tmp_path, axes=axes, prompt="{a} {b} {c}"))
    sample = {"size": 17, "seed": 3}
    one = expand_matrix(write_matrix(tmp_path, axes=axes, prompt="{a} {b} {c}", sample=sample))
    two = expand_matrix(write_matrix(tmp_path, axes=axes, prompt="{a} {b} {c}", sample=sample))
    assert one.num_rows == 17 and one.equals(two)
    assert set(one.column("id").to_pylist()) <= set(full.column("id").to_pylist())
    other = expand_matrix(
        write_matrix(tmp_path, axes=axes, prompt="{a} {b} {c}", sample={"size": 17, "seed": 4})
    )
    assert set(other.column("id").to_pylist()) != set(one.column("id").to_pylist())


def wildcard_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "wildcards"
    folder.mkdir()
    (folder / "light.txt").write_text("soft light\nhard light\n# a comment\nrim light\n")
    (folder / "colour.txt").write_text("red\nblue __light__\n")  # nested wildcard
    return folder


def test_variants_and_wildcards_equal_dynamicprompts(tmp_path: Path) -> None:
    folder = wildcard_folder(tmp_path)
    template = "{product}, {style}, {glossy|matte} finish, {2$$a|b|c}, __light__, __colour__"
    path = write_matrix(tmp_path, prompt=template, wildcards="wildcards", seeds=6)
    rows = expand_matrix(path).to_pylist()
    generator = RandomPromptGenerator(WildcardManager(folder))
    for row in rows:
        filled = template.replace("{product}", row["product"]).replace("{style}", row["style"])
        assert row["prompt"] == generator.generate(filled, 1, seeds=[row["seed"]])[0]
    assert len({row["prompt"] for row in rows}) > len(rows) // 2  # the syntax was sampled


def test_axis_values_with_syntax_are_sampled_too(tmp_path: Path) -> None:
    sampler = PromptSampler()
    generator = RandomPromptGenerator()
    for seed in range(30):
        values = {"product": "a {red|blue} mug # comment", "style": "oil"}
        expected = generator.generate("a {red|blue} mug # comment, {x|y} oil", 1, seeds=[seed])
        assert sampler.fill("{product}, {x|y} {style}", values, seed) == expected[0]


def test_table_axis_and_aspect_presets(tmp_path: Path) -> None:
    (tmp_path / "cat.csv").write_text("sku,name,category\nk1,a mug,kitchen\nk2,a bag,travel\n")
    axes = {
        "product": {"table": "cat.csv", "column": "name", "key": "sku"},
        "aspect": {"aspects": ["1:1", "16:9", "640x448"], "preset": "sdxl"},
    }
    table = expand_matrix(write_matrix(tmp_path, axes=axes, prompt="{product} ({category})"))
    rows = table.to_pylist()
    assert table.num_rows == 6
    assert {(r["aspect"], r["width"], r["height"]) for r in rows} == {
        ("1:1", 1024, 1024), ("16:9", 1344, 768), ("640x448", 640, 448)}  # fmt: skip
    assert {r["prompt"] for r in rows} == {"a mug (kitchen)", "a bag (travel)"}
    assert {r["sku"] for r in rows} == {"k1", "k2"}
    assert all(r["id"].startswith(r["sku"]) for r in rows)


def test_aspect_ratios_pick_the_nearest_bucket() -> None:
    assert aspect_size("2:3", "sd15", 1, "x") == (512, 768)
    assert aspect_size("3:2", "sd15", 1, "x") == (768, 512)
    for width, height in SDXL_BUCKETS:
        assert aspect_size(f"{width}:{height}", "sdxl", 1, "x") == (width, height)
    assert aspect_size("2:3", "sd15", 0.125, "x") == (64, 96)  # toy models, multiples of 8


@pytest.mark.parametrize(
    ("fields", "said"),
    [
        ({"axes": {"style": []}, "prompt": "{style}"}, "axes.style has no values"),
        ({"prompt": "{product}, {colour}"}, "names {colour}, which is no axis"),
        ({"prompt": "{product} __nope__", "wildcards": "wildcards"}, "no wildcard file nope.txt"),
        ({"prompt": "{product} __empty__", "wildcards": "wildcards"}, "empty.txt is empty"),
        ({"prompt": "{product} __light__"}, "names no `wildcards:` folder"),
        ({"max_rows": 3}, "= 4 rows, over max_rows 3; set `sample"),
        ({"sample": {"size": 5}}, "sample.size 5: the axes make 4 combinations"),
        ({"axes": {"seed": [1, 2]}, "prompt": "x"}, "'seed' cannot be an axis"),
        ({"axes": {"style": ["a", "a"]}, "prompt": "{style}"}, "'a' appears twice"),
        ({"axes": {"n": [1, "one"]}, "prompt": "{n}"}, "values mix"),
        ({"axes": {"p": {"table": "missing.csv"}}, "prompt": "{p}"}, "does not exist"),
        ({"axes": {"a": {"aspects": ["wide"]}}, "prompt": "x"}, "neither a ratio nor a size"),
        ({"axes": {"a": {"aspects": ["100x100"]}}, "prompt": "x"}, "multiples of 8"),
    ],
)
def test_bad_matrices_exit_2_naming_the_problem_and_write_nothing(
    tmp_path: Path, capsys, fields: dict, said: str
) -> None:
    wildcard_folder(tmp_path)
    (tmp_path / "wildcards" / "empty.txt").write_text("")
    path = write_matrix(tmp_path, **fields)
    out = tmp_path / "manifest.parquet"
    assert main(["expand", str(path), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert said in err and str(path) in err
    assert not out.exists() and not list(tmp_path.glob("*.tmp"))


def test_expand_cli_writes_the_manifest(tmp_path: Path, capsys) -> None:
    out = tmp_path / "sub" / "manifest.parquet"
    assert main(["expand", str(EXAMPLE), "-o", str(out)]) == 0
    table = pq.read_table(out)
    assert table.num_rows == 4 * 3 * 3 * 2  # products x styles x aspects x seeds
    assert {"id", "prompt", "negative_prompt", "seed", "width", "height", "sku"} <= set(
        table.column_names
    )
    assert str(out) in capsys.readouterr().out


def test_matrix_in_place_of_a_manifest_validates(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # the default OUT, where the expanded manifest is written
    job = tmp_path / "job.yaml"
    job.write_text(
        yaml.safe_dump(
            {
                "kind": "batch",
                "model": "builtin:null",
                "manifest": str(EXAMPLE),
                "defaults": {"num_inference_steps": 2},
            }
        )
    )
    assert main(["validate", str(job)]) == 0
    assert "72 outputs" in capsys.readouterr().out
    (written,) = (tmp_path / "out" / "job" / "matrix").glob("marketing_matrix-*.parquet")
    assert pq.read_table(written).num_rows == 72


def test_bad_matrix_named_by_a_job_exits_2(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = write_matrix(tmp_path, prompt="{product} {nope}")
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({"kind": "batch", "model": "builtin:null", "manifest": "m.yaml"}))
    assert main(["validate", str(job)]) == 2
    assert "{nope}" in capsys.readouterr().err
    assert path.exists() and not (tmp_path / "out" / "job" / "matrix").exists()

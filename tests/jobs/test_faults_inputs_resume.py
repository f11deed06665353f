"""A rerun into a finished OUT whose rows keep their ids but changed what is recorded only as
hashes (an init image's bytes, the inpainting mask and settings): refused naming the rows and
fields, before any model loads, with OUT as it was; the unchanged rerun still resumes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from sdfleet.batch.fingerprint import INPUTS_COLUMN, inputs_changes, inputs_fingerprint
from sdfleet.batch.request import RECORDED_FIELDS, GenRequest, RowDefaults, expand_row
from sdfleet.jobs.examples import shape_image_png
from sdfleet.jobs.runner import EXIT_CONFIG, EXIT_OK
from tests.jobs.test_cli import run, write_job
from tests.jobs.test_faults_out import rewrite_manifest, snapshot

SMALL = {"num_inference_steps": 2, "width": 32, "height": 32}


def source_rows(tmp_path: Path) -> list[dict]:
    (tmp_path / "mask.png").write_bytes(shape_image_png(3, size=32))
    (tmp_path / "mask2.png").write_bytes(shape_image_png(4, size=32))
    return [
        {"id": "t2i", "prompt": "a shape"},
        {"id": "bytes", "prompt": "a shape", "init_image": shape_image_png(1, size=32)},
        {
            "id": "paint",
            "prompt": "a shape",
            "init_image": shape_image_png(2, size=32),
            "mask_image": "mask.png",
            "mask_blur": 2.0,
        },
    ]


@pytest.fixture
def finished(tiny_dir, tmp_path):
    """(job, OUT, rows) of a run that made every row."""
    rows = source_rows(tmp_path)
    job, out = write_job(tmp_path, rows, defaults=SMALL), tmp_path / "out"
    assert run(job, out) == EXIT_OK
    return job, out, rows


def refused_rerun(monkeypatch, capsys, job: Path, out: Path) -> str:
    from sdfleet.batch import models

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded for a refused resume")

    monkeypatch.setattr(models, "load_pipelines", refuse)
    before = snapshot(out)
    capsys.readouterr()
    assert run(job, out) == EXIT_CONFIG
    assert snapshot(out) == before  # nothing lost, job.yaml still names the first run
    err = capsys.readouterr().err
    assert "A resume keeps the committed images, which would not match the manifest: use a new" in (
        err
    )
    return err


@pytest.mark.parametrize(
    ("change", "said"),
    [
        ({"mask_blur": 8.0}, "row 'paint': mask_blur 2.0 -> 8.0"),  # a results column
        ({"inpaint_padding": 4}, "row 'paint': inpaint changed"),
        ({"mask_image": "mask2.png"}, "row 'paint': inpaint changed"),
        ({"init_image": shape_image_png(5, size=32)}, "row 'paint': init_image changed"),
    ],
)
def test_changed_inpainting_of_a_committed_row_is_refused(
    finished, monkeypatch, capsys, change, said
):
    job, out, rows = finished
    rewrite_manifest(out.parent, [r | change if r["id"] == "paint" else r for r in rows])
    err = refused_rerun(monkeypatch, capsys, job, out)
    assert f"{out} holds 1 output(s) made from manifest rows that have changed since" in err
    assert said in err


def test_changed_init_image_bytes_are_refused(finished, monkeypatch, capsys):
    job, out, rows = finished
    change = {"init_image": shape_image_png(6, size=32)}
    rewrite_manifest(out.parent, [r | change if r["id"] == "bytes" else r for r in rows])
    err = refused_rerun(monkeypatch, capsys, job, out)
    assert "row 'bytes': init_image changed (held in the results as a hash, inputs_sha256)" in err


def test_the_same_rows_resume_as_done(finished, capsys):
    job, out, rows = finished
    rewrite_manifest(out.parent, rows)  # written again: the same values
    assert run(job, out) == EXIT_OK
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["skipped_already_done_rows"], summary["generated_this_run"]) == (3, 0)
    recorded = pq.read_table(out / "results", columns=["id", INPUTS_COLUMN]).to_pylist()
    assert all(r[INPUTS_COLUMN].startswith("init_image=") for r in recorded)


def test_results_made_before_the_hashes_resume_by_their_columns(finished, capsys):
    """An OUT whose results hold no hashes (made by an older sdfleet) is compared by the
    columns it has, as before."""
    job, out, rows = finished
    for part in (out / "results").rglob("*.parquet"):
        table = pq.read_table(part)
        pq.write_table(table.drop_columns([INPUTS_COLUMN, "mask_blur"]), part)  # neither then
    change = {"mask_blur": 8.0}
    rewrite_manifest(out.parent, [r | change if r["id"] == "paint" else r for r in rows])
    assert run(job, out) == EXIT_OK


# ---------------------------------------------------------------------------- the hashes


def request(**fields) -> GenRequest:
    row = {"id": "r", "prompt": "p", **fields}
    (made,) = expand_row(row, RowDefaults(width=64, height=64), job_seed=0)
    return made


def test_each_unrecorded_field_has_its_own_hash():
    plain, masked = request(init_image=b"a"), request(init_image=b"a", mask_image=b"m")
    assert inputs_changes(plain.carried[INPUTS_COLUMN], masked.carried[INPUTS_COLUMN]) == [
        "inpaint"
    ]
    other = request(init_image=b"b", mask_image=b"m")
    assert inputs_changes(masked.carried[INPUTS_COLUMN], other.carried[INPUTS_COLUMN]) == [
        "init_image"
    ]
    assert request(init_image=b"a").carried == plain.carried  # stable
    assert "prompt=" not in plain.carried[INPUTS_COLUMN]  # recorded by value: not hashed
    assert b"a".hex() not in plain.carried[INPUTS_COLUMN]


def test_a_field_added_later_is_covered_without_being_listed():
    @dataclass(frozen=True)
    class Later(GenRequest):
        hires_scale: float = 1.0

    base = request()
    fields = {name: getattr(base, name) for name in GenRequest.__dataclass_fields__}
    one, two = Later(**fields), Later(**fields, hires_scale=2.0)
    changed = inputs_changes(
        inputs_fingerprint(one, RECORDED_FIELDS), inputs_fingerprint(two, RECORDED_FIELDS)
    )
    assert changed == ["hires_scale"]


@pytest.mark.parametrize(
    ("bad", "column"),
    [
        ({"id": "empty", "prompt": "p", "init_image": b""}, "init_image"),  # a bytes column
        ({"id": "web", "prompt": "p", "mask_image": "http://example.com/m.png"}, "mask_image"),
        ({"id": "tab\u202egnp", "prompt": "p"}, "id"),
        ({"id": "late", "prompt": "p", "strength": 0.4}, "strength"),
    ],
)
def test_a_bad_row_added_to_a_finished_out_loses_nothing(
    finished, monkeypatch, capsys, bad, column
):
    job, out, rows = finished
    rewrite_manifest(out.parent, [*rows, bad])
    from sdfleet.batch import models

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded for an invalid manifest")

    monkeypatch.setattr(models, "load_pipelines", refuse)
    before = snapshot(out)
    capsys.readouterr()
    assert run(job, out) == EXIT_CONFIG
    assert f"row {bad['id']!r} (#3), column '{column}'" in capsys.readouterr().err
    assert snapshot(out) == before


@pytest.mark.ray
@pytest.mark.slow
def test_changed_inpainting_is_refused_on_ray(tiny_dir, tmp_path, capsys):
    """The Ray replicas record the same hashes; the driver compares them before Ray starts."""
    rows = source_rows(tmp_path)
    job, out = write_job(tmp_path, rows, defaults=SMALL, executor="ray"), tmp_path / "out"
    assert run(job, out) == EXIT_OK
    before = snapshot(out)
    changed = {"inpaint_padding": 4}  # a setting only the hash records
    rewrite_manifest(tmp_path, [r | changed if r["id"] == "paint" else r for r in rows])
    capsys.readouterr()
    assert run(job, out) == EXIT_CONFIG
    assert "row 'paint': inpaint changed" in capsys.readouterr().err
    assert snapshot(out) == before
    rewrite_manifest(tmp_path, rows)
    assert run(job, out) == EXIT_OK
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["skipped_already_done_rows"], summary["generated_this_run"]) == (3, 0)

"""`sdfleet run --retry-errors`: only the failed rows are made again; every ok row stays as it
was and every output is in the results exactly once."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from sdfleet.batch.outputs import PENDING_SUFFIX, OutputDir
from sdfleet.batch.retry import failed_row_ids, forget_ids
from sdfleet.batch.sources import table_from_rows
from sdfleet.jobs.cli import main
from sdfleet.jobs.examples import shape_image_png
from sdfleet.jobs.runner import EXIT_OK, EXIT_ROWS_FAILED
from tests.batch.faults import faulty_actor

BROKEN = b"not an image"


def rows(init_image: bytes) -> list[dict]:
    return [
        {"id": "a", "prompt": "a cat", "num_images": 2},
        {"id": "bad", "prompt": "a cat", "init_image": init_image},
        {"id": "c", "prompt": "a dog"},
    ]


def write_job(folder: Path, init_image: bytes, **fields) -> Path:
    pq.write_table(table_from_rows(rows(init_image)), folder / "m.parquet")
    job = {
        "manifest": "m.parquet",
        "executor": "local",
        "batch_size": 2,
        "defaults": {"num_inference_steps": 2, "width": 64, "height": 64, "strength": 0.5},
    } | fields
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def run(job: Path, out: Path, count_file: Path, *extra: str) -> int:
    argv = ["run", str(job), "--out", str(out), "--no-progress", *extra]
    return main(argv, faulty_actor({"count_file": str(count_file)}))


def results(out: Path) -> dict[str, dict]:
    found = pq.read_table(out / "results").to_pylist()
    counts = Counter(row["output_id"] for row in found)
    assert all(n == 1 for n in counts.values()), counts  # every output exactly once
    return {row["output_id"]: row for row in found}


def retry_after_fixing(tmp_path: Path, capsys=None, **fields) -> None:
    out, made = tmp_path / "out", tmp_path / "made.txt"
    job = write_job(tmp_path, BROKEN, **fields)
    assert run(job, out, made) == EXIT_ROWS_FAILED
    if capsys is not None:  # the summary line says what to do
        assert "add --retry-errors" in capsys.readouterr().out
    before = results(out)
    assert before["bad"]["status"] == "error" and before["a_0"]["status"] == "ok"
    ok_files = {p.name: p.stat().st_mtime_ns for p in (out / "images").iterdir()}
    # without a fix the row fails again, still once in the results
    assert run(job, out, made, "--retry-errors") == EXIT_ROWS_FAILED
    assert results(out)["bad"]["status"] == "error"
    made.write_text("")
    write_job(tmp_path, shape_image_png(1), **fields)  # the manifest is fixed
    assert run(job, out, made, "--retry-errors") == EXIT_OK
    after = results(out)
    assert sorted(after) == ["a_0", "a_1", "bad", "c"]
    assert after["bad"]["status"] == "ok" and after["bad"]["mode"] == "img2img"
    assert made.read_text().split() == ["bad"]  # nothing else was made again
    for name in ("a_0", "a_1", "c"):
        assert after[name] == before[name]  # the ok rows, untouched
    assert {p.name: p.stat().st_mtime_ns for p in (out / "images").iterdir()} == ok_files | {
        "bad.png": (out / "images" / "bad.png").stat().st_mtime_ns
    }
    summary = yaml.safe_load((out / "summary.json").read_text())
    assert summary["retried_failed_rows"] == 1 and summary["error"] == 0


@pytest.mark.slow
def test_retry_errors_makes_only_the_failed_rows_again(tiny_dir, tmp_path, capsys):
    retry_after_fixing(tmp_path, capsys)


@pytest.mark.ray
@pytest.mark.slow
def test_retry_errors_on_ray(tiny_dir, tmp_path):
    """The Ray executor skips rows by its checkpoint: the failed ids leave it too."""
    retry_after_fixing(tmp_path, None, executor="ray", ray={"rows_per_block": 1})


def write_parts(folder: Path, parts: dict[str, list[tuple[str, str]]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, id_status in parts.items():
        ids, statuses = zip(*id_status) if id_status else ((), ())
        table = pa.table({"id": pa.array(ids, pa.string()), "status": pa.array(statuses)})
        pq.write_table(table, folder / name)


def test_failed_ids_include_checkpointed_rows_with_no_result(tmp_path):
    """A retry stopped after the results were rewritten but before the checkpoint was: the
    checkpoint still names the row, the results do not; the next retry makes it."""
    write_parts(tmp_path / "results", {"p0.parquet": [("a", "ok"), ("b", "error")]})
    write_parts(tmp_path / "ckpt", {"c0.parquet": [("a", "ok"), ("b", "ok"), ("gone", "ok")]})
    out = OutputDir(str(tmp_path))
    assert failed_row_ids(out) == {"b"}
    assert failed_row_ids(out, str(tmp_path / "ckpt")) == {"b", "gone"}


def test_forget_ids_rewrites_or_deletes_parts_and_leaves_pending_ones(tmp_path):
    parts = {
        "p0.parquet": [("a", "ok"), ("b", "error")],
        "p1.parquet": [("b", "error")],
        "p2.parquet": [("c", "ok")],
        f"p3{PENDING_SUFFIX}": [("b", "error")],
    }
    write_parts(tmp_path, parts)
    assert forget_ids(str(tmp_path), {"b"}) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "p0.parquet",
        "p2.parquet",
        f"p3{PENDING_SUFFIX}",
    ]
    assert pq.read_table(tmp_path / "p0.parquet")["id"].to_pylist() == ["a"]
    assert pq.read_table(tmp_path / f"p3{PENDING_SUFFIX}").num_rows == 1

"""One OUT, one run of one job: concurrent runs, the other job kind, changed rows, an OUT
that is a file or read-only - each refused (exit 2) with nothing of the other's overwritten."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from sdfleet.batch.out_lock import LOCK_NAME, parse_holder
from sdfleet.batch.sources import table_from_rows
from sdfleet.jobs.runner import EXIT_CONFIG, EXIT_OK, EXIT_ROWS_FAILED
from tests.fs_faults import read_only_folder
from tests.jobs.test_anim_cli import write_job as write_anim_job
from tests.jobs.test_cli import run, write_job

REPO = Path(__file__).resolve().parents[2]
FAULTS = REPO / "tests" / "batch" / "faults.py"
SMALL = {"num_inference_steps": 2, "width": 32, "height": 32}
ROWS = [{"id": f"r{i}", "prompt": f"a shape {i}"} for i in range(6)]


def output_ids(out: Path) -> list[str]:
    return sorted(r["output_id"] for r in pq.read_table(out / "results").to_pylist())


def snapshot(out: Path) -> dict[str, bytes]:
    """Every file of OUT but the lock, by relative path."""
    return {
        str(p.relative_to(out)): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name != LOCK_NAME
    }


def start_run(job: Path, out: Path, hooks: dict) -> subprocess.Popen:
    argv = [sys.executable, str(FAULTS), json.dumps(hooks), "run", str(job)]
    return subprocess.Popen(
        [*argv, "--out", str(out), "--no-progress"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_until_held(out: Path, process: subprocess.Popen, timeout_s: float = 300) -> int:
    """The pid named in OUT's lock once `process` holds it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        lock = out / LOCK_NAME
        holder = parse_holder(lock.read_bytes()) if lock.exists() else None
        if holder is not None:
            return holder.pid
        assert process.poll() is None, process.communicate()
        time.sleep(0.2)
    raise AssertionError("the first run never held OUT")


# ---------------------------------------------------------------------------- concurrent runs


@pytest.mark.slow
def test_a_second_run_into_a_busy_out_is_told_who_holds_it(tiny_dir, tmp_path, capsys):
    job, out = write_job(tmp_path, ROWS, batch_size=2, defaults=SMALL), tmp_path / "out"
    first = start_run(job, out, {"sleep_s": 1.0})
    pid = wait_until_held(out, first)
    assert pid == first.pid
    assert run(job, out) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert f"is in use by another run: pid {first.pid} on {os.uname().nodename}" in err
    assert "a batch run started" in err and "Wait for it to finish" in err
    assert first.wait(timeout=600) == EXIT_OK, first.communicate()
    assert output_ids(out) == sorted(r["id"] for r in ROWS)  # each once
    assert run(job, out) == EXIT_OK  # free again: resumes, makes nothing twice
    assert output_ids(out) == sorted(r["id"] for r in ROWS)


@pytest.mark.slow
def test_runs_started_together_never_commit_a_row_twice(tiny_dir, tmp_path):
    job, out = write_job(tmp_path, ROWS, batch_size=2, defaults=SMALL), tmp_path / "out"
    runs = [start_run(job, out, {"sleep_s": 0.5}) for _ in range(2)]
    codes = sorted(p.wait(timeout=600) for p in runs)
    assert codes in ([EXIT_OK, EXIT_CONFIG], [EXIT_OK, EXIT_OK])  # refused, or one after
    assert output_ids(out) == sorted(r["id"] for r in ROWS)


# ---------------------------------------------------------------------------- the other kind


def test_an_animation_into_a_batch_out_is_refused_and_overwrites_nothing(
    tiny_dir, tmp_path, capsys
):
    job, out = write_job(tmp_path, ROWS[:2], defaults=SMALL), tmp_path / "out"
    assert run(job, out) == EXIT_OK
    before = snapshot(out)
    anim = write_anim_job(tmp_path, max_frames=2)
    capsys.readouterr()
    assert run(anim, out) == EXIT_CONFIG
    assert "holds the outputs of a batch job; an animation run there" in capsys.readouterr().err
    assert snapshot(out) == before


def test_a_batch_into_an_animation_out_is_refused_and_overwrites_nothing(
    tiny_dir, tmp_path, capsys
):
    anim, out = write_anim_job(tmp_path, max_frames=2), tmp_path / "out"
    assert run(anim, out) == EXIT_OK
    before = snapshot(out)
    job = write_job(tmp_path, ROWS[:2], defaults=SMALL)
    capsys.readouterr()
    assert run(job, out) == EXIT_CONFIG
    assert "holds the outputs of an animation job; a batch run there" in capsys.readouterr().err
    assert snapshot(out) == before


# ---------------------------------------------------------------------------- changed rows


def rewrite_manifest(tmp_path: Path, rows: list[dict]) -> None:
    pq.write_table(table_from_rows(rows), tmp_path / "m.parquet")


def test_changed_prompts_of_committed_ids_are_refused_naming_the_rows(tiny_dir, tmp_path, capsys):
    job, out = write_job(tmp_path, ROWS, defaults=SMALL), tmp_path / "out"
    assert run(job, out) == EXIT_OK
    before = snapshot(out)
    changed = [r | {"prompt": "a new prompt"} if r["id"] in ("r1", "r4") else r for r in ROWS]
    rewrite_manifest(tmp_path, changed)
    capsys.readouterr()
    assert run(job, out) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert "holds 2 output(s) made from manifest rows that have changed since" in err
    assert "row 'r1': prompt 'a shape 1' -> 'a new prompt'" in err and "row 'r4'" in err
    assert snapshot(out) == before  # job.yaml still names the old run


def test_changed_num_images_of_a_committed_id_is_refused(tiny_dir, tmp_path, capsys):
    job, out = write_job(tmp_path, ROWS[:2], defaults=SMALL), tmp_path / "out"
    assert run(job, out) == EXIT_OK
    rewrite_manifest(tmp_path, [ROWS[0] | {"num_images": 2}, ROWS[1]])
    capsys.readouterr()
    assert run(job, out) == EXIT_CONFIG
    assert "row 'r0': outputs ['r0'] were made, the row now asks for ['r0_0', 'r0_1']" in (
        capsys.readouterr().err
    )


def test_new_rows_beside_unchanged_ones_resume(tiny_dir, tmp_path):
    job, out = write_job(tmp_path, ROWS[:3], defaults=SMALL), tmp_path / "out"
    assert run(job, out) == EXIT_OK
    rewrite_manifest(tmp_path, ROWS)
    assert run(job, out) == EXIT_OK
    assert output_ids(out) == sorted(r["id"] for r in ROWS)
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["skipped_already_done_rows"], summary["generated_this_run"]) == (3, 3)


def test_a_fixed_error_row_is_made_again_with_retry_errors(tiny_dir, tmp_path, capsys):
    rows = ROWS[:2] + [{"id": "bad", "prompt": "p", "init_image": b"corrupt bytes"}]
    job, out = write_job(tmp_path, rows, defaults=SMALL), tmp_path / "out"
    assert run(job, out) == EXIT_ROWS_FAILED
    rewrite_manifest(tmp_path, ROWS[:2] + [{"id": "bad", "prompt": "p"}])  # no init image now
    assert run(job, out) == EXIT_CONFIG  # keeping the error row would not match the manifest
    err = capsys.readouterr().err
    assert "row 'bad': strength 0.75 -> None, mode 'img2img' -> 'txt2img'" in err
    assert run(job, out, "--retry-errors") == EXIT_OK
    assert output_ids(out) == ["bad", "r0", "r1"]


# ---------------------------------------------------------------------------- unusable OUTs


@pytest.mark.parametrize("kind", ["batch", "animation"])
def test_an_out_that_is_a_file_is_refused_before_any_model_loads(tmp_path, kind, capsys):
    job = write_job(tmp_path, ROWS) if kind == "batch" else write_anim_job(tmp_path)
    out = tmp_path / "out"
    out.write_text("not a folder")
    assert run(job, out) == EXIT_CONFIG
    assert f"--out '{out}' is a file; give a folder" in capsys.readouterr().err
    assert out.read_text() == "not a folder"


@pytest.mark.parametrize("kind", ["batch", "animation"])
def test_a_read_only_out_is_refused_before_any_model_loads(tmp_path, kind, capsys):
    job = write_job(tmp_path, ROWS) if kind == "batch" else write_anim_job(tmp_path)
    with read_only_folder(tmp_path / "ro") as folder:
        assert run(job, folder / "out") == EXIT_CONFIG
        assert f"--out '{folder / 'out'}': {folder} cannot be written (" in capsys.readouterr().err


def test_the_lock_is_released_and_the_record_is_the_runs(tiny_dir, tmp_path):
    job, out = write_job(tmp_path, ROWS[:1], defaults=SMALL), tmp_path / "out"
    assert run(job, out) == EXIT_OK
    assert (out / LOCK_NAME).read_bytes() == b""
    assert yaml.safe_load((out / "job.yaml").read_text())["source"] == str(job.resolve())

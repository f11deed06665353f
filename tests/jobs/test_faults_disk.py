"""A full disk mid-run: a clear message, nothing half-written, nothing committed damaged, and
the rerun after space is freed makes exactly the missing rows."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from sdfleet.batch.errors import StorageError
from sdfleet.batch.outputs import OutputDir
from sdfleet.jobs.cli import main
from sdfleet.jobs.runner import EXIT_CRASH, EXIT_OK
from tests.batch.faults import faulty_actor
from tests.fs_faults import small_disk
from tests.jobs.test_cli import run, write_job

ROWS = [{"id": f"r{i:02d}", "prompt": f"a shape {i}"} for i in range(32)]
SMALL = {"num_inference_steps": 2, "width": 32, "height": 32}


PAGE = 4096  # tmpfs gives each file whole pages


def pages(path: Path) -> int:
    return -(-path.stat().st_size // PAGE) * PAGE


def results(out: Path) -> list[dict]:
    return pq.read_table(out / "results").to_pylist() if (out / "results").exists() else []


def image_hashes(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (out / "images").glob("*")}


def stray_files(out: Path) -> list[str]:
    return [str(p) for p in out.rglob("*.tmp")]


def check_exactly_once(out: Path, rows: list[dict]) -> None:
    made = results(out)
    assert sorted(r["output_id"] for r in made) == sorted(r["id"] for r in rows)
    assert all(r["status"] == "ok" for r in made)
    assert all((out / r["image_path"]).is_file() for r in made)


def test_a_failed_image_write_is_retried_by_the_rerun_not_committed(tiny_dir, tmp_path, capsys):
    """The write of r05's image fails as on a full disk: the run stops (exit 1) with the
    path and the fix; r05 is no committed error row, and the rerun makes it."""
    rows = ROWS[:6]
    job, out = write_job(tmp_path, rows, batch_size=2, defaults=SMALL), tmp_path / "out"
    hooks = {"full_disk_on_id": "r05", "full_disk_marker": str(tmp_path / "once")}
    argv = ["run", str(job), "--out", str(out), "--no-progress"]
    assert main(argv, actor_class=faulty_actor(hooks)) == EXIT_CRASH
    err = capsys.readouterr().err
    assert f"stopped: cannot write {out}/images/r05.png: No space left on device" in err
    assert "run the same command again to resume" in err
    assert "r05" not in {r["id"] for r in results(out)}
    assert all(r["status"] == "ok" for r in results(out))  # no row blamed for the disk
    assert main(argv, actor_class=faulty_actor(hooks)) == EXIT_OK
    check_exactly_once(out, rows)
    assert stray_files(out) == []


@pytest.mark.slow
def test_a_disk_that_fills_up_mid_run(tiny_dir, tmp_path, capsys):
    """A real small filesystem as OUT, with room for the first chunk of 16 rows only: the run
    stops with the message (no traceback, no .tmp files); what it committed reads back whole;
    after the disk grows, the rerun finishes with every output exactly once and every image
    byte-identical to a run with room."""
    reference = tmp_path / "reference"
    job = write_job(tmp_path, ROWS, batch_size=2, defaults=SMALL)
    assert run(job, reference) == EXIT_OK
    first_chunk = [reference / "images" / f"{r['id']}.png" for r in ROWS[:16]]
    first_chunk.append(reference / "results" / "local-000000.parquet")
    room = sum(pages(p) for p in first_chunk) + 8 * PAGE  # job.yaml, the lock, a margin
    with small_disk(tmp_path / "disk", size=f"{room // 1024}k") as disk:
        out = disk / "out"
        capsys.readouterr()
        assert run(job, out) == EXIT_CRASH
        err = capsys.readouterr().err
        assert "sdfleet: stopped: cannot write" in err and "No space left on device" in err
        assert "Traceback" not in err
        assert stray_files(out) == []
        kept = results(out)  # every committed part reads back
        assert len(kept) == 16 and all(r["status"] == "ok" for r in kept)
        grow = ["mount", "-o", f"remount,size={room * 4 // 1024}k", str(disk)]
        subprocess.run(grow, check=True)
        assert run(job, out) == EXIT_OK
        check_exactly_once(out, ROWS)
        assert image_hashes(out) == image_hashes(reference)
        assert json.loads((out / "summary.json").read_text())["ok"] == len(ROWS)
        assert stray_files(out) == []


def test_a_write_that_fails_leaves_no_temporary_file(tmp_path):
    with small_disk(tmp_path / "disk", size="64k") as disk:
        out = OutputDir(str(disk / "out"))
        with pytest.raises(StorageError) as caught:
            out.write_bytes("images/big.png", b"x" * 200_000)
        assert f"cannot write {disk}/out/images/big.png: No space left on device" in str(
            caught.value
        )
        assert sorted(p.name for p in (disk / "out" / "images").iterdir()) == []


def test_a_write_error_without_a_mount_is_a_storage_error(tmp_path, monkeypatch):
    """The same without root: fsync fails as a full disk makes it (ENOSPC)."""
    import errno
    import os

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("sdfleet.batch.paths.os.fsync", full)
    with pytest.raises(StorageError, match="No space left on device"):
        OutputDir(str(tmp_path)).write_bytes("a/b.json", b"{}")
    assert list((tmp_path / "a").iterdir()) == []

"""OUT/job.yaml, the record of a batch run, is itself a job: `sdfleet validate` and
`sdfleet run` take it from any folder, as they take an animation clip's job.yaml."""

from __future__ import annotations

import hashlib
import os

import pyarrow.parquet as pq
import yaml

from sdfleet.batch.sources import table_from_rows
from sdfleet.jobs.cli import main
from sdfleet.jobs.runner import EXIT_OK

ROWS = [{"id": "a", "prompt": "a cat", "label": 1}, {"id": "b", "prompt": "a dog", "label": 2}]


def image_hashes(out) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (out / "images").iterdir()}


def write_job(folder, model: str) -> None:
    """A job whose manifest and model are relative to its own folder."""
    (folder / "data").mkdir(parents=True)
    pq.write_table(table_from_rows(ROWS), folder / "data" / "m.parquet")
    job = {
        "model": model,
        "manifest": "data/m.parquet",
        "executor": "local",
        "seed": 4,
        "defaults": {"num_inference_steps": 2, "width": 64, "height": 64},
    }
    (folder / "job.yaml").write_text(yaml.safe_dump(job))


def test_a_recorded_batch_job_validates_and_runs_again(tiny_dir, tmp_path, monkeypatch, capsys):
    jobs = tmp_path / "project"
    jobs.mkdir()
    (tmp_path / "weights").symlink_to(tiny_dir, target_is_directory=True)
    write_job(jobs, "../weights")  # a relative model folder
    monkeypatch.chdir(jobs)  # the job is named relative to where it is run from
    first = tmp_path / "first"
    assert main(["run", "job.yaml", "--out", str(first), "--no-progress"]) == EXIT_OK
    record = first / "job.yaml"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["validate", str(record)]) == EXIT_OK
    assert "2 outputs" in capsys.readouterr().out
    # into its own OUT: a resume with the same settings, nothing made again
    assert main(["run", str(record), "--out", str(first), "--no-progress"]) == EXIT_OK
    summary = yaml.safe_load((first / "summary.json").read_text())
    assert summary["generated_this_run"] == 0 and summary["skipped_already_done_rows"] == 2
    # into a new OUT: the same images again
    again = tmp_path / "again"
    assert main(["run", str(record), "--out", str(again), "--no-progress"]) == EXIT_OK
    assert image_hashes(again) == image_hashes(first) and len(image_hashes(first)) == 2
    assert os.path.isabs(yaml.safe_load(record.read_text())["source"])

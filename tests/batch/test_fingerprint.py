"""The resume fingerprint: one list of output-only fields for batch and animation jobs; every
other field, including one added to a job model later, binds a rerun into the same OUT."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdfleet.anim.clip import fingerprint as clip_fingerprint
from sdfleet.anim.plan import compile_plan
from sdfleet.anim.spec import AnimationJob
from sdfleet.batch.errors import ConfigError
from sdfleet.batch.fingerprint import (
    OUTPUT_ONLY_FIELDS,
    fingerprint,
    pixel_settings,
    settings_changes,
)
from sdfleet.batch.outputs import OutputDir
from sdfleet.jobs.runner import check_same_job, write_job_record
from sdfleet.jobs.spec import BatchJob


class BatchJobWithKnob(BatchJob):
    """A job model that grew a field nobody listed anywhere."""

    new_knob: int = 0


class AnimationJobWithKnob(AnimationJob):
    new_knob: int = 0


def started_out(tmp_path: Path, job: BatchJob) -> OutputDir:
    """OUT as a run of `job` leaves it: job.yaml and one committed results part."""
    out = OutputDir(str(tmp_path / "out"))
    write_job_record(out, job, tmp_path / "job.yaml", "local")
    out.write_bytes("results/local-000000.parquet", b"committed rows")
    return out


def test_a_new_batch_field_binds_the_rerun_unless_listed(tmp_path):
    job = BatchJobWithKnob(manifest="m.parquet", new_knob=1)
    out = started_out(tmp_path, job)
    check_same_job(out, job, "local")  # the same job resumes
    with pytest.raises(ConfigError, match=r"changed new_knob: 1 -> 2"):
        check_same_job(out, job.model_copy(update={"new_knob": 2}), "local")


@pytest.mark.parametrize(
    "update,changed",
    [
        ({"seed": 3}, "seed: 0 -> 3"),
        ({"batch_size": 2}, "batch_size: 4 -> 2"),
        ({"model": "elsewhere"}, "model: 'builtin:tiny' -> 'elsewhere'"),
        ({"kind": "batch", "cpu_threads": 2}, "cpu_threads: None -> 2"),
    ],
)
def test_pixel_fields_bind_the_rerun(tmp_path, update, changed):
    job = BatchJob(manifest="m.parquet")
    out = started_out(tmp_path, job)
    with pytest.raises(ConfigError, match="holds results of a different job") as info:
        check_same_job(out, job.model_copy(update=update), "local")
    assert changed in str(info.value)


def test_nested_fields_are_named_with_their_parent(tmp_path):
    job = BatchJob.model_validate({"manifest": "m.parquet"})
    out = started_out(tmp_path, job)
    steps = BatchJob.model_validate({"manifest": "m.parquet", "defaults": {"width": 64}})
    with pytest.raises(ConfigError, match=r"changed defaults.width: 512 -> 64\)"):
        check_same_job(out, steps, "local")
    moved = BatchJob.model_validate({"manifest": "m.parquet", "ray": {"checkpoint_path": "/c"}})
    with pytest.raises(ConfigError, match=r"ray.checkpoint_path: None -> '/c'"):
        check_same_job(out, moved, "local")


def test_output_only_batch_fields_do_not_bind_the_rerun(tmp_path):
    job = BatchJob(manifest="m.parquet")
    out = started_out(tmp_path, job)
    other = BatchJob.model_validate(
        {
            "manifest": "more_rows.parquet",
            "name": "renamed",
            "max_reported_errors": 3,
            "allow_pickle": True,
            "ray": {"replicas": 2, "rows_per_block": 16, "stall_timeout_s": 5},
        }
    )
    check_same_job(out, other, "local")


def test_a_new_animation_field_changes_the_fingerprint_unless_listed():
    job = AnimationJobWithKnob(max_frames=3, width=64, height=64)
    plan = compile_plan(job)
    knob = job.model_copy(update={"new_knob": 5})
    assert clip_fingerprint(knob, plan) != clip_fingerprint(job, plan)
    output_only = job.model_copy(update={"fps": 30.0, "contact_sheet_every": 2})
    assert clip_fingerprint(output_only, plan) == clip_fingerprint(job, plan)


def test_every_output_only_field_is_a_field_of_a_job_model():
    names = set(_dotted(BatchJob(manifest="m").model_dump(mode="json", by_alias=True)))
    names |= set(_dotted(AnimationJob().model_dump(mode="json")))
    assert OUTPUT_ONLY_FIELDS <= names, OUTPUT_ONLY_FIELDS - names  # no stale entry


def _dotted(values: dict, prefix: str = ""):
    for key, value in values.items():
        yield f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _dotted(value, f"{prefix}{key}.")


def test_pixel_settings_drop_listed_fields_at_any_depth():
    job = {"seed": 1, "fps": 12, "ray": {"replicas": 2, "checkpoint_path": "/c"}, "video": {}}
    assert pixel_settings(job) == {"seed": 1, "ray": {"checkpoint_path": "/c"}}
    assert settings_changes(job, job | {"fps": 30}) == []
    assert settings_changes(job, {"seed": 2}) == [
        "ray.checkpoint_path: '/c' -> None",
        "seed: 1 -> 2",
    ]
    assert fingerprint(job, "plan") == fingerprint(job | {"fps": 1}, "plan")
    assert fingerprint(job, "plan") != fingerprint(job, "another plan")

"""Hard cuts and parallel segments: the plan marks the cuts, each segment renders as its own
task (local executor, two tasks) and the joined clip equals the sequential render byte for
byte; a failed segment resumes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sdfleet.anim.clip import ClipPaths, read_status, render_clip
from sdfleet.anim.plan import compile_plan
from sdfleet.anim.segments import (
    RenderSegments,
    render_segment,
    run_segments_local,
    segment_tasks,
    segments,
)
from sdfleet.batch.errors import ConfigError
from tests.anim.fakes import FakeModel, small_job

CUT = {
    "max_frames": 10,
    "hard_cuts": [5],
    "diffusion_cadence": 3,
    "zoom": 1.04,
    "angle": 2,
    "color_reference": "window",
    "prompts": {"0": "a cat", "5": "a city"},
}


class WithModel(RenderSegments):
    """The segment actor with a given model (a fake, or builtin:tiny's frames)."""

    def __init__(self, make_model) -> None:
        super().__init__()
        self.make_model = make_model

    def _frames_for(self, job):
        return self.make_model(job)


def test_the_plan_marks_hard_cuts_and_splits_the_clip_there() -> None:
    plan = compile_plan(small_job(**CUT))
    assert [r.mode for r in plan] == [
        "txt2img", "tween", "tween", "img2img", "img2img",  # 4: diffused, before the cut
        "txt2img", "img2img", "tween", "tween", "img2img",  # cadence 3 counts from frame 0
    ]  # fmt: skip
    assert all(r.tween_next is None or r.tween_next < 5 or r.tween_prev >= 5 for r in plan)
    assert segments(plan) == [(0, 5), (5, 10)]
    assert segments(compile_plan(small_job(max_frames=10))) == [(0, 10)]


@pytest.mark.parametrize(
    ("cuts", "fields", "match"),
    [
        ([0], {}, "from 1 to 9"),
        ([10], {}, "from 1 to 9"),
        ([6, 3], {}, "increasing"),
        ([4, 4], {}, "each once"),
        ([4], {"animation_mode": "interpolation"}, "restart the 2D chain"),
    ],
)
def test_bad_hard_cuts_are_refused(cuts, fields, match) -> None:
    with pytest.raises(ConfigError, match=match):
        small_job(max_frames=10, hard_cuts=cuts, **fields)


def test_a_cut_frame_keeps_nothing_from_before_it() -> None:
    # the frames after the cut do not depend on anything before it
    before = {"zoom": "0:(1.01), 4:(1.01), 5:(1.04)", "angle": "0:(-3), 4:(-3), 5:(2)"}
    other = small_job(**CUT | before)  # other motion up to the cut, the same after it
    model = FakeModel()
    first = list(_frames(small_job(**CUT), model))
    second = list(_frames(other, model))
    assert not (first[1][1] == second[1][1]).all()
    for (i, a), (j, b) in zip(first[5:], second[5:]):
        assert i == j and (a == b).all(), i


def _frames(job, model):
    from sdfleet.anim.render import ChainOptions, render_frames

    plan = compile_plan(job)
    frames = sorted(
        (i, image) for i, image, _ in render_frames(plan, ChainOptions.from_job(job), model)
    )
    return frames


@pytest.mark.parametrize("cut", [5, 6], ids=["cut5", "cut6-after-a-tween"])
def test_two_segment_tasks_equal_the_sequential_render(tmp_path: Path, cut: int) -> None:
    # cut 6 (cadence 3): frame 5 is rendered ahead of tween 4, the end of the first segment
    job = small_job(**CUT | {"hard_cuts": [cut]})
    sequential = ClipPaths.for_job(tmp_path / "sequential", job, "clip")
    render_clip(job, sequential, FakeModel())
    tasks = segment_tasks("clip", job, tmp_path / "segments")
    assert [(t.start, t.end) for t in tasks] == [(0, cut), (cut, 10)]
    model = FakeModel()
    rows = run_segments_local(tasks, WithModel(lambda job: model))
    assert [row["frames_written"] for row in rows] == [cut, 10 - cut]
    assert not any(row["error"] for row in rows)
    diffused = [r.frame for r in compile_plan(job) if r.diffused]
    assert sorted(model.calls) == diffused  # each frame rendered once, by one task
    joined = tasks[0].paths
    for frame in range(10):
        assert joined.frame(frame).read_bytes() == sequential.frame(frame).read_bytes(), frame
    status = read_status(joined)
    assert status["status"] == "ok" and status["segments"] == [[0, cut], [cut, 10]]
    assert joined.video.is_file() and joined.contact_sheet.is_file()


def test_the_second_segment_alone_and_a_failed_segment_resumes(tmp_path: Path) -> None:
    job = small_job(**CUT)
    clean = ClipPaths.for_job(tmp_path / "clean", job, "clip")
    render_clip(job, clean, FakeModel())
    paths = ClipPaths.for_job(tmp_path / "parts", job, "clip")
    model = FakeModel()
    assert render_segment(job, paths, model, 5, 10) == 5  # first: the later segment
    assert model.calls == [5, 6, 9]  # its diffused frames only
    with pytest.raises(RuntimeError, match="frame 3"):
        render_segment(job, paths, FakeModel(fail_at=3), 0, 5)
    assert render_segment(job, paths, FakeModel(), 0, 5) == 5
    for frame in range(10):
        assert paths.frame(frame).read_bytes() == clean.frame(frame).read_bytes(), frame
    with pytest.raises(ConfigError, match="not a segment"):
        render_segment(job, paths, FakeModel(), 0, 10)


def test_a_failed_segment_is_the_clips_error_and_a_rerun_finishes_it(tmp_path: Path) -> None:
    job = small_job(**CUT)
    tasks = segment_tasks("clip", job, tmp_path / "segments")
    rows = run_segments_local(tasks, WithModel(lambda job: FakeModel(fail_at=6)))
    assert [bool(row["error"]) for row in rows] == [False, True]
    status = read_status(tasks[0].paths)
    assert status["status"] == "error"
    error = status["error"]
    assert error.startswith("segment of frames 5-9: RuntimeError: model failed at frame 6")
    assert "run again" in status["error"]
    assert status["frames_written"] == 6  # frames 0-4, and 5 before the failure at 6
    assert not tasks[0].paths.video.exists()
    model = FakeModel()
    rows = run_segments_local(tasks, WithModel(lambda job: model))
    assert not any(row["error"] for row in rows) and min(model.calls) >= 5  # the kept segment
    assert read_status(tasks[0].paths)["status"] == "ok"


@pytest.mark.slow
def test_segments_on_tiny_equal_the_sequential_render(tmp_path: Path, tiny_pipes) -> None:
    from sdfleet.anim.frames import PipelineFrames

    job = small_job(**CUT | {"W": 64, "H": 64, "steps_schedule": 3, "max_frames": 8})

    def frames(job):
        return PipelineFrames(tiny_pipes, 64, 64, job.scheduler)

    sequential = ClipPaths.for_job(tmp_path / "sequential", job, "clip")
    render_clip(job, sequential, frames(job))
    tasks = segment_tasks("clip", job, tmp_path / "segments")
    rows = run_segments_local(tasks, WithModel(frames))
    assert not any(row["error"] for row in rows)
    for frame in range(8):
        assert tasks[0].paths.frame(frame).read_bytes() == sequential.frame(frame).read_bytes()


@pytest.mark.ray
@pytest.mark.slow
def test_segments_on_two_ray_replicas_equal_the_sequential_render(tmp_path: Path, tiny_dir) -> None:
    ray = pytest.importorskip("ray")
    from sdfleet.anim.ray_clips import ClipTask, RenderClips
    from sdfleet.anim.segments import run_segments_ray
    from sdfleet.batch.models import model_spec

    job = small_job(**CUT | {"W": 64, "H": 64, "steps_schedule": 3, "max_frames": 8})
    sequential = ClipTask("clip", job, tmp_path / "sequential")
    # the same torch threads as each replica below (1: two replicas on two CPUs)
    RenderClips(model_spec(job), cpu_threads=1).render_row(sequential.to_row())
    tasks = segment_tasks("clip", job, tmp_path / "segments")
    os.environ["RAY_AUTH_MODE"] = "disabled"
    ray.init(address="local", num_cpus=2, include_dashboard=False)  # ours, never a running one
    try:
        rows = run_segments_ray(tasks, replicas=2, num_cpus=0.5)  # two segments side by side
    finally:
        ray.shutdown()
    assert sorted(row["frames_written"] for row in rows) == [3, 5]  # frames 0..4, 5..7
    assert read_status(tasks[0].paths)["status"] == "ok"
    for frame in range(8):
        assert (
            tasks[0].paths.frame(frame).read_bytes() == sequential.paths.frame(frame).read_bytes()
        )

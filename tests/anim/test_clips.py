"""Per-clip outputs (frames, video, job.yaml, plan.jsonl, contact sheet, status) with a fake model;
clip manifests; many clips with one failing, in-process and on Ray."""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from sdfleet.anim.clip import ClipPaths, check_resumable, read_status, render_clip
from sdfleet.anim.plan import compile_plan, plan_to_jsonl
from sdfleet.anim.ray_clips import (
    ClipTask,
    RenderClips,
    check_clip_storage,
    read_clip_manifest,
    run_clips_ray,
)
from sdfleet.anim.spec import load_animation_job
from sdfleet.anim.video import probe_video
from sdfleet.batch.errors import ConfigError
from sdfleet.batch.outputs import read_png_metadata
from sdfleet.batch.pool import NodeResources
from tests.anim.fakes import FakeModel, small_job


def clip_job(**fields):
    base = {
        "W": 32,
        "H": 32,
        "max_frames": 12,
        "fps": 6,
        "diffusion_cadence": 2,
        "zoom": 1.03,
        "contact_sheet_every": 4,
    }
    return small_job(**(base | fields))


# ---------------------------------------------------------------------------- one clip


def test_clip_outputs(tmp_path: Path) -> None:
    job = clip_job(video={"format": "mp4", "preset": "veryfast"})
    paths = ClipPaths.for_job(tmp_path, job, "boat")
    status = render_clip(job, paths, FakeModel(32), clip_id="boat", header={"note": "test"})
    # frames 0..11, PNG with their parameters
    assert sorted(p.name for p in paths.frames_dir.iterdir()) == [
        f"frame_{i:06d}.png" for i in range(12)
    ]
    meta = read_png_metadata(paths.frame(3).read_bytes())["sdfleet"]
    assert meta["frame"] == 3 and meta["mode"] == "tween"
    # the video: every frame, at the job's fps, H.264 yuv420p
    facts = probe_video(tmp_path / "boat.mp4")
    assert (facts["frames"], facts["fps"], facts["codec"], facts["pix_fmt"]) == (
        12,
        6.0,
        "h264",
        "yuv420p",
    )
    # job.yaml loads back as the same job; plan.jsonl is its plan
    text = paths.job_yaml.read_text()
    assert text.startswith("# note: test\n")
    assert load_animation_job(yaml.safe_load(text)) == job
    assert paths.plan_jsonl.read_text() == plan_to_jsonl(compile_plan(job))
    # contact sheet of frames 0, 4, 8 (a 2x2 grid of 32 px thumbnails); status
    assert Image.open(paths.contact_sheet).size == (2 * 34 + 2, 2 * 34 + 2)
    assert status["status"] == "ok" and status["frames_written"] == 12
    assert json.loads(paths.status.read_text())["video"] == "boat.mp4"


@pytest.mark.parametrize("video_format", ["gif", "webm"])
def test_clip_video_formats(tmp_path: Path, video_format: str) -> None:
    job = clip_job(max_frames=5, video={"format": video_format, "crf": 30, "preset": "fast"})
    paths = ClipPaths.for_job(tmp_path, job, "clip")
    render_clip(job, paths, FakeModel(32))
    assert probe_video(paths.video)["frames"] == 5 and paths.video.suffix == f".{video_format}"


def test_finished_clip_is_not_rendered_again(tmp_path: Path) -> None:
    job = clip_job(max_frames=4)
    paths = ClipPaths.for_job(tmp_path, job, "clip")
    render_clip(job, paths, FakeModel(32))
    model = FakeModel(32)
    assert render_clip(job, paths, model)["status"] == "ok"
    assert model.calls == []


def test_folder_of_another_job_is_refused_before_rendering(tmp_path: Path) -> None:
    job = clip_job(max_frames=6)
    paths = ClipPaths.for_job(tmp_path, job, "clip")
    with pytest.raises(RuntimeError):
        render_clip(job, paths, FakeModel(32, fail_at=4))
    with pytest.raises(ConfigError, match="different job"):
        check_resumable(paths, clip_job(max_frames=6, seed=1))


def test_walk_clip(tmp_path: Path) -> None:
    job = clip_job(animation_mode="interpolation", max_frames=6, video={"format": "gif"})
    paths = ClipPaths.for_job(tmp_path, job, "walk")
    render_clip(job, paths, FakeModel(32))
    assert probe_video(paths.video)["frames"] == 6


# ---------------------------------------------------------------------------- clip manifests


def test_clip_manifest_rows_override_the_base(tmp_path: Path) -> None:
    (tmp_path / "start.png").write_bytes(b"not read here")
    table = pa.table(
        {
            "id": ["a", "b"],
            "zoom": ["0:(1.1)", None],
            "init_image": [None, "start.png"],
            "max_frames": [4, None],
        }
    )
    pq.write_table(table, tmp_path / "clips.parquet")
    clips = dict(read_clip_manifest(tmp_path / "clips.parquet", clip_job()))
    assert clips["a"].zoom == "0:(1.1)" and clips["a"].max_frames == 4
    assert clips["b"].zoom == "0:(1.03)" and clips["b"].max_frames == 12
    assert clips["b"].init_image == str(tmp_path / "start.png")


def test_clip_manifest_problems_name_the_row(tmp_path: Path) -> None:
    table = pa.table({"id": ["ok", "bad"], "strength_schedule": ["0:(0.5)", "0:(1.5)"]})
    pq.write_table(table, tmp_path / "clips.parquet")
    with pytest.raises(ConfigError, match=r"clips\[1\] \(bad\)\.strength_schedule"):
        read_clip_manifest(tmp_path / "clips.parquet", clip_job())


# ---------------------------------------------------------------------------- many clips


def clip_tasks(tmp_path: Path, max_frames: int = 6) -> list[ClipTask]:
    """A Parquet clip manifest of three clips on builtin:tiny at 64x64: a 2D one, a walk, and one
    whose init_image is a corrupt file (a good header, so it passes the checks made before any
    model loads, and pixels cut off, so it fails when the clip renders)."""
    png = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(png, "PNG")
    (tmp_path / "corrupt.png").write_bytes(png.getvalue()[:60])
    pq.write_table(
        pa.table(
            {
                "id": ["zoom", "walk", "broken"],
                "animation_mode": [None, "interpolation", None],
                "init_image": [None, None, "corrupt.png"],  # relative to the manifest's folder
            }
        ),
        tmp_path / "clips.parquet",
    )
    base = load_animation_job(
        {
            "kind": "animation",
            "W": 64,
            "H": 64,
            "max_frames": max_frames,
            "fps": 8,
            "steps_schedule": 4,
            "diffusion_cadence": 2,
            "zoom": 1.02,
            "prompts": {"0": "a boat"},
            "video": {"preset": "veryfast"},
        }
    )
    clips = read_clip_manifest(tmp_path / "clips.parquet", base)
    return [ClipTask(i, job, tmp_path / "out" / i) for i, job in clips]


def check_statuses(rows: list[dict], tasks: list[ClipTask]) -> None:
    by_id = {row["id"]: row for row in rows}
    assert by_id["zoom"]["status"] == "ok" and by_id["walk"]["status"] == "ok"
    assert by_id["broken"]["status"] == "error"
    assert "image file is truncated" in by_id["broken"]["error"]
    assert read_status(tasks[2].paths)["status"] == "error"
    for task in tasks[:2]:
        assert probe_video(task.paths.video)["frames"] == task.job.max_frames


def test_render_clips_actor_without_ray(tmp_path: Path, tiny_dir) -> None:
    tasks = clip_tasks(tmp_path, max_frames=3)
    actor = RenderClips()
    columns = actor(
        {
            "id": [t.id for t in tasks],
            "job": [t.job.model_dump_json() for t in tasks],
            "root": [str(t.root) for t in tasks],
        }
    )
    rows = [dict(zip(columns, values, strict=True)) for values in zip(*columns.values())]
    check_statuses(rows, tasks)


TWO_MACHINES = [NodeResources("a", "10.0.0.1", 4, 0), NodeResources("b", "10.0.0.2", 4, 0)]


def test_clip_outputs_on_a_cluster_of_machines_must_be_a_shared_mount(tmp_path, monkeypatch):
    # each clip writes on the node that renders it, and the driver reads the statuses back
    with pytest.raises(ConfigError, match=r"spans 2 machines.*out='out/clips'.*file:///mnt/"):
        check_clip_storage(TWO_MACHINES, "out/clips")
    check_clip_storage(TWO_MACHINES, "file:///mnt/clips")
    check_clip_storage(TWO_MACHINES[:1], "out/clips")  # one machine: any folder
    # run_clips_ray checks it once it knows the cluster, before any actor starts
    from sdfleet.batch import ray_runner  # clip runs join the cluster as batch jobs do

    monkeypatch.setattr(ray_runner, "connect", lambda address: None)
    monkeypatch.setattr(ray_runner, "alive_nodes", lambda: TWO_MACHINES)
    tasks = clip_tasks(tmp_path)
    with pytest.raises(ConfigError, match=re.escape(f"out='{tmp_path}'")):
        run_clips_ray(tasks, out=str(tmp_path))
    with pytest.raises(ConfigError, match=re.escape(f"out='{tasks[0].root}'")):
        run_clips_ray(tasks)  # OUT defaults to where the first clip goes
    assert not any(task.paths.status.exists() for task in tasks)


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    os.environ["RAY_AUTH_MODE"] = "disabled"
    ray.init(address="local", num_cpus=2, include_dashboard=False)  # ours, never a running one
    yield ray
    ray.shutdown()


@pytest.mark.ray
@pytest.mark.slow
def test_many_clips_on_ray_one_failing(tmp_path: Path, tiny_dir, ray_cluster) -> None:
    tasks = clip_tasks(tmp_path)
    rows = run_clips_ray(tasks, replicas=2, num_cpus=0.5)  # two clips side by side
    check_statuses(rows, tasks)
    # a rerun skips the finished clips and tries the failed one again
    finished = {t.id: read_status(t.paths)["updated_at"] for t in tasks[:2]}
    rows = run_clips_ray(tasks, replicas=2, num_cpus=0.5)
    check_statuses(rows, tasks)
    assert {t.id: read_status(t.paths)["updated_at"] for t in tasks[:2]} == finished

"""`sdfleet run` on animation jobs and `sdfleet demo`'s clip, end to end on builtin:tiny."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from sdfleet.anim.video import probe_video
from sdfleet.jobs.anim_runner import run_clip_manifest, run_demo_clip
from sdfleet.jobs.cli import main
from sdfleet.jobs.examples import shape_image_png
from sdfleet.jobs.runner import EXIT_CONFIG, EXIT_OK, EXIT_ROWS_FAILED
from sdfleet.jobs.spec import load_job

BASE = {
    "kind": "animation",
    "model": "builtin:tiny",
    "W": 64,
    "H": 64,
    "fps": 8,
    "steps_schedule": "0:(4)",
    "prompts": {"0": "a paper boat"},
    "video": {"format": "mp4", "preset": "veryfast"},
}


def write_job(tmp_path: Path, name: str = "clip", **fields) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(BASE | fields))
    return path


def run(job: Path, out: Path, *extra: str) -> int:
    return main(["run", str(job), "--out", str(out), "--no-progress", *extra])


def test_2d_clip_with_motion_and_cadence_2(tiny_dir, tmp_path: Path) -> None:
    """Acceptance: zoom + angle + translation, cadence 2: exactly max_frames frames, and an mp4
    of exactly max_frames frames at the job's fps, H.264, yuv420p."""
    job = write_job(
        tmp_path,
        max_frames=11,
        diffusion_cadence=2,
        zoom="0:(1.03)",
        angle="0:(2)",
        translation_x="0:(1.5)",
        translation_y="0:(-1)",
    )
    out = tmp_path / "out"
    assert run(job, out) == EXIT_OK
    frames = sorted(p.name for p in (out / "frames").glob("*.png"))
    assert frames == [f"frame_{i:06d}.png" for i in range(11)]
    facts = probe_video(out / "clip.mp4")
    assert (facts["frames"], facts["fps"], facts["codec"], facts["pix_fmt"]) == (
        11,
        8.0,
        "h264",
        "yuv420p",
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ok"] == 1 and summary["statuses"][0]["frames_written"] == 11


def test_finished_clip_is_skipped_on_rerun(tiny_dir, tmp_path: Path, monkeypatch) -> None:
    job = write_job(tmp_path, max_frames=3)
    out = tmp_path / "out"
    assert run(job, out) == EXIT_OK
    from sdfleet.anim import ray_clips

    def no_model(*args, **kwargs):
        raise AssertionError("a finished clip loaded a model")

    monkeypatch.setattr(ray_clips.RenderClips, "_load", no_model)
    assert run(job, out) == EXIT_OK


def test_problems_are_found_before_any_model_loads(tmp_path: Path, monkeypatch, capsys) -> None:
    from sdfleet.batch import models

    monkeypatch.setattr(models, "load_pipelines", lambda spec: pytest.fail("loaded"))
    job = write_job(tmp_path, max_frames=3, init_image="missing.png", scheduler="eulr")
    assert run(job, tmp_path / "out") == EXIT_CONFIG
    err = capsys.readouterr().err
    assert "init_image: " in err and "missing.png" in err and "unknown scheduler 'eulr'" in err


def test_clips_job_with_one_failing_clip(tiny_dir, tmp_path: Path, capsys) -> None:
    (tmp_path / "bad.png").write_bytes(shape_image_png(2)[:60])  # a good header, then cut off
    (tmp_path / "start.png").write_bytes(shape_image_png(2, size=48))  # resized to 64x64
    job = write_job(
        tmp_path,
        "clips",
        max_frames=3,
        clips=[
            {"id": "calm", "zoom": "0:(1.0)", "init_image": "start.png"},
            {"id": "spin", "angle": "0:(10)", "animation_mode": "interpolation"},
            {"id": "bad", "init_image": "bad.png"},
        ],
    )
    out = tmp_path / "out"
    assert run(job, out, "--executor", "local") == EXIT_ROWS_FAILED
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["ok"], summary["error"]) == (2, 1)
    assert probe_video(out / "calm" / "calm.mp4")["frames"] == 3
    assert probe_video(out / "spin" / "spin.mp4")["frames"] == 3
    assert "bad: error: OSError: image file is truncated" in capsys.readouterr().out


def test_parquet_clip_manifest(tiny_dir, tmp_path: Path) -> None:
    pq.write_table(
        pa.table({"id": ["left", "right"], "translation_x": ["0:(-2)", "0:(2)"]}),
        tmp_path / "clips.parquet",
    )
    job_path = write_job(tmp_path, "base", max_frames=3)
    job = load_job(job_path)
    out = tmp_path / "out"
    assert run_clip_manifest(job, job_path, tmp_path / "clips.parquet", str(out), "local") == 0
    assert yaml.safe_load((out / "right" / "job.yaml").read_text())["translation_x"] == "0:(2)"
    assert probe_video(out / "left" / "left.mp4")["frames"] == 3


def test_clips_manifest_field_runs_through_sdfleet_run(tiny_dir, tmp_path: Path) -> None:
    pq.write_table(
        pa.table({"id": ["up", "down"], "translation_y": ["0:(-2)", "0:(2)"]}),
        tmp_path / "clips.parquet",
    )
    job_path = write_job(tmp_path, "base", max_frames=2, clips_manifest="clips.parquet")
    out = tmp_path / "out"
    assert run(job_path, out, "--executor", "local") == EXIT_OK
    assert yaml.safe_load((out / "down" / "job.yaml").read_text())["translation_y"] == "0:(2)"
    assert probe_video(out / "up" / "up.mp4")["frames"] == 2


def test_out_as_a_file_uri_is_that_folder_and_object_stores_are_refused(
    tiny_dir, tmp_path: Path, capsys
) -> None:
    job = write_job(tmp_path, max_frames=2)
    shared = f"file://{tmp_path / 'mount' / 'clips'}"  # a mount every node sees
    assert main(["run", str(job), "--out", shared, "--no-progress"]) == EXIT_OK
    assert probe_video(tmp_path / "mount" / "clips" / "clip.mp4")["frames"] == 2
    assert main(["run", str(job), "--out", "s3://bucket/clips", "--no-progress"]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert "--out 's3://bucket/clips'" in err and "file:///mnt/" in err
    assert not Path("s3:").exists()


def test_demo_clip_renders_and_encodes(tiny_dir, tmp_path: Path) -> None:
    assert run_demo_clip(tmp_path / "clip") == EXIT_OK
    facts = probe_video(tmp_path / "clip" / "anim_demo.mp4")
    assert (facts["frames"], facts["fps"], facts["codec"]) == (24, 12.0, "h264")


@pytest.mark.slow
def test_sdfleet_demo_also_renders_the_clip(tiny_dir, tmp_path: Path) -> None:
    assert main(["demo", "--out", str(tmp_path)]) == EXIT_OK
    assert list((tmp_path / "batch" / "images").glob("*.png"))
    assert probe_video(tmp_path / "clip" / "anim_demo.mp4")["frames"] == 24


def test_validate_checks_an_animation_job_like_run(tmp_path: Path, capsys) -> None:
    job = write_job(tmp_path, "bad", max_frames=2, model="nowhere.safetensors")
    assert main(["validate", str(job)]) == EXIT_CONFIG
    assert "nowhere.safetensors" in capsys.readouterr().err
    job = write_job(tmp_path, "bad2", max_frames=2, scheduler="eulr", init_image="missing.png")
    assert main(["validate", str(job)]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert "scheduler: unknown scheduler 'eulr'" in err and "init_image: " in err
    assert main(["validate", str(write_job(tmp_path, "good", max_frames=3))]) == EXIT_OK
    assert "ok (animation, 3 frames)" in capsys.readouterr().out


def test_allow_row_errors_covers_failed_clips(tiny_dir, tmp_path: Path) -> None:
    (tmp_path / "broken.png").write_bytes(shape_image_png(2)[:60])  # fails when it is decoded
    clips = [{"id": "fine"}, {"id": "bad", "init_image": "broken.png"}]
    job = write_job(tmp_path, "clips", max_frames=2, clips=clips)
    assert run(job, tmp_path / "out", "--executor", "local") == EXIT_ROWS_FAILED
    assert run(job, tmp_path / "out2", "--executor", "local", "--allow-row-errors") == EXIT_OK


def test_changed_video_settings_re_encode_without_rendering(tiny_dir, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert run(write_job(tmp_path, "clip", max_frames=3), out, "--executor", "local") == EXIT_OK
    frames = {p.name: p.stat().st_mtime_ns for p in (out / "frames").iterdir()}
    changed = write_job(
        tmp_path, "clip", max_frames=3, fps=4, video={"format": "webm", "preset": "veryfast"}
    )
    assert run(changed, out, "--executor", "local") == EXIT_OK
    facts = probe_video(out / "clip.webm")
    assert (facts["frames"], facts["fps"]) == (3, 4.0)
    assert frames == {p.name: p.stat().st_mtime_ns for p in (out / "frames").iterdir()}
    assert yaml.safe_load((out / "job.yaml").read_text())["fps"] == 4


def no_model_loads(monkeypatch) -> None:
    from sdfleet.batch import models

    monkeypatch.setattr(models, "load_pipelines", lambda spec: pytest.fail("a model loaded"))


@pytest.mark.parametrize("command", ["plan", "validate", "run"])
def test_an_unknown_scheduler_is_refused_by_every_command(command, tmp_path, monkeypatch, capsys):
    no_model_loads(monkeypatch)
    job = write_job(tmp_path, max_frames=2, scheduler="eulr")
    out = tmp_path / "out"
    argv = [command, str(job), *(["--out", str(out), "--no-progress"] * (command == "run"))]
    assert main(argv) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert "scheduler: unknown scheduler 'eulr'" in err and "did you mean 'euler'?" in err
    assert not out.exists()  # nothing rendered, nothing written


@pytest.mark.parametrize("command", ["plan", "validate", "run"])
def test_a_clip_with_an_unknown_scheduler_is_refused_by_every_command(command, tmp_path, capsys):
    clips = [{"id": "fine"}, {"id": "typo", "scheduler": "dpmpp_2"}]
    job = write_job(tmp_path, "clips", max_frames=2, clips=clips)
    out = tmp_path / "out"
    argv = [command, str(job), *(["--out", str(out), "--executor", "local"] * (command == "run"))]
    assert main(argv) == EXIT_CONFIG
    assert "typo: scheduler: unknown scheduler 'dpmpp_2'" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("command", ["plan", "validate", "run"])
def test_a_gif_with_a_soundtrack_is_refused_before_any_frame(
    command, tmp_path, monkeypatch, capsys
):
    no_model_loads(monkeypatch)
    (tmp_path / "song.wav").write_bytes(b"RIFF")
    video = {"format": "gif", "soundtrack": "song.wav"}
    job = write_job(tmp_path, max_frames=2, video=video)
    out = tmp_path / "out"
    argv = [command, str(job), *(["--out", str(out), "--no-progress"] * (command == "run"))]
    assert main(argv) == EXIT_CONFIG
    assert "video: a gif cannot carry a soundtrack" in capsys.readouterr().err
    assert not out.exists()


def test_validate_and_run_list_the_clips_of_a_manifest_the_same_way(tmp_path, capsys):
    pq.write_table(
        pa.table({"id": ["a", "b"], "scheduler": ["euler", "eulr"]}), tmp_path / "clips.parquet"
    )
    job = write_job(tmp_path, "base", max_frames=2, clips_manifest="clips.parquet")
    assert main(["validate", str(job)]) == EXIT_CONFIG
    from_validate = capsys.readouterr().err
    assert main(["run", str(job), "--out", str(tmp_path / "out"), "--executor", "local"]) == 2
    assert "b: scheduler: unknown scheduler 'eulr'" in from_validate
    assert capsys.readouterr().err == from_validate
    assert main(["plan", str(job)]) == EXIT_CONFIG


def test_a_finished_clip_whose_video_settings_changed_is_encoded_again_not_rendered(
    tiny_dir, tmp_path: Path
) -> None:
    """fps is an output setting: the rerun writes a video at the new rate from the same frames
    (untouched on disk), and a third run with nothing changed writes nothing."""
    out = tmp_path / "out"
    assert run(write_job(tmp_path, max_frames=4), out) == EXIT_OK
    frames = {p.name: p.stat().st_mtime_ns for p in (out / "frames").glob("*.png")}
    assert probe_video(out / "clip.mp4")["fps"] == 8

    assert run(write_job(tmp_path, max_frames=4, fps=4), out) == EXIT_OK
    assert {p.name: p.stat().st_mtime_ns for p in (out / "frames").glob("*.png")} == frames
    assert probe_video(out / "clip.mp4")["fps"] == 4
    encoded = (out / "clip.mp4").stat().st_mtime_ns

    assert run(write_job(tmp_path, max_frames=4, fps=4), out) == EXIT_OK
    assert (out / "clip.mp4").stat().st_mtime_ns == encoded


def test_on_ray_a_clip_with_hard_cuts_goes_as_its_segments_and_the_rest_as_clips(
    tmp_path: Path, monkeypatch
) -> None:
    """`sdfleet run` on Ray: the unfinished clip with a cut is split into its segments (side
    by side on the pool), a clip without cuts is one task; statuses come from the clips."""
    from sdfleet.anim.ray_clips import ClipTask
    from sdfleet.jobs import anim_runner
    from tests.anim.fakes import small_job

    cut = ClipTask("cut", small_job(max_frames=10, hard_cuts=[5]), tmp_path / "cut")
    whole = ClipTask("whole", small_job(max_frames=10), tmp_path / "whole")
    sent: dict[str, list] = {}
    monkeypatch.setattr(
        anim_runner, "run_segments_ray", lambda pieces, **_: sent.setdefault("segments", pieces)
    )
    monkeypatch.setattr(
        anim_runner, "run_clips_ray", lambda clips, *_, **__: sent.setdefault("clips", clips)
    )
    rows = anim_runner.render_on_ray([cut, whole], str(tmp_path), None, {})
    assert [(p.id, p.start, p.end) for p in sent["segments"]] == [("cut", 0, 5), ("cut", 5, 10)]
    assert [clip.id for clip in sent["clips"]] == ["whole"]
    assert [row["id"] for row in rows] == ["cut", "whole"]  # nothing rendered: both unfinished
    assert {row["status"] for row in rows} == {"error"}

"""Exact resume: the state file, interruption at every frame (fake model), and SIGKILL of a real
`sdfleet run` on builtin:tiny compared byte for byte with an uninterrupted render."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from sdfleet.anim.clip import ClipPaths, fingerprint, read_status, render_clip
from sdfleet.anim.colour import ColourReference, from_uint8
from sdfleet.anim.plan import compile_plan
from sdfleet.anim.render import ChainOptions, render_frames
from sdfleet.anim.state import RenderState, load_state, save_state, saved_frames
from sdfleet.anim.walk import render_walk_frames
from sdfleet.batch.errors import ConfigError
from tests.anim.fakes import FakeModel, fake_step, small_job

REPO_ROOT = Path(__file__).resolve().parents[2]
SDFLEET = str(Path(sys.executable).with_name("sdfleet"))


def uint8_image(seed: int, size: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


# ---------------------------------------------------------------------------- the state file


def test_state_round_trip_is_exact(tmp_path: Path) -> None:
    colour = ColourReference("window", 3)
    for seed in range(4):
        colour.update(from_uint8(uint8_image(seed)))
    state = RenderState(
        next_frame=5,
        prev_key=3,
        prev_image=uint8_image(7),
        next_key=6,
        next_image=uint8_image(8),
        colour=colour,
        next_seed=11,
        fingerprint="abc",
    )
    save_state(tmp_path / "state.npz", state)
    loaded = load_state(tmp_path / "state.npz", "abc")
    assert loaded == state  # the scalar fields
    assert np.array_equal(loaded.prev_image, state.prev_image)
    assert np.array_equal(loaded.next_image, state.next_image)
    assert torch.equal(loaded.colour.reference, colour.reference)  # the last 3 frames, bit-exact
    assert loaded.colour.mode == "window" and loaded.colour.window == 3
    assert not list(tmp_path.glob("*.tmp"))


def test_colour_reference_that_is_not_uint8_exact_is_kept_as_float(tmp_path: Path) -> None:
    colour = ColourReference("first")
    colour.update(torch.rand(3, 8, 8))
    save_state(tmp_path / "s.npz", RenderState(colour=colour, fingerprint="x"))
    assert torch.equal(load_state(tmp_path / "s.npz", "x").colour.reference, colour.reference)


def test_state_of_another_job_is_refused(tmp_path: Path) -> None:
    save_state(tmp_path / "s.npz", RenderState(next_frame=3, fingerprint="old"))
    with pytest.raises(ConfigError, match="different job"):
        load_state(tmp_path / "s.npz", "new")
    assert load_state(tmp_path / "missing.npz", "new") is None


def test_fingerprint_ignores_output_only_fields() -> None:
    job = small_job()
    same = small_job(fps=30, video={"format": "gif"}, contact_sheet_every=2)
    other = small_job(zoom=1.01)
    assert fingerprint(job, compile_plan(job)) == fingerprint(same, compile_plan(same))
    assert fingerprint(job, compile_plan(job)) != fingerprint(other, compile_plan(other))


# ---------------------------------------------------------------------------- every stop point


def render_with_stop(make_frames, path: Path, stop: int | None) -> dict[int, bytes]:
    """Run a frame generator, saving the state after each frame like `render_clip`; stop after
    `stop` frames (a kill), then continue from the saved state in a fresh generator."""
    written: dict[int, bytes] = {}
    for count, (frame, image, state) in enumerate(make_frames(None), start=1):
        written[frame] = image.tobytes()
        save_state(path, state)
        if count == stop:
            break
    if stop is not None:
        for frame, image, state in make_frames(load_state(path, "")):
            written[frame] = image.tobytes()
            save_state(path, state)
    return written


def chain_2d(state):
    job = small_job(
        max_frames=8,
        diffusion_cadence=3,
        zoom=1.04,
        angle=3,
        translation_x=0.7,
        color_coherence="LAB",
        color_reference="window",
        color_reference_window=2,
        amount_schedule=0.3,
        noise_schedule=0.1,
    )
    return render_frames(compile_plan(job), ChainOptions.from_job(job), fake_step, state)


def walk_chain(state):
    job = small_job(
        animation_mode="interpolation",
        max_frames=8,
        color_coherence="RGB",
        color_reference="window",
        cfg_scale_schedule="0:(5), 5:(6)",
    )
    model = FakeModel()
    return render_walk_frames(
        compile_plan(job),
        ChainOptions.from_job(job),
        model.walk,
        model.latent_shape,
        state,
        batch_size=3,
    )


@pytest.mark.parametrize("make_frames", [chain_2d, walk_chain], ids=["2D", "walk"])
def test_resume_after_any_frame_is_byte_identical(make_frames, tmp_path: Path) -> None:
    full = render_with_stop(make_frames, tmp_path / "full.npz", None)
    assert sorted(full) == list(range(8))
    for stop in range(1, 8):
        resumed = render_with_stop(make_frames, tmp_path / f"stop{stop}.npz", stop)
        assert resumed == full, f"stopped after {stop} frames"


def test_clip_that_failed_resumes_where_it_stopped(tmp_path: Path) -> None:
    job = small_job(max_frames=9, diffusion_cadence=2, zoom=1.03)
    broken = ClipPaths.for_job(tmp_path / "broken", job, "clip")
    with pytest.raises(RuntimeError, match="frame 6"):
        render_clip(job, broken, FakeModel(fail_at=6))
    assert read_status(broken)["status"] == "error"
    assert read_status(broken)["frames_written"] == 4  # 0..3 (4 was rendered ahead of 3)
    model = FakeModel()
    render_clip(job, broken, model)
    assert model.calls == [6, 8] and read_status(broken)["resumed_from"] == 4
    clean = ClipPaths.for_job(tmp_path / "clean", job, "clip")
    render_clip(job, clean, FakeModel())
    for frame in range(9):
        assert broken.frame(frame).read_bytes() == clean.frame(frame).read_bytes()


def test_a_frame_that_cannot_be_written_stops_the_clip_with_the_state_behind_it(
    tmp_path: Path,
) -> None:
    # frames are written on a background thread: its error reaches the caller, and the state
    # on disk never counts a frame that is not there
    job = small_job(max_frames=8, zoom=1.03)
    paths = ClipPaths.for_job(tmp_path / "clip", job, "clip")
    paths.frame(3).mkdir(parents=True)  # frame 3 cannot be written over a folder
    written: list[int] = []
    with pytest.raises(OSError):
        render_clip(job, paths, FakeModel(), progress=written.append)
    assert read_status(paths)["status"] == "error"
    assert read_status(paths)["frames_written"] == 3 and sum(written) == 3
    paths.frame(3).rmdir()
    render_clip(job, paths, FakeModel())
    clean = ClipPaths.for_job(tmp_path / "clean", job, "clip")
    render_clip(job, clean, FakeModel())
    for frame in range(8):
        assert paths.frame(frame).read_bytes() == clean.frame(frame).read_bytes()


# ---------------------------------------------------------------------------- SIGKILL, real model

KILL_JOB = {
    "kind": "animation",
    "model": "builtin:tiny",
    "W": 64,
    "H": 64,
    "max_frames": 40,
    "fps": 10,
    "seed": 5,
    "diffusion_cadence": 2,
    "zoom": "0:(1.02)",
    "angle": "0:(2)",
    "translation_x": "0:(1)",
    "strength_schedule": "0:(0.55)",
    "steps_schedule": "0:(4)",
    "noise_type": "perlin",
    "color_coherence": "LAB",
    "color_reference": "window",
    "prompts": {"0": "a lighthouse", "20": "a snowy lighthouse"},
    "video": {"format": "mp4", "preset": "veryfast"},
}


def run_argv(job_file: Path, out: Path) -> list[str]:
    return [SDFLEET, "run", str(job_file), "--out", str(out), "--no-progress"]


def wait_for_frames(out: Path, count: int, process: subprocess.Popen, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        found = len(list((out / "frames").glob("frame_*.png")))
        if found >= count:
            return found
        time.sleep(0.02)
    raise AssertionError(f"no {count} frames in {timeout_s} s: {process.communicate()[0]!r}")


def file_identity(path: Path) -> tuple[int, int]:
    """Inode and mtime: a frame written again (temp file + rename) gets a new inode."""
    stat = path.stat()
    return stat.st_ino, stat.st_mtime_ns


@pytest.mark.slow
def test_sigkill_mid_render_then_rerun_gives_identical_frames(tmp_path: Path, tiny_dir) -> None:
    job_file = tmp_path / "kill.yaml"
    job_file.write_text(yaml.safe_dump(KILL_JOB))
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    # 1. start, and SIGKILL once a few frames exist
    process = subprocess.Popen(
        run_argv(job_file, killed), cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    wait_for_frames(killed, 5, process, timeout_s=120)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert read_status(ClipPaths(killed))["status"] == "running"
    assert len(list((killed / "frames").glob("frame_*.png"))) < 40
    # frames are written 0, 2, 1, 4, 3, ... (a key before its tween), each followed by the state;
    # with 5 on disk the state counts at least 3. The kill may land between a frame and its
    # state, so the count is read from the state the kill left, not from the frames.
    committed = saved_frames(ClipPaths(killed).state)
    assert committed >= 3
    before = {index: file_identity(ClipPaths(killed).frame(index)) for index in range(committed)}
    # 2. run the same command again, and an uninterrupted render elsewhere
    for out in (killed, clean):
        done = subprocess.run(
            run_argv(job_file, out), cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stdout + done.stderr
    assert read_status(ClipPaths(killed))["resumed_from"] == committed
    # frames the state counted were not rendered or written again
    assert {index: file_identity(ClipPaths(killed).frame(index)) for index in before} == before
    # 3. every frame byte for byte
    for frame in range(40):
        name = f"frames/frame_{frame:06d}.png"
        assert (killed / name).read_bytes() == (clean / name).read_bytes(), name

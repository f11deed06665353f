"""Frame interpolation by optical flow (anim.interpolate), on frames made here with numpy."""

from __future__ import annotations

import numpy as np
import pytest

from sdfleet.anim import interpolate
from sdfleet.anim.interpolate import interpolate_pair, interpolated_frames


def blob(centre_x: float, size: int = 64) -> np.ndarray:
    """A soft bright disc on a dark gradient, centred at (centre_x, size / 2)."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    disc = np.exp(-((xs - centre_x) ** 2 + (ys - size / 2) ** 2) / (2 * 6.0**2))
    base = 40 + 30 * ys / size
    image = np.stack([base + 200 * disc, base + 120 * disc, base + 60 * disc], axis=-1)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("factor", [2, 3, 4])
def test_between_two_identical_frames_is_that_frame(factor):
    rng = np.random.default_rng(3)
    for frame in (blob(30), rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)):
        between = interpolate_pair(frame, frame.copy(), factor)
        assert len(between) == factor - 1
        assert all(np.array_equal(image, frame) for image in between)


def test_the_middle_frame_follows_the_motion():
    a, b, truth = blob(26), blob(34), blob(30)
    middle = interpolate_pair(a, b, 2)[0]
    flow_error = np.abs(middle.astype(float) - truth).mean()
    blend_error = np.abs((a.astype(float) + b) / 2 - truth).mean()
    assert flow_error < 0.35 * blend_error


def test_n_frames_become_n_times_factor_with_the_rendered_ones_in_place(tmp_path):
    frames = [blob(20 + 4 * i) for i in range(4)]
    out = list(interpolated_frames(iter(frames), 2, tmp_path / "x2"))
    assert len(out) == 8
    assert all(np.array_equal(out[2 * i], frame) for i, frame in enumerate(frames))
    assert np.array_equal(out[7], frames[3])  # the last frame is held
    assert len(list((tmp_path / "x2").glob("between_*.png"))) == 3
    four = list(interpolated_frames(iter(frames), 4, tmp_path / "x4"))
    assert len(four) == 16 and np.array_equal(four[12], frames[3])


def test_a_second_pass_reads_the_frames_written_before(tmp_path, monkeypatch):
    frames = [blob(20), blob(26), blob(32)]
    first = list(interpolated_frames(frames, 3, tmp_path))

    def no_flow(*args):
        raise AssertionError("computed again")

    monkeypatch.setattr(interpolate, "interpolate_pair", no_flow)
    second = list(interpolated_frames(frames, 3, tmp_path))
    assert all(np.array_equal(x, y) for x, y in zip(first, second, strict=True))


def test_frames_of_other_shapes_are_a_caller_bug():
    with pytest.raises(ValueError, match="one shape"):
        interpolate_pair(blob(10, 32), blob(10, 64), 2)


def test_a_clip_encodes_its_interpolated_frames_and_the_stage_resumes(tiny_dir, tmp_path):
    import yaml

    from sdfleet.anim.video import probe_video
    from sdfleet.jobs.cli import main

    job = {
        "kind": "animation",
        "W": 64,
        "H": 64,
        "fps": 6,
        "max_frames": 4,
        "steps_schedule": "0:(2)",
        "zoom": "0:(1.1)",
        "prompts": {"0": "a lantern"},
        "video": {"preset": "veryfast", "interpolate": 2},
    }
    path = tmp_path / "clip.yaml"
    path.write_text(yaml.safe_dump(job))
    out = tmp_path / "out"
    argv = ["run", str(path), "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    facts = probe_video(out / "clip.mp4")
    assert (facts["frames"], facts["fps"]) == (8, 12)  # twice the frames, as long as before
    between = {p.name: p.stat().st_mtime_ns for p in (out / "interpolated_x2").iterdir()}
    assert len(between) == 3
    rendered = {p.name: p.stat().st_mtime_ns for p in (out / "frames").iterdir()}
    # the video lost (a kill while encoding): encoded again from the frames kept on disk
    (out / "clip.mp4").unlink()
    assert main(argv) == 0 and probe_video(out / "clip.mp4")["frames"] == 8
    assert {p.name: p.stat().st_mtime_ns for p in (out / "interpolated_x2").iterdir()} == between
    # another factor (and container): encoded again, nothing rendered again
    video = {"preset": "veryfast", "interpolate": 4, "format": "webm"}
    path.write_text(yaml.safe_dump({**job, "video": video}))
    assert main(argv) == 0
    assert (probe_video(out / "clip.webm")["frames"], len(list(out.glob("interpolated_x4/*")))) == (
        16,
        9,
    )
    assert {p.name: p.stat().st_mtime_ns for p in (out / "frames").iterdir()} == rendered

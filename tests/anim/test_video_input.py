"""Video input (``init_video``) and Deforum's hybrid options: the frame mapping, the too-short
video refused at load time, the video's motion by optical flow, and renders over a generated
video (fake model and builtin:tiny) that resume byte for byte after a failure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sdfleet.anim.clip import ClipPaths, read_status, render_clip
from sdfleet.anim.colour import from_uint8
from sdfleet.anim.frames import PipelineFrames
from sdfleet.anim.plan import compile_plan
from sdfleet.anim.video_input import (
    VideoInputSpec,
    VideoSource,
    flow_moved,
    source_frame_indices,
)
from sdfleet.batch.errors import ConfigError
from tests.anim.fakes import FakeModel, small_job


def square_frames(count: int, size: int = 32, step_px: int = 2) -> list[np.ndarray]:
    """A bright square moving right by `step_px` a frame over a dark gradient."""
    ys, xs = np.mgrid[0:size, 0:size]
    background = np.stack([xs * 3, ys * 3, np.full_like(xs, 40)], axis=-1).astype(np.uint8)
    frames = []
    for index in range(count):
        frame = background.copy()
        left = 4 + index * step_px
        frame[10:20, left : left + 10] = (250, 220, 30)
        frames.append(frame)
    return frames


def write_video(path: Path, count: int, fps: float = 10, size: int = 32) -> Path:
    import imageio.v2 as imageio

    with imageio.get_writer(path, fps=fps, macro_block_size=16, quality=9) as writer:
        for frame in square_frames(count, size):
            writer.append_data(frame)
    return path


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_video(tmp_path_factory.mktemp("video") / "squares.mp4", 12)


def keys(job) -> list[int]:
    return [record.frame for record in compile_plan(job) if record.diffused]


# ---------------------------------------------------------------------------- the mapping


@pytest.mark.parametrize(
    ("fps", "source_fps", "fields", "expected"),
    [
        (10, 10, {}, [0, 1, 2, 3, 4]),
        (10, 30, {}, [0, 3, 6, 9, 12]),
        (24, 30, {}, [0, 1, 3, 4, 5]),  # floor(i * 1.25 + 0.5)
        (30, 10, {}, [0, 0, 1, 1, 1]),  # a slower source: frames repeat
        (10, 30, {"extract_nth_frame": 2}, [0, 2, 4, 6, 8]),  # Deforum's rule, rates ignored
        (10, 10, {"extract_nth_frame": 1, "extract_from_frame": 3}, [3, 4, 5, 6, 7]),
        (10, 10, {"extract_from_frame": 2}, [2, 3, 4, 5, 6]),
    ],
)
def test_clip_frames_map_to_source_frames(fps, source_fps, fields, expected) -> None:
    spec = VideoInputSpec(file="v.mp4", **fields)
    assert source_frame_indices(5, fps, source_fps, spec) == expected


def test_source_frames_are_the_mapped_frames_of_the_video(video: Path) -> None:
    import imageio.v2 as imageio

    with imageio.get_reader(video, "ffmpeg") as reader:
        decoded = list(reader.iter_data())
    assert len(decoded) == 12
    job = small_job(W=32, H=32, max_frames=5, fps=5, init_video=str(video), diffusion_cadence=2)
    source = VideoSource.load(job, keys(job))
    # clip frames 0, 2, 4 are diffused; at 5 fps over a 10 fps video they are frames 0, 4, 8
    assert sorted(source.frames) == [0, 2, 4]
    for clip_frame, source_frame in [(0, 0), (2, 4), (4, 8)]:
        assert np.array_equal(source.frames[clip_frame], decoded[source_frame])


# ---------------------------------------------------------------------------- bad input


def test_a_video_shorter_than_the_clip_is_refused_when_the_job_loads(tmp_path: Path) -> None:
    short = write_video(tmp_path / "short.mp4", 6)
    with pytest.raises(ConfigError) as caught:
        small_job(max_frames=10, fps=10, init_video=str(short))
    message = str(caught.value)
    assert "short.mp4 has 6 frames" in message and "10 frames" in message
    assert "hold_last" in message and "max_frames" in message
    small_job(max_frames=6, fps=10, init_video=str(short))  # exactly long enough
    small_job(max_frames=11, fps=20, init_video=str(short))  # half speed: frame 10 -> source 5
    with pytest.raises(ConfigError, match="short.mp4 has 6 frames"):
        small_job(max_frames=4, init_video={"file": str(short), "extract_nth_frame": 2})


def test_hold_last_holds_the_last_source_frame(tmp_path: Path) -> None:
    short = write_video(tmp_path / "short.mp4", 4)
    spec = {"file": str(short), "hold_last": True}
    job = small_job(W=32, H=32, max_frames=7, fps=10, init_video=spec)
    source = VideoSource.load(job, keys(job))
    for frame in (4, 5, 6):
        assert np.array_equal(source.frames[frame], source.frames[3])
    assert not np.array_equal(source.frames[2], source.frames[3])


def test_bad_video_inputs_are_refused_naming_the_field(tmp_path: Path, video: Path) -> None:
    with pytest.raises(ConfigError, match="hybrid_composite / hybrid_motion.*init_video"):
        small_job(hybrid_composite=True)
    not_video = tmp_path / "notes.mp4"
    not_video.write_text("not a video")
    with pytest.raises(ConfigError, match="notes.mp4 is not a readable video"):
        small_job(init_video=str(not_video))
    with pytest.raises(ConfigError, match="hybrid_comp_alpha_schedule: gives 1.5 at frame 0"):
        small_job(init_video=str(video), hybrid_composite=True, hybrid_comp_alpha_schedule=1.5)
    with pytest.raises(ConfigError, match="keep one"):
        small_job(init_video=str(video), init_image=str(not_video))


def test_a_relative_video_is_read_from_the_job_folder(tmp_path: Path) -> None:
    from sdfleet.anim.spec import load_animation_job

    write_video(tmp_path / "clip.mp4", 4)
    data = {"kind": "animation", "max_frames": 4, "W": 16, "H": 16, "init_video": "clip.mp4"}
    job = load_animation_job(data, source=str(tmp_path / "job.yaml"))
    assert Path(job.init_video.file) == (tmp_path / "clip.mp4").absolute()


# ---------------------------------------------------------------------------- hybrid motion


def test_optical_flow_moves_the_previous_frame_with_the_video() -> None:
    a, b = square_frames(2, size=32, step_px=3)
    moved = flow_moved(from_uint8(a), a, b)  # a moved by the motion from a to b
    error_moved = (moved - from_uint8(b)).abs().mean()
    error_still = (from_uint8(a) - from_uint8(b)).abs().mean()
    assert error_moved < 0.4 * error_still
    same = flow_moved(from_uint8(a), a, a)  # no motion in the video: unchanged, exactly
    assert torch.equal(same, from_uint8(a))


def test_plain_video_input_starts_each_frame_from_its_source_frame(video: Path) -> None:
    seen: dict[int, torch.Tensor | None] = {}

    class Recording(FakeModel):
        def __call__(self, record, init):
            seen[record.frame] = init
            return super().__call__(record, init)

    job = small_job(
        max_frames=4, init_video=str(video), zoom=1.05, noise_schedule=0, color_coherence=None
    )
    assert compile_plan(job)[0].mode == "img2img"
    source = VideoSource.load(job, keys(job))
    from sdfleet.anim.render import ChainOptions, render_frames

    list(render_frames(compile_plan(job), ChainOptions.from_job(job), Recording(), video=source))
    # anti-blur (amount 0.1) is the only step between the source frame and img2img
    from sdfleet.anim.filters import unsharp_mask

    for frame in range(4):
        expected = from_uint8(source.frames[frame])
        if frame:
            expected = unsharp_mask(expected, 0.1, 5, 1.0, 0.0)
        assert torch.equal(seen[frame], expected), frame


# ---------------------------------------------------------------------------- resume


VID2VID = {
    "diffusion_cadence": 2,
    "hybrid_composite": True,
    "hybrid_comp_alpha_schedule": "0:(0.3), 6:(0.7)",
    "hybrid_motion": "optical_flow",
    "zoom": 1.02,
    "color_reference": "window",
}


@pytest.mark.parametrize("fields", [{}, VID2VID], ids=["vid2vid", "hybrid"])
def test_failed_video_render_resumes_byte_identical(tmp_path: Path, video: Path, fields) -> None:
    job = small_job(max_frames=9, init_video=str(video), **fields)
    broken = ClipPaths.for_job(tmp_path / "broken", job, "clip")
    with pytest.raises(RuntimeError, match="frame 6"):
        render_clip(job, broken, FakeModel(fail_at=6))
    assert 0 < read_status(broken)["frames_written"] < 9
    render_clip(job, broken, FakeModel())
    clean = ClipPaths.for_job(tmp_path / "clean", job, "clip")
    render_clip(job, clean, FakeModel())
    for frame in range(9):
        assert broken.frame(frame).read_bytes() == clean.frame(frame).read_bytes(), frame


class FailingFrames(PipelineFrames):
    """The diffusers step, failing once at one frame: a render killed mid-clip."""

    fail_at: int | None = None

    def __call__(self, record, init):
        if record.frame == self.fail_at:
            self.fail_at = None
            raise RuntimeError(f"stopped at frame {record.frame}")
        return super().__call__(record, init)


@pytest.mark.slow
def test_vid2vid_on_tiny_renders_and_resumes_byte_identical(tmp_path: Path, tiny_pipes) -> None:
    source = write_video(tmp_path / "squares64.mp4", 8, size=64)
    fields = VID2VID | {"W": 64, "H": 64, "steps_schedule": 3, "strength_schedule": 0.5}
    job = small_job(max_frames=8, init_video=str(source), **fields)
    model = FailingFrames(tiny_pipes, 64, 64, job.scheduler)
    model.fail_at = 4
    broken = ClipPaths.for_job(tmp_path / "broken", job, "clip")
    with pytest.raises(RuntimeError, match="frame 4"):
        render_clip(job, broken, model)
    assert read_status(broken)["frames_written"] >= 2
    render_clip(job, broken, model)
    assert read_status(broken)["status"] == "ok" and read_status(broken)["resumed_from"]
    clean = ClipPaths.for_job(tmp_path / "clean", job, "clip")
    render_clip(job, clean, PipelineFrames(tiny_pipes, 64, 64, job.scheduler))
    for frame in range(8):
        assert broken.frame(frame).read_bytes() == clean.frame(frame).read_bytes(), frame
    assert clean.video.is_file()


# ---------------------------------------------------------------------------- Deforum files


def test_deforum_video_input_and_hybrid_keys_map_to_the_job(video: Path) -> None:
    from sdfleet.anim.deforum import import_settings
    from sdfleet.anim.spec import load_animation_job

    settings = {
        "animation_mode": "Video Input",
        "video_init_path": str(video),
        "extract_nth_frame": 2,
        "extract_from_frame": 1,
        "max_frames": 5,
        "W": 32,
        "H": 32,
        "seed": 7,
        "hybrid_composite": "Normal",
        "hybrid_comp_alpha_schedule": "0: (0.4)",
        "hybrid_motion": "Optical Flow",
        "hybrid_flow_method": "RAFT",
        "prompts": {"0": "a cat"},
    }
    imported = import_settings(settings, "settings.txt")
    assert imported.job["animation_mode"] == "2D"
    assert imported.job["init_video"] == {
        "file": str(video),
        "extract_nth_frame": 2,
        "extract_from_frame": 1,
    }
    assert imported.job["hybrid_composite"] is True
    assert imported.job["hybrid_motion"] == "optical_flow"
    refused = {difference.key: difference.reason for difference in imported.differences}
    assert "Farneback" in refused.pop("hybrid_flow_method")
    assert not {"animation_mode", "hybrid_composite", "hybrid_motion"} & set(refused)
    job = load_animation_job(imported.job, source="<settings>")
    assert job.init_video.extract_nth_frame == 2 and job.hybrid_composite


def test_deforum_video_keys_that_cannot_be_rendered_are_listed() -> None:
    from sdfleet.anim.deforum import import_settings

    url = "https://example.com/clip.mp4"
    settings = {"animation_mode": "Video Input", "video_init_path": url, "prompts": {"0": "a"}}
    refused = {d.key: d.reason for d in import_settings(settings, "settings.txt").differences}
    assert "needs a local video_init_path" in refused["animation_mode"]
    affine = {"hybrid_motion": "Affine", "video_init_path": "/v.mp4", "prompts": {"0": "a"}}
    refused = {d.key: d.reason for d in import_settings(affine, "settings.txt").differences}
    assert "optical-flow" in refused["hybrid_motion"]


def test_another_video_under_the_same_name_is_another_render(tmp_path: Path) -> None:
    from sdfleet.anim.clip import fingerprint

    path = write_video(tmp_path / "source.mp4", 6)
    job = small_job(max_frames=4, init_video=str(path))
    before = fingerprint(job, compile_plan(job))
    assert fingerprint(job, compile_plan(job)) == before
    write_video(tmp_path / "source.mp4", 8)  # replaced: the same path, other frames
    assert fingerprint(job, compile_plan(job)) != before
    plain = small_job(max_frames=4)
    assert fingerprint(plain, compile_plan(plain)) != before

"""Video input: each frame's init picture from a source video, and Deforum's hybrid options.

``init_video: clip.mp4`` (relative to the job file) gives every diffused 2D frame its picture
from the source video. The frame mapping is the clip's clock on the video's: clip frame i shows
source frame ``floor(i * source_fps / fps + 0.5)`` (the nearest source frame to the moment it is
shown, the rule time keys use), or, with Deforum's ``extract_nth_frame: N``, source frame
``extract_from_frame + i * N`` whatever the rates. Source frames are resized to W x H with
Lanczos, as ``init_image`` is.

Without a hybrid option (plain vid2vid, Deforum's "Video Input" mode) a frame's picture is its
source frame: the previous frame is not kept, only the colour reference follows the clip. With
one, the chain continues from the previous diffused frame a (Deforum's 2D hybrid video), for
frame b:

1. warp it by the motion schedules (as without video);
2. ``hybrid_motion: optical_flow``: move it by the video's motion from source frame a to b
   (dense Farneback flow from b back to a, each pixel sampled where it came from);
3. ``hybrid_composite: true``: ``lerp(picture, source frame b, hybrid_comp_alpha)`` (the
   schedule ``hybrid_comp_alpha_schedule``, 0..1, Deforum's default 0.5);

then the chain's colour match, contrast, anti-blur and noise as always. Frame 0 is img2img of
source frame 0. Everything here is recomputed from the video file, deterministically, so the
render state needs nothing new and a resumed render is byte-identical.

A video shorter than the clip (the last source frame the mapping needs is past its end) is
refused when the job loads, naming the video, its frame count and the clip's, unless
``hold_last: true`` (the last source frame is held for the rest of the clip).

API:
    VideoInputSpec (the job field), source_frame_indices(max_frames, fps, source_fps, spec)
    video_input_problems(job) -> list[str]   (at load time; probes the video)
    video_digest(job) -> tuple[str, ...]     (the video's bytes, for the resume fingerprint)
    VideoSource.load(job, plan) -> VideoSource | None; .first(), .picture(warped, prev, frame)
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from pydantic import Field

from sdfleet.anim.colour import from_uint8
from sdfleet.anim.job_files import FileField
from sdfleet.batch.errors import ConfigError, EncodeError, ScheduleError

logger = logging.getLogger(__name__)

HYBRID_MOTIONS = ("None", "optical_flow")


class VideoJob(Protocol):
    """The fields of an animation job (`anim.spec`, which imports this module) read here."""

    init_video: VideoInputSpec | None
    init_image: str | None
    animation_mode: str
    hybrid_composite: bool
    hybrid_motion: str
    max_frames: int
    fps: float
    width: int
    height: int


class VideoInputSpec(FileField):
    """``init_video``: the source video and how clip frames map onto its frames."""

    file: str | None = Field(None, description="source video, relative to the job file")
    extract_nth_frame: int | None = Field(
        None, ge=1, description="Deforum's: clip frame i is source frame from + i * N"
    )
    extract_from_frame: int = Field(0, ge=0, description="first source frame used")
    hold_last: bool = Field(False, description="a video shorter than the clip holds its last")


def source_frame_indices(
    max_frames: int, fps: float, source_fps: float, spec: VideoInputSpec
) -> list[int]:
    """The source frame each clip frame 0..max_frames-1 takes (before `hold_last`)."""
    start = spec.extract_from_frame
    if spec.extract_nth_frame is not None:
        return [start + frame * spec.extract_nth_frame for frame in range(max_frames)]
    return [start + math.floor(frame * source_fps / fps + 0.5) for frame in range(max_frames)]


def uses_hybrid(job: VideoJob) -> bool:
    return bool(job.hybrid_composite) or job.hybrid_motion != "None"


def video_input_problems(job: VideoJob) -> list[str]:
    """What is wrong with the job's video input, found by probing the video (may be empty)."""
    spec = job.init_video
    if spec is None:
        if uses_hybrid(job):
            return [
                "hybrid_composite / hybrid_motion: they take the source frames of a video; "
                "add `init_video: clip.mp4` or turn them off"
            ]
        return []
    problems = []
    if job.init_image is not None:
        problems.append(
            f"init_image ({job.init_image}) and init_video ({spec.file}) both give frame 0's "
            "picture; keep one"
        )
    if job.animation_mode != "2D":
        problems.append(f"init_video drives 2D clips; animation_mode is {job.animation_mode!r}")
    problems += _alpha_problems(job)
    try:
        facts = _probe(spec.file)
    except ConfigError as err:
        return [*problems, str(err)]
    needed = source_frame_indices(job.max_frames, job.fps, facts["fps"], spec)[-1] + 1
    if needed > facts["frames"] and not spec.hold_last:
        problems.append(
            f"init_video: {spec.file} has {facts['frames']} frames at {facts['fps']:g} fps, "
            f"but the clip's {job.max_frames} frames at {job.fps:g} fps need source frames up "
            f"to {needed - 1} ({needed} frames); shorten max_frames, lower extract_nth_frame "
            "or extract_from_frame, or set init_video.hold_last: true to hold its last frame"
        )
    return problems


def _probe(file: str | None) -> dict[str, Any]:
    from sdfleet.anim.probe import probe_video

    try:
        facts = probe_video(str(file))
    except (EncodeError, StopIteration, KeyError, ValueError) as err:
        raise ConfigError(
            f"init_video: {file} is not a readable video ({err or 'no video stream'}); "
            "give a video file (mp4, webm, mov, ...)"
        ) from None
    if facts["frames"] < 1 or facts["fps"] <= 0:
        raise ConfigError(
            f"init_video: {file} holds no frames (or no frame rate); give another video"
        )
    return facts


def hybrid_alphas(job: Any) -> list[float]:
    """``hybrid_comp_alpha_schedule`` per frame (ScheduleError when a value is outside 0..1)."""
    from sdfleet.anim.inputs import field_values, schedule_inputs

    field = "hybrid_comp_alpha_schedule"
    values = field_values(job, field, schedule_inputs(job))
    for frame, value in enumerate(values):
        if not 0 <= value <= 1:
            raise ScheduleError(
                f"{field}: gives {value:g} at frame {frame}; expected a value >= 0 and <= 1 "
                "(the share of the source frame composited in, e.g. 0.5)"
            )
    return values


def _alpha_problems(job: VideoJob) -> list[str]:
    if not job.hybrid_composite:
        return []
    try:
        hybrid_alphas(job)
    except (ScheduleError, ConfigError) as err:
        return [str(err)]
    return []


def video_digest(job: VideoJob) -> tuple[str, ...]:
    """("init_video sha256 <hex>",) for a job with a video, else (): the resume fingerprint's
    part for the video's bytes (another video under the same name is another render)."""
    import hashlib

    if job.init_video is None or job.init_video.file is None:
        return ()
    digest = hashlib.sha256()
    try:
        with open(job.init_video.file, "rb") as stream:
            while block := stream.read(1 << 20):
                digest.update(block)
    except OSError:
        return ()  # refused when the job loads; nothing to render from
    return (f"init_video sha256 {digest.hexdigest()}",)


def read_source_frames(
    file: str, indices: Sequence[int], width: int, height: int, hold_last: bool
) -> dict[int, np.ndarray]:
    """Source frame -> (H, W, 3) uint8 at width x height, for the given source indices, read
    in one pass (imageio-ffmpeg); past the end the last frame when `hold_last`."""
    import imageio.v2 as imageio
    from PIL import Image

    wanted, found = set(indices), {}
    last, count = None, 0
    with imageio.get_reader(file, "ffmpeg") as reader:
        for index, frame in enumerate(reader):
            last, count = frame, index + 1
            if index in wanted:
                found[index] = _resized(Image, frame, width, height)
            if len(found) == len(wanted):
                break
    missing = sorted(wanted - set(found))
    if missing and not (hold_last and last is not None):
        raise ConfigError(
            f"init_video: {file} has {count} frames, the clip needs source frame {missing[0]}; "
            "shorten the clip or set init_video.hold_last: true"
        )
    if missing:
        held = _resized(Image, last, width, height)
        found.update(dict.fromkeys(missing, held))
    return found


def _resized(image_module: Any, frame: np.ndarray, width: int, height: int) -> np.ndarray:
    image = image_module.fromarray(np.asarray(frame)[..., :3]).convert("RGB")
    if image.size != (width, height):
        image = image.resize((width, height), image_module.Resampling.LANCZOS)
    return np.array(image)


def flow_moved(picture: torch.Tensor, source_a: np.ndarray, source_b: np.ndarray) -> torch.Tensor:
    """`picture` (3, H, W) moved by the video's motion from source frame a to b: each pixel
    y of the result is picture(y + F(y)), F the flow from b back to a (b(y) ~ a(y + F(y)))."""
    from sdfleet.anim.interpolate import moved_by_flow, optical_flow

    flow = optical_flow(source_b, source_a)  # (H, W, 2)
    flow[np.all(source_a == source_b, axis=-1)] = 0.0  # still pixels stay exactly still
    image = picture.permute(1, 2, 0).contiguous().numpy()  # (H, W, 3) float32
    moved = moved_by_flow(image, flow, -1.0)
    return torch.from_numpy(np.ascontiguousarray(moved)).permute(2, 0, 1).contiguous()


@dataclass(frozen=True)
class VideoSource:
    """The source frames of the diffused frames of one clip (clip frame -> uint8 picture)."""

    frames: dict[int, np.ndarray]
    alphas: list[float] | None  # hybrid_composite's alpha per clip frame, None when off
    motion: bool  # hybrid_motion: optical_flow

    @property
    def hybrid(self) -> bool:
        return self.alphas is not None or self.motion

    @classmethod
    def load(cls, job: VideoJob, keys: Sequence[int]) -> VideoSource | None:
        """The source frames of the diffused frames `keys` (None without ``init_video``)."""
        spec = job.init_video
        if spec is None:
            return None
        facts = _probe(spec.file)
        mapping = source_frame_indices(job.max_frames, job.fps, facts["fps"], spec)
        pictures = read_source_frames(
            str(spec.file), [mapping[k] for k in keys], job.width, job.height, spec.hold_last
        )
        alphas = hybrid_alphas(job) if job.hybrid_composite else None
        frames = {key: pictures[mapping[key]] for key in keys}
        return cls(frames, alphas, job.hybrid_motion == "optical_flow")

    def first(self) -> torch.Tensor:
        """Frame 0's init: source frame of clip frame 0 as (3, H, W) in [0, 1]."""
        return from_uint8(self.frames[0])

    def picture(self, warped: torch.Tensor | None, prev_key: int, frame: int) -> torch.Tensor:
        """The picture diffused frame `frame` starts from (before colour match, contrast,
        anti-blur, noise): its source frame, or with hybrid options the warped previous
        frame moved by the video's flow and composited with the source frame."""
        source = from_uint8(self.frames[frame])
        if not self.hybrid:
            return source
        assert warped is not None
        image = warped
        if self.motion:
            image = flow_moved(image, self.frames[prev_key], self.frames[frame])
        if self.alphas is not None:
            image = torch.lerp(image, source, float(self.alphas[frame]))
        return image

"""The 2D animation chain (Deforum's 2D mode) with diffusion cadence, as a generator of frames.

k-diffusion style: the model is a plain callable, ``step_fn(record, init) -> image``, where init
is the prepared (3, H, W) picture in [0, 1] for img2img, or None for txt2img (frame 0 without an
``init_image``). `anim.frames.PipelineFrames` is the diffusers one; tests pass a fake. Every
random draw is seeded from the frame's plan record (see `anim.state`), so the frames are a
function of the plan, the step function and the options.

Per diffused frame, in Deforum's order (issue 5, item 1):
    warp the previous diffused frame by the motion since it -> colour-match to the reference ->
    contrast -> unsharp-mask anti-blur -> seeded noise -> step_fn (img2img at the frame's prompt,
    seed, cfg, steps and denoise) -> colour-match again -> write (uint8) -> update the reference.
The chain continues from the uint8 frame as written, so what is on disk is exactly what the next
frame starts from, and a resumed render needs nothing that was not saved.

Cadence N: diffused frames land on their own index (0, N, 2N, ... and the last frame). A tween
between diffused frames a < b needs b, so b is rendered first (from a, warped once by the
composed motion of frames a+1..b: one resample, not N), written, and then the tweens a+1..b-1:
tween t = lerp(a warped forward by the motion of a+1..t, b warped back by the inverse motion of
t+1..b, (t - a) / (b - a)). `anim.state.RenderState` records this phase (``next_key``).

API:
    StepFn, ChainOptions(.from_job), render_frames(plan, options, step_fn, state, init_image)
    frame_matrix(record, width, height), accumulated_matrix(plan, start, end, width, height)
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from sdfleet.anim.colour import ColourReference, from_uint8, to_uint8
from sdfleet.anim.filters import (
    adjust_contrast,
    blend_noise,
    check_noise_amount,
    make_noise,
    unsharp_mask,
)
from sdfleet.anim.motion import PerspectiveFlip, motion_matrix, warp_with_matrix
from sdfleet.anim.plan import FrameRecord
from sdfleet.anim.state import RenderState

if TYPE_CHECKING:
    from sdfleet.anim.spec import AnimationJob
    from sdfleet.anim.video_input import VideoSource

logger = logging.getLogger(__name__)

StepFn = Callable[[FrameRecord, torch.Tensor | None], torch.Tensor]
Frame = tuple[int, np.ndarray, RenderState]  # (frame index, (H, W, 3) uint8, state after it)
_IDENTITY = np.eye(3)


@dataclass(frozen=True)
class ChainOptions:
    """The job settings the chain needs besides the plan (all of them change pixels)."""

    width: int
    height: int
    border: str = "replicate"
    color_coherence: str | None = "LAB"  # LAB | HSV | RGB | None
    color_reference: str = "first"  # first | window
    color_reference_window: int = 8
    noise_type: str = "perlin"
    perlin: dict[str, Any] = field(default_factory=dict)  # perlin_w/_h/_octaves/_persistence

    @classmethod
    def from_job(cls, job: AnimationJob) -> ChainOptions:
        return cls(
            width=job.width,
            height=job.height,
            border=job.border,
            color_coherence=None if job.color_coherence == "None" else job.color_coherence,
            color_reference=job.color_reference,
            color_reference_window=job.color_reference_window,
            noise_type=job.noise_type,
            perlin={name: getattr(job, name) for name in PERLIN_FIELDS},
        )

    def new_colour_reference(self) -> ColourReference:
        return ColourReference(self.color_reference, self.color_reference_window)


PERLIN_FIELDS = ("perlin_w", "perlin_h", "perlin_octaves", "perlin_persistence")


# ---------------------------------------------------------------------------- motion


def frame_matrix(record: FrameRecord, width: int, height: int) -> np.ndarray:
    """Forward 3x3 homography of one frame's motion (`anim.motion.motion_matrix`)."""
    perspective = None
    if record.perspective_flip:
        perspective = PerspectiveFlip(
            record.perspective_flip_theta,
            record.perspective_flip_phi,
            record.perspective_flip_gamma,
            record.perspective_flip_fv,
        )
    return motion_matrix(
        width,
        height,
        angle_deg=record.angle,
        zoom=record.zoom,
        translation_x=record.translation_x,
        translation_y=record.translation_y,
        transform_center_x=record.transform_center_x,
        transform_center_y=record.transform_center_y,
        perspective=perspective,
    )


def accumulated_matrix(
    plan: Sequence[FrameRecord], start: int, end: int, width: int, height: int
) -> np.ndarray:
    """The motion of frames start+1..end composed (frame start+1's applied first); identity
    when start == end."""
    matrix = _IDENTITY.copy()
    for frame in range(start + 1, end + 1):
        matrix = frame_matrix(plan[frame], width, height) @ matrix
    return matrix


def _warp(image: torch.Tensor, matrix: np.ndarray, border: str) -> torch.Tensor:
    """Warp, skipping the resample when there is no motion (keeps still frames exact)."""
    if np.array_equal(matrix, _IDENTITY):
        return image
    return warp_with_matrix(image, matrix, border=border)


# ---------------------------------------------------------------------------- one frame


def prepare_init(
    previous: torch.Tensor,
    record: FrameRecord,
    matrix: np.ndarray,
    colour: ColourReference,
    options: ChainOptions,
    noise: NoiseAhead | None = None,
) -> torch.Tensor:
    """Steps 1-5 of a diffused frame: warp, colour-match, contrast, anti-blur, noise."""
    image = _warp(previous, matrix, options.border)  # (3, H, W)
    image = colour.match(image, options.color_coherence)
    image = adjust_contrast(image, record.contrast)
    image = unsharp_mask(image, record.amount, record.kernel, record.sigma, record.threshold)
    check_noise_amount(record.noise)
    if record.noise == 0:
        return image
    picture = (noise or NoiseAhead(options)).picture(record)
    return blend_noise(image, record.noise, picture)


class NoiseAhead:
    """Noise pictures made on a helper thread while the model runs.

    A frame's noise picture depends only on its seed, the noise settings and the size, never
    on the previous frame, so the next diffused frame's is made during this frame's model
    step: off the chain's critical path, on a core the step leaves free (or, on a GPU, while
    the CPU would wait). The pictures are the same `make_noise` ones, made on either thread.
    """

    def __init__(self, options: ChainOptions) -> None:
        self.options = options
        self._pool: ThreadPoolExecutor | None = None
        self._pending: dict[int, Future[torch.Tensor]] = {}

    def prefetch(self, record: FrameRecord) -> None:
        if record.noise <= 0 or record.frame in self._pending:
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="sdfleet-noise")
        self._pending[record.frame] = self._pool.submit(self._make, record)

    def picture(self, record: FrameRecord) -> torch.Tensor:
        """(3, H, W) noise picture of a frame: the one made ahead, or made now."""
        made = self._pending.pop(record.frame, None)
        return made.result() if made is not None else self._make(record)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool, self._pending = None, {}

    def _make(self, record: FrameRecord) -> torch.Tensor:
        shape = (3, self.options.height, self.options.width)
        return make_noise(shape, record.seed, self.options.noise_type, **self.options.perlin)


def diffuse(
    record: FrameRecord,
    init: torch.Tensor | None,
    step_fn: StepFn,
    colour: ColourReference,
    options: ChainOptions,
) -> np.ndarray:
    """Steps 6-8: run the model, colour-match its output, quantise; update the reference."""
    output = step_fn(record, init).detach().float().cpu()  # (3, H, W) in [0, 1]
    output = colour.match(output, options.color_coherence)
    frame = to_uint8(output)  # (H, W, 3) uint8, what is written
    colour.update(from_uint8(frame))
    return frame


def tween(
    record: FrameRecord, state: RenderState, plan: Sequence[FrameRecord], options: ChainOptions
) -> np.ndarray:
    """Blend the diffused frames on either side, each moved to this frame's moment."""
    assert record.tween_prev == state.prev_key and record.tween_next == state.next_key
    assert state.prev_image is not None and state.next_image is not None
    size = (options.width, options.height)
    forward = accumulated_matrix(plan, record.tween_prev, record.frame, *size)
    backward = np.linalg.inv(accumulated_matrix(plan, record.frame, record.tween_next, *size))
    before = _warp(from_uint8(state.prev_image), forward, options.border)
    after = _warp(from_uint8(state.next_image), backward, options.border)
    return to_uint8(torch.lerp(before, after, float(record.tween_weight or 0.0)))


# ---------------------------------------------------------------------------- the loop


def render_frames(
    plan: Sequence[FrameRecord],
    options: ChainOptions,
    step_fn: StepFn,
    state: RenderState | None = None,
    init_image: torch.Tensor | None = None,
    video: VideoSource | None = None,
) -> Iterator[Frame]:
    """Yield (frame, uint8 image, state after it) for every frame not yet in `state`.

    With `video` (``init_video``), each diffused frame starts from its source frame, or with
    hybrid options from the previous frame moved and composited (`anim.video_input`).

    The caller writes the frame, then saves the state, before asking for the next one (the
    colour reference inside the state is updated in place by later frames). Frames come in
    index order, except that a diffused frame comes before the tweens that lead up to it.
    """
    # 1. start, or continue where the state says
    state = state or RenderState(fingerprint="")
    if state.colour is None:
        state = replace(state, colour=options.new_colour_reference())
    chain = _Chain(plan, options, step_fn, init_image, video)
    # 2. one frame index at a time, each frame written exactly once
    try:
        while state.next_frame < len(plan):
            record = plan[state.next_frame]
            if record.diffused and state.next_key == record.frame:
                state = chain.promote(state)  # rendered ahead of its tweens: already written
                continue
            if not record.diffused and state.next_key != record.tween_next:
                ahead = chain.look_ahead(record, state)  # the diffused frame this tween leads to
                state = ahead[2]
                yield ahead
            frame = (
                chain.key_frame(record, state) if record.diffused else chain.tween(record, state)
            )
            state = frame[2]
            yield frame
    finally:
        chain.noise.close()


class _Chain:
    """The steps of `render_frames`: each returns the new state (with the frame it wrote)."""

    def __init__(
        self,
        plan: Sequence[FrameRecord],
        options: ChainOptions,
        step_fn: StepFn,
        init_image: torch.Tensor | None,
        video: VideoSource | None = None,
    ) -> None:
        self.plan, self.options, self.step_fn, self.init_image = plan, options, step_fn, init_image
        self.video = video
        self.noise = NoiseAhead(options)
        self.diffused = [record.frame for record in plan if record.diffused]

    def render_key(self, record: FrameRecord, state: RenderState) -> np.ndarray:
        """A diffused frame from the previous one (or from nothing / the init image)."""
        assert state.colour is not None
        if record.frame > 0 and record.mode == "txt2img":  # a hard cut: nothing kept
            init = None
        elif state.prev_image is None or state.prev_key is None:
            assert record.frame == 0, "only frame 0 and hard cuts start without a previous frame"
            init = self.init_image if self.video is None else self.video.first()
        else:
            size = (self.options.width, self.options.height)
            matrix = accumulated_matrix(self.plan, state.prev_key, record.frame, *size)
            previous = from_uint8(state.prev_image)
            if self.video is not None:  # the source frame, or hybrid: moved, composited
                warped = _warp(previous, matrix, self.options.border) if self.video.hybrid else None
                previous = self.video.picture(warped, state.prev_key, record.frame)
                matrix = _IDENTITY
            init = prepare_init(previous, record, matrix, state.colour, self.options, self.noise)
        later = bisect.bisect_right(self.diffused, record.frame)
        if later < len(self.diffused):  # made while the model runs on this frame
            self.noise.prefetch(self.plan[self.diffused[later]])
        return diffuse(record, init, self.step_fn, state.colour, self.options)

    def key_frame(self, record: FrameRecord, state: RenderState) -> Frame:
        if record.frame > 0 and record.mode == "txt2img":  # a hard cut: a new colour reference
            state = replace(state, colour=self.options.new_colour_reference())
        image = self.render_key(record, state)
        return record.frame, image, self._advance(state, prev_key=record.frame, prev_image=image)

    def look_ahead(self, tween_record: FrameRecord, state: RenderState) -> Frame:
        """Render the diffused frame a tween blends toward, before the tween."""
        record = self.plan[tween_record.tween_next]  # type: ignore[index]
        image = self.render_key(record, state)
        return record.frame, image, replace(state, next_key=record.frame, next_image=image)

    def promote(self, state: RenderState) -> RenderState:
        """The next diffused frame was written ahead; it becomes the previous one."""
        return self._advance(
            state,
            prev_key=state.next_key,
            prev_image=state.next_image,
            next_key=None,
            next_image=None,
        )

    def tween(self, record: FrameRecord, state: RenderState) -> Frame:
        return record.frame, tween(record, state, self.plan, self.options), self._advance(state)

    def _advance(self, state: RenderState, **changes: Any) -> RenderState:
        after = state.next_frame + 1
        next_seed = self.plan[after].seed if after < len(self.plan) else None
        return replace(state, next_frame=after, next_seed=next_seed, **changes)

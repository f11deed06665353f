"""Walks (``animation_mode: interpolation``): independent txt2img frames, rendered in batches.

Between walk keys (frame 0, every prompt key, the last frame; see `anim.plan`) a frame's text
embeddings are the lerp of its two prompts' (``blend_prompt``/``blend_weight``, done by the step,
see `anim.frames`), and its initial noise is the slerp of the noise of ``seed_a`` toward that of
``seed_b`` at ``seed_t`` (stable-diffusion-videos; a lerp when the two are nearly parallel,
|cos| > 0.9995). A key frame has ``seed_t`` 0, so it is never repeated as the end of the segment
before it: no duplicated frame at a boundary.

Frames do not depend on each other, so they run ``batch_size`` at a time. Batches are aligned
windows of the frame index ([0, B), [B, 2B), ...), split only where steps or cfg change (a
pipeline call takes one of each), so a resumed render recomputes the window it was killed in at
exactly the same shapes and gets the same bytes. Colour coherence, when on, is applied to the
outputs in frame order against `anim.colour.ColourReference` (saved in the state) and is not fed
back into the model.

API:
    WalkStepFn, seed_noise(seed, shape), slerp(a, b, t), walk_noise(records, shape),
    walk_windows(start, count, batch_size), render_walk_frames(plan, options, step_fn, shape, ...)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace

import numpy as np
import torch

from sdfleet.anim.colour import from_uint8, to_uint8
from sdfleet.anim.plan import FrameRecord
from sdfleet.anim.render import ChainOptions, Frame
from sdfleet.anim.state import RenderState

logger = logging.getLogger(__name__)

# (records sharing steps and cfg, initial noise (B, C, h, w)) -> images (B, 3, H, W) in [0, 1]
WalkStepFn = Callable[[Sequence[FrameRecord], torch.Tensor], torch.Tensor]
PARALLEL_COS = 0.9995


def seed_noise(seed: int, shape: Sequence[int]) -> torch.Tensor:
    """N(0, 1) noise (1, *shape) from a CPU generator seeded with `seed` (the same draw diffusers
    makes for one image from `torch.Generator('cpu').manual_seed(seed)`)."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randn((1, *shape), generator=generator, dtype=torch.float32)


def slerp(start: torch.Tensor, end: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation of two noise tensors (Shoemake 1985, as stable-diffusion-videos);
    linear when they are nearly parallel (|cos| > 0.9995), where slerp divides by ~0."""
    if t == 0:
        return start.clone()
    a, b = start.double().flatten(), end.double().flatten()
    cos = float(torch.dot(a, b) / (a.norm() * b.norm()))
    if abs(cos) > PARALLEL_COS:
        mixed = torch.lerp(a, b, t)
    else:
        theta = float(np.arccos(cos))
        mixed = (np.sin((1 - t) * theta) * a + np.sin(t * theta) * b) / np.sin(theta)
    return mixed.reshape(start.shape).to(start.dtype)


def walk_noise(records: Sequence[FrameRecord], shape: Sequence[int]) -> torch.Tensor:
    """Initial noise (B, *shape) of walk frames: slerp(noise(seed_a), noise(seed_b), seed_t)."""
    noises = []
    for record in records:
        seed_a = record.seed if record.seed_a is None else record.seed_a
        start = seed_noise(seed_a, shape)
        if record.seed_b is None or not record.seed_t:
            noises.append(start)
            continue
        noises.append(slerp(start, seed_noise(record.seed_b, shape), record.seed_t))
    return torch.cat(noises)


def walk_windows(start: int, count: int, batch_size: int) -> Iterator[range]:
    """Aligned windows [kB, (k+1)B) clipped to [0, count) covering start..count-1."""
    first = start - start % batch_size
    for low in range(first, count, batch_size):
        yield range(low, min(low + batch_size, count))


def call_groups(records: Sequence[FrameRecord]) -> list[list[FrameRecord]]:
    """Consecutive runs of records with the same steps and cfg (one pipeline call each)."""
    groups: list[list[FrameRecord]] = []
    for record in records:
        if groups and _call_key(groups[-1][0]) == _call_key(record):
            groups[-1].append(record)
        else:
            groups.append([record])
    return groups


def _call_key(record: FrameRecord) -> tuple[int, float]:
    return record.steps, record.cfg_scale


def render_window(
    records: Sequence[FrameRecord], step_fn: WalkStepFn, shape: Sequence[int]
) -> torch.Tensor:
    """Raw outputs (B, 3, H, W) of one window of walk frames."""
    outputs = [step_fn(group, walk_noise(group, shape)) for group in call_groups(records)]
    return torch.cat(outputs).detach().float().cpu()


def render_walk_frames(
    plan: Sequence[FrameRecord],
    options: ChainOptions,
    step_fn: WalkStepFn,
    latent_shape: Sequence[int],
    state: RenderState | None = None,
    batch_size: int = 4,
) -> Iterator[Frame]:
    """Yield (frame, uint8 image, state after it) for every walk frame not yet in `state`;
    same contract as `anim.render.render_frames`."""
    # 1. start, or continue where the state says
    state = state or RenderState()
    if state.colour is None:
        state = replace(state, colour=options.new_colour_reference())
    colour = state.colour
    assert colour is not None
    # 2. aligned windows; frames before next_frame (already written) are recomputed, not yielded
    for window in walk_windows(state.next_frame, len(plan), batch_size):
        outputs = render_window([plan[i] for i in window], step_fn, latent_shape)
        for frame, output in zip(window, outputs, strict=True):
            if frame < state.next_frame:
                continue
            # 3. colour coherence on the output only, in frame order
            image = to_uint8(colour.match(output, options.color_coherence))
            colour.update(from_uint8(image))
            after = frame + 1
            next_seed = plan[after].seed if after < len(plan) else None
            state = replace(state, next_frame=after, next_seed=next_seed)
            yield frame, image, state

"""The 2D chain and cadence with a fake step (no model): order of operations, frame indices,
tweens, motion, colour; plus the diffusers step on builtin:tiny."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sdfleet.anim.colour import ColourReference, from_uint8, to_uint8
from sdfleet.anim.filters import add_noise, adjust_contrast, unsharp_mask
from sdfleet.anim.frames import PipelineFrames, lerp_embeds
from sdfleet.anim.motion import warp_with_matrix
from sdfleet.anim.plan import compile_plan
from sdfleet.anim.render import (
    ChainOptions,
    NoiseAhead,
    accumulated_matrix,
    frame_matrix,
    render_frames,
)
from tests.anim.fakes import fake_step, small_job

STILL = {"zoom": 1.0, "angle": 0, "translation_x": 0, "translation_y": 0}
PLAIN = {
    "noise_schedule": 0,
    "amount_schedule": 0,
    "contrast_schedule": 1.0,
    "color_coherence": None,
}


def run(job, step=fake_step, init_image=None):
    """All yields of a render: [(frame, uint8 image, state)]."""
    plan = compile_plan(job)
    return list(render_frames(plan, ChainOptions.from_job(job), step, init_image=init_image))


class Spy:
    """A step that records what it was given."""

    def __init__(self, step=fake_step):
        self.step, self.calls = step, []

    def __call__(self, record, init):
        self.calls.append((record.frame, None if init is None else init.clone()))
        return self.step(record, init)


# ---------------------------------------------------------------------------- frame indices


@pytest.mark.parametrize(("max_frames", "cadence"), [(10, 1), (10, 2), (10, 3), (7, 4), (5, 9)])
def test_every_frame_index_written_exactly_once(max_frames: int, cadence: int) -> None:
    job = small_job(max_frames=max_frames, diffusion_cadence=cadence, zoom=1.05, angle=2)
    frames = [frame for frame, _, _ in run(job)]
    assert sorted(frames) == list(range(max_frames))
    plan = compile_plan(job)
    for position, frame in enumerate(frames):  # a tween comes after the frame it blends toward
        if not plan[frame].diffused:
            assert plan[frame].tween_next in frames[:position]


def test_step_runs_only_on_diffused_frames_each_once() -> None:
    job = small_job(max_frames=10, diffusion_cadence=3)
    spy = Spy()
    run(job, spy)
    assert [frame for frame, _ in spy.calls] == [0, 3, 6, 9]
    assert spy.calls[0][1] is None  # frame 0: txt2img


def test_state_after_each_frame_counts_contiguous_frames() -> None:
    job = small_job(max_frames=7, diffusion_cadence=3)
    yields = [(frame, state.next_frame, state.next_key) for frame, _, state in run(job)]
    assert yields == [
        (0, 1, None),
        (3, 1, 3),
        (1, 2, 3),
        (2, 3, 3),
        (6, 4, 6),
        (4, 5, 6),
        (5, 6, 6),
    ]


# ---------------------------------------------------------------------------- order of steps


def test_diffused_frame_order_warp_colour_contrast_sharpen_noise() -> None:
    job = small_job(
        max_frames=3,
        zoom=1.1,
        angle=10,
        translation_x=1.5,
        contrast_schedule=0.9,
        amount_schedule=0.4,
        noise_schedule=0.2,
        color_coherence="LAB",
    )
    spy = Spy()
    frames = {frame: image for frame, image, _ in run(job, spy)}
    record = compile_plan(job)[1]
    reference = ColourReference("first")
    reference.update(from_uint8(frames[0]))
    # by hand: warp -> colour match -> contrast -> unsharp mask -> noise
    expected = warp_with_matrix(from_uint8(frames[0]), frame_matrix(record, 16, 16))
    expected = reference.match(expected, "LAB")
    expected = adjust_contrast(expected, 0.9)
    expected = unsharp_mask(expected, 0.4, record.kernel, record.sigma, record.threshold)
    expected = add_noise(expected, 0.2, record.seed, "uniform")
    assert torch.equal(spy.calls[1][1], expected)
    # then img2img and the second colour match
    output = reference.match(fake_step(record, expected), "LAB")
    assert np.array_equal(frames[1], to_uint8(output))


def test_noise_made_ahead_during_the_model_step_is_the_noise_made_in_place(monkeypatch) -> None:
    job = small_job(
        max_frames=9,
        diffusion_cadence=3,
        zoom=1.05,
        noise_schedule=0.3,
        noise_type="perlin",
        perlin_w=2,
        perlin_h=2,
    )
    made_ahead: list[int] = []
    prefetch = NoiseAhead.prefetch

    def spying(self, record):
        made_ahead.append(record.frame)
        prefetch(self, record)

    monkeypatch.setattr(NoiseAhead, "prefetch", spying)
    ahead = [(frame, image.tobytes()) for frame, image, _ in run(job)]
    assert made_ahead == [3, 6, 8]  # during frames 0, 3, 6: the next diffused frame's noise
    monkeypatch.setattr(NoiseAhead, "prefetch", lambda self, record: None)
    in_place = [(frame, image.tobytes()) for frame, image, _ in run(job)]
    assert ahead == in_place


def test_output_is_colour_matched_to_the_first_frame() -> None:
    def inverting(record, init):  # a "model" that turns the colours around
        return fake_step(record, None) if init is None else 1.0 - init

    job = small_job(max_frames=4, color_coherence="RGB", **STILL)
    frames = {frame: from_uint8(image) for frame, image, _ in run(job, inverting)}
    first = frames[0].mean(dim=(1, 2))
    for frame in (1, 2, 3):
        assert torch.allclose(frames[frame].mean(dim=(1, 2)), first, atol=0.03)


def test_init_image_goes_to_frame_zero() -> None:
    job = small_job(max_frames=2, init_image="unused-by-the-loop.png")
    init = torch.full((3, 16, 16), 0.25)
    spy = Spy()
    run(job, spy, init_image=init)
    assert torch.equal(spy.calls[0][1], init)


# ---------------------------------------------------------------------------- cadence and motion


def test_tweens_blend_neighbours_when_nothing_moves() -> None:
    job = small_job(max_frames=9, diffusion_cadence=4, **STILL, **PLAIN)
    frames = {frame: image for frame, image, _ in run(job)}
    for frame, weight in ((1, 0.25), (2, 0.5), (3, 0.75)):
        blend = torch.lerp(from_uint8(frames[0]), from_uint8(frames[4]), weight)
        assert np.array_equal(frames[frame], to_uint8(blend))


def test_motion_accumulates_over_the_cadence_gap() -> None:
    """With an identity model, diffused frame 2 is frame 0 moved 2 px (one warp), and tween 1
    is frame 0 moved 1 px (both neighbours brought to frame 1's moment agree) away from edges."""
    job = small_job(max_frames=3, diffusion_cadence=2, translation_x=1, zoom=1.0, **PLAIN)
    frames = {
        f: image
        for f, image, _ in run(job, lambda r, init: fake_step(r, None) if init is None else init)
    }
    assert np.array_equal(frames[2][:, 2:], frames[0][:, :-2])
    assert np.array_equal(frames[1][:, 2:-1], frames[0][:, 1:-2])  # the edges are replicated


def test_accumulated_matrix_composes_in_frame_order() -> None:
    plan = compile_plan(small_job(max_frames=4, zoom="0:(1.0), 3:(1.3)", angle="0:(0), 3:(9)"))
    m1, m2, m3 = (frame_matrix(plan[i], 16, 16) for i in (1, 2, 3))
    assert np.allclose(accumulated_matrix(plan, 0, 3, 16, 16), m3 @ m2 @ m1)
    assert np.array_equal(accumulated_matrix(plan, 2, 2, 16, 16), np.eye(3))


# ---------------------------------------------------------------------------- the diffusers step


def test_lerp_embeds() -> None:
    a, b = torch.zeros(1, 4, 2), torch.ones(1, 4, 2)
    assert lerp_embeds(a, None, 0.5) is a and lerp_embeds(a, b, 0) is a
    assert torch.allclose(lerp_embeds(a, b, 0.25), torch.full((1, 4, 2), 0.25))


def test_pipeline_frames_are_seeded_and_blend_prompts(tiny_pipes) -> None:
    job = small_job(
        W=64,
        H=64,
        max_frames=3,
        strength_schedule=0.9,
        prompt_transition="blend",
        prompts={"0": "a red cube", "2": "a blue ball"},
    )
    frames = PipelineFrames.for_job(tiny_pipes, job)
    plan = compile_plan(job)
    first = frames(plan[0], None)
    assert first.shape == (3, 64, 64) and torch.equal(first, frames(plan[0], None))
    # denoise 0.1 of 4 steps would run none: runs one step instead of failing
    assert not torch.equal(frames(plan[1], first), first)
    embeds = frames.prompt_embeds([plan[1]])["prompt_embeds"]
    a, b = frames.embed_text(plan[1].prompt), frames.embed_text(plan[1].blend_prompt)
    assert torch.allclose(embeds, torch.lerp(a, b, plan[1].blend_weight))


def test_pipeline_frames_denoise_zero_keeps_the_picture(tiny_pipes) -> None:
    job = small_job(W=64, H=64, max_frames=2, strength_schedule=1.0)
    frames = PipelineFrames.for_job(tiny_pipes, job)
    picture = torch.rand(3, 64, 64)
    assert frames(compile_plan(job)[1], picture) is picture

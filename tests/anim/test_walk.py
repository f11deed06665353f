"""Walks: noise slerp, no duplicated frames at key boundaries, aligned batches, embedding lerp,
and the walk step on builtin:tiny."""

from __future__ import annotations

import pytest
import torch

from sdfleet.anim.frames import PipelineFrames
from sdfleet.anim.plan import compile_plan
from sdfleet.anim.render import ChainOptions
from sdfleet.anim.walk import (
    call_groups,
    render_walk_frames,
    seed_noise,
    slerp,
    walk_noise,
    walk_windows,
)
from tests.anim.fakes import FakeModel, small_job

SHAPE = (4, 2, 2)


def walk_job(**fields):
    return small_job(
        animation_mode="interpolation",
        max_frames=9,
        color_coherence=None,
        prompts={"0": "a red apple", "4": "a green pear"},
        **fields,
    )


# ---------------------------------------------------------------------------- slerp


def test_slerp_ends_and_norm() -> None:
    a, b = seed_noise(1, (4, 8, 8)), seed_noise(2, (4, 8, 8))
    assert torch.equal(slerp(a, b, 0.0), a)
    assert torch.allclose(slerp(a, b, 1.0), b, atol=1e-5)
    middle = slerp(a, b, 0.5)
    # near-orthogonal Gaussian vectors: the slerp keeps the norm, the lerp shrinks it by ~1/sqrt 2
    assert abs(middle.norm() / a.norm() - 1) < 0.05
    assert torch.lerp(a, b, 0.5).norm() / a.norm() < 0.8


def test_slerp_falls_back_to_lerp_when_nearly_parallel() -> None:
    a = seed_noise(1, SHAPE)
    b = a * 1.001
    assert torch.allclose(slerp(a, b, 0.3), torch.lerp(a, b, 0.3))


def test_seed_noise_is_the_draw_of_a_seeded_cpu_generator() -> None:
    generator = torch.Generator().manual_seed(9)
    assert torch.equal(seed_noise(9, SHAPE), torch.randn((1, *SHAPE), generator=generator))


# ---------------------------------------------------------------------------- positions


def test_walk_frames_have_no_duplicate_at_key_boundaries() -> None:
    plan = compile_plan(walk_job())
    noise = walk_noise(plan, SHAPE)  # (9, 4, 2, 2)
    for record, frame_noise in zip(plan, noise, strict=True):
        if record.seed_t == 0:  # keys: exactly their own seed's noise
            assert torch.equal(frame_noise, seed_noise(record.seed_a, SHAPE)[0])
    for before, after in zip(noise[:-1], noise[1:], strict=True):
        assert not torch.allclose(before, after)
    assert [r.seed_t for r in plan[:5]] == [0, 0.25, 0.5, 0.75, 0]


def test_walk_windows_are_aligned() -> None:
    assert [list(w) for w in walk_windows(0, 7, 3)] == [[0, 1, 2], [3, 4, 5], [6]]
    assert [list(w) for w in walk_windows(4, 7, 3)] == [[3, 4, 5], [6]]


def test_call_groups_split_where_steps_or_cfg_change() -> None:
    plan = compile_plan(walk_job(cfg_scale_schedule="0:(5), 2:(5), 3:(6)"))
    groups = call_groups(plan[:5])
    assert [[r.frame for r in g] for g in groups] == [[0, 1, 2], [3, 4]]


def test_render_walk_frames_in_batches() -> None:
    job = walk_job()
    model = FakeModel()
    batches = []

    def step(records, noise):
        batches.append([r.frame for r in records])
        assert noise.shape == (len(records), *model.latent_shape)
        return model.walk(records, noise)

    frames = list(
        render_walk_frames(
            compile_plan(job), ChainOptions.from_job(job), step, model.latent_shape, batch_size=4
        )
    )
    assert [frame for frame, _, _ in frames] == list(range(9))
    assert batches == [[0, 1, 2, 3], [4, 5, 6, 7], [8]]
    assert frames[-1][2].next_frame == 9


# ---------------------------------------------------------------------------- on builtin:tiny


def test_walk_key_frame_equals_plain_diffusers_txt2img(tiny_pipes) -> None:
    """Noise from `seed_noise` and prompts as embeddings give what diffusers gives for the
    prompt text and a generator seeded with the key's seed."""
    job = walk_job(W=64, H=64, cfg_scale_schedule=5)
    frames = PipelineFrames.for_job(tiny_pipes, job)
    plan = compile_plan(job)
    key = plan[4]
    ours = frames.walk([key], walk_noise([key], frames.latent_shape))
    generator = torch.Generator().manual_seed(key.seed_a)
    with torch.inference_mode():
        theirs = frames.sampler.pipeline("txt2img", job.scheduler)(
            key.prompt,
            negative_prompt=key.negative_prompt,
            width=64,
            height=64,
            num_inference_steps=key.steps,
            guidance_scale=5,
            generator=generator,
            output_type="pt",
        ).images
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_walk_frames_move_between_keys(tiny_pipes) -> None:
    job = walk_job(W=64, H=64)
    frames = PipelineFrames.for_job(tiny_pipes, job)
    plan = compile_plan(job)
    images = frames.walk(plan[:5], walk_noise(plan[:5], frames.latent_shape))  # (5, 3, 64, 64)
    steps = [(images[i + 1] - images[i]).abs().mean().item() for i in range(4)]
    assert all(step > 0 for step in steps)
    # the in-between frames lie between the keys: closer to each key than the keys are apart
    apart = (images[4] - images[0]).abs().mean().item()
    assert (images[1] - images[0]).abs().mean().item() < apart
    assert (images[3] - images[4]).abs().mean().item() < apart


@pytest.mark.parametrize("weight", [0.0, 0.5])
def test_walk_prompt_embeddings_are_lerped(tiny_pipes, weight: float) -> None:
    frames = PipelineFrames.for_job(tiny_pipes, walk_job(W=64, H=64))
    record = next(r for r in compile_plan(walk_job()) if r.blend_weight == weight)
    embeds = frames.prompt_embeds([record])
    start, end = frames.embed_text(record.prompt), frames.embed_text(record.blend_prompt)
    assert torch.allclose(embeds["prompt_embeds"], torch.lerp(start, end, weight))

"""The one diffusers call: per-row generators, modes, schedulers via from_pipe, the NaN check."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch

from sdfleet.batch.errors import GenerationError
from sdfleet.batch.models import Pipelines
from sdfleet.batch.null_model import NullPipeline
from sdfleet.batch.sampler import PromptEmbeds, Sample, Sampler, TextPrompts, check_sample
from sdfleet.batch.schedulers import img2img_steps


class RecordingPipe:
    """A fake pipeline: records each call's arguments, returns (B, 3, 4, 4) images of 0.5."""

    def __init__(self, nan_rows: tuple[int, ...] = ()) -> None:
        self.calls: list[dict[str, Any]] = []
        self.nan_rows = nan_rows
        self.scheduler = SimpleNamespace(config=SimpleNamespace(num_train_timesteps=1000))
        self.unet = SimpleNamespace(dtype=torch.float16)

    def __call__(self, **kwargs: Any) -> SimpleNamespace:
        self.calls.append(kwargs | {"inference_mode": torch.is_inference_mode_enabled()})
        images = torch.full((len(kwargs["generator"]), 3, 4, 4), 0.5)
        for row in self.nan_rows:
            images[row, 0, 0, 0] = float("nan")
        return SimpleNamespace(images=images)


def fake_sampler(pipe: Any) -> Sampler:
    return Sampler(Pipelines(pipe, pipe, torch.device("cpu"), torch.float32, "fake"))


def text(rows: int) -> TextPrompts:
    return TextPrompts([f"prompt {i}" for i in range(rows)], [""] * rows)


@pytest.mark.parametrize(
    ("steps", "strength", "expected"),
    [(25, 0.35, 25), (4, 0.4, 4), (4, 0.2, 5), (2, 0.3, 4), (10, 0.0, None), (10, 1e-4, None)],
)
def test_img2img_steps_runs_at_least_one_step(steps, strength, expected) -> None:
    assert img2img_steps(steps, strength) == expected
    if expected is not None:
        assert int(expected * strength) >= 1


def test_one_generator_per_row_seeded_from_the_row_under_inference_mode() -> None:
    pipe = RecordingPipe()
    fake_sampler(pipe).sample(Sample([7, 8, 9], text(3), 4, 5.0, width=64, height=64))
    (call,) = pipe.calls
    assert [g.initial_seed() for g in call["generator"]] == [7, 8, 9]
    assert call["inference_mode"] and call["output_type"] == "pt"
    assert call["prompt"] == ["prompt 0", "prompt 1", "prompt 2"]
    assert (call["width"], call["height"], call["num_inference_steps"]) == (64, 64, 4)


def test_a_nan_row_is_an_error_of_that_row_only() -> None:
    sampled = fake_sampler(RecordingPipe(nan_rows=(1,))).sample(Sample([1, 2, 3], text(3), 4, 5.0))
    assert sampled.images.shape == (3, 3, 4, 4) and sampled.images.dtype == torch.float32
    assert sampled.errors[0] is None and sampled.errors[2] is None
    assert isinstance(sampled.errors[1], GenerationError) and "NaN" in str(sampled.errors[1])


def test_img2img_runs_at_least_one_step_and_refuses_a_strength_no_step_reaches() -> None:
    pipe = RecordingPipe()
    sampler = fake_sampler(pipe)
    sampler.sample(Sample([1], text(1), 4, 5.0, image=[object()], strength=0.2))
    assert pipe.calls[-1]["num_inference_steps"] == 5 and pipe.calls[-1]["strength"] == 0.2
    assert "width" not in pipe.calls[-1]
    with pytest.raises(GenerationError, match="strength 0.0001 is too small"):
        sampler.sample(Sample([1], text(1), 4, 5.0, image=[object()], strength=1e-4))


def test_latents_go_to_the_device_and_dtype_of_the_unet() -> None:
    pipe = RecordingPipe()
    noise = torch.zeros(2, 4, 8, 8)
    fake_sampler(pipe).sample(Sample([1, 2], text(2), 4, 5.0, latents=noise, width=64, height=64))
    assert pipe.calls[0]["latents"].dtype == torch.float16


def test_embeddings_go_in_instead_of_strings_and_none_fields_stay_out() -> None:
    pipe = RecordingPipe()
    embeds = PromptEmbeds(torch.zeros(2, 77, 32), negative_prompt_embeds=torch.ones(2, 77, 32))
    fake_sampler(pipe).sample(Sample([1, 2], embeds, 4, 5.0))
    call = pipe.calls[0]
    assert "prompt" not in call and "pooled_prompt_embeds" not in call
    assert torch.equal(call["negative_prompt_embeds"], torch.ones(2, 77, 32))


@pytest.mark.parametrize(
    ("sample", "fragment"),
    [
        (Sample([1, 2], text(3), 4, 5.0), "2 seeds for 3 rows"),
        (Sample([1], text(1), 4, 5.0, image=[object()]), "needs a strength"),
        (Sample([1], text(1), 4, 5.0, image=[0], strength=0.5, latents=0), "for txt2img"),
    ],
)
def test_caller_mistakes_are_value_errors(sample, fragment) -> None:
    with pytest.raises(ValueError, match=fragment):
        check_sample(sample)


def test_a_named_scheduler_on_builtin_null_is_set_on_a_copy() -> None:
    null = NullPipeline()
    sampler = Sampler(Pipelines(null, null, torch.device("cpu"), torch.float32, "builtin:null"))
    before = null.scheduler
    derived = sampler.pipeline("txt2img", "ddim")
    assert type(derived.scheduler).__name__ == "DDIMScheduler" and null.scheduler is before
    sampled = sampler.sample(Sample([1, 2], text(2), 4, 5.0, scheduler="ddim"))
    assert sampled.images.shape == (2, 3, 8, 8) and sampled.errors == (None, None)


# ---------------------------------------------------------------------------- on builtin:tiny


def test_a_named_scheduler_derives_a_cached_pipeline_and_never_mutates_the_loaded(
    tiny_pipes,
) -> None:
    sampler = Sampler(tiny_pipes)
    own = tiny_pipes.txt2img.scheduler, tiny_pipes.img2img.scheduler
    for mode in ("txt2img", "img2img"):
        derived = sampler.pipeline(mode, "euler_a")
        assert derived is sampler.pipeline(mode, "euler_a")  # made once
        assert derived is not getattr(tiny_pipes, mode) and derived.unet is tiny_pipes.txt2img.unet
    assert sampler.pipeline("txt2img", None) is tiny_pipes.txt2img
    sampler.sample(Sample([3], text(1), 2, 5.0, scheduler="euler_a", width=64, height=64))
    assert (tiny_pipes.txt2img.scheduler, tiny_pipes.img2img.scheduler) == own


def test_embeddings_give_the_image_the_prompt_strings_give(tiny_pipes) -> None:
    sampler = Sampler(tiny_pipes)
    size = {"width": 64, "height": 64}
    strings = sampler.sample(Sample([11], TextPrompts(["a red cube"], ["blurry"]), 3, 5.0, **size))
    embeds = PromptEmbeds(sampler.encode_text("a red cube"), sampler.encode_text("blurry"))
    encoded = sampler.sample(Sample([11], embeds, 3, 5.0, **size))
    assert torch.allclose(strings.images, encoded.images, atol=1e-6)
    assert sampler.latent_shape(64, 48) == (4, 6, 8)
    assert sampler.train_timesteps("euler_a") == 1000

"""Inpainting through the sampler on tiny models: the source kept outside the mask, box masks on
the box, both UNet kinds (9-channel inpainting checkpoints and ordinary 4-channel ones)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from sdfleet.batch.conditioning import finish_inpaint, mask_size_problems, prepare_inpaint
from sdfleet.batch.masks import box_mask
from sdfleet.batch.models import ModelSpec, load_model
from sdfleet.batch.sampler import Sample, Sampler, TextPrompts
from sdfleet.batch.tiny_conditioning import tiny_inpaint_dir

SIZE = (64, 64)


@pytest.fixture(scope="module", params=["builtin:tiny", "inpaint-9"])
def sampler(request) -> Sampler:
    model = "builtin:tiny" if request.param == "builtin:tiny" else str(tiny_inpaint_dir())
    return Sampler(load_model(ModelSpec(model=model), cpu_threads=1))


def source_image() -> Image.Image:
    rng = np.random.default_rng(3)
    return Image.fromarray(rng.integers(0, 256, (SIZE[1], SIZE[0], 3), dtype=np.uint8))


def inpaint(sampler: Sampler, mask: Image.Image, **options) -> Image.Image:
    prepared = prepare_inpaint(source_image(), mask, SIZE, **options)
    sample = Sample(
        [5],
        TextPrompts(["a red car"], [""]),
        4,
        5.0,
        image=[prepared.image],
        mask_image=[prepared.mask],
        strength=1.0,
    )
    sampled = sampler.sample(sample)
    assert sampled.errors == (None,)
    array = (sampled.images[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    return finish_inpaint(prepared, Image.fromarray(array))


def test_unet_kind_is_what_the_test_means(sampler: Sampler) -> None:
    channels = sampler.pipeline("inpaint", None).unet.config.in_channels
    assert channels in (4, 9)
    assert (channels == 9) == ("inpaint" in sampler.pipes.name)


@pytest.mark.parametrize("only_masked", [False, True])
def test_outside_the_unblurred_mask_is_the_source_and_inside_is_repainted(
    sampler: Sampler, only_masked: bool
) -> None:
    mask = box_mask(SIZE, [(16, 8, 40, 36)])
    out = np.asarray(inpaint(sampler, mask, blur=4, only_masked=only_masked, padding=8))
    source = np.asarray(source_image())
    inside = np.asarray(mask) > 0
    assert np.array_equal(out[~inside], source[~inside])
    changed = np.abs(out.astype(int) - source.astype(int)).max(axis=2) > 0
    assert changed[inside].mean() > 0.9  # the box was repainted
    ys, xs = np.nonzero(changed)
    assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (16, 8, 40, 36)


def test_inverted_relative_box_keeps_the_object(sampler: Sampler) -> None:
    mask = box_mask(SIZE, [(0.25, 0.25, 0.75, 0.5)], units="relative", invert=True)
    out = np.asarray(inpaint(sampler, mask, blur=2))
    source = np.asarray(source_image())
    assert np.array_equal(out[16:32, 16:48], source[16:32, 16:48])  # the object, untouched
    assert (out[40:] != source[40:]).any(axis=2).mean() > 0.9  # the background, repainted


def test_inpainting_is_reproducible_from_the_seed(sampler: Sampler) -> None:
    mask = box_mask(SIZE, [(8, 8, 56, 56)])
    first, again = inpaint(sampler, mask), inpaint(sampler, mask)
    assert np.array_equal(np.asarray(first), np.asarray(again))


def test_mask_size_rule() -> None:
    assert mask_size_problems((64, 64), (64, 64)) == []
    (problem,) = mask_size_problems((32, 64), (64, 64))
    assert "32x64" in problem and "64x64" in problem and "init image's size" in problem


def test_nine_channel_pipeline_is_the_inpainting_class() -> None:
    pipes = load_model(ModelSpec(model=str(tiny_inpaint_dir())), cpu_threads=1)
    pipe = Sampler(pipes).pipeline("inpaint", None)
    assert type(pipe).__name__ == "StableDiffusionInpaintPipeline"
    assert pipe.unet is pipes.txt2img.unet and pipe.unet.conv_in.weight.shape[1] == 9
    assert torch.is_tensor(pipe.unet.conv_in.weight)

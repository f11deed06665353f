"""batch.upscale: spandrel-loaded ESRGAN files, tiled == untiled, pickles refused, latents."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from PIL import Image

from sdfleet.batch.errors import ModelError
from sdfleet.batch.tiny_conditioning import tiny_upscaler_file
from sdfleet.batch.upscale import load_upscaler, upscale_image, upscale_latents


@pytest.fixture(scope="module")
def upscaler():
    return load_upscaler(tiny_upscaler_file(2))


def noise_image(w: int, h: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8))


def test_output_size_is_the_scale(upscaler):
    assert upscaler.scale == 2 and upscaler.architecture.name == "ESRGAN"
    assert upscale_image(upscaler, noise_image(40, 24), tile_px=0).size == (80, 48)


def test_tiled_equals_untiled_within_one_level(upscaler):
    image = noise_image(100, 90)
    whole = np.asarray(upscale_image(upscaler, image, tile_px=0)).astype(int)
    tiled = np.asarray(upscale_image(upscaler, image, tile_px=64, overlap_px=32)).astype(int)
    assert tiled.shape == whole.shape == (180, 200, 3)
    assert np.abs(whole - tiled).max() <= 1  # stated tolerance: one 8-bit level (rounding)


def test_loading_leaves_no_torchvision_placeholder(upscaler):
    assert (
        importlib.util.find_spec("torchvision") is None
        or importlib.util.find_spec("torchvision").origin
    )


def test_pickled_upscaler_needs_allow_pickle(tmp_path):
    path = tmp_path / "x4.pth"
    torch.save({"a": torch.zeros(1)}, path)
    with pytest.raises(ModelError, match="allow_pickle"):
        load_upscaler(path)


def test_unknown_architecture_is_a_model_error(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "odd.safetensors"
    save_file({"weird.weight": torch.zeros(3, 3)}, str(path))
    with pytest.raises(ModelError, match="not a model spandrel recognises"):
        load_upscaler(path)
    with pytest.raises(ModelError, match="no such file"):
        load_upscaler(tmp_path / "missing.safetensors")


def test_latent_upscale_shape():
    assert upscale_latents(torch.zeros(2, 4, 8, 8), 1.5).shape == (2, 4, 12, 12)

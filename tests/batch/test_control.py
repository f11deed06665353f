"""batch.control: weight-free ControlNet preprocessors and the control-image size rule."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image

from sdfleet.batch import control


def shape_image() -> Image.Image:
    array = np.full((64, 64, 3), 30, np.uint8)
    cv2.circle(array, (32, 32), 14, (220, 40, 40), -1)
    return Image.fromarray(array)


def test_canny_equals_opencv_on_the_same_image():
    image = shape_image()
    out = np.asarray(control.preprocess("canny", image, {"low": 50, "high": 150}))
    expected = cv2.Canny(np.asarray(image), 50, 150)
    assert out.shape == (64, 64, 3)
    assert all(np.array_equal(out[:, :, c], expected) for c in range(3))
    assert expected.max() == 255  # the circle has edges


def test_tile_blurs_and_keeps_size():
    noise = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    out = np.asarray(control.preprocess("tile", Image.fromarray(noise), {"downsample": 8}))
    assert out.shape == noise.shape
    assert (
        np.abs(np.diff(out.astype(int), axis=1)).mean()
        < np.abs(np.diff(noise.astype(int), axis=1)).mean() / 2
    )


def test_shuffle_is_seeded_and_moves_pixels():
    image = shape_image()
    a = np.asarray(control.preprocess("shuffle", image, {"cells": 16}, seed=3))
    b = np.asarray(control.preprocess("shuffle", image, {"cells": 16}, seed=3))
    c = np.asarray(control.preprocess("shuffle", image, {"cells": 16}, seed=4))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert not np.array_equal(a, np.asarray(image))


@pytest.mark.parametrize(
    "name, options, fragment",
    [
        ("cany", {}, "did you mean 'canny'"),
        ("canny", {"low": 200, "high": 100}, "low <= high"),
        ("canny", {"lo": 1}, "no option 'lo'"),
        ("tile", {"downsample": float("inf")}, "number >= 0"),
        ("tile", {"downsample": 0.5}, ">= 1"),
    ],
)
def test_bad_preprocessors_are_named(name, options, fragment):
    problems = control.preprocessor_problems(name, options)
    assert problems and fragment in problems[0]


@pytest.mark.parametrize("mode", control.RESIZE_MODES)
def test_fit_to_size_gives_the_asked_size(mode):
    image = Image.new("RGB", (100, 50), (255, 255, 255))
    out = control.fit_to_size(image, (64, 64), mode)
    assert out.size == (64, 64)
    corner = np.asarray(out)[0, 0]
    assert (corner == 0).all() if mode == "pad" else (corner == 255).all()

"""batch.masks: box masks, A1111's only-masked crop, the overlay that keeps the source outside."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sdfleet.batch import masks
from sdfleet.batch.errors import ManifestError


def test_pixel_box_covers_exactly_the_pixels_whose_centres_are_inside():
    mask = np.asarray(masks.box_mask((8, 6), [(2, 1, 5, 4)]))
    expected = np.zeros((6, 8), np.uint8)
    expected[1:4, 2:5] = 255
    assert np.array_equal(mask, expected)


def test_relative_boxes_and_invert():
    mask = np.asarray(masks.box_mask((10, 10), [(0.0, 0.0, 0.5, 0.5)], "relative", invert=True))
    assert mask[:5, :5].max() == 0 and mask[5:, :].min() == 255 and mask[:, 5:].min() == 255


@pytest.mark.parametrize(
    "box, units, fragment",
    [
        ((0, 0, 9, 4), "pixel", "reaches outside"),
        ((-1, 0, 4, 4), "pixel", "reaches outside"),
        ((0, 0, 1.2, 0.5), "relative", "fractions"),
        ((3, 3, 3, 5), "pixel", "empty"),
        ((0, 0, float("nan"), 1), "pixel", "finite"),
        ((0, 0, 1), "pixel", "4 numbers"),
    ],
)
def test_bad_boxes_are_named(box, units, fragment):
    assert any(fragment in p for p in masks.box_problems(box, (8, 8), units))
    if len(box) == 4:
        with pytest.raises(ManifestError, match=fragment):
            masks.box_mask((8, 8), [box], units)


def test_crop_region_pads_and_clamps():
    mask = masks.box_mask((64, 64), [(10, 20, 20, 30)])
    assert masks.crop_region(mask, 4) == (6, 16, 24, 34)
    assert masks.crop_region(mask, 100) == (0, 0, 64, 64)
    assert masks.crop_region(Image.new("L", (8, 8)), 2) == (0, 0, 8, 8)  # empty mask: all


@pytest.mark.parametrize("region, aspect", [((6, 16, 24, 34), 2.0), ((0, 0, 10, 40), 1.0),
                                            ((50, 10, 64, 20), 0.5)])  # fmt: skip
def test_expand_to_aspect_grows_inside_the_image(region, aspect):
    x0, y0, x1, y1 = masks.expand_to_aspect(region, aspect, (64, 64))
    assert 0 <= x0 <= region[0] and 0 <= y0 <= region[1]
    assert region[2] <= x1 <= 64 and region[3] <= y1 <= 64
    assert abs((x1 - x0) / (y1 - y0) - aspect) < 0.1


def test_overlay_keeps_every_pixel_outside_the_unblurred_mask():
    rng = np.random.default_rng(0)
    source = Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    made = Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    mask = masks.box_mask((32, 32), [(8, 8, 24, 20)])
    out = np.asarray(masks.overlay(source, made, mask, masks.blur_mask(mask, 2)))
    outside = np.asarray(mask) == 0
    assert np.array_equal(out[outside], np.asarray(source)[outside])
    centre = (slice(13, 15), slice(15, 17))  # 5+ px (2.5 sigma) inside: alpha ~1
    assert np.abs(out[centre].astype(int) - np.asarray(made)[centre]).max() <= 8
    edge_row = out[8, 8:24].astype(int)  # on the mask's edge: a blend of both
    assert not np.array_equal(edge_row, np.asarray(made)[8, 8:24])


def test_paste_back_resizes_into_the_region():
    original = Image.new("RGB", (32, 32), (0, 0, 0))
    out = masks.paste_back(original, Image.new("RGB", (64, 64), (255, 0, 0)), (4, 8, 12, 24))
    array = np.asarray(out)
    assert (array[8:24, 4:12] == (255, 0, 0)).all() and array[:8].max() == 0

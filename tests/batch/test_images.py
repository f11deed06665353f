"""batch.images: init images in every mode a dataset holds come out as the RGB a person sees."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, UnidentifiedImageError

from sdfleet.batch.images import decode_rgb


def encoded(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def test_16_bit_grey_png_is_scaled_not_clipped():
    grey = np.full((8, 8), 32768, dtype=np.uint16)
    grey[0, 0] = 65535
    image = Image.fromarray(grey)
    data = encoded(image)
    assert Image.open(io.BytesIO(data)).mode.startswith("I")  # really stored as 16 bits
    rgb = np.asarray(decode_rgb(data))
    assert rgb.shape == (8, 8, 3)
    assert rgb[4, 4].tolist() == [128, 128, 128] and rgb[0, 0].tolist() == [255, 255, 255]


def test_transparent_pixels_become_the_white_background():
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 0] = 255  # red everywhere, but only the left half is opaque
    rgba[:, :2, 3] = 255
    rgb = np.asarray(decode_rgb(encoded(Image.fromarray(rgba, "RGBA"))))
    assert rgb[0, 0].tolist() == [255, 0, 0] and rgb[0, 3].tolist() == [255, 255, 255]


def test_grey_with_alpha_and_palette_with_transparency():
    la = Image.merge("LA", (Image.new("L", (4, 4), 0), Image.new("L", (4, 4), 0)))
    assert np.asarray(decode_rgb(encoded(la))).min() == 255  # fully transparent black: white
    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    palette.info["transparency"] = 0
    assert np.asarray(decode_rgb(encoded(palette)))[0, 0].tolist() == [0, 0, 255]


def test_cmyk_jpeg_comes_out_in_its_colours():
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # pure red in CMYK
    r, g, b = np.asarray(decode_rgb(encoded(cmyk, "JPEG", quality=95)))[4, 4].tolist()
    assert r > 200 and g < 60 and b < 60


def test_exif_orientation_is_applied():
    wide = Image.new("RGB", (8, 4), (0, 255, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    assert decode_rgb(encoded(wide, "JPEG", exif=exif)).size == (4, 8)


def test_not_an_image_raises():
    with pytest.raises(UnidentifiedImageError):
        decode_rgb(b"not an image")

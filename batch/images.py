"""Input images (init, mask, control): bytes -> an 8-bit RGB (or L) PIL image, any source mode.

PIL's `convert("RGB")` is wrong for several modes a dataset holds: a 16-bit greyscale PNG
("I;16", values 0..65535) is clipped to 255 and comes out almost all white, and an image with
alpha drops it, showing whatever colour the transparent pixels happen to store. Here:

- 16/32-bit greyscale ("I;16*", "I") is scaled from its full range to 0..255; float ("F") from 0..1;
- transparency (RGBA, LA, PA, palette or L/RGB with a transparency key) is composited over
  white, as A1111 flattens img2img inputs (its default background colour);
- CMYK, YCbCr, LAB, palette, 1-bit: converted through PIL's colour conversions;
- EXIF orientation is applied (a phone photo stored sideways is turned upright, as viewers show
  it).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps

BACKGROUND = (255, 255, 255)


def decode_rgb(data: bytes) -> Image.Image:
    """Encoded image bytes -> RGB; raises PIL's errors for data that is not an image."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL image -> 8-bit RGB by the rules of this module's docstring."""
    image = ImageOps.exif_transpose(image)
    mode = image.mode
    if mode.startswith("I") or mode == "F":
        return _wide_grey_to_l(image).convert("RGB")
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    elif mode in ("L", "RGB") and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        flat = Image.new("RGB", rgba.size, BACKGROUND)
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    return image.convert("RGB")


def to_grey(image: Image.Image) -> Image.Image:
    """Any PIL image -> 8-bit "L" (for masks: alpha counts as its own channel only via to_rgb)."""
    image = ImageOps.exif_transpose(image)
    if image.mode.startswith("I") or image.mode == "F":
        return _wide_grey_to_l(image)
    return to_rgb(image).convert("L") if image.mode != "L" else image


def _wide_grey_to_l(image: Image.Image) -> Image.Image:
    """16/32-bit integer or float greyscale -> 8-bit, scaled from the mode's full range."""
    array = np.asarray(image)
    if image.mode == "F":
        scaled = np.clip(array.astype(np.float64), 0.0, 1.0) * 255.0
    else:
        top = (
            65535.0 if image.mode.startswith("I;16") or array.max(initial=0) <= 65535 else 2**32 - 1
        )
        scaled = np.clip(array.astype(np.float64), 0.0, top) / top * 255.0
    return Image.fromarray(np.rint(scaled).astype(np.uint8), mode="L")

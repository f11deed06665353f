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

Validation reads only headers (`input_image_problems`, `image_header_problems`): a path or URI
that cannot be read, or a file that holds no image, is found before any model loads.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from sdfleet.batch.paths import is_local, is_uri, local_path, resolve_path, uri_read_problems

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


def image_header_problems(source: bytes | str | Path) -> list[str]:
    """Why encoded bytes or a local file are no image the readers can decode, with the fix;
    [] when they look like one. Only the header is read (PIL's `open` identifies the format
    and size without decoding pixels: ~30 us a file), so a manifest of 100k init images is
    checked in seconds; a file damaged past its header still fails its own row."""
    opened = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with Image.open(opened) as image:
            image.size  # noqa: B018 - read from the header by open
    except Image.DecompressionBombError as exc:
        return [f"{str(exc).rstrip('.')}; give a smaller image"]
    except (OSError, SyntaxError, ValueError) as exc:  # UnidentifiedImageError is an OSError
        head = source[:8] if isinstance(source, bytes) else _first_bytes(Path(source))
        return [
            f"not an image the readers can decode ({type(exc).__name__}; it starts "
            f"{head!r}); give a PNG, JPEG or WEBP image (or another format Pillow reads)"
        ]
    return []


def input_image_problems(
    image: Any, base_dir: Path | None, relative_to: str = "the manifest's folder"
) -> list[str]:
    """Why an image column's value (encoded bytes, a path, a URI) cannot be read, with the fix.
    Files (local paths, file:// URIs) must exist and hold an image by their header
    (`image_header_problems`); object stores are not asked (no network at
    validation); encoded bytes are only checked for being there: bytes that do not decode fail
    their own row, as a corrupt image of a dataset does."""
    if isinstance(image, bytes):
        return ["empty bytes; give the encoded image or a path"] if image == b"" else []
    if not isinstance(image, str):
        return ["give encoded image bytes or a path/URI string"]
    if is_uri(image):
        if problems := uri_read_problems(image):
            return problems
        return image_header_problems(local_path(image)) if is_local(image) else []
    path = resolve_path(image, base_dir)
    if not path.is_file() or not os.access(path, os.R_OK):
        return [f"no readable file at {path}; fix the path (relative paths are from {relative_to})"]
    return image_header_problems(path)


def _first_bytes(path: Path, size: int = 8) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read(size)
    except OSError:
        return b""

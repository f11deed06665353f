"""ControlNet control images: the preprocessors that need no weights, and the size rule.

Pure (numpy + OpenCV + PIL), no torch. A preprocessor maps an RGB image to the control image a
ControlNet expects (RGB, the generation size):

- `none`: the image as it is (a ready-made control image: an edge map, a depth map, ...);
- `canny`: OpenCV's Canny edge detector with `low`/`high` thresholds, edges white on black,
  the same 8-bit map on all three channels (what ControlNet's canny model was trained on);
- `tile`: the image blurred by a down- then up-sampling of `downsample` (ControlNet 1.1 tile);
- `shuffle`: the image scrambled by a smooth random flow (ControlNet 1.1 shuffle), from a seed
  so a row's control image is reproducible.

Size rule: a control image whose size differs from the generation size is resized to it with
`resize_mode` ("stretch", "crop": scale to cover then centre-crop, "pad": scale to fit then pad
black), the names A1111's ControlNet extension uses; the default is "crop".
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

PREPROCESSORS = ("none", "canny", "tile", "shuffle")
RESIZE_MODES = ("stretch", "crop", "pad")
_DEFAULTS: dict[str, dict[str, float]] = {
    "none": {},
    "canny": {"low": 100.0, "high": 200.0},
    "tile": {"downsample": 4.0},
    "shuffle": {"cells": 256.0},
}


def preprocessor_problems(name: str, options: dict[str, Any]) -> list[str]:
    """What is wrong with a preprocessor name and its options (empty when usable)."""
    if name not in _DEFAULTS:
        from sdfleet.batch.errors import suggest_name

        return [f"unknown preprocessor {name!r}{suggest_name(name, PREPROCESSORS)}; "
                f"use one of {', '.join(PREPROCESSORS)}"]  # fmt: skip
    problems = []
    for key, value in options.items():
        if key not in _DEFAULTS[name]:
            known = ", ".join(_DEFAULTS[name]) or "none"
            problems.append(f"preprocessor {name!r} has no option {key!r} (options: {known})")
        elif not isinstance(value, int | float) or not np.isfinite(value) or value < 0:
            problems.append(f"preprocessor {name!r} option {key!r}: {value!r} - use a number >= 0")
    if name == "canny" and not problems:
        settings = preprocessor_settings(name, options)
        low, high = settings["low"], settings["high"]
        if not (0 <= low <= high <= 255 * 4):
            problems.append(f"canny thresholds low={low}, high={high}: need 0 <= low <= high")
    if name == "tile" and not problems and preprocessor_settings(name, options)["downsample"] < 1:
        problems.append("tile option 'downsample' must be >= 1 (1 = unchanged)")
    return problems


def preprocessor_settings(name: str, options: dict[str, Any]) -> dict[str, float]:
    """The preprocessor's options with its defaults filled in."""
    return {**_DEFAULTS[name], **options}


def preprocess(
    name: str, image: Image.Image, options: dict[str, Any] | None = None, seed: int = 0
) -> Image.Image:
    """The control image made from `image` (RGB) by preprocessor `name`."""
    opts = preprocessor_settings(name, options or {})
    rgb = np.asarray(image.convert("RGB"))  # (H, W, 3) uint8
    if name == "none":
        out = rgb
    elif name == "canny":
        out = canny(rgb, opts["low"], opts["high"])
    elif name == "tile":
        out = tile(rgb, opts["downsample"])
    elif name == "shuffle":
        out = shuffle(rgb, np.random.default_rng(seed), int(opts["cells"]))
    else:
        raise ValueError(f"unknown preprocessor {name!r} (validation should have refused it)")
    return Image.fromarray(np.ascontiguousarray(out), mode="RGB")


def canny(rgb: np.ndarray, low: float, high: float) -> np.ndarray:
    """OpenCV Canny on the RGB image, the edge map repeated on 3 channels (H, W, 3)."""
    import cv2

    edges = cv2.Canny(rgb, low, high)  # (H, W) uint8, 255 on edges
    return np.repeat(edges[:, :, None], 3, axis=2)


def tile(rgb: np.ndarray, downsample: float) -> np.ndarray:
    """Down-sample by `downsample` (area) and back up (cubic): the detail a tile model adds."""
    import cv2

    height, width = rgb.shape[:2]
    small = (max(1, round(width / downsample)), max(1, round(height / downsample)))
    reduced = cv2.resize(rgb, small, interpolation=cv2.INTER_AREA)
    return cv2.resize(reduced, (width, height), interpolation=cv2.INTER_CUBIC)


def shuffle(rgb: np.ndarray, rng: np.random.Generator, cells: int) -> np.ndarray:
    """Remap pixels through a smooth random flow field (one field per axis, cubic-upsampled)."""
    import cv2

    height, width = rgb.shape[:2]
    flow_x = _smooth_noise(height, width, cells, rng) * float(width - 1)
    flow_y = _smooth_noise(height, width, cells, rng) * float(height - 1)
    return cv2.remap(rgb, flow_x, flow_y, cv2.INTER_LINEAR)


def _smooth_noise(height: int, width: int, cells: int, rng: np.random.Generator) -> np.ndarray:
    """Uniform noise on a coarse grid of `cells`-pixel cells, cubic-upsampled, scaled to 0..1."""
    import cv2

    coarse = rng.uniform(0.0, 1.0, size=(height // cells + 2, width // cells + 2))
    fine = cv2.resize(
        coarse, (width + 2 * cells, height + 2 * cells), interpolation=cv2.INTER_CUBIC
    )
    fine = fine[cells : cells + height, cells : cells + width]
    fine = fine - fine.min()
    return (fine / max(float(fine.max()), 1e-12)).astype(np.float32)


def fit_to_size(
    image: Image.Image, size: tuple[int, int], resize_mode: str = "crop"
) -> Image.Image:
    """`image` at `size` (w, h) by the size rule of this module's docstring."""
    if image.size == size:
        return image
    width, height = size
    if resize_mode == "stretch":
        return image.resize(size, Image.LANCZOS)
    cover = resize_mode == "crop"
    ratio = (max if cover else min)(width / image.width, height / image.height)
    scaled = image.resize(
        (max(1, round(image.width * ratio)), max(1, round(image.height * ratio))), Image.LANCZOS
    )
    if cover:
        left, top = (scaled.width - width) // 2, (scaled.height - height) // 2
        return scaled.crop((left, top, left + width, top + height))
    canvas = Image.new(image.mode, size)
    canvas.paste(scaled, ((width - scaled.width) // 2, (height - scaled.height) // 2))
    return canvas

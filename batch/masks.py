"""Inpainting masks: boxes -> masks, blur, A1111's "only masked" crop and paste-back, the overlay.

Pure (numpy + PIL). A mask is a PIL "L" image the size of the init image: white (255) = repaint,
black (0) = keep. What a user gets, in A1111's order:

1. `box_mask`: a mask from label boxes (x0, y0, x1, y1) in pixels or as fractions of the image;
   `invert=True` keeps the boxed objects and repaints the rest (augmentation's usual case).
2. `blur_mask`: A1111's `mask_blur` (a Gaussian of that radius on the mask the model sees).
3. `crop_region` / `expand_to_aspect`: "only masked" works on the mask's bounding box plus
   padding, grown to the output's aspect ratio, at full resolution (A1111's inpaint_full_res).
4. `paste_back`: the generated crop is resized into its region of the original.
5. `overlay`: the original is laid back over the result outside the mask. The overlay's alpha
   is the blurred mask *inside the unblurred one only*: the blur feathers inward, so every pixel
   outside the painted mask is the source image exactly (A1111's blur also reaches outward).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from PIL import Image, ImageFilter

from sdfleet.batch.errors import ManifestError

Box = tuple[float, float, float, float]
Region = tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels, x1/y1 exclusive


def box_problems(box: Sequence[float], size: tuple[int, int], units: str) -> list[str]:
    """What is wrong with one box for an image of `size` (w, h); empty when it is usable."""
    if len(box) != 4:
        return [f"a box is 4 numbers x0, y0, x1, y1, got {len(box)}"]
    if not all(np.isfinite(float(v)) for v in box):
        return [f"box {list(box)} has a value that is not a finite number"]
    x0, y0, x1, y1 = (float(v) for v in box)
    limit_w, limit_h = (1.0, 1.0) if units == "relative" else (float(size[0]), float(size[1]))
    problems = []
    if not (x0 < x1 and y0 < y1):
        problems.append(f"box {list(box)} is empty: need x0 < x1 and y0 < y1")
    if min(x0, y0) < 0 or x1 > limit_w or y1 > limit_h:
        unit = (
            "as fractions 0..1"
            if units == "relative"
            else f"in pixels of a {size[0]}x{size[1]} image"
        )
        problems.append(f"box {list(box)} reaches outside the image ({unit})")
    return problems


def box_mask(
    size: tuple[int, int],
    boxes: Sequence[Box],
    units: Literal["pixel", "relative"] = "pixel",
    invert: bool = False,
) -> Image.Image:
    """White inside the boxes (or outside them, with `invert`); boxes must pass box_problems."""
    width, height = size
    mask = np.zeros((height, width), dtype=np.uint8)  # (H, W)
    scale = (width, height, width, height) if units == "relative" else (1, 1, 1, 1)
    for box in boxes:
        if problems := box_problems(box, size, units):
            raise ManifestError(problems[0])
        x0, y0, x1, y1 = (v * s for v, s in zip(box, scale))
        # pixel centres inside the box: a pixel belongs to the box when its centre does
        cols = slice(int(np.ceil(x0 - 0.5)), int(np.ceil(x1 - 0.5)))
        rows = slice(int(np.ceil(y0 - 0.5)), int(np.ceil(y1 - 0.5)))
        mask[rows, cols] = 255
    if invert:
        mask = 255 - mask
    return Image.fromarray(mask, mode="L")


def binarize(mask: Image.Image) -> Image.Image:
    """Any mask image -> "L" with 0/255 (alpha or colour masks: the luminance, threshold 128)."""
    grey = mask.convert("L")
    return grey.point(lambda v: 255 if v >= 128 else 0)


def blur_mask(mask: Image.Image, radius: float) -> Image.Image:
    """A1111's mask_blur: a Gaussian of `radius` pixels (0 = unchanged)."""
    return mask.filter(ImageFilter.GaussianBlur(radius)) if radius > 0 else mask


def crop_region(mask: Image.Image, padding: int) -> Region:
    """The mask's bounding box grown by `padding` pixels on every side, clamped to the image."""
    bbox = mask.getbbox()
    if bbox is None:
        return (0, 0, mask.width, mask.height)
    x0, y0, x1, y1 = bbox
    return (
        max(x0 - padding, 0),
        max(y0 - padding, 0),
        min(x1 + padding, mask.width),
        min(y1 + padding, mask.height),
    )


def expand_to_aspect(region: Region, aspect_w_h: float, size: tuple[int, int]) -> Region:
    """Grow `region` (never shrink it) to the aspect ratio of the output, inside the image.

    The crop is resized to the generation size, so a crop of another aspect ratio would be
    stretched; A1111 grows the shorter side around the centre and shifts it back inside."""
    x0, y0, x1, y1 = region
    width, height = x1 - x0, y1 - y0
    if width / height < aspect_w_h:
        x0, x1 = _grow(x0, x1, round(height * aspect_w_h), size[0])
    else:
        y0, y1 = _grow(y0, y1, round(width / aspect_w_h), size[1])
    return (x0, y0, x1, y1)


def _grow(lo: int, hi: int, want: int, limit: int) -> tuple[int, int]:
    want = min(want, limit)
    extra = want - (hi - lo)
    lo -= extra // 2
    hi += extra - extra // 2
    if lo < 0:
        hi, lo = hi - lo, 0
    if hi > limit:
        lo, hi = lo - (hi - limit), limit
    return max(lo, 0), hi


def paste_back(original: Image.Image, generated: Image.Image, region: Region) -> Image.Image:
    """The generated crop resized into `region` of a copy of `original`."""
    x0, y0, x1, y1 = region
    out = original.convert("RGB").copy()
    out.paste(generated.convert("RGB").resize((x1 - x0, y1 - y0), Image.LANCZOS), (x0, y0))
    return out


def overlay(original: Image.Image, result: Image.Image, mask: Image.Image, blurred: Image.Image):
    """`result` inside the mask, `original` exactly outside it, feathered inward by `blurred`."""
    source = np.asarray(original.convert("RGB"), dtype=np.float32)  # (H, W, 3)
    made = np.asarray(result.convert("RGB").resize(original.size), dtype=np.float32)
    inside = np.asarray(binarize(mask), dtype=np.float32) / 255.0
    alpha = (np.asarray(blurred.convert("L"), dtype=np.float32) / 255.0 * inside)[..., None]
    mixed = made * alpha + source * (1.0 - alpha)
    out = np.where(inside[..., None] > 0, np.clip(np.rint(mixed), 0, 255), source)
    return Image.fromarray(out.astype(np.uint8), mode="RGB")


# ------------------------------------------------------------------------------ label columns

INPAINT_COLUMNS = ("mask_image", "mask_blur", "inpaint_only_masked", "inpaint_padding")


@dataclass(frozen=True)
class MaskFromBoxes:
    """A job's `mask_from_boxes`: masks made from label columns, white inside the boxes (or
    outside them with `invert`: keep the objects, repaint the background).

    `columns` is four columns (x0, y0, x1, y1: one box a row) or one column holding a list of
    boxes (each [x0, y0, x1, y1]); `units` "pixel" (of the init image) or "relative" (0..1)."""

    columns: tuple[str, ...]
    units: Literal["pixel", "relative"] = "pixel"
    invert: bool = False


def mask_from_boxes_problems(columns: Any, units: Any) -> list[str]:
    """What is wrong with a job's mask_from_boxes settings (empty when usable)."""
    problems = []
    if not isinstance(columns, list | tuple) or len(columns) not in (1, 4):
        problems.append(
            f"columns {columns!r}: give four columns [x0, y0, x1, y1] or one column of box lists"
        )
    if units not in ("pixel", "relative"):
        problems.append(f"units {units!r}: use 'pixel' or 'relative'")
    return problems


def row_boxes(row: dict, spec: MaskFromBoxes) -> list[Any]:
    """The row's boxes (as given: each should be 4 numbers) under `spec`."""
    if len(spec.columns) == 4:
        return [[row.get(column) for column in spec.columns]]
    value = row.get(spec.columns[0])
    if value is None:
        return []
    value = list(value)
    if len(value) == 4 and all(isinstance(v, int | float) for v in value):
        return [value]  # one box, not a list of them
    return [list(box) if isinstance(box, list | tuple) else [box] for box in value]

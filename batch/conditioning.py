"""Inpainting around the sampler: what the model sees before the call, what the user gets after.

Pure (PIL + numpy through `batch.masks`), no torch. One row's inpainting, in A1111's order:

1. `prepare_inpaint`: the init image and its mask (white = repaint) at the generation size; the
   mask blurred by `mask_blur` for the model; with `only_masked` the mask's bounding box plus
   `padding`, grown to the output's aspect ratio, cropped from both and resized to the generation
   size (the model works at full resolution on the masked part).
2. The sampler's ``inpaint`` mode runs on `InpaintInput.image` / `.mask` (9-channel inpainting
   UNets take the mask as input; 4-channel ones blend the re-noised source latents outside it).
3. `finish_inpaint`: the generated crop pasted back into its region, then the overlay: the source
   exactly outside the unblurred mask, feathered inward (`batch.masks.overlay`).

Size rule: a mask must have the init image's size (labels and pixels must agree; a mask of
another size is refused at validation, `mask_size_problems`); both are then resized together to
the generation size, the init image as img2img resizes it.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from sdfleet.batch.datasets_io import image_source
from sdfleet.batch.masks import (
    MaskFromBoxes,
    Region,
    binarize,
    blur_mask,
    box_problems,
    crop_region,
    expand_to_aspect,
    overlay,
    paste_back,
    row_boxes,
)
from sdfleet.batch.paths import is_uri, resolve_path


@dataclass(frozen=True, eq=False)
class InpaintInput:
    """One row's inputs to the model, and what `finish_inpaint` needs to put the result back."""

    image: Image.Image  # RGB at the generation size (the crop, with only_masked)
    mask: Image.Image  # "L" blurred, at the generation size
    source: Image.Image  # the init image at the generation size
    source_mask: Image.Image  # the binarized, unblurred mask at the generation size
    blurred: Image.Image  # the blurred mask at the generation size (the overlay's feather)
    region: Region | None  # only_masked: where the crop came from in `source`


def mask_size_problems(mask_size: tuple[int, int], image_size: tuple[int, int]) -> list[str]:
    """The size rule: empty when a mask of `mask_size` fits an init image of `image_size`."""
    if tuple(mask_size) == tuple(image_size):
        return []
    return [
        f"the mask is {mask_size[0]}x{mask_size[1]} but the init image is "
        f"{image_size[0]}x{image_size[1]}; give a mask of the init image's size"
    ]


def prepare_inpaint(
    image: Image.Image,
    mask: Image.Image,
    size: tuple[int, int],
    blur: float = 4.0,
    only_masked: bool = False,
    padding: int = 32,
) -> InpaintInput:
    """Step 1 of the module docstring for one row; `size` is the generation (width, height)."""
    source = image.convert("RGB")
    if source.size != size:
        source = source.resize(size, Image.Resampling.LANCZOS)
    source_mask = binarize(mask)
    if source_mask.size != size:  # nearest keeps it binary, as the box it came from
        source_mask = binarize(source_mask.resize(size, Image.Resampling.NEAREST))
    blurred = blur_mask(source_mask, blur)
    if not only_masked:
        return InpaintInput(source, blurred, source, source_mask, blurred, None)
    region = expand_to_aspect(crop_region(source_mask, padding), size[0] / size[1], size)
    crop = source.crop(region).resize(size, Image.Resampling.LANCZOS)
    crop_mask = blurred.crop(region).resize(size, Image.Resampling.LANCZOS)
    return InpaintInput(crop, crop_mask, source, source_mask, blurred, region)


def finish_inpaint(prepared: InpaintInput, generated: Image.Image) -> Image.Image:
    """Step 3: paste back (only_masked) and lay the source back over the result."""
    result = generated.convert("RGB")
    if prepared.region is not None:
        result = paste_back(prepared.source, result, prepared.region)
    return overlay(prepared.source, result, prepared.source_mask, prepared.blurred)


# ------------------------------------------------------------------------------ manifest rows

Issue = tuple[str, Any, str]  # (column, value, fix), as batch.manifest reports them


def inpaint_issues(row: dict, boxes: MaskFromBoxes | None, base_dir: Path | None) -> list[Issue]:
    """A row's inpainting problems: a mask without an init image, a mask of another size, a box
    outside the image, bad mask_blur / inpaint_padding / inpaint_only_masked values."""
    issues = _setting_issues(row)
    mask = image_source(row.get("mask_image"))
    if mask is None and boxes is None:
        return issues
    if image_source(row.get("init_image")) is None:
        column = "mask_image" if mask is not None else boxes.columns[0]
        fix = "a mask repaints part of an init image: give the row an init_image"
        return [*issues, (column, row.get(column), fix)]
    size = image_size(row.get("init_image"), base_dir)
    if mask is not None:
        mask_size = image_size(row.get("mask_image"), base_dir)
        if isinstance(mask_size, str):
            return [*issues, ("mask_image", mask, mask_size)]
        if isinstance(size, tuple) and isinstance(mask_size, tuple):  # a URI: read by its row
            issues += [("mask_image", mask, p) for p in mask_size_problems(mask_size, size)]
    elif isinstance(size, tuple) or boxes.units == "relative":
        issues += _box_issues(row, boxes, size if isinstance(size, tuple) else (1, 1))
    return issues


def _box_issues(row: dict, spec: MaskFromBoxes, size: tuple[int, int]) -> list[Issue]:
    column = spec.columns[0] if len(spec.columns) == 1 else ",".join(spec.columns)
    found = row_boxes(row, spec)
    if not found:
        return [(column, None, "no box in this row: give at least one box, or drop the row")]
    for box in found:
        if any(v is None or isinstance(v, bool) or not isinstance(v, int | float) for v in box):
            return [(column, box, "a box is four numbers x0, y0, x1, y1")]
        if problems := box_problems(box, size, spec.units):
            return [(column, box, f"{problems[0]}; fix the label or its units")]
    return []


def _setting_issues(row: dict) -> list[Issue]:
    issues: list[Issue] = []
    blur = row.get("mask_blur")
    if blur is not None and (not _is_number(blur) or not 0 <= blur <= 256):
        issues.append(("mask_blur", blur, "use a number of pixels from 0 to 256 (4 is A1111's)"))
    padding = row.get("inpaint_padding")
    if padding is not None and (not _is_number(padding) or padding < 0 or padding % 1):
        issues.append(("inpaint_padding", padding, "use a whole number of pixels >= 0"))
    only = row.get("inpaint_only_masked")
    if only is not None and not isinstance(only, bool):
        issues.append(("inpaint_only_masked", only, "use true or false"))
    return issues


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def image_size(value: Any, base_dir: Path | None) -> tuple[int, int] | str | None:
    """(width, height) read from an image's header; a fix string where it cannot be read; None
    for a URI (checked when the row runs)."""
    source = image_source(value)
    if isinstance(source, str) and is_uri(source):
        return None
    try:
        opened = io.BytesIO(source) if isinstance(source, bytes) else resolve_path(source, base_dir)
        with Image.open(opened) as image:
            return image.size
    except (OSError, ValueError, TypeError) as exc:
        return f"cannot read an image here ({type(exc).__name__}); give PNG/JPEG bytes or a path"

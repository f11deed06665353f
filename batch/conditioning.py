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

from dataclasses import dataclass

from PIL import Image

from sdfleet.batch.masks import (
    Region,
    binarize,
    blur_mask,
    crop_region,
    expand_to_aspect,
    overlay,
    paste_back,
)


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

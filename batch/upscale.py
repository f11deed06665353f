"""Upscalers: ESRGAN-family model files through spandrel, run in tiles; and latent upscaling.

1. `load_upscaler(path, allow_pickle)`: spandrel reads the file (safetensors; pickled `.pth`/`.pt`
   only under `allow_pickle`, since unpickling runs code) and recognises the architecture from
   the weights. Only image-to-image super-resolution models with a scale >= 1 are accepted.
2. `upscale_image(model, image, tile_px, overlap_px)`: the image is cut into overlapping tiles,
   each tile runs through the model, and the outputs are blended with linear ramps over the
   overlap, so memory is bounded by the tile size whatever the image size. A convolutional
   network sees only a local window: with an overlap wider than that window the tiled output
   equals the untiled one up to float rounding (tests state the tolerance).
3. `upscale_latents(latents, scale)`: A1111's "Latent" hires upscaler (bilinear on the latents).

spandrel imports torchvision at module level for two architectures it carries (LaMa and
RestoreFormer). PyPI's torchvision does not load beside a CPU build of torch, so where it is
missing spandrel is imported with a placeholder for those two imports, removed again right after
(nothing else sees a torchvision); those two architectures are refused here anyway.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from sdfleet.batch.adapter_files import pickle_problems
from sdfleet.batch.errors import ModelError


def import_spandrel():
    """spandrel, importable with or without torchvision (see the module docstring)."""
    if "spandrel" in sys.modules or importlib.util.find_spec("torchvision") is not None:
        import spandrel

        return spandrel
    placeholders = _torchvision_placeholders()
    sys.modules.update(placeholders)
    try:
        import spandrel
    finally:
        for name in placeholders:
            sys.modules.pop(name, None)
    return spandrel


def _torchvision_placeholders() -> dict[str, types.ModuleType]:
    def unavailable(*args: Any, **kwargs: Any):
        raise ModelError("this upscaler architecture needs torchvision, which is not installed")

    functional = types.ModuleType("torchvision.transforms.functional")
    functional.InterpolationMode = types.SimpleNamespace(BILINEAR="bilinear", NEAREST="nearest")
    functional.rotate = unavailable
    functional.normalize = unavailable
    transforms = types.ModuleType("torchvision.transforms")
    transforms.functional = functional
    root = types.ModuleType("torchvision")
    root.transforms = transforms
    return {
        "torchvision": root,
        "torchvision.transforms": transforms,
        "torchvision.transforms.functional": functional,
    }


def check_upscaler_file(path: str | Path, allow_pickle: bool) -> None:
    """Refuse a missing file, or a pickled one without allow_pickle, before anything loads."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"upscaler {str(path)!r}: no such file; give the path of a .safetensors")
    for problem in pickle_problems(path, allow_pickle):
        raise ModelError(f"upscaler {str(path)!r} {problem}")


def load_upscaler(path: str | Path, allow_pickle: bool = False, device: str = "cpu"):
    """A spandrel ImageModelDescriptor in eval mode, or a ModelError naming the file."""
    check_upscaler_file(path, allow_pickle)
    spandrel = import_spandrel()
    try:
        descriptor = spandrel.ModelLoader(device=device).load_from_file(str(path))
    except ModelError:
        raise
    except Exception as exc:  # spandrel raises plain errors for unknown layouts
        raise ModelError(
            f"upscaler {str(path)!r}: not a model spandrel recognises ({exc}); use an "
            "ESRGAN-family super-resolution model (ESRGAN, Real-ESRGAN, SwinIR, ...)"
        ) from None
    if not isinstance(descriptor, spandrel.ImageModelDescriptor) or descriptor.scale < 1:
        raise ModelError(
            f"upscaler {str(path)!r}: {descriptor.architecture.name} is not an image upscaler "
            "(it restores or inpaints); use a super-resolution model"
        )
    if descriptor.input_channels != 3 or descriptor.output_channels != 3:
        raise ModelError(f"upscaler {str(path)!r}: needs 3 colour channels in and out")
    return descriptor.eval()


def upscale_image(model, image: Image.Image, tile_px: int = 256, overlap_px: int = 32):
    """`image` upscaled by `model` (a callable (1, 3, h, w) -> (1, 3, s*h, s*w), values 0..1)."""
    import torch

    rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0  # (H, W, 3)
    pixels = torch.from_numpy(rgb).permute(2, 0, 1)[None]  # (1, 3, H, W)
    with torch.inference_mode():
        out = run_tiled(model, pixels, tile_px, overlap_px)
    array = out[0].clamp(0, 1).permute(1, 2, 0).numpy()  # (sH, sW, 3)
    return Image.fromarray(np.rint(array * 255.0).astype(np.uint8), mode="RGB")


def run_tiled(model, pixels, tile_px: int, overlap_px: int):
    """Run `model` over overlapping tiles of `pixels` (1, C, H, W) and blend the outputs."""
    import torch

    _, _, height, width = pixels.shape
    if tile_px <= 0 or (height <= tile_px and width <= tile_px):
        return model(pixels)
    step = max(1, tile_px - overlap_px)
    out = weight = None
    for y0 in _starts(height, tile_px, step):
        for x0 in _starts(width, tile_px, step):
            tile = pixels[:, :, y0 : y0 + tile_px, x0 : x0 + tile_px]
            made = model(tile)  # (1, C, s*th, s*tw)
            scale = made.shape[-1] // tile.shape[-1]
            if out is None:
                out = torch.zeros((1, made.shape[1], height * scale, width * scale))
                weight = torch.zeros((1, 1, height * scale, width * scale))
            edges = (y0 > 0, y0 + tile_px < height, x0 > 0, x0 + tile_px < width)
            ramp = _ramp(made.shape[-2], made.shape[-1], overlap_px * scale, edges)
            ys = slice(y0 * scale, y0 * scale + made.shape[-2])
            xs = slice(x0 * scale, x0 * scale + made.shape[-1])
            out[:, :, ys, xs] += made * ramp
            weight[:, :, ys, xs] += ramp
    return out / weight


def _starts(length: int, tile: int, step: int) -> list[int]:
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, step))
    return [*starts, length - tile]


def _ramp(height: int, width: int, overlap: int, edges: tuple[bool, bool, bool, bool]):
    """Blend weights (1, 1, h, w): 1 inside, falling linearly over `overlap` towards each edge
    that borders another tile (`edges`: top, bottom, left, right). An edge on the image border
    keeps weight 1: no other tile covers it, and a ramp there would let a neighbour's
    zero-padding artefacts weigh as much as the good pixels."""
    import torch

    def axis(n: int, low: bool, high: bool):
        ramp = torch.ones(n)
        k = min(overlap, n // 2)
        edge = torch.linspace(1.0 / (overlap + 1), 1.0, overlap + 1)[:k]
        if low and k:
            ramp[:k] = edge
        if high and k:
            ramp[n - k :] = edge.flip(0)
        return ramp

    top, bottom, left, right = edges
    return (axis(height, top, bottom)[:, None] * axis(width, left, right)[None, :])[None, None]


def upscale_latents(latents, scale: float, mode: str = "bilinear"):
    """A1111's latent upscaler: (B, 4, h, w) -> (B, 4, round(h*scale), round(w*scale))."""
    import torch.nn.functional as F

    size = (round(latents.shape[-2] * scale), round(latents.shape[-1] * scale))
    return F.interpolate(latents, size=size, mode=mode, align_corners=False)

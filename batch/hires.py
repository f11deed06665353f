"""A1111's hires fix and the upscale-only post stage: what a job asks for, the checks before
any model loads, and the two-pass run through the one sampler call.

Hires fix (job `hires:`, txt2img rows only, as in A1111):

1. first pass: txt2img at the row's size (A1111's `Size`);
2. upscale to the target size: ``scale`` x the row's size, or ``width``/``height`` (one of them:
   the other from the row's aspect; both: the upscaled image covers that size and is centre
   cropped, A1111's rule). Each side is floored to a multiple of 8, as A1111's latents are;
   - a latent upscaler (`LATENT_UPSCALERS`: ``latent`` = A1111's "Latent", bilinear; ``latent-
     nearest``, ``latent-nearest-exact``, ``latent-bicubic``, ``latent-antialiased``) resizes the
     first pass's latents with torch's ``interpolate``; the second pass starts from them;
   - an upscaler model file (ESRGAN family, `batch.upscale`) upscales the decoded image, tiled
     (``tile`` pixels), applied until the image reaches the target (at most 3 times), then
     Lanczos-resized to it exactly, A1111's `resize_image` with an upscaler;
3. second pass: img2img of the upscaled input at ``denoise`` (A1111's "Denoising strength",
   default 0.7 as A1111's UI) with ``steps`` (0: the first pass's), the row's seed and prompt,
   through `batch.sampler.Sampler` like every other call. ControlNet units act in both passes
   (their control images resized to the target size).

Upscale stage (job `upscale:`): every finished image of the job through an upscaler model file,
tiled, to ``scale`` x its size (default: the model's own scale).

Results: the columns ``hires`` / ``upscale`` (the stage's settings, JSON) and ``output_width`` /
``output_height`` (the image file's size); the infotext gets A1111's hires fields
(`a1111_fields`).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from sdfleet.batch.errors import ModelError
from sdfleet.batch.paths import resolve_path

# our name -> (A1111's `Hires upscaler` label, torch interpolate mode, antialias)
LATENT_UPSCALERS = {
    "latent": ("Latent", "bilinear", False),
    "latent-antialiased": ("Latent (antialiased)", "bilinear", True),
    "latent-bicubic": ("Latent (bicubic)", "bicubic", False),
    "latent-nearest": ("Latent (nearest)", "nearest", False),
    "latent-nearest-exact": ("Latent (nearest-exact)", "nearest-exact", False),
}
MAX_SIDE = 8192  # the largest output side a hires fix or upscale stage may ask for
MAX_MODEL_PASSES = 3  # A1111 applies an upscaler model at most 3 times to reach its target


@dataclass(frozen=True)
class HiresFix:
    """A job's hires fix, as the replica runs it (`upscaler`: a `LATENT_UPSCALERS` name or an
    upscaler model file's path)."""

    upscaler: str = "latent"
    scale: float | None = 2.0  # None where width/height are given
    width: int | None = None
    height: int | None = None
    denoise: float = 0.7
    steps: int = 0  # 0: the first pass's steps
    tile: int = 512  # model upscalers: tile side in pixels (0: untiled)

    @property
    def is_latent(self) -> bool:
        return self.upscaler in LATENT_UPSCALERS

    def upscaled_size(self, width: int, height: int) -> tuple[int, int]:
        """The size the first pass is upscaled to (before a centre crop to `target_size`)."""
        if self.width is None and self.height is None:
            return int(width * self.scale), int(height * self.scale)
        if self.height is None:
            return self.width, self.width * height // width
        if self.width is None:
            return self.height * width // height, self.height
        if width / height < self.width / self.height:  # cover the asked size, then crop
            return self.width, self.width * height // width
        return self.height * width // height, self.height

    def target_size(self, width: int, height: int) -> tuple[int, int]:
        """The output size for a first pass of width x height (each side floored to 8)."""
        up_w, up_h = self.upscaled_size(width, height)
        out_w = up_w if self.width is None or self.height is None else self.width
        out_h = up_h if self.width is None or self.height is None else self.height
        return out_w // 8 * 8, out_h // 8 * 8

    def second_pass_steps(self, first_steps: int) -> int:
        return self.steps or first_steps

    def upscaler_label(self) -> str:
        """A1111's `Hires upscaler` value: its latent mode's label, or the model file's stem."""
        if self.is_latent:
            return LATENT_UPSCALERS[self.upscaler][0]
        return Path(self.upscaler).stem

    def a1111_fields(self) -> dict[str, Any]:
        """The fields A1111 adds for a hires fix, in its order (`processing.py`: `Hires
        upscale` or `Hires resize`, `Hires steps` only when set, `Hires upscaler`)."""
        fields: dict[str, Any] = {}
        if self.width is None and self.height is None:
            fields["Hires upscale"] = _number(self.scale)
        else:
            fields["Hires resize"] = f"{self.width or 0}x{self.height or 0}"
        if self.steps:
            fields["Hires steps"] = self.steps
        fields["Hires upscaler"] = self.upscaler_label()
        return fields

    def record(self) -> str:
        """The results' `hires` column (JSON)."""
        values = {
            "upscaler": self.upscaler,
            "scale": self.scale,
            "width": self.width,
            "height": self.height,
            "denoise": self.denoise,
            "steps": self.steps,
        }
        if not self.is_latent:
            values["tile"] = self.tile
        return json.dumps(values, sort_keys=True)


@dataclass(frozen=True)
class UpscaleStage:
    """A job's upscale-only post stage: every finished image through `model`."""

    model: str
    scale: float | None = None  # None: the model's own scale
    tile: int = 512

    def output_size(self, width: int, height: int) -> tuple[int, int]:
        scale = self.scale if self.scale is not None else upscaler_scale(self.model)
        return round(width * scale), round(height * scale)

    def a1111_fields(self) -> dict[str, Any]:
        """The fields A1111's Extras tab writes for an upscale (`Postprocess upscale by`,
        `Postprocess upscaler`: the model file's stem)."""
        scale = self.scale if self.scale is not None else upscaler_scale(self.model)
        return {
            "Postprocess upscale by": _number(scale),
            "Postprocess upscaler": Path(self.model).stem,
        }

    def record(self) -> str:
        """The results' `upscale` column (JSON)."""
        scale = self.scale if self.scale is not None else upscaler_scale(self.model)
        return json.dumps({"model": self.model, "scale": scale, "tile": self.tile}, sort_keys=True)


def _number(value: float) -> int | float:
    """2.0 -> 2 (A1111 writes the slider's number as given)."""
    return int(value) if float(value).is_integer() else value


# ------------------------------------------------------------------------------ job fields


class HiresOption(BaseModel):
    """A batch job's `hires:` (A1111's hires fix, applied to every txt2img row)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    upscaler: str = Field("latent", description="latent, latent-nearest, ... or a model file")
    scale: float | None = Field(None, ge=1, le=8, description="x the row's size (default 2)")
    width: int | None = Field(None, ge=64, le=MAX_SIDE, multiple_of=8)
    height: int | None = Field(None, ge=64, le=MAX_SIDE, multiple_of=8)
    denoise: float = Field(0.7, gt=0, le=1, description="A1111's Denoising strength")
    steps: int = Field(0, ge=0, le=1000, description="second pass steps; 0: the first's")
    tile: int = Field(512, ge=0, le=4096, description="model upscaler tile, pixels; 0: none")

    @field_validator("upscaler")
    @classmethod
    def _file_from_job_folder(cls, value: str, info: ValidationInfo) -> str:
        return value if value in LATENT_UPSCALERS else from_job_folder(value, info)

    @model_validator(mode="after")
    def _one_size(self) -> HiresOption:
        if self.scale is not None and (self.width is not None or self.height is not None):
            raise ValueError(
                f"scale {self.scale:g} and width/height both given; give scale, or the size"
            )
        if not self.upscaler.strip():
            raise ValueError(f"upscaler {self.upscaler!r}: {upscaler_hint()}")
        return self

    def use(self, base_dir: Path | None = None) -> HiresFix:
        scale = None if self.width is not None or self.height is not None else self.scale or 2.0
        upscaler = self.upscaler
        if upscaler not in LATENT_UPSCALERS:
            upscaler = str(resolve_path(upscaler, base_dir))
        values = self.model_dump(exclude={"scale", "upscaler"})
        return HiresFix(upscaler=upscaler, scale=scale, **values)


class UpscaleOption(BaseModel):
    """A batch job's `upscale:` (the upscale-only post stage)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(description="an upscaler model file (ESRGAN family, .safetensors)")
    scale: float | None = Field(None, ge=1, le=8, description="default: the model's scale")
    tile: int = Field(512, ge=0, le=4096, description="tile side in pixels; 0: untiled")

    @field_validator("model")
    @classmethod
    def _file_from_job_folder(cls, value: str, info: ValidationInfo) -> str:
        return from_job_folder(value, info)

    def use(self, base_dir: Path | None = None) -> UpscaleStage:
        return UpscaleStage(str(resolve_path(self.model, base_dir)), self.scale, self.tile)


def from_job_folder(value: str, info: ValidationInfo) -> str:
    """A relative file name read from the job file's folder (the validation context's
    `base_dir`), made absolute where the file is there; otherwise kept as written."""
    base_dir = (info.context or {}).get("base_dir")
    candidate = resolve_path(value, base_dir)
    return str(candidate.resolve()) if base_dir is not None and candidate.is_file() else value


def upscaler_hint() -> str:
    return f"use one of {', '.join(LATENT_UPSCALERS)} or the path of an upscaler model file"


def upscaler_file_problems(field: str, path: str, allow_pickle: bool) -> list[str]:
    """Problems of an upscaler model file, found before the model loads: missing, pickled
    without allow_pickle, or not an architecture spandrel knows (it is read to tell)."""
    try:
        upscaler_scale(path, allow_pickle)
    except ModelError as exc:
        latent = f"; for a latent upscale {upscaler_hint()}" if field.startswith("hires") else ""
        return [f"{field}: {exc}{latent}"]
    return []


@functools.lru_cache(maxsize=8)
def upscaler_scale(path: str, allow_pickle: bool = False) -> int:
    """The scale of the upscaler model file at `path` (read once per path)."""
    from sdfleet.batch.upscale import load_upscaler

    return int(load_upscaler(path, allow_pickle).scale)


def size_problems(hires: HiresFix | None, width: int, height: int, where: str) -> list[str]:
    """A hires target of a width x height first pass that is too small or too large."""
    if hires is None:
        return []
    out_w, out_h = hires.target_size(width, height)
    if min(out_w, out_h) < 8 or max(out_w, out_h) > MAX_SIDE:
        return [
            f"{where}: hires fix of {width}x{height} makes {out_w}x{out_h}; each side must be "
            f"8..{MAX_SIDE}: change hires.scale or hires.width/height"
        ]
    return []


# ------------------------------------------------------------------------------ running


class Upscalers:
    """Upscaler models of one replica, loaded on first use (spandrel, on its device)."""

    def __init__(self, allow_pickle: bool, device: Any) -> None:
        self.allow_pickle = allow_pickle
        self.device = device
        self._loaded: dict[str, Any] = {}

    def get(self, path: str) -> Any:
        if path not in self._loaded:
            from sdfleet.batch.upscale import load_upscaler

            self._loaded[path] = load_upscaler(path, self.allow_pickle, str(self.device))
        return self._loaded[path]

    def upscale_to(self, path: str, image: Any, size: tuple[int, int], tile: int) -> Any:
        """`image` through the model until it covers `size` (at most 3 times), then Lanczos-
        resized to exactly `size` (A1111's `resize_image` with an upscaler)."""
        from PIL import Image

        from sdfleet.batch.upscale import upscale_image

        model = self.get(path)
        for _ in range(MAX_MODEL_PASSES):
            if image.width >= size[0] and image.height >= size[1]:
                break
            image = upscale_image(_on_device(model), image, tile_px=tile)
        if image.size != size:
            image = image.resize(size, Image.Resampling.LANCZOS)
        return image


def _on_device(model: Any) -> Any:
    """A spandrel model as a callable on CPU tiles: moved to its device and back."""
    device = model.device

    def run(pixels: Any) -> Any:
        return model(pixels.to(device=device, dtype=model.dtype)).float().cpu()

    return run


def run_hires(sampler: Any, sample: Any, hires: HiresFix, upscalers: Upscalers) -> Any:
    """The two passes of a txt2img `batch.sampler.Sample` (see the module docstring); a row
    that failed in either pass keeps its error."""
    from sdfleet.batch.sampler import Sampled

    first_size = (sample.width, sample.height)
    target = hires.target_size(*first_size)
    first = sampler.sample(replace(sample, output="latent" if hires.is_latent else "pt"))
    if hires.is_latent:
        image = upscale_latents_to(first.images, hires, first_size, sampler.vae_scale_factor)
    else:
        pictures = [to_pil_image(row) for row in first.images]
        image = [upscalers.upscale_to(hires.upscaler, p, target, hires.tile) for p in pictures]
    second = sampler.sample(second_pass(sample, hires, image, target))
    errors = tuple(a or b for a, b in zip(first.errors, second.errors))
    flagged = tuple(_either(a, b) for a, b in zip(first.flagged, second.flagged))
    return Sampled(second.images, errors, flagged or second.flagged)


def _either(first: bool | None, second: bool | None) -> bool | None:
    """The safety checker fired in either pass (None: it ran in neither)."""
    return None if first is None and second is None else bool(first or second)


def second_pass(sample: Any, hires: HiresFix, image: Any, target: tuple[int, int]) -> Any:
    """The img2img `Sample` of the second pass for an upscaled `image` (B PIL images at
    `target`, or latents (B, C, h, w) of it)."""
    control = sample.control
    if control is not None:  # the control images follow the output to the target size
        resized = [[picture.resize(target) for picture in unit] for unit in control.images]
        control = replace(control, images=resized)
    return replace(
        sample,
        width=None,
        height=None,
        latents=None,
        image=image,
        strength=hires.denoise,
        num_inference_steps=hires.second_pass_steps(sample.num_inference_steps),
        control=control,
        output="pt",
    )


def upscale_latents_to(latents: Any, hires: HiresFix, size: tuple[int, int], factor: int) -> Any:
    """A1111's latent upscale: `interpolate` to the upscaled size // factor, then the centre
    crop A1111 takes where both width and height are given."""
    import torch.nn.functional as F

    _, mode, antialias = LATENT_UPSCALERS[hires.upscaler]
    up_w, up_h = hires.upscaled_size(*size)
    shape = (up_h // factor, up_w // factor)
    kwargs = {"antialias": True} if antialias else {}
    out = F.interpolate(latents.float(), size=shape, mode=mode, **kwargs).to(latents.dtype)
    target_w, target_h = hires.target_size(*size)
    cut_h, cut_w = shape[0] - target_h // factor, shape[1] - target_w // factor
    top, left = cut_h // 2, cut_w // 2
    return out[:, :, top : top + target_h // factor, left : left + target_w // factor]


def to_pil_image(row: Any) -> Any:
    """(3, H, W) float in [0, 1] -> PIL, rounding as diffusers' `numpy_to_pil` does."""
    import numpy as np
    from PIL import Image

    array = row.nan_to_num(0.0).clamp(0, 1).permute(1, 2, 0).float().cpu().numpy()
    return Image.fromarray(np.round(array * 255).astype("uint8"))


def output_size(
    width: int, height: int, hires: HiresFix | None, upscale: UpscaleStage | None
) -> tuple[int, int]:
    """The size of a txt2img row's image file after the job's hires fix and upscale stage."""
    if hires is not None:
        width, height = hires.target_size(width, height)
    if upscale is not None:
        width, height = upscale.output_size(width, height)
    return width, height

"""A1111 infotext: the `parameters` text AUTOMATIC1111's web UI writes into its images and reads
back with "PNG Info" / paste, so every tool that reads A1111 images (civitai, image browsers)
reads ours.

The text is the prompt, an optional `Negative prompt: ...` line, then one line of `Key: value`
pairs joined by ", "; a value holding `,`, `:` or a newline is JSON-quoted, as A1111's `quote`
does, or its reader would cut it at the first comma. PNG keeps it in a `parameters` text chunk;
JPEG and WEBP keep it in the Exif UserComment (tag 0x9286, type UNDEFINED, an 8-byte
`UNICODE\\0` prefix and UTF-16-BE text, the layout piexif writes and A1111 reads).

`Sampler:` carries A1111's sampler label for the diffusers scheduler that ran, with
`Schedule type:` where the sigma spacing is not the one A1111 picks by itself for that sampler.
`Model:` is the checkpoint's name and `Model hash:` A1111's short hash (`model_hash`).
A hires fix writes A1111's fields: `Size:` is the first pass's, `Denoising strength:` the
second pass's, then `Hires upscale:` (or `Hires resize:`), `Hires steps:` where set and
`Hires upscaler:` (`batch.hires.HiresFix.a1111_fields`), before the extra networks' hashes;
an upscale stage ends the line with A1111's Extras fields (`Postprocess upscale by:`,
`Postprocess upscaler:`).

Pure: the standard library only; diffusers is imported only to build a named scheduler from a
loaded model's scheduler config (`SamplerLabels`), inside a replica that has it loaded already.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdfleet.batch.paths import resolve_path

# diffusers scheduler class -> A1111 sampler label (A1111 1.10's sampler list)
A1111_SAMPLERS = {
    "EulerDiscreteScheduler": "Euler",
    "EulerAncestralDiscreteScheduler": "Euler a",
    "HeunDiscreteScheduler": "Heun",
    "LMSDiscreteScheduler": "LMS",
    "KDPM2DiscreteScheduler": "DPM2",
    "KDPM2AncestralDiscreteScheduler": "DPM2 a",
    "DPMSolverSDEScheduler": "DPM++ SDE",
    "DDIMScheduler": "DDIM",
    "PNDMScheduler": "PLMS",  # SD ships PNDM with skip_prk_steps: the PLMS steps
    "UniPCMultistepScheduler": "UniPC",
    "LCMScheduler": "LCM",
}
# Schedulers A1111 has no sampler for are written under these names; A1111 does not know them
# and falls back to its default sampler when such an infotext is pasted.
OTHER_SAMPLERS = {
    "DDPMScheduler": "DDPM",
    "DEISMultistepScheduler": "DEIS",
    "TCDScheduler": "TCD",
}
# A1111 (1.9+) samplers whose "Automatic" schedule is not the model's own spacing
A1111_DEFAULT_SCHEDULE = {
    "DPM++ 2M": "Karras",
    "DPM++ SDE": "Karras",
    "DPM++ 2S a": "Karras",
    "DPM++ 2M SDE": "Exponential",
    "DPM++ 3M SDE": "Exponential",
    "DPM2": "Karras",
    "DPM2 a": "Karras",
}
# diffusers sigma flags -> A1111 `Schedule type` label
_SIGMA_FLAGS = {
    "use_karras_sigmas": "Karras",
    "use_exponential_sigmas": "Exponential",
    "use_beta_sigmas": "Beta",
}
# A1111's label for the model's own spacing (k-diffusion's `get_sigmas(n)`), the nearest to what
# a diffusers scheduler does without a sigma flag
OWN_SPACING = "Uniform"


def sampler_label(class_name: str, config: dict[str, Any]) -> str:
    """A1111's sampler label for a diffusers scheduler class and its config."""
    if class_name == "DPMSolverMultistepScheduler":
        order = int(config.get("solver_order", 2))
        sde = str(config.get("algorithm_type", "dpmsolver++")).startswith("sde-")
        return f"DPM++ {order}M" + (" SDE" if sde else "")
    if class_name in A1111_SAMPLERS:
        return A1111_SAMPLERS[class_name]
    return OTHER_SAMPLERS.get(class_name, class_name.removesuffix("Scheduler"))


def sampler_fields(class_name: str, config: dict[str, Any]) -> dict[str, str]:
    """`Sampler` (and `Schedule type` where A1111 would otherwise pick another spacing)."""
    label = sampler_label(class_name, config)
    fields = {"Sampler": label}
    flagged = [name for flag, name in _SIGMA_FLAGS.items() if config.get(flag)]
    if flagged:
        fields["Schedule type"] = flagged[0]
    elif label in A1111_DEFAULT_SCHEDULE:
        fields["Schedule type"] = OWN_SPACING
    return fields


def named_sampler_fields(name: str) -> dict[str, str]:
    """The fields of a scheduler named in a job (`batch.schedulers`), from its class and
    overrides alone (used where no model is loaded, e.g. animation frames)."""
    from sdfleet.batch.schedulers import SCHEDULERS

    class_name, overrides = SCHEDULERS[name]
    return sampler_fields(class_name, overrides)


class SamplerLabels:
    """A loaded model's sampler fields per scheduler name (None: the model's own scheduler),
    read from the scheduler that actually runs: `from_config` of the model's scheduler
    config, so flags the model sets (e.g. Karras sigmas) are reported too."""

    def __init__(self, base_scheduler: Any) -> None:
        self._base = base_scheduler
        self._fields: dict[str | None, dict[str, str]] = {}

    def fields(self, name: str | None) -> dict[str, str]:
        if name not in self._fields:
            scheduler = self._base
            if name is not None:
                from sdfleet.batch.schedulers import make_scheduler

                scheduler = make_scheduler(name, self._base.config)
            self._fields[name] = sampler_fields(type(scheduler).__name__, _taken(scheduler))
        return self._fields[name]


def _taken(scheduler: Any) -> dict[str, Any]:
    """The config values the scheduler's class takes: `from_config` keeps the others (a DDIM
    built from a Karras config still carries `use_karras_sigmas`) but ignores them."""
    import inspect

    accepted = inspect.signature(type(scheduler).__init__).parameters
    return {key: value for key, value in scheduler.config.items() if key in accepted}


@dataclass
class InfotextModel:
    """What the infotext says about the loaded model: `Model`, `Model hash`, and the sampler
    fields of each scheduler on it."""

    name: str
    hash: str | None
    samplers: SamplerLabels | None = None
    controlnets: dict[str, str] | None = None  # `ControlNet i` fields (every row runs them)
    hires: Any = None  # `batch.hires.HiresFix` of the job (txt2img rows run it)
    upscale: Any = None  # `batch.hires.UpscaleStage` of the job (every row)

    @classmethod
    def of_loaded(cls, spec: Any, base_scheduler: Any) -> InfotextModel:
        """For a replica's `ModelSpec` and its model's own scheduler (before any swap)."""
        units = getattr(spec, "controlnets", ())
        return cls(
            model_name(spec.model),
            model_hash(spec),
            SamplerLabels(base_scheduler),
            controlnet_fields(units) if units else None,
            getattr(spec, "hires", None),
            getattr(spec, "upscale", None),
        )

    def sampler_fields(self, scheduler: str | None) -> dict[str, str]:
        if self.samplers is not None:
            return self.samplers.fields(scheduler)
        return named_sampler_fields(scheduler) if scheduler else {}


def generation_fields(params: dict[str, Any], model: InfotextModel | None) -> dict[str, Any]:
    """The settings line in A1111's order, from a row's parameters (`batch.actor.request_params`
    keys). Without a loaded model (`model` None) the model name comes from the row, the hash is
    left out, and so is the sampler when the row names none."""
    model = model or InfotextModel(model_name(str(params["model"])), None)
    size = f"{params['width']}x{params['height']}"  # a hires fix's first pass, as A1111's
    hires = model.hires if params.get("mode", "txt2img") == "txt2img" else None
    strength = hires.denoise if hires is not None else params.get("strength")
    return {
        "Steps": params["num_inference_steps"],
        **model.sampler_fields(params.get("scheduler")),
        "CFG scale": params["guidance_scale"],
        "Seed": params["seed"],
        "Size": size,
        "Model hash": model.hash,
        "Model": model.name,
        "Denoising strength": strength,
        "Mask blur": _whole(params.get("mask_blur")),  # inpainting: A1111's extra parameter
        **(hires.a1111_fields() if hires is not None else {}),  # A1111's extra params, first
        "Lora hashes": params.get("lora_hashes"),  # A1111's extra networks, as it writes them
        "TI hashes": params.get("ti_hashes"),
        **(model.controlnets or {}),  # as A1111's ControlNet extension writes its units
        **(model.upscale.a1111_fields() if model.upscale is not None else {}),  # Extras' own
    }


def _whole(value: float | None) -> float | int | None:
    """4.0 -> 4, as A1111 writes an integer setting; 2.5 stays."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def controlnet_fields(units: Any) -> dict[str, str]:
    """`ControlNet i` fields of `batch.controlnets.ControlNetUse`s, each model named with the
    first 8 hex digits of its weights' sha256, as A1111's ControlNet extension names them."""
    from sdfleet.batch.controlnets import a1111_controlnet_fields

    hashes = []
    for unit in units:
        found = sorted(resolve_path(unit.model).glob("*.safetensors"))
        hashes.append(short_hash(str(found[0])) if found else None)
    return a1111_controlnet_fields(units, hashes)


def quote(value: Any) -> str:
    """A value as A1111 writes it: JSON-quoted when it holds `,`, `:` or a newline."""
    text = str(value)
    if any(mark in text for mark in (",", ":", "\n")):
        return json.dumps(text, ensure_ascii=False)
    return text


def infotext(prompt: str, negative_prompt: str | None, fields: dict[str, Any]) -> str:
    """Prompt, `Negative prompt:` line (when there is one), then the `Key: value` line;
    None values are left out."""
    pairs = ", ".join(
        f"{key}: {quote(value)}" for key, value in fields.items() if value is not None
    )
    lines = [prompt]
    if negative_prompt:
        lines.append(f"Negative prompt: {negative_prompt}")
    return "\n".join([*lines, pairs])


def model_name(model: str) -> str:
    """What A1111 writes as `Model:`: a checkpoint file's name without folder or extension, a
    diffusers folder's name; builtins and hub ids as they are."""
    if model.startswith("builtin:"):
        return model
    path = resolve_path(model)
    if path.suffix.lower() in (".safetensors", ".ckpt", ".bin", ".pt", ".pth"):
        return path.stem
    if path.is_absolute() or path.exists() or model.startswith((".", "~")):
        return path.resolve().name or model
    return model  # a hub id: org/name


def model_hash(model: Any) -> str | None:
    """A1111's short hash (`Model hash:`): the first 10 hex digits of the sha256 of the
    checkpoint file. A diffusers folder (builtin:tiny, a hub snapshot) has no such file: its
    denoiser's weights (`unet/diffusion_pytorch_model.safetensors`, or `transformer/...`) are
    hashed instead. None where there is no file (builtin:null, a hub id not in the cache).
    `model`: a `batch.models.ModelSpec`."""
    path = weights_file(model)
    return short_hash(str(path)) if path is not None else None


def weights_file(model: Any) -> Path | None:
    """The file `model_hash` hashes for a `ModelSpec`."""
    from sdfleet.batch.models import resolve_model_source

    source = resolve_model_source(model)
    if source.kind == "single_file":
        return Path(source.location)
    if source.location == "builtin:tiny":
        from sdfleet.batch.tiny import tiny_model_dir

        return denoiser_weights(tiny_model_dir())
    if source.kind == "folder":
        return denoiser_weights(Path(source.location))
    if source.kind == "hub":
        from huggingface_hub import try_to_load_from_cache

        for folder in ("unet", "transformer"):
            found = try_to_load_from_cache(
                source.location, f"{folder}/diffusion_pytorch_model.safetensors", model.revision
            )
            if isinstance(found, str):
                return Path(found)
    return None


def denoiser_weights(folder: Path) -> Path | None:
    for component in ("unet", "transformer"):
        candidate = folder / component / "diffusion_pytorch_model.safetensors"
        if candidate.is_file():
            return candidate
    return None


def short_hash(path: str) -> str:
    """First 10 hex digits of the file's sha256 (cached per path, size and mtime)."""
    stat = os.stat(path)
    return _sha256_file(path, stat.st_size, stat.st_mtime_ns)[:10]


@functools.lru_cache(maxsize=16)
def _sha256_file(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


_USER_COMMENT = 0x9286
_EXIF_IFD_POINTER = 0x8769
_LONG, _UNDEFINED = 4, 7


def exif_user_comment(text: str) -> bytes:
    """An Exif block (for Pillow's `save(exif=...)`) holding only the UserComment `text`.

    Big-endian TIFF: header, IFD0 with one entry pointing at the Exif IFD, the Exif IFD with
    one UNDEFINED entry, then the comment: `UNICODE\\0` + UTF-16-BE, piexif's "unicode"
    encoding. (Pillow's own Exif writer stores bytes as type BYTE, which piexif - and so A1111 -
    reads back as a tuple of ints it cannot decode.)
    """
    comment = b"UNICODE\x00" + text.encode("utf-16-be")
    exif_ifd = 8 + 2 + 12 + 4  # after the header and IFD0
    data = exif_ifd + 2 + 12 + 4  # after the Exif IFD
    tiff = b"MM\x00\x2a" + struct.pack(">I", 8)
    tiff += struct.pack(">HHHII", 1, _EXIF_IFD_POINTER, _LONG, 1, exif_ifd) + b"\0" * 4
    tiff += struct.pack(">HHHII", 1, _USER_COMMENT, _UNDEFINED, len(comment), data) + b"\0" * 4
    return b"Exif\x00\x00" + tiff + comment

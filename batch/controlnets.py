"""ControlNet units: what a job asks for, what is checked before anything loads, a row's control
images, and how results and the infotext name the units.

A job's `controlnets:` is a list of units (`ControlNetUse`), all applied to every row (several
at once run as diffusers' MultiControlNetModel). Per row, a unit's input image is the row's
`image_column` (default `control_image`: bytes, a path, a URI or a datasets {bytes, path}
struct) or, where the row leaves it empty, the row's init image; the unit's preprocessor
(`batch.control`) then makes the control image from it.

Size rule: a control image from the column is resized to the output size by the unit's
`resize_mode` (`batch.control.fit_to_size`: "crop" by default, "stretch", "pad"; A1111's
Crop and Resize / Just Resize / Resize and Fill). One made from the init image uses the init image
as img2img resized it, so the control map lies on the init image's pixels.

Checks before a model loads (`check_controlnet_files`): the folder exists and is a diffusers
`ControlNetModel` with loadable weights (safetensors unless allow_pickle), made for the model's
base (the UNet's cross-attention width, block widths and SDXL's added conditioning must match).

Pure: the standard library, pydantic, PIL and `batch.control` (OpenCV); no torch.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from sdfleet.batch.control import (
    PREPROCESSORS,
    RESIZE_MODES,
    fit_to_size,
    preprocess,
    preprocessor_problems,
    preprocessor_settings,
)
from sdfleet.batch.errors import ModelError
from sdfleet.batch.paths import resolve_path

CONTROL_COLUMN = "control_image"
# the UNet settings a ControlNet's residuals must fit (diffusers `ControlNetModel.from_unet`)
MATCHING_KEYS = ("cross_attention_dim", "block_out_channels", "addition_embed_type")
BASE_NAMES = {768: "SD 1.x", 1024: "SD 2.x", 2048: "SDXL"}
# our names -> what A1111's ControlNet extension writes (its preprocessor and resize mode)
A1111_MODULES = {"none": "none", "canny": "canny", "tile": "tile_resample", "shuffle": "shuffle"}
A1111_RESIZE = {"stretch": "Just Resize", "crop": "Crop and Resize", "pad": "Resize and Fill"}


@dataclass(frozen=True)
class ControlNetUse:
    """One ControlNet unit of a job, as diffusers' ControlNet pipelines take it."""

    model: str  # a diffusers ControlNetModel folder
    scale: float = 1.0  # controlnet_conditioning_scale
    start: float = 0.0  # control_guidance_start: share of the steps before it acts
    end: float = 1.0  # control_guidance_end
    preprocessor: str = "none"  # `batch.control.PREPROCESSORS`
    options: tuple[tuple[str, float], ...] = ()  # the preprocessor's, e.g. (("low", 50.0),)
    resize_mode: str = "crop"  # `batch.control.RESIZE_MODES`
    image_column: str = CONTROL_COLUMN  # the manifest column of this unit's input image

    def __post_init__(self) -> None:
        assert self.preprocessor in PREPROCESSORS and self.resize_mode in RESIZE_MODES


class ControlNetOption(BaseModel):
    """A job's `controlnets:` entry (batch and animation jobs): one unit, applied to every row
    or frame; validated once, at the edge, then used as its `ControlNetUse`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(description="a diffusers ControlNet folder")
    scale: float = Field(1.0, ge=0, le=4, description="controlnet_conditioning_scale")
    start: float = Field(0.0, ge=0, le=1, description="share of the steps before it acts")
    end: float = Field(1.0, ge=0, le=1, description="share of the steps after which it stops")
    preprocessor: str = Field("none", description="none, canny, tile or shuffle")
    preprocessor_options: dict[str, float] = Field(default_factory=dict)
    resize_mode: Literal[RESIZE_MODES] = "crop"  # type: ignore[valid-type]
    image_column: str = Field(CONTROL_COLUMN, description="the manifest column of its image")

    @model_validator(mode="after")
    def _usable(self) -> ControlNetOption:
        if problems := preprocessor_problems(self.preprocessor, self.preprocessor_options):
            raise ValueError("; ".join(problems))
        if self.start >= self.end:
            raise ValueError(f"start {self.start} must be below end {self.end}")
        return self

    def use(self) -> ControlNetUse:
        values = self.model_dump(exclude={"preprocessor_options"})
        return ControlNetUse(**values, options=tuple(sorted(self.preprocessor_options.items())))


# ------------------------------------------------------------------------------ before loading


def check_controlnet_files(
    units: Sequence[ControlNetUse],
    base_unet: dict | None,
    allow_pickle: bool,
    pickle_suffixes: tuple[str, ...],
) -> None:
    """ModelError naming `controlnets[i].model`, the value and the fix, for a unit that would
    not load or does not fit the model; `base_unet`: the model's UNet config where it can be
    read without loading (None: compared when the model has loaded); `pickle_suffixes`: the
    weight files refused without allow_pickle (`batch.models.PICKLE_SUFFIXES`)."""
    for index, unit in enumerate(units):
        config = read_controlnet_config(unit.model, index, allow_pickle, pickle_suffixes)
        if base_unet is not None:
            check_fits_base(config, base_unet, unit.model, index)


def read_controlnet_config(
    name: str, index: int, allow_pickle: bool, pickle_suffixes: tuple[str, ...]
) -> dict[str, Any]:
    """The config.json of a ControlNet folder, after checking it is one with usable weights."""
    where = f"controlnets[{index}].model: {name!r}"
    folder = resolve_path(name)
    if not folder.is_dir():
        raise ModelError(
            f"{where} is not a folder; give a diffusers ControlNet folder (the one holding "
            "config.json, as ControlNetModel.save_pretrained writes it)"
        )
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"{where} has no readable config.json ({type(exc).__name__}); point at a diffusers "
            "ControlNet folder, or re-save the model with save_pretrained"
        ) from None
    kind = config.get("_class_name") if isinstance(config, dict) else None
    if kind != "ControlNetModel":
        raise ModelError(
            f"{where} holds a {kind or 'model of no known class'}, not a ControlNetModel; "
            "sdfleet runs diffusers ControlNets (SD 1.x/2.x, SDXL): convert it, or give "
            "another folder"
        )
    _check_weights(folder, where, allow_pickle, pickle_suffixes)
    return config


def _check_weights(folder: Path, where: str, allow_pickle: bool, suffixes: tuple) -> None:
    names = [p.name for p in folder.iterdir() if p.is_file()]
    if any(n.endswith(".safetensors") for n in names):
        return
    pickled = sorted(n for n in names if n.endswith(suffixes))
    if pickled and allow_pickle:
        return
    if pickled:
        raise ModelError(
            f"{where} has only pickled weights ({', '.join(pickled[:3])}), which can run code "
            "when loaded; convert them to .safetensors, or set `allow_pickle: true` if you "
            "trust the files"
        )
    raise ModelError(f"{where} holds no weights (no .safetensors file); copy the whole folder")


def check_fits_base(config: dict, base_unet: dict, name: str, index: int) -> None:
    """A ControlNet adds residuals to the UNet's blocks: its widths must be the model's."""
    for key in MATCHING_KEYS:
        mine, theirs = _normal(config.get(key)), _normal(base_unet.get(key))
        if mine != theirs:
            raise ModelError(
                f"controlnets[{index}].model: {name!r} is a ControlNet for {_base(config)} "
                f"({key} {mine}) but the model is {_base(base_unet)} ({key} {theirs}); use a "
                "ControlNet trained for the job's model base"
            )


def _normal(value: Any) -> Any:
    return list(value) if isinstance(value, list | tuple) else value


def _base(config: dict) -> str:
    width = config.get("cross_attention_dim")
    if config.get("addition_embed_type") == "text_time":
        return "SDXL"
    return BASE_NAMES.get(width, f"a cross-attention width of {width}") if width else "?"


# ------------------------------------------------------------------------------ manifest rows

Issue = tuple[str, Any, str]  # (column, value, fix), as batch.manifest reports them


def control_issues(
    row: dict, units: Sequence[ControlNetUse], has_mask: bool, base_dir: Path | None
) -> list[Issue]:
    """A row's ControlNet problems: a unit with neither its column nor an init image to read,
    an unreadable control image, ControlNet with an inpainting mask."""
    from sdfleet.batch.conditioning import image_size
    from sdfleet.batch.datasets_io import image_source

    if not units:
        if row.get(CONTROL_COLUMN) is None:
            return []
        fix = "the job has no controlnets to use it: add a `controlnets:` unit, or drop the column"
        return [(CONTROL_COLUMN, "<image>", fix)]
    if has_mask:
        fix = (
            "ControlNet does not run with inpainting: drop the row's mask or the job's controlnets"
        )
        return [("controlnets", len(units), fix)]
    issues: list[Issue] = []
    for index, unit in enumerate(units):
        value = row.get(unit.image_column)
        if value is None:
            if image_source(row.get("init_image")) is None:
                fix = (
                    f"controlnets[{index}] (preprocessor {unit.preprocessor!r}) needs an input "
                    f"image: give the row a {unit.image_column} or an init_image"
                )
                issues.append((unit.image_column, None, fix))
            continue
        size = image_size(value, base_dir)
        if isinstance(size, str):
            issues.append((unit.image_column, value, size))
    return _first_per_column(issues)


def _first_per_column(issues: list[Issue]) -> list[Issue]:
    """One problem per column (units sharing a column would repeat it)."""
    first: dict[str, Issue] = {}
    for issue in issues:
        first.setdefault(issue[0], issue)
    return list(first.values())


def control_columns(units: Sequence[ControlNetUse]) -> set[str]:
    """The manifest columns the units read (inputs, not carried into the results)."""
    return {unit.image_column for unit in units}


# ------------------------------------------------------------------------------ a row's images


def control_images(
    units: Sequence[ControlNetUse],
    sources: Sequence[Any],
    init_image: Any,
    size: tuple[int, int],
    seed: int,
    read: Any,
) -> tuple:
    """Per unit, the control image (RGB PIL at `size` (w, h)): the unit's source read by `read`
    (bytes/path/URI -> RGB PIL) and fitted by its resize mode, or the init image (already at
    `size`) where the row gave none; then the unit's preprocessor (seeded by the row's seed)."""
    images = []
    for unit, source in zip(units, sources, strict=True):
        if source is None:
            if init_image is None:
                raise ValueError("a ControlNet row without a control image needs an init image")
            picture = init_image
        else:
            picture = fit_to_size(read(source), size, unit.resize_mode)
        images.append(preprocess(unit.preprocessor, picture, dict(unit.options), seed))
    return tuple(images)


# ------------------------------------------------------------------------------ records


def controlnet_record(units: Sequence[ControlNetUse]) -> str | None:
    """The results' `controlnets` column: the units as JSON (None for a job without any)."""
    if not units:
        return None
    return json.dumps(
        [
            {
                "model": unit.model,
                "scale": unit.scale,
                "start": unit.start,
                "end": unit.end,
                "preprocessor": unit.preprocessor,
                "preprocessor_options": dict(unit.options),
                "resize_mode": unit.resize_mode,
                "image_column": unit.image_column,
            }
            for unit in units
        ],
        sort_keys=True,
    )


def a1111_controlnet_fields(units: Sequence[ControlNetUse], hashes: Sequence[str | None]):
    """`ControlNet i` infotext fields as A1111's ControlNet extension writes them: one value of
    `Key: value` pairs joined by ", " (no `,` or `:` inside a value: its reader splits on them),
    which the infotext then quotes as one value."""
    fields = {}
    for index, (unit, digest) in enumerate(zip(units, hashes, strict=True)):
        model = _plain(Path(unit.model).name or unit.model)
        options = dict(unit.options)
        pairs = {
            "Module": A1111_MODULES[unit.preprocessor],
            "Model": f"{model} [{digest[:8]}]" if digest else model,
            "Weight": _number(unit.scale),
            "Resize Mode": A1111_RESIZE[unit.resize_mode],
            "Threshold A": _number(_threshold(unit.preprocessor, options, 0)),
            "Threshold B": _number(_threshold(unit.preprocessor, options, 1)),
            "Guidance Start": _number(unit.start),
            "Guidance End": _number(unit.end),
            "Control Mode": "Balanced",
        }
        text = ", ".join(f"{key}: {value}" for key, value in pairs.items() if value is not None)
        fields[f"ControlNet {index}"] = text
    return fields


def _threshold(preprocessor: str, options: dict, which: int) -> float | None:
    """A1111's sliders: canny's low/high thresholds, tile's down-sampling rate."""
    merged = preprocessor_settings(preprocessor, options)
    names = {"canny": ("low", "high"), "tile": ("downsample",)}.get(preprocessor, ())
    return merged[names[which]] if which < len(names) else None


def _number(value: float | None) -> str | None:
    if value is None:
        return None
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _plain(name: str) -> str:
    """A name A1111's unit reader can split: no `,` or `:`."""
    return name.replace(",", "_").replace(":", "_")

"""What one output image is: a manifest row resolved with the job's defaults, per variant.

`RowDefaults` (the job-level values for empty fields) + a row -> `expand_row` -> one
`GenRequest` per image. Pure: no torch, no pyarrow. Rows are checked first by
`batch.manifest.validate_manifest`; expansion assumes a good row.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sdfleet.batch.adapters import EmbeddingUse, LoraUse, adapter_key
from sdfleet.batch.controlnets import CONTROL_COLUMN, control_columns, controlnet_record
from sdfleet.batch.datasets_io import image_source
from sdfleet.batch.fingerprint import INPUTS_COLUMN, inputs_fingerprint
from sdfleet.batch.masks import INPAINT_COLUMNS, MaskFromBoxes, row_boxes
from sdfleet.batch.outputs import output_name
from sdfleet.batch.paths import is_uri, resolve_path
from sdfleet.batch.prompt_checks import AdapterContext, row_loras, used_embeddings
from sdfleet.batch.results_rows import as_manifest_row
from sdfleet.batch.seeds import SEED_MAX, derive_seed

KNOWN_COLUMNS = (
    "id",
    "prompt",
    "negative_prompt",
    "seed",
    "num_inference_steps",
    "guidance_scale",
    "width",
    "height",
    "num_images",
    "init_image",
    "strength",
    "scheduler",
    *INPAINT_COLUMNS,
    "loras",
    CONTROL_COLUMN,
)


@dataclass(frozen=True)
class RowDefaults:
    """Job-level values that fill a row's missing (null or absent) fields."""

    prompt: str | None = None
    prompt_template: str | None = None  # e.g. "{prompt}, {style} style": formats row columns
    negative_prompt: str = ""
    seed: int | None = None  # None: derive_seed(job_seed, id, variant)
    num_inference_steps: int = 20
    guidance_scale: float = 7.5
    width: int = 512
    height: int = 512
    num_images: int = 1
    strength: float = 0.75
    scheduler: str | None = None
    mask_blur: float = 4.0  # inpainting (`batch.conditioning`)
    inpaint_only_masked: bool = False
    inpaint_padding: int = 32
    mask_from_boxes: MaskFromBoxes | None = None
    adapters: Any = None  # `batch.prompt_checks.AdapterContext`: syntax, lora_dir, job LoRAs
    controlnets: tuple = ()  # the job's `batch.controlnets.ControlNetUse`s, for every row
    hires: Any = None  # the job's `batch.hires.HiresFix` (txt2img rows)
    upscale: Any = None  # the job's `batch.hires.UpscaleStage` (every row)


@dataclass(frozen=True)
class Inpaint:
    """A request's inpainting: a mask image, or boxes to make one, and how it is applied."""

    mask_image: bytes | str | None = None
    boxes: tuple[tuple[float, ...], ...] = ()  # with units/invert, where there is no mask_image
    units: str = "pixel"
    invert: bool = False
    blur: float = 4.0
    only_masked: bool = False
    padding: int = 32


# GenRequest fields that name the output or that the results record by value
# (`batch.actor.request_params`: loras and embeddings by name and hash), compared column by
# column on a resume (`batch.kept_rows`). Every other field is in the row's INPUTS_COLUMN.
RECORDED_FIELDS = frozenset(
    {
        *("row_id", "variant", "output_name", "carried", "prompt", "negative_prompt", "seed"),
        *("num_inference_steps", "guidance_scale", "width", "height", "scheduler", "strength"),
        *("loras", "embeddings"),
    }
)


@dataclass(frozen=True)
class GenRequest:
    """One output image to make: a manifest row resolved with defaults, for one variant."""

    row_id: str
    variant: int
    output_name: str  # file stem: <id> or <id>_<k>
    prompt: str
    negative_prompt: str
    seed: int
    num_inference_steps: int
    guidance_scale: float
    width: int
    height: int
    scheduler: str | None
    init_image: bytes | str | None = None
    strength: float | None = None
    inpaint: Inpaint | None = None
    carried: dict[str, Any] = field(default_factory=dict, compare=False)
    loras: tuple[LoraUse, ...] = ()  # the job's, then the row's column, then its prompt's tags
    embeddings: tuple[EmbeddingUse, ...] = ()  # the job's textual inversions its prompts use
    control_sources: tuple = ()  # per ControlNet unit: its image (None: the init image's)

    @property
    def mode(self) -> str:
        if self.init_image is None:
            return "txt2img"
        return "img2img" if self.inpaint is None else "inpaint"

    def group_key(self) -> tuple:
        """Rows with equal keys can share one pipeline call (diffusers takes these as scalars)."""
        return (
            self.mode,
            self.width,
            self.height,
            self.num_inference_steps,
            self.scheduler,
            self.guidance_scale,
            self.strength,
            adapter_key(self.loras),  # one LoRA set per call
        )


def row_value(row: dict, defaults: RowDefaults, column: str) -> Any:
    """The row's value of a known column, or the job's default where the row leaves it empty."""
    value = row.get(column)
    return getattr(defaults, column) if value is None else value


def num_images(row: dict, defaults: RowDefaults) -> int:
    return int(row_value(row, defaults, "num_images"))


def template_values(row: dict, defaults: RowDefaults) -> dict:
    """The row's columns, with the job's default for a known column the row leaves empty (a
    template's {prompt} is the job's `defaults.prompt` where the row has none)."""
    filled = {
        name: getattr(defaults, name)
        for name in KNOWN_COLUMNS
        if row.get(name) is None and getattr(defaults, name, None) is not None
    }
    return {**row, **filled}


def expand_row(
    row: dict, defaults: RowDefaults, job_seed: int, base_dir: Path | None = None
) -> list[GenRequest]:
    """One GenRequest per variant; the row must have passed `batch.manifest.row_problems`."""
    row = as_manifest_row(row)  # an earlier run's results: its images become init images
    count = num_images(row, defaults)
    inputs = set(KNOWN_COLUMNS) | control_columns(defaults.controlnets)
    carried = {k: v for k, v in row.items() if k not in inputs}
    if defaults.controlnets:  # the results record the units (`batch.controlnets`)
        carried["controlnets"] = controlnet_record(defaults.controlnets)
    image = local_source(row.get("init_image"), base_dir)
    carried |= stage_records(row, defaults, image is None)
    prompt = row_value(row, defaults, "prompt")
    if defaults.prompt_template:
        prompt = defaults.prompt_template.format_map(template_values(row, defaults))
    negative = row_value(row, defaults, "negative_prompt") or ""
    base = GenRequest(
        row_id=row["id"],
        variant=0,
        output_name="",
        prompt=prompt,
        negative_prompt=negative,
        seed=0,
        num_inference_steps=int(row_value(row, defaults, "num_inference_steps")),
        guidance_scale=float(row_value(row, defaults, "guidance_scale")),
        width=int(row_value(row, defaults, "width")),
        height=int(row_value(row, defaults, "height")),
        scheduler=row_value(row, defaults, "scheduler"),
        init_image=image,
        strength=float(row_value(row, defaults, "strength")) if image is not None else None,
        inpaint=row_inpaint(row, defaults, base_dir) if image is not None else None,
        carried=carried,
        loras=row_adapters(prompt, row.get("loras"), defaults, base_dir),
        embeddings=used_embeddings(prompt, negative, defaults.adapters or AdapterContext()),
        control_sources=tuple(
            local_source(row.get(unit.image_column), base_dir) for unit in defaults.controlnets
        ),
    )
    # the inputs the results do not record by value, hashed (`batch.fingerprint`)
    base.carried[INPUTS_COLUMN] = inputs_fingerprint(base, RECORDED_FIELDS)
    return [
        replace(
            base,
            variant=k,
            output_name=output_name(row["id"], k, count),
            seed=row_seed(row, defaults, job_seed, k),
        )
        for k in range(count)
    ]


def stage_records(row: dict, defaults: RowDefaults, txt2img: bool) -> dict[str, Any]:
    """The results' `hires` and `upscale` columns and the image's `output_width` /
    `output_height` (`batch.hires`), for a job with a hires fix or an upscale stage."""
    if defaults.hires is None and defaults.upscale is None:
        return {}
    from sdfleet.batch.hires import output_size

    hires = defaults.hires if txt2img else None  # the hires fix is txt2img's
    size = int(row_value(row, defaults, "width")), int(row_value(row, defaults, "height"))
    width, height = output_size(*size, hires, defaults.upscale)
    return {
        "hires": hires.record() if hires is not None else None,
        "upscale": defaults.upscale.record() if defaults.upscale is not None else None,
        "output_width": width,
        "output_height": height,
    }


def local_source(value: Any, base_dir: Path | None) -> bytes | str | None:
    """An image column's value (a datasets {bytes, path} struct too) with a relative path made
    absolute from the manifest's folder."""
    image = image_source(value)
    if isinstance(image, str) and not is_uri(image):
        image = str(resolve_path(image, base_dir))
    return image


def row_inpaint(row: dict, defaults: RowDefaults, base_dir: Path | None) -> Inpaint | None:
    """The row's inpainting, or None where it has no mask_image and the job no mask_from_boxes."""
    mask = local_source(row.get("mask_image"), base_dir)
    boxes = defaults.mask_from_boxes
    if mask is None and boxes is None:
        return None
    settings = {
        "blur": float(row_value(row, defaults, "mask_blur")),
        "only_masked": bool(row_value(row, defaults, "inpaint_only_masked")),
        "padding": int(row_value(row, defaults, "inpaint_padding")),
    }
    if mask is not None:
        return Inpaint(mask_image=mask, **settings)
    found = tuple(tuple(float(v) for v in box) for box in row_boxes(row, boxes))
    return Inpaint(boxes=found, units=boxes.units, invert=boxes.invert, **settings)


def row_adapters(prompt: str, column: Any, defaults: RowDefaults, base_dir: Path | None):
    """The row's LoRA set (`batch.prompt_checks.row_loras`); a job without an adapter context
    reads prompts as A1111 with no lora_dir."""
    return row_loras(prompt, column, defaults.adapters or AdapterContext(), base_dir)


def row_seed(row: dict, defaults: RowDefaults, job_seed: int, variant: int) -> int:
    """A row seed s gives variants s, s+1, ...; no seed derives one per (id, variant)."""
    seed = row.get("seed")
    if seed is None or seed == -1:
        seed = defaults.seed
        if seed is None:
            return derive_seed(job_seed, row["id"], variant)
    return (int(seed) + variant) & SEED_MAX

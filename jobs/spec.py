"""Job files: YAML -> validated pydantic models, once, at the edge.

`kind: batch` (default) is defined here; `kind: animation` lives in `anim.spec`. Unknown fields
are errors that suggest the nearest known name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from sdfleet.batch.controlnets import ControlNetOption
from sdfleet.batch.errors import ConfigError, suggest_name
from sdfleet.batch.hires import (
    LATENT_UPSCALERS,
    HiresOption,
    UpscaleOption,
    size_problems,
    upscaler_file_problems,
)
from sdfleet.batch.manifest import MAX_STEPS, prompt_template_problems
from sdfleet.batch.masks import MaskFromBoxes, mask_from_boxes_problems
from sdfleet.batch.models import recommended_settings
from sdfleet.batch.paths import is_uri, resolve_path
from sdfleet.batch.prompt_checks import AdapterContext
from sdfleet.batch.prompt_options import PromptOptions, RefinerOption
from sdfleet.batch.request import RowDefaults
from sdfleet.batch.schedulers import scheduler_name_problems
from sdfleet.jobs.yaml_files import read_yaml_file


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Defaults(Strict):
    """Job-level values for manifest rows that leave a field empty."""

    prompt: str | None = None
    prompt_template: str | None = Field(None, description="e.g. '{prompt}, {style} style'")
    negative_prompt: str = ""
    seed: int | None = Field(None, ge=0, le=2**32 - 1)
    num_inference_steps: int = Field(20, ge=1, le=MAX_STEPS)
    guidance_scale: float = Field(7.5, ge=0, le=100)
    width: int = Field(512, ge=16, le=4096, multiple_of=8)
    height: int = Field(512, ge=16, le=4096, multiple_of=8)
    num_images: int = Field(1, ge=1, le=64)
    strength: float = Field(0.75, gt=0, le=1)
    scheduler: str | None = None
    mask_blur: float = Field(4.0, ge=0, le=256, description="inpainting: mask feather, pixels")
    inpaint_only_masked: bool = Field(False, description="inpaint the mask's crop at full size")
    inpaint_padding: int = Field(32, ge=0, description="only-masked crop padding, pixels")

    @field_validator("scheduler")
    @classmethod
    def _known_scheduler(cls, value: str | None) -> str | None:
        if value is not None and (problems := scheduler_name_problems(value)):
            raise ValueError("; ".join(problems))
        return value

    @field_validator("prompt_template")
    @classmethod
    def _plain_template(cls, value: str | None) -> str | None:
        if value is not None and (problems := prompt_template_problems(value)):
            raise ValueError("; ".join(problems))
        return value


class OutputOptions(Strict):
    format: Literal["png", "jpg", "jpeg", "webp"] = "png"
    quality: int = Field(95, ge=1, le=100)
    embed_image_bytes: bool = Field(False, description="add an `image` {bytes, path} column")


class RayOptions(Strict):
    """How the `ray` executor sizes its actor pool (see cluster/README.md)."""

    address: str | None = None
    replicas: int | None = Field(None, ge=1, description="explicit actor count")
    replicas_per_gpu: float = Field(1, gt=0, le=8)
    num_cpus_per_replica: float = Field(1, gt=0)
    rows_per_block: int = Field(128, ge=1)
    rows_per_pass: int = Field(
        100_000, ge=1, description="rows per Ray Data execution (bounds the driver's memory)"
    )
    allow_fewer_replicas: bool = False
    min_replicas_timeout_s: float = Field(
        600, gt=0, allow_inf_nan=False, description="time for replicas to load"
    )
    stall_timeout_s: float = Field(600, gt=0, allow_inf_nan=False)
    checkpoint_path: str | None = None


class MaskFromBoxesOptions(Strict):
    """Inpainting masks from label columns (`batch.conditioning.MaskFromBoxes`)."""

    columns: list[str] = Field(min_length=1, max_length=4, description="[x0,y0,x1,y1] or one")
    units: Literal["pixel", "relative"] = "pixel"
    invert: bool = Field(False, description="keep the boxed objects, repaint the rest")

    @field_validator("columns")
    @classmethod
    def _one_or_four(cls, value: list[str]) -> list[str]:
        if problems := mask_from_boxes_problems(value, "pixel"):
            raise ValueError("; ".join(problems))
        return value


class BatchJob(Strict, PromptOptions):
    kind: Literal["batch"] = "batch"
    name: str | None = None
    model: str = "builtin:tiny"
    model_config_path: str | None = Field(None, alias="model_config")
    scheduler: str | None = None
    device: str | None = Field(
        None, pattern=r"^(cpu|mps|cuda(:\d+)?)$", description="auto if unset"
    )
    dtype: Literal["float16", "fp16", "bfloat16", "bf16", "float32", "fp32"] | None = None
    allow_pickle: bool = False
    manifest: str
    seed: int = Field(0, ge=0, description="job seed: rows without a seed derive theirs from it")
    defaults: Defaults = Defaults()
    mask_from_boxes: MaskFromBoxesOptions | None = None
    batch_size: int = Field(4, ge=1, le=256)
    pad_batches: bool = True
    cpu_threads: int | None = Field(None, ge=1, description="CPU replicas: torch threads")
    output: OutputOptions = OutputOptions()
    executor: Literal["ray", "local"] = "ray"
    ray: RayOptions = RayOptions()
    max_reported_errors: int = Field(50, ge=1)
    price_per_gpu_hour: float | None = Field(
        None, gt=0, allow_inf_nan=False, description="the summary's cost per 1000 images"
    )
    refiner: RefinerOption | None = Field(None, description="SDXL: a refiner for the last steps")
    controlnets: list[ControlNetOption] = Field(default_factory=list, max_length=8)
    hires: HiresOption | None = Field(None, description="A1111's hires fix (txt2img rows)")
    upscale: UpscaleOption | None = Field(None, description="every image through an upscaler")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("scheduler")
    @classmethod
    def _known_scheduler(cls, value: str | None) -> str | None:
        return Defaults._known_scheduler(value)

    @model_validator(mode="before")
    @classmethod
    def _model_recommends(cls, data: Any) -> Any:
        """The settings a builtin model was made for (`batch.models.RECOMMENDED_SETTINGS`)
        where `defaults` leaves them unset."""
        settings = recommended_settings(data.get("model")) if isinstance(data, dict) else {}
        defaults = data.get("defaults", {}) if settings else None
        if not isinstance(defaults, dict):
            return data
        return data | {"defaults": settings | defaults}

    @model_validator(mode="after")
    def _controlnets_alone(self) -> BatchJob:
        if self.controlnets and self.refiner is not None:
            raise ValueError("controlnets: a refiner does not run with ControlNet; drop one")
        return self

    @model_validator(mode="after")
    def _upscalers_usable(self) -> BatchJob:
        """The hires fix and upscale stage's model files, and the hires size of the defaults,
        checked before any model loads (`batch.hires`)."""
        if self.hires is not None and self.refiner is not None:
            raise ValueError("hires: a refiner does not run with the hires fix; drop one")
        files = []
        if self.hires is not None and self.hires.upscaler not in LATENT_UPSCALERS:
            files.append(("hires.upscaler", self.hires.upscaler))
        if self.upscale is not None:
            files.append(("upscale.model", self.upscale.model))
        problems = [
            problem
            for field, name in files
            for problem in upscaler_file_problems(field, name, self.allow_pickle)
        ]
        if self.hires is not None:
            hires, size = self.hires.use(), (self.defaults.width, self.defaults.height)
            problems += size_problems(hires, *size, "defaults.width/height")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def row_defaults(self, adapters: AdapterContext | None = None) -> RowDefaults:
        """The rows' defaults with the job's resolved prompt syntax, LoRAs and embeddings
        (`adapters`, made here when not given: a ConfigError names a bad file)."""
        adapters = adapters if adapters is not None else self.adapters(None)
        values = self.defaults.model_dump() | {"adapters": adapters}
        if values["scheduler"] is None:
            values["scheduler"] = self.scheduler
        if (boxes := self.mask_from_boxes) is not None:
            values["mask_from_boxes"] = MaskFromBoxes(
                tuple(boxes.columns), boxes.units, boxes.invert
            )
        values["controlnets"] = tuple(unit.use() for unit in self.controlnets)
        values["hires"] = self.hires.use() if self.hires is not None else None
        values["upscale"] = self.upscale.use() if self.upscale is not None else None
        return RowDefaults(**values)


def read_job_file(path: str | Path) -> dict[str, Any]:
    """YAML -> dict; a ConfigError names the file for unreadable, hostile or malformed YAML."""
    data = read_yaml_file(path)
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: a job file is a YAML mapping (key: value), got {type(data).__name__}"
        )
    return data


def load_job(path: str | Path):
    """Read and validate a job file: a BatchJob, or an animation job for `kind: animation`."""
    data = batch_job_of_record(read_job_file(path))
    kind = data.get("kind", "batch")
    if kind == "animation":
        from sdfleet.anim.spec import load_animation_job

        return load_animation_job(data, source=str(path))
    if kind != "batch":
        hint = suggest_name(str(kind), ["batch", "animation"])
        raise ConfigError(f"{path}: kind: {kind!r} is unknown{hint}; use 'batch' or 'animation'")
    return validate_model(BatchJob, data, str(path))


# OUT/job.yaml of a batch run: the job under `job:`, next to where it came from and the versions
RECORD_KEYS = {"job", "source", "versions"}
RECORD_PATH_FIELDS = ("manifest", "model", "model_config")


def batch_job_of_record(data: dict[str, Any]) -> dict[str, Any]:
    """The job a batch run recorded in OUT/job.yaml (any other job file is returned as it is).
    The record keeps the job as written; its relative paths are made absolute from the folder
    of the job file it came from (`source`), so the record runs from anywhere."""
    if not (RECORD_KEYS <= data.keys() and isinstance(data["job"], dict)):
        return data
    return with_absolute_paths(data["job"], record_base(data))


def record_base(record: dict[str, Any]) -> Path | None:
    """The folder of the job file a record came from (recorded absolute; an older, relative
    `source` is taken from the current folder, where it was most likely run)."""
    source = record.get("source")
    return Path(str(source)).resolve().parent if source else None


def with_absolute_paths(job: dict[str, Any], base_dir: Path | None) -> dict[str, Any]:
    """A job dump with its relative `manifest`, `model`, `model_config` and ControlNet
    `model`s absolute from base_dir (where they name something there); None leaves them as
    they are."""
    if base_dir is None:
        return job
    fixed = dict(job)
    for name in RECORD_PATH_FIELDS:
        if isinstance(fixed.get(name), str):
            fixed[name] = absolute_from(fixed[name], base_dir)
    if isinstance(fixed.get("controlnets"), list):  # each unit's `model` folder too
        fixed["controlnets"] = [
            unit | {"model": absolute_from(unit["model"], base_dir)}
            if isinstance(unit, dict) and isinstance(unit.get("model"), str)
            else unit
            for unit in fixed["controlnets"]
        ]
    for name, key in (("hires", "upscaler"), ("upscale", "model")):  # upscaler model files
        stage = fixed.get(name)
        if isinstance(stage, dict) and isinstance(stage.get(key), str):
            if stage[key] not in LATENT_UPSCALERS:
                fixed[name] = stage | {key: absolute_from(stage[key], base_dir)}
    return fixed


def absolute_from(value: str, base_dir: Path) -> str:
    """A relative local path as an absolute one from base_dir; builtins, URIs, hub ids that
    name no file there and absolute paths unchanged."""
    if value.startswith("builtin:") or is_uri(value) or resolve_path(value).is_absolute():
        return value
    candidate = resolve_path(value, base_dir)
    is_glob = any(mark in value for mark in "*?[")
    return str(candidate.resolve()) if is_glob or candidate.exists() else value


def validate_model(model_cls: type[BaseModel], data: dict[str, Any], source: str):
    """pydantic validation with one readable message listing every problem and its fix."""
    try:
        # relative files of a job's prompt fields are read from the job file's folder
        return model_cls.model_validate(data, context={"base_dir": Path(source).parent})
    except ValidationError as exc:
        lines = [describe_error(model_cls, err) for err in exc.errors()]
        raise ConfigError(f"{source}: invalid job:\n  " + "\n  ".join(lines)) from None


def describe_error(model_cls: type[BaseModel], err: dict[str, Any]) -> str:
    where = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        known = _known_fields(model_cls, err["loc"][:-1])
        hint = suggest_name(str(err["loc"][-1]), known)
        return f"{where}: unknown field{hint}; known fields here: {', '.join(sorted(known))}"
    value = err.get("input")
    return f"{where}: {err['msg']} (got {value!r})"


def _known_fields(model_cls: type[BaseModel], loc: tuple) -> list[str]:
    current: Any = model_cls
    for part in loc:
        field = current.model_fields.get(part) if hasattr(current, "model_fields") else None
        if field is None:
            break
        current = field.annotation
    fields = getattr(current, "model_fields", {})
    return [f.alias or name for name, f in fields.items()]

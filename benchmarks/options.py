"""The options of `sdfleet bench`, declared once: a pydantic model from which the command-line
flags are made (`add_flags`) and against which they are validated (`options_from_args`), as
mergekit does for its merge options. A flag is the field's alias, else its name, with dashes
(`size_px` is `--size`, `batch_size` is `--batch-size`); its help is the field's description
and its default the field's default. A flag that is not given is not passed: the model's
default applies, so no default is written twice.

    BenchOptions(...)                    (validated; frozen)
    add_flags(parser)                    (one flag per field)
    options_from_args(args) -> BenchOptions   (raises ConfigError naming the flag)
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from sdfleet.batch.errors import ConfigError
from sdfleet.batch.models import ModelSpec
from sdfleet.bench.contenders import CONTENDER_NAMES

Mode = Literal["throughput", "overhead", "animation", "quality"]
# The contenders of each mode (`bench.contenders.CONTENDERS`, the two animation renders) and
# the defaults when --rows / --contenders are not given.
MODE_CONTENDERS: dict[str, tuple[str, ...]] = {
    "throughput": tuple(CONTENDER_NAMES),
    "overhead": ("local", "ray"),
    "animation": ("sdfleet", "plain"),
    "quality": (),  # one model, a sweep of its settings
}
MODE_ROWS: dict[str, tuple[int, ...]] = {
    "throughput": (128,),
    "overhead": (10_000, 100_000),
    "animation": (1,),
    "quality": (1,),
}


def _split_ints(value: Any) -> Any:
    """'10000,100_000' -> (10000, 100000); other values are left to the field's type."""
    if not isinstance(value, str):
        return value
    try:
        numbers = tuple(int(part.replace("_", "")) for part in value.split(","))
    except ValueError:
        raise ValueError(f"give whole numbers separated by commas, got {value!r}") from None
    if min(numbers) < 1:
        raise ValueError(f"every value must be at least 1, got {value!r}")
    return numbers


def _split_names(value: Any) -> Any:
    return tuple(part.strip() for part in value.split(",")) if isinstance(value, str) else value


Counts = Annotated[tuple[Annotated[int, Field(ge=1)], ...], BeforeValidator(_split_ints)]
Names = Annotated[tuple[str, ...], BeforeValidator(_split_names)]


class BenchOptions(BaseModel):
    """What `sdfleet bench` runs (docs/PERFORMANCE.md): the mode, the workload, the output."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    overhead: bool = Field(False, description="builtin:null at many rows: sdfleet's cost per row")
    animation: bool = Field(False, description="2D render against img2img, and the encoder")
    quality: bool = Field(
        False, description="prompt adherence beside images/s by steps, scheduler, guidance"
    )
    model: str = Field("builtin:tiny", min_length=1, description="model, as in a job")
    rows: Counts = Field(
        (), description="rows, comma-separated (throughput: 128; --overhead: 10000,100000)"
    )
    steps: int = Field(4, ge=1, description="denoising steps")
    size_px: int = Field(64, ge=1, alias="size", description="image side in pixels")
    batch_size: int = Field(4, ge=1, description="rows per pipeline call")
    repeats: int = Field(3, ge=1, description="rounds; each runs every contender once")
    frames: int = Field(24, ge=1, description="--animation: frames of the clip")
    guidance_scale: float = Field(7.5, ge=0, description="classifier-free guidance")
    rows_per_block: int | None = Field(None, ge=1, description="sdfleet's ray executor (job: 128)")
    cpu_threads: int | None = Field(
        None, ge=1, description="torch threads, all contenders (default: all cores)"
    )
    strength: float = Field(0.5, gt=0, le=1, description="--animation: img2img share denoised")
    device: str | None = Field(None, description="cpu, cuda, ... (default: as a job chooses)")
    dtype: str | None = Field(None, description="float32, float16, ... (default: per device)")
    out: Path = Field(Path("out/bench"), description="folder for the JSON reports and runs")
    contenders: Names = Field(
        (), description="comma-separated (throughput: a,b,c,local,ray; --overhead: local,ray)"
    )
    keep_outputs: bool = Field(False, description="keep every run's images")

    @model_validator(mode="before")
    @classmethod
    def _mode_defaults(cls, data: Any) -> Any:
        """--rows and --contenders not given: the mode's (`MODE_ROWS`, `MODE_CONTENDERS`)."""
        if not isinstance(data, dict):
            return data
        mode = next((m for m in ("overhead", "animation", "quality") if data.get(m)), "throughput")
        defaults = {"rows": MODE_ROWS[mode], "contenders": MODE_CONTENDERS[mode]}
        if mode == "quality":  # the judge reads the shapes world: the model trained on it
            defaults["model"] = "builtin:shapes"
        return {**data, **{key: value for key, value in defaults.items() if not data.get(key)}}

    @model_validator(mode="after")
    def _check_mode(self) -> BenchOptions:
        if sum((self.overhead, self.animation, self.quality)) > 1:
            raise ValueError("--overhead, --animation, --quality: give one of them (or none)")
        known = MODE_CONTENDERS[self.mode]
        unknown = [name for name in self.contenders if name not in known]
        if unknown:
            raise ValueError(
                f"--contenders: {', '.join(unknown)} unknown here; choose from {', '.join(known)}"
            )
        if self.mode == "throughput" and len(self.rows) > 1:
            raise ValueError(f"--rows: one number for a throughput run, got {self.rows}")
        return self

    @property
    def mode(self) -> Mode:
        modes = {"overhead": self.overhead, "animation": self.animation, "quality": self.quality}
        return next((mode for mode, given in modes.items() if given), "throughput")

    @property
    def spec(self) -> ModelSpec:
        return ModelSpec(model=self.model, device=self.device, dtype=self.dtype)

    def record(self) -> dict[str, Any]:
        """The options as written into each report (JSON types)."""
        return self.model_dump(mode="json")


def flag_name(name: str) -> str:
    """The flag of field `name`: its alias, else its name, as --dashed-words."""
    field = BenchOptions.model_fields[name]
    return "--" + (field.alias or name).replace("_", "-")


def add_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per field of `BenchOptions` (see the module doc)."""
    for name, field in BenchOptions.model_fields.items():
        if field.annotation in (bool, "bool"):
            parser.add_argument(
                flag_name(name),
                dest=name,
                action="store_true",
                default=None,
                help=field.description,
            )
            continue
        default = field.get_default(call_default_factory=True)
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        suffix = f" (default: {shown})" if shown not in (None, "") else ""
        parser.add_argument(
            flag_name(name), dest=name, default=None, help=f"{field.description}{suffix}"
        )


def options_from_args(args: argparse.Namespace | dict[str, Any]) -> BenchOptions:
    """The flags that were given, validated once; a ConfigError names each bad flag."""
    given = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
    values = {n: given[n] for n in BenchOptions.model_fields if given.get(n) is not None}
    try:
        return BenchOptions.model_validate(values)
    except ValidationError as err:
        raise ConfigError("sdfleet bench: " + "; ".join(_describe(err))) from None


def _describe(err: ValidationError) -> list[str]:
    problems = []
    for error in err.errors(include_url=False):
        message = error["msg"].removeprefix("Value error, ")
        if not error["loc"]:  # the model's own checks name their flags
            problems.append(message)
            continue
        name = str(error["loc"][0])
        field = next(
            (n for n, f in BenchOptions.model_fields.items() if name in (n, f.alias)), None
        )
        flag = flag_name(field) if field else f"--{name}"
        problems.append(f"{flag}: {message} (got {error.get('input')!r})")
    return problems

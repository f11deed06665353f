"""What one output image is: a manifest row resolved with the job's defaults, per variant.

`RowDefaults` (the job-level values for empty fields) + a row -> `expand_row` -> one
`GenRequest` per image. Pure: no torch, no pyarrow. Rows are checked first by
`batch.manifest.validate_manifest`; expansion assumes a good row.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sdfleet.batch.datasets_io import as_manifest_row, image_source
from sdfleet.batch.outputs import output_name
from sdfleet.batch.paths import is_uri, resolve_path
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
    carried: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def mode(self) -> str:
        return "txt2img" if self.init_image is None else "img2img"

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
    carried = {k: v for k, v in row.items() if k not in KNOWN_COLUMNS}
    prompt = row_value(row, defaults, "prompt")
    if defaults.prompt_template:
        prompt = defaults.prompt_template.format_map(template_values(row, defaults))
    image = image_source(row.get("init_image"))  # a datasets {bytes, path} struct too
    if isinstance(image, str) and not is_uri(image):
        image = str(resolve_path(image, base_dir))  # relative: from the manifest's folder
    base = GenRequest(
        row_id=row["id"],
        variant=0,
        output_name="",
        prompt=prompt,
        negative_prompt=row_value(row, defaults, "negative_prompt") or "",
        seed=0,
        num_inference_steps=int(row_value(row, defaults, "num_inference_steps")),
        guidance_scale=float(row_value(row, defaults, "guidance_scale")),
        width=int(row_value(row, defaults, "width")),
        height=int(row_value(row, defaults, "height")),
        scheduler=row_value(row, defaults, "scheduler"),
        init_image=image,
        strength=float(row_value(row, defaults, "strength")) if image is not None else None,
        carried=carried,
    )
    return [
        replace(
            base,
            variant=k,
            output_name=output_name(row["id"], k, count),
            seed=row_seed(row, defaults, job_seed, k),
        )
        for k in range(count)
    ]


def row_seed(row: dict, defaults: RowDefaults, job_seed: int, variant: int) -> int:
    """A row seed s gives variants s, s+1, ...; no seed derives one per (id, variant)."""
    seed = row.get("seed")
    if seed is None or seed == -1:
        seed = defaults.seed
        if seed is None:
            return derive_seed(job_seed, row["id"], variant)
    return (int(seed) + variant) & SEED_MAX

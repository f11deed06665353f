"""Manifest validation: every row checked before any model loads, every bad row at once.

`validate_manifest` streams the manifest's files (`batch.sources`), checks each row against
the job's defaults (`row_problems`) and uniqueness of ids and output names, and raises one
ManifestError listing the problems, each naming the file, row, column, value and fix. Rows that
pass are expanded by `batch.request.expand_row`. Pure: pyarrow only, no torch. The schema is
documented in manifests/SCHEMA.md.
"""

from __future__ import annotations

import math
import re
import string
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from sdfleet.batch.conditioning import inpaint_issues
from sdfleet.batch.controlnets import control_issues
from sdfleet.batch.datasets_io import image_source, is_results
from sdfleet.batch.errors import ManifestError
from sdfleet.batch.file_names import file_name_problems, id_character_problems
from sdfleet.batch.fingerprint import INPUTS_COLUMN
from sdfleet.batch.hires import size_problems
from sdfleet.batch.images import input_image_problems
from sdfleet.batch.outputs import output_name
from sdfleet.batch.paths import is_uri
from sdfleet.batch.prompt_checks import AdapterContext, row_prompt_issues
from sdfleet.batch.request import (
    KNOWN_COLUMNS,
    RowDefaults,
    num_images,
    row_value,
    template_values,
)
from sdfleet.batch.schedulers import MIN_STRENGTH, img2img_steps, scheduler_name_problems
from sdfleet.batch.seeds import SEED_MAX
from sdfleet.batch.sources import iter_manifest_rows, open_manifest_file

MAX_SIDE_PX = 4096
MIN_SIDE_PX = 16
MAX_STEPS = 1000
MAX_IMAGES_PER_ROW = 64
_UNSAFE_ID = re.compile(r'[/\\<>:"|?*\x00-\x1f\x7f]')


@dataclass(frozen=True)
class Problem:
    """One bad value of one row: where it is, what it is, and the fix."""

    source: str
    index: int
    row_id: Any
    column: str
    value: Any
    fix: str

    def __str__(self) -> str:
        shown = repr(self.value)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        where = f"{self.source}: row {self.row_id!r} (#{self.index}), column '{self.column}'"
        return f"{where}: {shown} - {self.fix}"


Issue = tuple[str, Any, str]  # (column, value, fix) of one row, before it knows its place


def validate_manifest(
    files: list[str], defaults: RowDefaults, max_problems: int = 50, base_dir: Path | None = None
) -> int:
    """Check every row; raise ManifestError listing up to `max_problems`; return output count.

    Streams with flat memory: rows are read and checked one at a time, and uniqueness keeps
    only a 64-bit hash per id and output name. Only when some hash repeats (a duplicate, or
    rarely a hash collision) does a second pass remember those ids and names, to say which
    rows collide.
    """
    check_columns(files)
    scan = _scan_rows(files, defaults, max_problems, base_dir, _Uniqueness())
    repeated = scan.unique.repeated_hashes()
    if repeated is not None:
        scan = _scan_rows(files, defaults, max_problems, base_dir, _Uniqueness(repeated))
    if scan.problems:
        raise _problems_error(scan.problems, scan.total_bad)
    if scan.outputs == 0:
        raise ManifestError(
            f"manifest: {len(files)} file(s) ({files[0]}{', ...' if len(files) > 1 else ''}) "
            "hold no rows; nothing to generate. Check that the right files are named."
        )
    return scan.outputs


def check_columns(files: list[str]) -> None:
    """Carried columns must not clash with the columns sdfleet writes into the results, and a
    column must have one type across the manifest's files (the results are one table)."""
    from sdfleet.batch.outputs import result_types

    reserved = (set(result_types()) | {INPUTS_COLUMN}) - set(KNOWN_COLUMNS)
    first_seen: dict[str, tuple[pa.DataType, str]] = {}
    for path in files:
        schema = open_manifest_file(path).schema_arrow
        if is_results(schema.names):  # an earlier run's results: its own columns are dropped
            schema = pa.schema([f for f in schema if f.name not in reserved])
        clash = sorted(reserved & set(schema.names))
        if clash:
            raise ManifestError(
                f"{path}: column(s) {', '.join(repr(c) for c in clash)} would be carried into "
                "the results, where sdfleet writes its own column of that name; rename them "
                f"(e.g. 'src_{clash[0]}')."
            )
        for column in schema:
            if pa.types.is_null(column.type) or column.name in KNOWN_COLUMNS:
                continue  # all-null: takes the other files' type; known: checked per value
            seen = first_seen.setdefault(column.name, (column.type, path))
            if seen[0] != column.type:
                raise ManifestError(
                    f"{path}: column {column.name!r} is {column.type}, but {seen[1]} has it as "
                    f"{seen[0]}; the results are one table, so cast the column to one type in "
                    "every file."
                )


def _problems_error(problems: list[Problem], total_bad: int) -> ManifestError:
    shown = "\n  ".join(str(p) for p in problems)
    more = f"\n  ... and more ({total_bad} bad rows in all)" if total_bad > len(problems) else ""
    return ManifestError(f"manifest has {total_bad} bad row(s); nothing was run:\n  {shown}{more}")


@dataclass
class _Scan:
    unique: _Uniqueness
    problems: list[Problem] = field(default_factory=list)
    outputs: int = 0
    total_bad: int = 0


def _scan_rows(
    files: list[str],
    defaults: RowDefaults,
    max_problems: int,
    base_dir: Path | None,
    unique: _Uniqueness,
) -> _Scan:
    """One pass over every row: its own problems, then (if it has none) uniqueness."""
    scan = _Scan(unique)
    for source, index, row in iter_manifest_rows(files):
        problems = row_problems(row, defaults, source, index, base_dir)
        row_id = row.get("id")
        if not problems:
            count = num_images(row, defaults)
            problems = unique.problems(row, count, source, index)
            scan.outputs += count
        scan.total_bad += bool(problems)
        scan.problems.extend(problems[: max(0, max_problems - len(scan.problems))])
        if isinstance(row_id, str):
            unique.add_id(row_id, source, index)
    return scan


class _Uniqueness:
    """Duplicate ids and colliding output names, remembering as little as possible.

    First pass (no `repeated`): keep the hash of every id and output name, report nothing.
    Second pass: remember only the ids and names whose hash repeated in the first, and report
    exactly what remembering every id and name would.
    """

    def __init__(self, repeated: tuple[set[int], set[int]] | None = None) -> None:
        self.repeated = repeated
        self.id_hashes, self.name_hashes = array("q"), array("q")
        self.seen_ids: dict[str, str] = {}  # id -> where it first appeared
        self.seen_names: dict[str, str] = {}  # output name -> the id that makes it

    def add_id(self, row_id: str, source: str, index: int) -> None:
        if self.repeated is None:
            self.id_hashes.append(hash(row_id))
        elif hash(row_id) in self.repeated[0]:
            self.seen_ids.setdefault(row_id, f"{source}#{index}")

    def problems(self, row: dict, count: int, source: str, index: int) -> list[Problem]:
        row_id = row["id"]
        names = [output_name(row_id, variant, count) for variant in range(count)]
        if self.repeated is None:
            self.name_hashes.extend(hash(name) for name in names)
            return []
        if row_id in self.seen_ids:
            fix = f"duplicate id (first at {self.seen_ids[row_id]}); ids must be unique"
            return [Problem(source, index, row_id, "id", row_id, fix)]
        for name in names:
            if name in self.seen_names:
                fix = (
                    f"output name {name!r} collides with row {self.seen_names[name]!r}; "
                    "rename one of the ids"
                )
                return [Problem(source, index, row_id, "id", row_id, fix)]
            if hash(name) in self.repeated[1]:
                self.seen_names[name] = row_id
        return []

    def repeated_hashes(self) -> tuple[set[int], set[int]] | None:
        """(id hashes, name hashes) seen more than once, or None when every one is unique."""
        ids, names = _repeated(self.id_hashes), _repeated(self.name_hashes)
        return (ids, names) if ids or names else None


def _repeated(hashes: array) -> set[int]:
    values, counts = np.unique(np.frombuffer(hashes, dtype=np.int64), return_counts=True)
    return set(values[counts > 1].tolist())


def row_problems(
    row: dict,
    defaults: RowDefaults,
    source: str = "<manifest>",
    index: int = 0,
    base_dir: Path | None = None,
) -> list[Problem]:
    """Every problem of one row, each naming the column, value and fix."""
    issues = [
        *_id_issues(row.get("id")),
        *_name_issues(row, defaults),
        *_prompt_issues(row, defaults),
        *_number_issues(row, defaults),
        *_init_image_issues(row, defaults, base_dir),
        *inpaint_issues(row, defaults.mask_from_boxes, base_dir),
        *_mask_uri_issues(row),
        *_control_issues(row, defaults, base_dir),
        *_scheduler_issues(row_value(row, defaults, "scheduler")),
        *_adapter_issues(row, defaults, base_dir),
    ]
    return [Problem(source, index, row.get("id"), *issue) for issue in issues]


def _control_issues(row: dict, defaults: RowDefaults, base_dir: Path | None) -> list[Issue]:
    """The job's ControlNet units against this row (`batch.controlnets.control_issues`)."""
    masked = row.get("mask_image") is not None or defaults.mask_from_boxes is not None
    return control_issues(row, defaults.controlnets, masked, base_dir)


def _adapter_issues(row: dict, defaults: RowDefaults, base_dir: Path | None) -> list[Issue]:
    """The prompts in the job's syntax and the row's LoRAs (`batch.prompt_checks`)."""
    prompt = row_value(row, defaults, "prompt")
    if defaults.prompt_template:
        if _template_issues(row, defaults.prompt_template, defaults):
            return []  # reported by _prompt_issues
        prompt = defaults.prompt_template.format_map(template_values(row, defaults))
    negative = row_value(row, defaults, "negative_prompt")
    context = defaults.adapters or AdapterContext()
    return row_prompt_issues(prompt, negative, row.get("loras"), context, base_dir)


def _id_issues(row_id: Any) -> list[Issue]:
    if row_id is None or row_id == "":
        return [("id", row_id, "every row needs a non-empty string id")]
    if not isinstance(row_id, str):
        return [("id", row_id, "ids must be strings; cast the column to string")]
    if _UNSAFE_ID.search(row_id) or row_id.startswith(".") or row_id != row_id.strip():
        fix = (
            "ids name files: no '/', '\\', control characters, <>:\"|?*, leading "
            "'.' or surrounding spaces; use letters, digits, '-', '_' and inner '.'"
        )
        return [("id", row_id, fix)]
    if len(row_id) > 200:
        return [("id", row_id, "ids name files: use at most 200 characters")]
    return [("id", row_id, fix) for fix in id_character_problems(row_id)]


def _name_issues(row: dict, defaults: RowDefaults) -> list[Issue]:
    """The longest file name a row's id makes (`batch.file_names`) fits a filesystem."""
    row_id, count = row.get("id"), row_value(row, defaults, "num_images")
    if not isinstance(row_id, str) or not row_id or not _is_int(count) or count < 1:
        return []  # reported by the id and number checks
    longest = output_name(row_id, int(count) - 1, int(count))
    return [("id", row_id, fix) for fix in file_name_problems(longest)]


def _template_issues(row: dict, template: str, defaults: RowDefaults) -> list[Issue]:
    values = template_values(row, defaults)
    fields = _template_fields(template)
    for name in fields:
        if name not in values:
            fix = (
                f"prompt_template uses {{{name}}} but the manifest has no such "
                "column; add it or change the template"
            )
            return [(name, None, fix)]
        if values[name] is None or (name == "prompt" and not str(values[name]).strip()):
            fix = (
                f"prompt_template uses {{{name}}}, which is empty in "
                "this row; fill it (or give the job a default)"
            )
            return [(name, row.get(name), fix)]
    if not template.format_map(values).strip():
        fix = f"prompt_template {template!r} makes a blank prompt from this row; fill its columns"
        return [(fields[0], row.get(fields[0]), fix)]
    return []


def _prompt_issues(row: dict, defaults: RowDefaults) -> list[Issue]:
    issues: list[Issue] = []
    prompt = row_value(row, defaults, "prompt")
    if defaults.prompt_template:
        issues += _template_issues(row, defaults.prompt_template, defaults)
    elif not isinstance(prompt, str) or not prompt.strip():
        fix = "give a prompt in the row or a default `prompt` in the job"
        issues.append(("prompt", row.get("prompt"), fix))
    negative = row.get("negative_prompt")
    if negative is not None and not isinstance(negative, str):
        issues.append(("negative_prompt", negative, "negative_prompt must be a string"))
    for column in ("prompt", "negative_prompt"):  # a job's YAML may hold what Parquet cannot
        text = row_value(row, defaults, column)
        if isinstance(text, str) and (problems := text_problems(text)):
            where = "" if row.get(column) is not None else f" (the job's default {column})"
            issues.append((column, text, problems[0] + where))
    return issues


def text_problems(text: str) -> list[str]:
    """A lone surrogate in `text` (a YAML ``"\\ud800"`` escape makes one; Parquet text cannot
    hold one): not Unicode text, so the results, the image metadata and the tokenizer cannot
    take it. The fix names its place ([] when there is none)."""
    for position, char in enumerate(text):
        if "\ud800" <= char <= "\udfff":
            return [
                f"character {position} is U+{ord(char):04X}, a lone surrogate: not Unicode text "
                "(results and image metadata cannot hold it); remove it or write the character "
                "it stands for"
            ]
    return []


def _template_fields(template: str) -> list[str]:
    return [name for _, name, _, _ in string.Formatter().parse(template) if name]


def prompt_template_problems(template: str) -> list[str]:
    """What is wrong with a job's prompt_template and the fix ([] when it is plain
    `{column}` fields and text)."""
    try:
        fields = list(string.Formatter().parse(template))
    except ValueError as exc:
        return [f"{exc} in {template!r}; write fields as {{column}} and a literal brace as {{{{"]
    for _, name, spec, conversion in fields:
        if name is not None and (not name.isidentifier() or spec or conversion):
            return [
                f"field {{{name}}} in {template!r} is not a plain column name; use "
                "{column} only (no attributes, indexes, formats or conversions)"
            ]
    if not any(name for _, name, _, _ in fields):
        return [f"{template!r} names no column; use e.g. '{{prompt}}, {{style}} style'"]
    return text_problems(template)


def _side_issues(row: dict, defaults: RowDefaults) -> list[Issue]:
    issues: list[Issue] = []
    for side in ("width", "height"):
        v = row_value(row, defaults, side)
        if not _is_int(v) or not MIN_SIDE_PX <= v <= MAX_SIDE_PX or v % 8:
            fix = f"use a multiple of 8 between {MIN_SIDE_PX} and {MAX_SIDE_PX}"
            if _is_int(v):
                fix += f", e.g. {min(MAX_SIDE_PX, max(MIN_SIDE_PX, round(v / 8) * 8))}"
            issues.append((side, v, fix))
    if not issues and defaults.hires is not None and row.get("init_image") is None:
        size = (row_value(row, defaults, "width"), row_value(row, defaults, "height"))
        for problem in size_problems(defaults.hires, *size, "hires"):
            issues.append(("width", f"{size[0]}x{size[1]}", problem))
    return issues


def _number_issues(row: dict, defaults: RowDefaults) -> list[Issue]:
    issues = _side_issues(row, defaults)
    steps = row_value(row, defaults, "num_inference_steps")
    if not _is_int(steps) or not 1 <= steps <= MAX_STEPS:
        issues.append(("num_inference_steps", steps, f"use a whole number from 1 to {MAX_STEPS}"))
    count = row_value(row, defaults, "num_images")
    if not _is_int(count) or not 1 <= count <= MAX_IMAGES_PER_ROW:
        fix = f"use a whole number from 1 to {MAX_IMAGES_PER_ROW}"
        issues.append(("num_images", count, fix))
    cfg = row_value(row, defaults, "guidance_scale")
    if not _is_number(cfg) or not 0 <= cfg <= 100:
        issues.append(("guidance_scale", cfg, "use a number from 0 to 100 (7.5 is typical)"))
    seed = row.get("seed")
    if seed is not None and (not _is_int(seed) or not (seed == -1 or 0 <= seed <= SEED_MAX)):
        fix = f"use a whole number from 0 to {SEED_MAX}, or -1/null to derive one"
        issues.append(("seed", seed, fix))
    return issues


def _strength_range_issues(strength: Any, fix: str = "") -> list[Issue]:
    if not _is_number(strength) or not 0 < strength <= 1:
        return [("strength", strength, "img2img strength is the share denoised: use 0 < " + fix)]
    return []


def _strength_issues(row: dict, defaults: RowDefaults) -> list[Issue]:
    strength = row_value(row, defaults, "strength")
    steps = row_value(row, defaults, "num_inference_steps")
    if range_issues := _strength_range_issues(strength, "strength <= 1"):
        return range_issues
    if _is_int(steps) and steps >= 1 and img2img_steps(steps, strength) is None:
        # the one steps x strength policy: too few steps run more; no schedule reaches this
        fix = f"no denoising step reaches a strength this small: use strength >= {MIN_STRENGTH:g}"
        return [("strength", strength, fix)]
    return []


def _init_image_issues(row: dict, defaults: RowDefaults, base_dir: Path | None) -> list[Issue]:
    image = row.get("init_image")
    if image is None:
        return _strength_without_image_issues(row.get("strength"))
    issues = _strength_issues(row, defaults)
    if isinstance(image, dict):  # a datasets Image struct {bytes, path}
        if image_source(image) is None:
            fix = (
                "an image {bytes, path} with neither; a failed row of an earlier run has no "
                "image: keep only the rows whose status is 'ok'"
            )
            return [*issues, ("init_image", image, fix)]
        image = image_source(image)
    return issues + [("init_image", image, fix) for fix in input_image_problems(image, base_dir)]


def _strength_without_image_issues(strength: Any) -> list[Issue]:
    """A row's own strength acts on an init image only: on a row without one it is a mistake
    (a missing init_image, most often), so it is refused rather than ignored. The job's
    default strength is not the row's: it applies to the rows that have an init image."""
    if strength is None:
        return []
    fix = "strength <= 1, or leave it empty (this row has no init_image)"
    if range_issues := _strength_range_issues(strength, fix):
        return range_issues
    fix = (
        "strength is the share of an init image re-noised, and this row has no init_image: "
        "give the row its init_image, or leave strength empty on rows without one"
    )
    return [("strength", strength, fix)]


def _mask_uri_issues(row: dict) -> list[Issue]:
    """A mask_image URI that cannot be read here (`batch.conditioning.inpaint_issues` reads
    local masks and mask bytes by their header; it leaves URIs to the row)."""
    mask = image_source(row.get("mask_image"))
    if not isinstance(mask, str) or not is_uri(mask):
        return []
    return [("mask_image", mask, fix) for fix in input_image_problems(mask, None)]


def _scheduler_issues(scheduler: Any) -> list[Issue]:
    if scheduler is None:
        return []
    if not isinstance(scheduler, str):
        return [("scheduler", scheduler, "use a name string")]
    return [("scheduler", scheduler, message) for message in scheduler_name_problems(scheduler)]


def _is_int(value: Any) -> bool:
    """Whole numbers, including 64.0 (pandas writes nullable int columns as floats)."""
    if isinstance(value, float):
        return value.is_integer()
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return _is_int(value) or (isinstance(value, float) and math.isfinite(value))

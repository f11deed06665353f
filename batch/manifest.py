"""Parquet manifests: read, validate every row before any model loads, expand to requests.

Pure: pyarrow only, no torch. The schema is documented in manifests/SCHEMA.md.
"""

from __future__ import annotations

import glob
import math
import os
import re
import string
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sdfleet.batch.errors import ManifestError
from sdfleet.batch.outputs import URI as _URI
from sdfleet.batch.outputs import output_name
from sdfleet.batch.schedulers import check_scheduler_name
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
MAX_SIDE_PX = 4096
MIN_SIDE_PX = 16
MAX_STEPS = 1000
MAX_IMAGES_PER_ROW = 64
_UNSAFE_ID = re.compile(r'[/\\<>:"|?*\x00-\x1f\x7f]')


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


@dataclass(frozen=True)
class Problem:
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


def _local_manifest_path(spec: str, base_dir: Path | None) -> Path:
    """The spec as an absolute path (Ray workers may run in another directory)."""
    path = Path(os.path.expanduser(spec))
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    return path.resolve()


def _is_glob(spec: str) -> bool:
    return any(ch in spec for ch in "*?[")


def find_manifest_files(spec: str, base_dir: Path | None = None) -> list[str]:
    """A Parquet file, a folder of them, or a glob; relative paths are from `base_dir`. A
    name that exists is taken as it is, even with glob characters in it (``run[1].parquet``)."""
    if _URI.match(spec):
        return _find_remote_files(spec)
    path = _local_manifest_path(spec, base_dir)
    if path.is_dir():
        files = sorted(str(p) for p in path.rglob("*.parquet"))
    elif path.is_file():
        files = [str(path)]
    elif _is_glob(spec):  # only the spec's own characters are a pattern, not base_dir's
        prefix = "" if Path(spec).is_absolute() or base_dir is None else f"{base_dir}/"
        pattern = glob.escape(prefix) + os.path.expanduser(spec)
        files = sorted(str(Path(f).resolve()) for f in glob.glob(pattern, recursive=True))
    else:
        files = []
    if not files:
        raise ManifestError(
            f"manifest: {spec!r} matches no Parquet file (looked at {path}); give a .parquet "
            "file, a folder holding .parquet files, or a glob such as 'data/*.parquet'."
        )
    return files


def manifest_folder(spec: str, base_dir: Path | None = None) -> str | None:
    """The folder that relative init_image paths are read from: the manifest's folder (the
    folder itself when the manifest is one; a file's folder; a glob's folder before its first
    pattern character). None for remote manifests (s3://, ...): give init_image as URIs."""
    if _URI.match(spec):
        if not spec.startswith("file://"):
            return None
        spec, base_dir = spec.removeprefix("file://"), None
    path = _local_manifest_path(spec, base_dir)
    if path.is_dir():
        return str(path)
    if path.is_file() or not _is_glob(spec):
        return str(path.parent)
    fixed = []
    for part in Path(os.path.expanduser(spec)).parts:
        if _is_glob(part):
            break
        fixed.append(part)
    return str(_local_manifest_path(str(Path(*fixed)) if fixed else ".", base_dir))


def check_out_outside_manifest(spec: str, base_dir: Path | None, out: str) -> None:
    """A folder manifest reads every .parquet below it, so OUT (its results) cannot be there."""
    if _URI.match(spec) or "://" in out:
        return
    folder = _local_manifest_path(spec, base_dir)
    if folder.is_dir() and Path(out).resolve().is_relative_to(folder):
        raise ManifestError(
            f"--out {out!r} is inside the manifest folder {str(folder)!r}: a rerun would read "
            "OUT's results/*.parquet as manifest rows. Put OUT outside that folder, or point "
            "manifest at the Parquet files themselves (a file or a glob)."
        )


def _find_remote_files(uri: str) -> list[str]:
    """A file or folder on any pyarrow filesystem (s3://, gs://, file://...)."""
    from pyarrow import fs

    try:
        filesystem, path = fs.FileSystem.from_uri(uri)
        info = filesystem.get_file_info(path)
        if info.type == fs.FileType.Directory:
            found = filesystem.get_file_info(fs.FileSelector(path, recursive=True))
            paths = sorted(i.path for i in found if i.path.endswith(".parquet"))
        else:
            paths = [path] if info.type == fs.FileType.File else []
    except (OSError, pa.ArrowInvalid) as exc:
        raise ManifestError(f"manifest: cannot list {uri!r}: {exc}") from exc
    if not paths:
        raise ManifestError(f"manifest: {uri!r} matches no Parquet file; give a file or a folder")
    scheme = uri.split("://", 1)[0]
    return [f"{scheme}://{p}" if scheme != "file" else f"file://{p}" for p in paths]


def open_parquet(path: str) -> pq.ParquetFile:
    if _URI.match(path):
        from pyarrow import fs

        filesystem, inner = fs.FileSystem.from_uri(path)
        return pq.ParquetFile(filesystem.open_input_file(inner))
    return pq.ParquetFile(path)


def iter_manifest_rows(files: list[str], batch_rows: int = 4096) -> Iterator[tuple[str, int, dict]]:
    """Yield (file, index-in-file, row dict) streaming, without loading whole files."""
    for path in files:
        try:
            parquet = open_parquet(path)
        except (OSError, pa.ArrowInvalid) as exc:
            raise ManifestError(f"manifest: cannot read {path!r} as Parquet: {exc}") from exc
        index = 0
        for record_batch in parquet.iter_batches(batch_size=batch_rows):
            for row in record_batch.to_pylist():
                yield path, index, row
                index += 1


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

    reserved = set(result_types()) - set(KNOWN_COLUMNS)
    first_seen: dict[str, tuple[pa.DataType, str]] = {}
    for path in files:
        try:
            schema = open_parquet(path).schema_arrow
        except (OSError, pa.ArrowInvalid) as exc:
            raise ManifestError(f"manifest: cannot read {path!r} as Parquet: {exc}") from exc
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
        row_problems = check_row(row, defaults, source, index, base_dir)
        row_id = row.get("id")
        if not row_problems:
            count = _num_images(row, defaults)
            row_problems = unique.check(row, count, source, index)
            scan.outputs += count
        scan.total_bad += bool(row_problems)
        scan.problems.extend(row_problems[: max(0, max_problems - len(scan.problems))])
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

    def check(self, row: dict, count: int, source: str, index: int) -> list[Problem]:
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


def _num_images(row: dict, defaults: RowDefaults) -> int:
    value = row.get("num_images")
    return int(defaults.num_images if value is None else value)


def check_row(
    row: dict,
    defaults: RowDefaults,
    source: str = "<manifest>",
    index: int = 0,
    base_dir: Path | None = None,
) -> list[Problem]:
    """Every problem of one row, each naming the column, value and fix."""
    row_id = row.get("id")
    out: list[Problem] = []

    def bad(column: str, value: Any, fix: str) -> None:
        out.append(Problem(source, index, row_id, column, value, fix))

    _check_id(row_id, bad)
    _check_prompt(row, defaults, bad)
    _check_numbers(row, defaults, bad)
    _check_init_image(row, defaults, base_dir, bad)
    scheduler = _value(row, defaults, "scheduler")
    if scheduler is not None:
        if not isinstance(scheduler, str) or (msg := check_scheduler_name(scheduler)):
            bad("scheduler", scheduler, msg if isinstance(scheduler, str) else "use a name string")
    return out


def _value(row: dict, defaults: RowDefaults, column: str) -> Any:
    value = row.get(column)
    return getattr(defaults, column) if value is None else value


def _check_id(row_id: Any, bad) -> None:
    if row_id is None or row_id == "":
        bad("id", row_id, "every row needs a non-empty string id")
    elif not isinstance(row_id, str):
        bad("id", row_id, "ids must be strings; cast the column to string")
    elif _UNSAFE_ID.search(row_id) or row_id.startswith(".") or row_id != row_id.strip():
        bad(
            "id",
            row_id,
            "ids name files: no '/', '\\', control characters, <>:\"|?*, leading "
            "'.' or surrounding spaces; use letters, digits, '-', '_' and inner '.'",
        )
    elif len(row_id) > 200:
        bad("id", row_id, "ids name files: use at most 200 characters")


def _check_template(row: dict, template: str, defaults: RowDefaults, bad) -> None:
    values = _template_values(row, defaults)
    fields = _template_fields(template)
    for name in fields:
        if name not in values:
            bad(
                name,
                None,
                f"prompt_template uses {{{name}}} but the manifest has no such "
                "column; add it or change the template",
            )
            return
        if values[name] is None or (name == "prompt" and not str(values[name]).strip()):
            bad(
                name,
                row.get(name),
                f"prompt_template uses {{{name}}}, which is empty in "
                "this row; fill it (or give the job a default)",
            )
            return
    if not template.format_map(values).strip():
        bad(
            fields[0],
            row.get(fields[0]),
            f"prompt_template {template!r} makes a blank prompt from this row; fill its columns",
        )


def _check_prompt(row: dict, defaults: RowDefaults, bad) -> None:
    prompt = _value(row, defaults, "prompt")
    if defaults.prompt_template:
        _check_template(row, defaults.prompt_template, defaults, bad)
    elif not isinstance(prompt, str) or not prompt.strip():
        bad(
            "prompt", row.get("prompt"), "give a prompt in the row or a default `prompt` in the job"
        )
    negative = row.get("negative_prompt")
    if negative is not None and not isinstance(negative, str):
        bad("negative_prompt", negative, "negative_prompt must be a string")


def _template_values(row: dict, defaults: RowDefaults) -> dict:
    """The row's columns, with the job's default for a known column the row leaves empty (a
    template's {prompt} is the job's `defaults.prompt` where the row has none)."""
    filled = {
        name: getattr(defaults, name)
        for name in KNOWN_COLUMNS
        if row.get(name) is None and getattr(defaults, name, None) is not None
    }
    return {**row, **filled}


def _template_fields(template: str) -> list[str]:
    return [name for _, name, _, _ in string.Formatter().parse(template) if name]


def check_prompt_template(template: str) -> str | None:
    """None if `template` is plain `{column}` fields and text, else what is wrong and the fix."""
    try:
        fields = list(string.Formatter().parse(template))
    except ValueError as exc:
        return f"{exc} in {template!r}; write fields as {{column}} and a literal brace as {{{{"
    for _, name, spec, conversion in fields:
        if name is not None and (not name.isidentifier() or spec or conversion):
            return (
                f"field {{{name}}} in {template!r} is not a plain column name; use "
                "{column} only (no attributes, indexes, formats or conversions)"
            )
    if not any(name for _, name, _, _ in fields):
        return f"{template!r} names no column; use e.g. '{{prompt}}, {{style}} style'"
    return None


def _check_numbers(row: dict, defaults: RowDefaults, bad) -> None:
    for side in ("width", "height"):
        v = _value(row, defaults, side)
        if not _is_int(v) or not MIN_SIDE_PX <= v <= MAX_SIDE_PX or v % 8:
            bad(
                side,
                v,
                f"use a multiple of 8 between {MIN_SIDE_PX} and {MAX_SIDE_PX}"
                + (
                    f", e.g. {min(MAX_SIDE_PX, max(MIN_SIDE_PX, round(v / 8) * 8))}"
                    if _is_int(v)
                    else ""
                ),
            )
    steps = _value(row, defaults, "num_inference_steps")
    if not _is_int(steps) or not 1 <= steps <= MAX_STEPS:
        bad("num_inference_steps", steps, f"use a whole number from 1 to {MAX_STEPS}")
    count = _value(row, defaults, "num_images")
    if not _is_int(count) or not 1 <= count <= MAX_IMAGES_PER_ROW:
        bad("num_images", count, f"use a whole number from 1 to {MAX_IMAGES_PER_ROW}")
    cfg = _value(row, defaults, "guidance_scale")
    if not _is_number(cfg) or not 0 <= cfg <= 100:
        bad("guidance_scale", cfg, "use a number from 0 to 100 (7.5 is typical)")
    seed = row.get("seed")
    if seed is not None and (not _is_int(seed) or not (seed == -1 or 0 <= seed <= SEED_MAX)):
        bad("seed", seed, f"use a whole number from 0 to {SEED_MAX}, or -1/null to derive one")


def _check_init_image(row: dict, defaults: RowDefaults, base_dir: Path | None, bad) -> None:
    image = row.get("init_image")
    if image is not None:
        strength = _value(row, defaults, "strength")
        steps = _value(row, defaults, "num_inference_steps")
        if not _is_number(strength) or not 0 < strength <= 1:
            bad(
                "strength",
                strength,
                "img2img strength is the share denoised: use 0 < strength <= 1",
            )
        elif _is_int(steps) and steps >= 1 and int(steps * strength) < 1:
            # diffusers runs int(steps * strength) steps; none would be an error mid-batch
            bad(
                "strength",
                strength,
                f"with num_inference_steps {steps} img2img would run int({steps} x {strength}) "
                f"= 0 steps: use strength >= {1 / steps:.3g} or num_inference_steps >= "
                f"{math.ceil(1 / strength)}",
            )
    if image is None or isinstance(image, bytes):
        if image == b"":
            bad("init_image", image, "empty bytes; give the encoded image or a path")
        return
    if not isinstance(image, str):
        bad("init_image", image, "give encoded image bytes or a path/URI string")
    elif not _URI.match(image):
        path = resolve_local_path(image, base_dir)
        if not path.is_file() or not os.access(path, os.R_OK):
            bad(
                "init_image",
                image,
                f"no readable file at {path}; fix the path (relative paths "
                "are from the manifest's folder)",
            )


def resolve_local_path(value: str, base_dir: Path | None) -> Path:
    path = Path(os.path.expanduser(value))
    return path if path.is_absolute() or base_dir is None else base_dir / path


def _is_int(value: Any) -> bool:
    """Whole numbers, including 64.0 (pandas writes nullable int columns as floats)."""
    if isinstance(value, float):
        return value.is_integer()
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return _is_int(value) or (isinstance(value, float) and math.isfinite(value))


def expand_row(
    row: dict, defaults: RowDefaults, job_seed: int, base_dir: Path | None = None
) -> list[GenRequest]:
    """One GenRequest per variant; the row must have passed `check_row`."""
    count = _num_images(row, defaults)
    carried = {k: v for k, v in row.items() if k not in KNOWN_COLUMNS}
    prompt = _value(row, defaults, "prompt")
    if defaults.prompt_template:
        prompt = defaults.prompt_template.format_map(_template_values(row, defaults))
    image = row.get("init_image")
    if isinstance(image, str) and not _URI.match(image):
        image = str(resolve_local_path(image, base_dir))
    base = GenRequest(
        row_id=row["id"],
        variant=0,
        output_name="",
        prompt=prompt,
        negative_prompt=_value(row, defaults, "negative_prompt") or "",
        seed=0,
        num_inference_steps=int(_value(row, defaults, "num_inference_steps")),
        guidance_scale=float(_value(row, defaults, "guidance_scale")),
        width=int(_value(row, defaults, "width")),
        height=int(_value(row, defaults, "height")),
        scheduler=_value(row, defaults, "scheduler"),
        init_image=image,
        strength=float(_value(row, defaults, "strength")) if image is not None else None,
        carried=carried,
    )
    return [
        replace(
            base,
            variant=k,
            output_name=output_name(row["id"], k, count),
            seed=_row_seed(row, defaults, job_seed, k),
        )
        for k in range(count)
    ]


def _row_seed(row: dict, defaults: RowDefaults, job_seed: int, variant: int) -> int:
    """A row seed s gives variants s, s+1, ...; no seed derives one per (id, variant)."""
    seed = row.get("seed")
    if seed is None or seed == -1:
        seed = defaults.seed
        if seed is None:
            return derive_seed(job_seed, row["id"], variant)
    return (int(seed) + variant) & SEED_MAX


def table_from_rows(rows: list[dict]) -> pa.Table:
    """Rows -> Table over the union of their keys (`from_pylist` alone reads row 0's keys only)."""
    names = list(dict.fromkeys(key for row in rows for key in row))
    return pa.Table.from_pylist([{name: row.get(name) for name in names} for row in rows])

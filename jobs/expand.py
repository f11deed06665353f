"""`sdfleet expand`: a prompt matrix (YAML) -> a Parquet manifest, one row per combination x seed.

```yaml
kind: matrix
seed: 42                       # the k-th image seed is derive_seed(42, "seed", k)
axes:                          # in order; the first varies slowest
  product: {table: products.csv, column: product, key: sku}   # a catalogue's column
  style: [studio photo, watercolor]                          # a list of values
  aspect: {aspects: ["1:1", "2:3"], preset: sdxl}            # sets width and height
  guidance_scale: [4, 7.5]     # an axis named for a manifest column sets that column
prompt: "{product}, {style}, {soft|hard} light, __lighting__"  # Dynamic Prompts syntax
negative_prompt: "blurry"
wildcards: wildcards/          # __name__ -> wildcards/name.txt (from the matrix's folder)
seeds: 4                       # per combination (or a list of seeds)
sample: {size: 200, seed: 1}   # a seeded random sample of the combinations (optional)
max_rows: 100000               # more rows than this needs `sample`
```

Each row carries its axis values (and a table axis's other columns) as columns. Its id is made
from the axis values (a readable slug and a hash of the exact values), never from its position,
so a matrix grown by one value re-expands to the same ids for the old rows and a rerun into the
same OUT makes only the new ones. Seeds are shared across combinations by default (as in A1111's
XYZ plot: cells differ only by their axes); `seeds_vary_by_combination: true` derives them from
each combination instead. Every check runs before anything is written; the file is written
whole (temporary name, then a rename).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field

from sdfleet.batch.errors import ConfigError
from sdfleet.batch.seeds import SEED_MAX, derive_seed
from sdfleet.jobs.aspects import aspect_size
from sdfleet.jobs.dynamic_prompts import PromptSampler, check_template_axes, wildcard_problems
from sdfleet.jobs.spec import Strict, validate_model
from sdfleet.jobs.yaml_files import read_yaml_file

logger = logging.getLogger(__name__)

Scalar = str | int | float | bool
# Manifest columns the matrix makes itself. An axis (or a table's carried column) named for any
# other manifest column (init_image, strength, guidance_scale, num_inference_steps, scheduler)
# sets that column.
RESERVED = {
    "id": "ids are made from the axis values",
    "prompt": "write the `prompt:` template instead",
    "negative_prompt": "write the `negative_prompt:` template instead",
    "seed": "use `seeds:` (a count or a list)",
    "seed_index": "use `seeds:`",
    "width": "use an aspect axis ({aspects: [...]}) for sizes",
    "height": "use an aspect axis ({aspects: [...]}) for sizes",
    "num_images": "use `seeds:` for several images of one combination",
}


class ValuesAxis(Strict):
    values: list[Scalar]


class TableAxis(Strict):
    table: str = Field(description="a .csv or .parquet file (relative to the matrix's folder)")
    column: str | None = Field(None, description="the value used in templates; default: axis name")
    key: str | None = Field(None, description="the column ids are made from; default: column")
    carry: list[str] | None = Field(None, description="columns carried; default: all others")


class AspectAxis(Strict):
    aspects: list[str]
    preset: Literal["sd15", "sdxl"] = "sd15"
    scale: float = Field(1.0, gt=0, le=8, description="e.g. 0.125 for 64 px toy models")


class Sample(Strict):
    size: int = Field(ge=1)
    seed: int = 0


class Matrix(Strict):
    kind: Literal["matrix"] = "matrix"
    name: str | None = None
    seed: int = Field(0, ge=0)
    axes: dict[str, list[Scalar] | ValuesAxis | TableAxis | AspectAxis] = Field(min_length=1)
    prompt: str = Field(min_length=1)
    negative_prompt: str | None = None
    wildcards: str | None = None
    seeds: int | list[int] = Field(1, description="a count, or the seeds themselves")
    seeds_vary_by_combination: bool = False
    sample: Sample | None = None
    max_rows: int = Field(100_000, ge=1)


@dataclass(frozen=True)
class Entry:
    key: Any  # what the id is made from
    columns: dict[str, Any]  # what the row gets (the axis column first)


@dataclass(frozen=True)
class Axis:
    name: str
    entries: list[Entry]


def load_matrix(path: Path) -> Matrix:
    data = read_yaml_file(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a matrix file is a YAML mapping, got {type(data).__name__}")
    return validate_model(Matrix, data, str(path))


def expand_matrix(path: str | Path) -> pa.Table:
    """Read, check and expand a matrix file (see the module doc); nothing is written."""
    # 1. the spec and its axes
    path = Path(path)
    matrix = load_matrix(path)
    axes = [build_axis(name, spec, path) for name, spec in matrix.axes.items()]
    check_column_names(axes, str(path))
    # 2. templates and wildcards
    wildcard_dir = resolve_wildcards(matrix, path)
    sampler = PromptSampler(wildcard_dir)
    check_templates(matrix, axes, sampler, wildcard_dir, str(path))
    # 3. which combinations, then one row per combination x seed
    combos = choose_combinations(matrix, axes, str(path))
    return pa.Table.from_pydict(build_columns(matrix, axes, combos, sampler))


def build_axis(name: str, spec: Any, path: Path) -> Axis:
    where = f"{path}: axes.{name}"
    if name in RESERVED:
        raise ConfigError(f"{where}: '{name}' cannot be an axis; {RESERVED[name]}")
    if isinstance(spec, TableAxis):
        entries = table_entries(name, spec, path)
    elif isinstance(spec, AspectAxis):
        entries = [
            Entry(label, dict(zip((name, "width", "height"), (label, *_size(label, spec, where)))))
            for label in spec.aspects
        ]
    else:
        values = spec.values if isinstance(spec, ValuesAxis) else spec
        check_one_type(values, where)
        entries = [Entry(value, {name: value}) for value in values]
    if not entries:
        raise ConfigError(f"{where} has no values; give at least one, or remove the axis")
    check_unique([entry.key for entry in entries], where)
    return Axis(name, entries)


def _size(label: str, spec: AspectAxis, where: str) -> tuple[int, int]:
    return aspect_size(label, spec.preset, spec.scale, where)


def check_one_type(values: list[Any], where: str) -> None:
    kinds = {"number" if isinstance(v, int | float) and not isinstance(v, bool) else
             type(v).__name__ for v in values}  # fmt: skip
    if len(kinds) > 1:
        raise ConfigError(
            f"{where}: values mix {' and '.join(sorted(kinds))} ({values!r}); one axis holds one "
            "kind of value: quote the numbers to make them text"
        )


def check_unique(keys: list[Any], where: str) -> None:
    seen: set[str] = set()
    for key in keys:
        text = json.dumps(key)
        if text in seen:
            raise ConfigError(f"{where}: {key!r} appears twice; ids are made from the values")
        seen.add(text)


def table_entries(name: str, spec: TableAxis, path: Path) -> list[Entry]:
    """One entry per table row: the `column` value under the axis name, plus carried columns."""
    where = f"{path}: axes.{name}"
    table = read_table(path.parent / spec.table, where)
    column, key = spec.column or name, spec.key or spec.column or name
    carry = spec.carry if spec.carry is not None else [c for c in table.column_names if c != column]
    for wanted in [column, key, *carry]:
        if wanted not in table.column_names:
            raise ConfigError(
                f"{where}: {spec.table} has no column {wanted!r}; its columns: "
                f"{', '.join(table.column_names)}"
            )
    rows = table.select(list(dict.fromkeys([column, key, *carry]))).to_pylist()
    for index, row in enumerate(rows):
        if row[column] is None or row[key] is None:
            empty = column if row[column] is None else key
            raise ConfigError(f"{where}: {spec.table} row #{index} has no {empty!r}; fill it")
    carried = [c for c in carry if c != column]
    return [Entry(row[key], {name: row[column]} | {c: row[c] for c in carried}) for row in rows]


def read_table(file: Path, where: str) -> pa.Table:
    if not file.is_file():
        raise ConfigError(f"{where}: table {str(file)!r} does not exist; fix the path")
    try:
        if file.suffix.lower() == ".csv":
            from pyarrow import csv

            return csv.read_csv(file)
        if file.suffix.lower() == ".parquet":
            return pq.read_table(file)
    except (pa.ArrowException, OSError) as exc:
        raise ConfigError(f"{where}: cannot read {file}: {exc}") from None
    raise ConfigError(f"{where}: table {file.name!r}: use a .csv or .parquet file")


def check_column_names(axes: list[Axis], source: str) -> None:
    """Every output column comes from one axis, and none is a column the matrix makes."""
    owner: dict[str, str] = {}
    for axis in axes:
        for column in axis.entries[0].columns:
            if (column in RESERVED and column not in ("width", "height")) or column in owner:
                by = owner.get(column, "the matrix")
                raise ConfigError(
                    f"{source}: axes.{axis.name} gives a column {column!r}, which {by} gives "
                    "already; rename the axis or leave the column out of `carry`"
                )
            owner[column] = f"axes.{axis.name}"


def resolve_wildcards(matrix: Matrix, path: Path) -> Path | None:
    if matrix.wildcards is None:
        return None
    folder = path.parent / matrix.wildcards
    if not folder.is_dir():
        raise ConfigError(f"{path}: wildcards: {str(folder)!r} is not a folder; fix the path")
    return folder


def check_templates(
    matrix: Matrix, axes: list[Axis], sampler: PromptSampler, wildcards: Path | None, source: str
) -> None:
    known = list(dict.fromkeys(c for axis in axes for c in axis.entries[0].columns))
    templates = [("prompt", matrix.prompt)]
    templates += [("negative_prompt", matrix.negative_prompt)] if matrix.negative_prompt else []
    for field, template in templates:
        check_template_axes(template, field, known, source)
    texts = [t for _, t in templates] + [
        str(v) for axis in axes for e in axis.entries for v in e.columns.values()
    ]
    if problems := wildcard_problems(texts, sampler, wildcards):
        raise ConfigError(f"{source}: wildcards:\n  " + "\n  ".join(problems))


def seed_list(matrix: Matrix, source: str) -> list[int]:
    if isinstance(matrix.seeds, list):
        if not matrix.seeds or any(not 0 <= s <= SEED_MAX for s in matrix.seeds):
            raise ConfigError(f"{source}: seeds: {matrix.seeds!r}: give seeds from 0 to {SEED_MAX}")
        check_unique(matrix.seeds, f"{source}: seeds")
        return list(matrix.seeds)
    if matrix.seeds < 1:
        raise ConfigError(f"{source}: seeds: {matrix.seeds}: give a count of at least 1")
    return [derive_seed(matrix.seed, "seed", k) for k in range(matrix.seeds)]


def choose_combinations(matrix: Matrix, axes: list[Axis], source: str) -> list[tuple[int, ...]]:
    """Entry indices per axis: the whole product, or `sample.size` of it drawn with its seed."""
    sizes = [len(axis.entries) for axis in axes]
    total = math.prod(sizes)
    seeds = len(seed_list(matrix, source))
    shape = " x ".join(f"{n} {a.name}" for n, a in zip(sizes, axes)) + f" x {seeds} seed(s)"
    if matrix.sample is None:
        if total * seeds > matrix.max_rows:
            raise ConfigError(
                f"{source}: {shape} = {total * seeds} rows, over max_rows {matrix.max_rows}; "
                "set `sample: {size: N}` to draw N combinations, or raise max_rows"
            )
        return list(itertools.product(*(range(n) for n in sizes)))
    size = matrix.sample.size
    if size > total or size * seeds > matrix.max_rows:
        raise ConfigError(
            f"{source}: sample.size {size}: the axes make {total} combinations ({shape}) and "
            f"max_rows is {matrix.max_rows}; ask for at most "
            f"{min(total, matrix.max_rows // seeds)}"
        )
    picked = sorted(random.Random(matrix.sample.seed).sample(range(total), size))
    return [_unravel(index, sizes) for index in picked]


def _unravel(index: int, sizes: list[int]) -> tuple[int, ...]:
    digits = []
    for size in reversed(sizes):
        index, digit = divmod(index, size)
        digits.append(digit)
    return tuple(reversed(digits))


def build_columns(
    matrix: Matrix, axes: list[Axis], combos: list[tuple[int, ...]], sampler: PromptSampler
) -> dict[str, list]:
    seeds = seed_list(matrix, "matrix")
    columns: dict[str, list] = {"id": [], "prompt": [], "seed": [], "seed_index": []}
    if matrix.negative_prompt:
        columns["negative_prompt"] = []
    for combo in combos:
        entries = [axis.entries[i] for axis, i in zip(axes, combo)]
        values = {k: v for entry in entries for k, v in entry.columns.items()}
        base_id = combination_id(axes, entries)
        for k, seed in enumerate(seeds):
            if matrix.seeds_vary_by_combination:
                seed = derive_seed(matrix.seed, base_id, k)
            columns["id"].append(f"{base_id}-{_seed_suffix(matrix, k, seed)}")
            columns["prompt"].append(sampler.fill(matrix.prompt, values, seed))
            if matrix.negative_prompt:
                columns["negative_prompt"].append(
                    sampler.fill(matrix.negative_prompt, values, seed)
                )
            columns["seed"].append(seed)
            columns["seed_index"].append(k)
            for name, value in values.items():
                columns.setdefault(name, []).append(value)
    return columns


def _seed_suffix(matrix: Matrix, k: int, seed: int) -> str:
    """s<k> for a seed count (growing the count keeps the old ids), the seed for a list."""
    return f"seed{seed}" if isinstance(matrix.seeds, list) else f"s{k}"


_SLUG = re.compile(r"[^a-z0-9]+")


def combination_id(axes: list[Axis], entries: list[Entry]) -> str:
    """A readable slug of the keys and 8 hex digits of a hash of the exact (axis, key) pairs
    (axes sorted by name), so ids are unique and independent of positions and axis order."""
    exact = json.dumps(sorted((a.name, e.key) for a, e in zip(axes, entries)), default=str)
    digest = hashlib.blake2b(exact.encode(), digest_size=4).hexdigest()
    slugs = [_SLUG.sub("-", str(e.key).lower()).strip("-")[:32] or "x" for e in entries]
    return f"{'_'.join(slugs)[:150]}-{digest}"


def write_manifest(table: pa.Table, path: Path) -> None:
    """The whole file or nothing: written to a temporary name, then renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def is_matrix_spec(spec: str) -> bool:
    return "://" not in spec and spec.lower().endswith((".yaml", ".yml"))


def manifest_files(spec: str, base_dir: Path, out_uri: str) -> list[str]:
    """A batch job's manifest files: the Parquet files `manifest:` names, or for a matrix file
    the manifest it expands to (see `matrix_manifest_files`)."""
    if is_matrix_spec(spec):
        return matrix_manifest_files(spec, base_dir, out_uri)
    from sdfleet.batch.sources import find_manifest_files

    return find_manifest_files(spec, base_dir=base_dir)


def matrix_manifest_files(spec: str, base_dir: Path, out_uri: str) -> list[str]:
    """A batch job's `manifest:` naming a matrix: expanded into OUT/matrix/<stem>-<hash>.parquet
    (in OUT, so every Ray node reads it; named by its content, so nothing is written over)."""
    from sdfleet.batch.outputs import OutputDir

    path = Path(spec) if Path(spec).is_absolute() else base_dir / spec
    if not path.is_file():
        raise ConfigError(f"manifest: matrix file {str(path)!r} does not exist; fix the path")
    sink = pa.BufferOutputStream()
    pq.write_table(expand_matrix(path), sink)
    data = sink.getvalue().to_pybytes()
    relative = f"matrix/{path.stem}-{hashlib.sha256(data).hexdigest()[:12]}.parquet"
    out = OutputDir(out_uri)
    if not out.exists(relative):
        out.write_bytes(relative, data)
    return [out.child_uri(relative)]


def register(subparsers) -> None:
    """`sdfleet expand MATRIX.yaml -o manifest.parquet`."""
    expand = subparsers.add_parser("expand", help="expand a prompt matrix into a manifest")
    expand.add_argument("matrix", type=Path)
    expand.add_argument("-o", "--output", type=Path, required=True, help="the .parquet to write")
    expand.set_defaults(handler=cmd_expand)


def cmd_expand(args) -> int:
    if not args.matrix.is_file():
        raise ConfigError(f"{args.matrix}: no such matrix file")
    if args.output.suffix.lower() != ".parquet":
        raise ConfigError(f"-o {args.output}: the manifest is a .parquet file; name it so")
    table = expand_matrix(args.matrix)
    try:
        write_manifest(table, args.output)
    except OSError as exc:
        raise ConfigError(f"-o {args.output}: cannot write it ({exc}); pick another path") from None
    print(f"{args.output}: {table.num_rows} rows, columns {', '.join(table.column_names)}")
    return 0

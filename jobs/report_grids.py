"""`sdfleet report OUT --grid X,Y[,Z] [--where COL=VALUE]`: XYZ grids as labelled PNGs.

Each cell is the first ok output (in id order) whose X, Y (and Z) values match, among the
rows that pass every `--where`; a cell no row fills is grey. Fix the other axes with
`--where` (e.g. `--where seed_index=0`) to compare like with like, as A1111's XYZ plot does.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pyarrow as pa

from sdfleet.batch.errors import ConfigError
from sdfleet.jobs.report_media import GridSpec, draw_grid, grid_values

logger = logging.getLogger(__name__)

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def parse_grid(text: str) -> list[str]:
    axes = [name.strip() for name in text.split(",") if name.strip()]
    if not 2 <= len(axes) <= 3 or len(set(axes)) != len(axes):
        raise ConfigError(
            f"--grid {text!r}: name two or three different columns, e.g. style,aspect"
        )
    return axes


def parse_where(items: list[str]) -> dict[str, str]:
    where = {}
    for item in items:
        column, sep, value = item.partition("=")
        if not sep or not column.strip():
            raise ConfigError(f"--where {item!r}: write COLUMN=VALUE, e.g. seed_index=0")
        where[column.strip()] = value
    return where


def check_grid_columns(table: pa.Table, grids: list[list[str]], where: dict[str, str]) -> None:
    """Before anything is drawn: every named column exists."""
    names = table.column_names
    for column in [c for axes in grids for c in axes] + list(where):
        if column not in names:
            from sdfleet.batch.errors import suggest_name

            raise ConfigError(
                f"report: no column {column!r} in the results{suggest_name(column, names)}; "
                f"columns: {', '.join(names)}"
            )


def write_grids(
    table: pa.Table, out: Path, dest: Path, grids: list[list[str]], where: dict[str, str]
) -> list[str]:
    """One PNG per --grid under dest/grids/; returns their paths relative to dest."""
    check_grid_columns(table, grids, where)
    rows = [
        row
        for row in table.to_pylist()
        if row.get("status") == "ok" and all(str(row.get(c)) == v for c, v in where.items())
    ]
    if not rows:
        said = " and ".join(f"{c}={v}" for c, v in where.items()) or "any filter"
        raise ConfigError(f"report: --grid: no ok rows (with {said}) to draw; check --where")
    (dest / "grids").mkdir(exist_ok=True)
    written = []
    for axes in grids:
        spec = grid_spec(rows, axes, out)
        suffix = "".join(f"_{c}={v}" for c, v in where.items())
        name = _UNSAFE.sub("-", "xyz_" + "_".join(axes) + suffix)[:150] + ".png"
        draw_grid(spec, dest / "grids" / name)
        written.append(f"grids/{name}")
    return written


def grid_spec(rows: list[dict], axes: list[str], out: Path) -> GridSpec:
    x_name, y_name = axes[0], axes[1]
    z_name = axes[2] if len(axes) == 3 else None
    xs = grid_values([r.get(x_name) for r in rows])
    ys = grid_values([r.get(y_name) for r in rows])
    zs = grid_values([r.get(z_name) for r in rows]) if z_name else [None]
    first: dict[tuple, Path] = {}
    for row in rows:
        key = (row.get(z_name) if z_name else None, row.get(y_name), row.get(x_name))
        first.setdefault(key, out / row["image_path"])
    cells = [[[first.get((z, y, x)) for x in xs] for y in ys] for z in zs]
    return GridSpec(
        x_name, y_name, z_name, [str(x) for x in xs], [str(y) for y in ys], [str(z) for z in zs],
        cells,
    )  # fmt: skip

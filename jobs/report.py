"""`sdfleet report OUT`: a static HTML report of a run, opened from disk (no server).

```
OUT/report/index.html       the page (assets/ beside it); opens from file://
OUT/report/data/*.js        the rows as script files (a file:// page may not fetch JSON):
                            index.js (filter columns, dictionary-coded), detail-BUILD-NNNN.js (every
                            column and the infotext of 500 rows, loaded when a row is opened),
                            summary.js, clips.js
OUT/report/thumbs/          one JPEG per output, made once (see jobs/report_media.py)
OUT/report/grids/*.png      XYZ grids asked for with --grid, labelled as A1111 draws them
OUT/report/plots/<clip>.png an animation clip's schedules (jobs/plot.py)
```

Made again at any time (while a run goes on, or after it resumed): only new or changed images
get a thumbnail, so a second report of 100k rows opens no image it has seen. Every page shows
at most `page_size` thumbnails, and the browser filters dictionary codes, not strings.
"""

from __future__ import annotations

import logging
import os
import time
from importlib import resources
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sdfleet.batch.errors import ConfigError
from sdfleet.jobs.report_files import ReportResult, read_json, write_bytes, write_js
from sdfleet.jobs.report_media import ThumbCache, source_thumb_name

logger = logging.getLogger(__name__)

DETAIL_ROWS = 500
MAX_CODED_VALUES = 5000  # a column with more distinct values is shown per row, not filtered
# Result columns about where and how fast a row ran: in the detail view, never filters.
NOT_FILTERS = {
    "output_id", "image_path", "sha256", "seconds", "node", "worker", "device", "gpu_ids",
    "cpu_threads", "ray_node_id", "init_image", "negative_prompt", "error", "model", "id",
    "mask_image", "control_image", "inputs_sha256",
}  # fmt: skip
MARKER = ".sdfleet-report"


def out_kind(out: Path) -> str:
    """'batch' or 'animation', or a ConfigError when `out` is not an OUT sdfleet wrote."""
    if not out.is_dir():
        raise ConfigError(f"report: {str(out)!r} is not a folder; give the OUT of `sdfleet run`")
    summary = read_json(out / "summary.json")
    job_text = (
        (out / "job.yaml").read_text(errors="replace") if (out / "job.yaml").is_file() else ""
    )
    if (out / "results").is_dir() or job_text.startswith("job:"):
        return "batch"
    if "clips" in summary or "kind: animation" in job_text:
        return "animation"
    raise ConfigError(
        f"report: {str(out)!r} is not an sdfleet OUT (no job.yaml, results/ or summary.json); "
        "give the folder that `sdfleet run --out` wrote"
    )


def build_report(
    out: Path,
    dest: Path | None = None,
    price_per_gpu_hour: float | None = None,
    grids: list[list[str]] | None = None,
    where: dict[str, str] | None = None,
    page_size: int = 100,
) -> ReportResult:
    """Write (or bring up to date) the report of `out` into `dest` (default OUT/report)."""
    # 1. checks: nothing is written for a folder that is no OUT, or a dest that is no report
    out = Path(out).resolve()
    kind = out_kind(out)
    dest = Path(dest).resolve() if dest else out / "report"
    check_dest(dest)
    result = ReportResult(dest, kind)
    table = read_result_rows(out) if kind == "batch" else None
    if grids and table is not None:
        from sdfleet.jobs.report_grids import check_grid_columns

        check_grid_columns(table, grids, where or {})
    # 2. the page and its assets
    copy_assets(dest)
    (dest / MARKER).write_text("made by sdfleet report\n")
    (dest / "data").mkdir(exist_ok=True)
    out_rel = Path(os.path.relpath(out, dest)).as_posix()
    summary = read_json(out / "summary.json")
    # 3. rows, thumbnails, grids (batch) or clips (animation)
    if table is not None:
        cache = ThumbCache(dest / "thumbs")
        write_batch_data(table, out, dest, cache, result)
        cache.save()
        result.thumbs_made, result.thumbs_reused = cache.made, cache.reused
        if grids:
            from sdfleet.jobs.report_grids import write_grids

            result.grids = write_grids(table, out, dest, grids, where or {})
    else:
        write_js(dest / "data" / "index.js", "SDF_INDEX", {"n": 0, "columns": {}})
    if kind == "animation":
        from sdfleet.jobs.report_clips import write_clips_data

        write_clips_data(out, dest, summary, result)
    else:
        write_js(dest / "data" / "clips.js", "SDF_CLIPS", [])
    # 4. the summary (with the cost at the asked price)
    meta = {
        "kind": kind,
        "out": out_rel,
        "page_size": page_size,
        "generated_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        "grids": result.grids,
        "summary": summary,
        "cost": report_cost(summary, price_per_gpu_hour),
        "job": job_header(out),
    }
    write_js(dest / "data" / "summary.js", "SDF_SUMMARY", meta)
    return result


def check_dest(dest: Path) -> None:
    if dest.exists() and not dest.is_dir():
        raise ConfigError(f"report: -o {str(dest)!r} is a file; give a folder")
    if dest.is_dir() and any(dest.iterdir()) and not (dest / MARKER).is_file():
        raise ConfigError(
            f"report: {str(dest)!r} holds other files; give an empty or new folder (or an "
            "earlier report's) with -o"
        )


def copy_assets(dest: Path) -> None:
    assets = resources.files("sdfleet.jobs") / "report_assets"
    (dest / "assets").mkdir(parents=True, exist_ok=True)
    for item in assets.iterdir():
        if item.name == "index.html":
            write_bytes(dest / "index.html", item.read_bytes())
        elif item.is_file() and item.name.endswith((".js", ".css")):
            write_bytes(dest / "assets" / item.name, item.read_bytes())


def read_result_rows(out: Path) -> pa.Table:
    """Every committed result (no image bytes), one row per output_id (a retried row's last
    result), sorted by id and variant."""
    parts = sorted((out / "results").glob("**/*.parquet")) if (out / "results").is_dir() else []
    tables = []
    for part in parts:
        handle = pq.ParquetFile(part)
        names = [n for n in handle.schema_arrow.names if n != "image"]
        tables.append(handle.read(columns=names))
    if not tables:
        return pa.table({"output_id": pa.array([], pa.string())})
    table = pa.concat_tables(tables, promote_options="permissive").combine_chunks()
    position = pa.array(range(table.num_rows), pa.int64())
    last = table.append_column("_pos", position).group_by("output_id").aggregate([("_pos", "max")])
    table = table.take(last["_pos_max"])  # one row per output: its last result
    keys = [(k, "ascending") for k in ("id", "variant") if k in table.column_names]
    return table.take(pc.sort_indices(table, sort_keys=keys or [("output_id", "ascending")]))


def write_batch_data(
    table: pa.Table, out: Path, dest: Path, cache: ThumbCache, result: ReportResult
) -> None:
    """data/index.js (what the page filters on) and data/detail-BUILD-NNNN.js (what a row
    shows)."""
    rows = table.to_pylist()
    thumbs, infotexts, sources = [], [], []
    for row in rows:
        ok = row.get("status") == "ok" and row.get("image_path")
        made, infotext = (
            cache.thumb(row["output_id"], out / row["image_path"], row.get("sha256"))
            if ok
            else (False, None)
        )
        thumbs.append(int(made))
        infotexts.append(infotext)
        sources.append(source_thumb(row.get("init_image"), cache))
    # details first, under this build's name; index.js last: the page never pairs an index
    # with another build's details, even when a report is interrupted
    build = f"{time.time_ns():x}"
    for start in range(0, len(rows), DETAIL_ROWS):
        chunk = [
            _detail(row, infotexts[i], sources[i])
            for i, row in enumerate(rows[start : start + DETAIL_ROWS], start)
        ]
        write_js(dest / "data" / f"detail-{build}-{start // DETAIL_ROWS:04d}.js", None, chunk)
    index = {
        "n": len(rows),
        "output_id": [row["output_id"] for row in rows],
        "thumb": thumbs,
        "src": [int(bool(s)) for s in sources],
        "columns": coded_columns(table),
        "detail_rows": DETAIL_ROWS,
        "detail_build": build,
    }
    write_js(dest / "data" / "index.js", "SDF_INDEX", index)
    for old in (dest / "data").glob("detail-*.js"):
        if not old.name.startswith(f"detail-{build}-"):
            old.unlink()
    result.rows = len(rows)
    result.errors = sum(row.get("status") != "ok" for row in rows)


def source_thumb(init_image: str | None, cache: ThumbCache) -> str | None:
    """The thumbnail of an img2img row's source image (a local path), made once."""
    if not init_image or init_image == "<bytes>" or "://" in init_image:
        return None
    if not Path(init_image).is_file():
        return None
    name = source_thumb_name(init_image)
    stat = Path(init_image).stat()  # a source has no recorded sha256: size and mtime say "same"
    made, _ = cache.thumb(name, Path(init_image), f"stat:{stat.st_size}:{stat.st_mtime_ns}")
    return name if made else None


def _detail(row: dict[str, Any], infotext: str | None, source: str | None) -> dict[str, Any]:
    shown = {k: v for k, v in row.items() if v is not None and not isinstance(v, bytes | dict)}
    return shown | {"infotext": infotext, "src": source}


def coded_columns(table: pa.Table) -> dict[str, dict[str, list]]:
    """Columns the page filters and groups on, dictionary-coded: {values, codes}, -1 = empty.
    `prompt` and `error` are always kept (text search, the error list)."""
    coded = {}
    for name in table.column_names:
        if name in NOT_FILTERS - {"error"} and name != "prompt":
            continue
        column = table.column(name)
        if pa.types.is_nested(column.type) or pa.types.is_binary(column.type):
            continue
        encoded = pc.dictionary_encode(column).combine_chunks()
        values = encoded.dictionary.to_pylist()
        if len(values) > MAX_CODED_VALUES and name not in ("prompt", "error"):
            continue
        codes = pc.fill_null(encoded.indices, -1).to_pylist()
        coded[name] = {"values": values, "codes": codes}
    return coded


def report_cost(summary: dict, price_per_gpu_hour: float | None) -> dict[str, Any] | None:
    """The summary's cost block, priced again when a price is given here."""
    cost = dict(summary.get("cost") or {})
    if not cost:
        return None
    price = price_per_gpu_hour or cost.get("price_per_gpu_hour")
    gpu_h = cost.get("gpu_hours_per_1000_images")
    cost["price_per_gpu_hour"] = price
    cost["cost_per_1000_images"] = round(gpu_h * price, 4) if price and gpu_h else None
    return cost


def job_header(out: Path) -> dict[str, Any]:
    import yaml

    try:
        record = yaml.safe_load((out / "job.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}
    job = record.get("job", record) if isinstance(record, dict) else {}
    keys = ("name", "model", "manifest", "seed", "kind")
    return {k: job.get(k) for k in keys if job.get(k) is not None} | (
        {"source": record["source"]} if "source" in record else {}
    )


def register(subparsers) -> None:
    """`sdfleet report OUT [-o DIR] [--price-per-gpu-hour P] [--grid X,Y[,Z]] [--watch S]`."""
    report = subparsers.add_parser("report", help="a static HTML report of a run's OUT")
    report.add_argument("out", type=Path, help="the folder `sdfleet run --out` wrote")
    report.add_argument("-o", "--output", type=Path, help="report folder (default OUT/report)")
    report.add_argument("--price-per-gpu-hour", type=float, help="price the summary's GPU hours")
    report.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="X,Y[,Z]",
        help="also draw this XYZ grid as a labelled PNG (repeatable)",
    )
    report.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="COLUMN=VALUE",
        help="rows the --grid PNGs use (repeatable), e.g. seed_index=0",
    )
    report.add_argument("--page-size", type=int, default=100, help="thumbnails a page (100)")
    report.add_argument(
        "--watch",
        type=float,
        metavar="SECONDS",
        help="make it again every SECONDS while a run goes on (Ctrl-C stops)",
    )
    report.set_defaults(handler=cmd_report)


def cmd_report(args) -> int:
    from sdfleet.jobs.report_grids import parse_grid, parse_where

    if args.price_per_gpu_hour is not None and not args.price_per_gpu_hour > 0:
        raise ConfigError(f"--price-per-gpu-hour {args.price_per_gpu_hour}: give a price above 0")
    if not 1 <= args.page_size <= 1000:
        raise ConfigError(f"--page-size {args.page_size}: give 1 to 1000 thumbnails a page")
    if args.watch is not None and not args.watch > 0:
        raise ConfigError(f"--watch {args.watch}: give the seconds between two reports, above 0")
    grids, where = [parse_grid(g) for g in args.grid], parse_where(args.where)
    try:
        while True:
            result = build_report(
                args.out, args.output, args.price_per_gpu_hour, grids, where, args.page_size
            )
            print(describe(result), flush=True)
            if args.watch is None:
                return 0
            time.sleep(args.watch)
    except KeyboardInterrupt:
        if args.watch is None:
            raise
        return 0  # --watch ends with Ctrl-C; every file it wrote is whole


def describe(result: ReportResult) -> str:
    what = (
        f"{result.clips} clip(s)"
        if result.kind == "animation"
        else f"{result.rows} outputs, thumbnails {result.thumbs_made} made / "
        f"{result.thumbs_reused} reused"
    )
    extra = f"; grids: {', '.join(result.grids)}" if result.grids else ""
    return f"{result.folder / 'index.html'}: {what}, {result.errors} error(s){extra}"

"""Running a batch job: the `local` executor, resume bookkeeping and the summary.

The Ray executor (batch/ray_runner.py) shares everything here except the loop itself.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from batch.actor import GenerateBatch, RunConfig
from batch.manifest import open_parquet
from batch.outputs import OutputDir, write_json

logger = logging.getLogger(__name__)

Progress = Callable[[int], None]  # called with the number of outputs just finished


@dataclass
class RunStats:
    """What one invocation did; the summary adds totals read back from results/."""

    executor: str
    started: float = field(default_factory=time.time)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    model_load_seconds: list[float] = field(default_factory=list)
    generated_outputs: int = 0
    skipped_rows: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def read_results(out: OutputDir, columns: list[str] | None = None) -> pa.Table | None:
    """All committed result rows (every results/*.parquet), or None if there are none yet.

    The local executor commits one small part per chunk, so a big job has tens of thousands:
    each is opened once (`ParquetFile`, about half the cost of `read_table`) and every few
    hundred parts are merged into contiguous columns, so memory follows rows, not parts.
    """
    from pyarrow import fs as pafs

    filesystem, root = out.filesystem()
    base = f"{root}/results"

    if filesystem.get_file_info(base).type == pafs.FileType.NotFound:
        return None
    selector = pafs.FileSelector(base, recursive=True)
    files = sorted(i.path for i in filesystem.get_file_info(selector)
                   if i.path.endswith(".parquet") and i.type == pafs.FileType.File)  # fmt: skip
    if not files:
        return None
    groups = [
        _concat([_read_part(filesystem, f, columns) for f in files[start : start + _MERGE_PARTS]])
        for start in range(0, len(files), _MERGE_PARTS)
    ]
    return _concat(groups)


_MERGE_PARTS = 256


def _read_part(filesystem, path: str, columns: list[str] | None) -> pa.Table:
    with filesystem.open_input_file(path) as handle:
        return pq.ParquetFile(handle).read(columns=columns)


def _concat(tables: list[pa.Table]) -> pa.Table:
    return pa.concat_tables(tables, promote_options="permissive").combine_chunks()


def committed_ids(out: OutputDir) -> set[str]:
    table = read_results(out, columns=["id"])
    return set() if table is None else set(pc.unique(table.column("id")).to_pylist())


def iter_row_chunks(files: list[str], chunk_rows: int, skip: set[str]) -> Iterator[pa.Table]:
    """Tables of up to `chunk_rows` rows not in `skip`, keeping each file's own Arrow types."""
    import pyarrow.compute as pc

    skip_array = pa.array(sorted(skip), type=pa.string())
    for path in files:
        for batch in open_parquet(path).iter_batches(batch_size=chunk_rows):
            table = pa.Table.from_batches([batch])
            if len(skip_array):
                table = table.filter(pc.invert(pc.is_in(table["id"], value_set=skip_array)))
            if table.num_rows:
                yield table


def run_local(config: RunConfig, files: list[str], stats: RunStats, progress: Progress) -> None:
    """One replica in this process; each chunk's results are committed as one Parquet part."""
    out = OutputDir(config.out_uri)
    done = committed_ids(out)
    stats.skipped_rows = len(done)
    t0 = time.perf_counter()
    actor = GenerateBatch(config)
    stats.model_load_seconds.append(actor.replica.load_seconds)
    stats.stage_seconds["load"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    part = _next_part_number(out)
    chunk_rows = max(config.batch_size * 4, 16)
    for chunk in iter_row_chunks(files, chunk_rows, done):
        table = actor(chunk)
        _commit_part(out, table, part)
        part += 1
        stats.generated_outputs += table.num_rows
        progress(table.num_rows)
    stats.stage_seconds["generate"] = time.perf_counter() - t0


def _next_part_number(out: OutputDir) -> int:
    filesystem, root = out.filesystem()
    from pyarrow import fs as pafs

    info = filesystem.get_file_info(pafs.FileSelector(f"{root}/results", allow_not_found=True))
    return len([i for i in info if i.path.endswith(".parquet")])


def _commit_part(out: OutputDir, table: pa.Table, part: int) -> None:
    """Write to a temp name and rename, so a crash never leaves half a part."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    out.write_bytes(f"results/local-{part:06d}.parquet", sink.getvalue().to_pybytes())


def summarize(out: OutputDir, stats: RunStats, expected_outputs: int, max_errors: int) -> dict:
    """Counts from results/ (the source of truth), throughput, stage times -> summary.json.

    Counted on whole columns (pyarrow compute), never row by row, so a million results take
    seconds and little memory; only the first `max_errors` error rows become Python objects.
    """
    table = read_results(out, ["output_id", "status", "error", "seconds", "worker"])
    counts = count_results(table, max_errors)
    wall_s = time.time() - stats.started
    gen_s = stats.stage_seconds.get("generate", 0.0)
    summary = {
        "executor": stats.executor,
        "expected_outputs": expected_outputs,
        "outputs": counts["outputs"],
        "unique_outputs": counts["unique_outputs"],
        "ok": counts["ok"],
        "error": counts["outputs"] - counts["ok"],
        "skipped_already_done_rows": stats.skipped_rows,
        "generated_this_run": stats.generated_outputs,
        "images_per_s": round(stats.generated_outputs / gen_s, 3) if gen_s else None,
        "images_per_s_per_replica": _per_replica(table),
        "model_load_s": [round(s, 3) for s in stats.model_load_seconds],
        "stage_s": {k: round(v, 3) for k, v in stats.stage_seconds.items()},
        "wall_s": round(wall_s, 3),
        "errors": counts["errors"],
    } | stats.extra
    write_json(out, "summary.json", summary)
    return summary


def count_results(table: pa.Table | None, max_errors: int) -> dict[str, Any]:
    """outputs, unique_outputs, ok, and the first `max_errors` errors (output_id, error).

    A row is ok only when its status is "ok" (a null status is an error).
    """
    if table is None:
        return {"outputs": 0, "unique_outputs": 0, "ok": 0, "errors": []}
    is_ok = pc.fill_null(pc.equal(table.column("status"), "ok"), False)
    failed = table.filter(pc.invert(is_ok)).slice(0, max_errors)
    return {
        "outputs": table.num_rows,
        "unique_outputs": pc.count_distinct(table.column("output_id"), mode="all").as_py(),
        "ok": pc.sum(is_ok).as_py() or 0,
        "errors": failed.select(["output_id", "error"]).to_pylist(),
    }


def _per_replica(table: pa.Table | None) -> dict[str, float]:
    """Images/s of each worker over its own generation time (sum of per-image shares)."""
    if table is None or table.num_rows == 0:
        return {}
    worker = pc.fill_null(table.column("worker"), "?")
    worker = pc.if_else(pc.equal(worker, ""), "?", worker)  # no worker name: "?"
    seconds = pc.fill_null(table.column("seconds"), 0.0)
    busy = pa.table({"worker": worker, "seconds": seconds}).group_by("worker", use_threads=False)
    totals = busy.aggregate([("seconds", "sum"), ("seconds", "count")]).to_pylist()
    return {
        t["worker"]: round(t["seconds_count"] / t["seconds_sum"], 3)
        for t in totals
        if t["seconds_sum"] > 0
    }


def manifest_dir_of(files: list[str]) -> str | None:
    """The folder relative init_image paths are read from: the first manifest file's (local
    or file://). Remote manifests (s3://, ...) must give init_image as full URIs."""
    if not files or ("://" in files[0] and not files[0].startswith("file://")):
        return None
    return str(Path(files[0].removeprefix("file://")).resolve().parent)

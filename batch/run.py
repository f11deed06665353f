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
import pyarrow.parquet as pq

from batch.actor import GenerateBatch, RunConfig
from batch.manifest import iter_manifest_rows, table_from_rows
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
    """All committed result rows (every results/*.parquet), or None if there are none yet."""
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
    tables = [pq.read_table(f, filesystem=filesystem, columns=columns) for f in files]
    return pa.concat_tables(tables, promote_options="permissive")


def committed_ids(out: OutputDir) -> set[str]:
    table = read_results(out, columns=["id"])
    return set() if table is None else set(table.column("id").to_pylist())


def iter_row_chunks(files: list[str], chunk_rows: int, skip: set[str]) -> Iterator[list[dict]]:
    chunk: list[dict] = []
    for _, _, row in iter_manifest_rows(files):
        if row["id"] in skip:
            continue
        chunk.append(row)
        if len(chunk) >= chunk_rows:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


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
    for rows in iter_row_chunks(files, chunk_rows, done):
        table = actor(table_from_rows(rows))
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
    """Counts from results/ (the source of truth), throughput, stage times -> summary.json."""
    table = read_results(out, ["id", "output_id", "status", "error", "seconds", "worker"])
    rows = [] if table is None else table.to_pylist()
    ok = [r for r in rows if r["status"] == "ok"]
    errors = [r for r in rows if r["status"] != "ok"]
    wall_s = time.time() - stats.started
    gen_s = stats.stage_seconds.get("generate", 0.0)
    summary = {
        "executor": stats.executor,
        "expected_outputs": expected_outputs,
        "outputs": len(rows),
        "unique_outputs": len({r["output_id"] for r in rows}),
        "ok": len(ok),
        "error": len(errors),
        "skipped_already_done_rows": stats.skipped_rows,
        "generated_this_run": stats.generated_outputs,
        "images_per_s": round(stats.generated_outputs / gen_s, 3) if gen_s else None,
        "images_per_s_per_replica": _per_replica(rows, stats),
        "model_load_s": [round(s, 3) for s in stats.model_load_seconds],
        "stage_s": {k: round(v, 3) for k, v in stats.stage_seconds.items()},
        "wall_s": round(wall_s, 3),
        "errors": [{"output_id": r["output_id"], "error": r["error"]} for r in errors[:max_errors]],
    } | stats.extra
    write_json(out, "summary.json", summary)
    return summary


def _per_replica(rows: list[dict], stats: RunStats) -> dict[str, float]:
    """Images/s of each worker over its own generation time (sum of per-image shares)."""
    busy: dict[str, list[float]] = {}
    for row in rows:
        busy.setdefault(row["worker"] or "?", []).append(row["seconds"] or 0.0)
    return {w: round(len(s) / sum(s), 3) for w, s in busy.items() if sum(s) > 0}


def manifest_dir_of(files: list[str]) -> str | None:
    return str(Path(files[0]).parent) if files and "://" not in files[0] else None

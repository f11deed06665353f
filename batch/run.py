"""Running a batch job: the `local` executor, resume bookkeeping and the summary.

The Ray executor (batch/ray_runner.py) shares everything here except the loop itself.
"""

from __future__ import annotations

import logging
import posixpath
import re
import time
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sdfleet.batch.actor import GenerateBatch, RunConfig
from sdfleet.batch.outputs import OutputDir, parquet_files, write_json
from sdfleet.batch.progress import Progress, RunProgress
from sdfleet.batch.sources import open_parquet

logger = logging.getLogger(__name__)


@dataclass
class RunStats:
    """What one invocation did; the summary adds totals read back from results/."""

    executor: str
    started: float = field(default_factory=time.time)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    model_load_seconds: list[float] = field(default_factory=list)
    generated_outputs: int = 0
    skipped_rows: int = 0
    images_per_s: float | None = None  # `batch.progress.images_per_s` of this run
    images_per_s_per_replica: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    price_per_gpu_hour: float | None = None  # the job's; gives the summary a cost per 1000

    def record(self, tracker: RunProgress) -> None:
        """What the replicas reported: outputs made, load times, the rates."""
        self.generated_outputs = tracker.total.images
        self.model_load_seconds = list(tracker.load_seconds)
        self.images_per_s = tracker.images_per_s()
        self.images_per_s_per_replica = tracker.per_replica()


def read_results(out: OutputDir, columns: list[str] | None = None) -> pa.Table | None:
    """All committed result rows (every results/*.parquet), or None if there are none yet.

    The local executor commits one small part per chunk, so a big job has tens of thousands:
    every few hundred parts are merged into contiguous columns, so memory follows rows, not
    parts. `summarize` does not hold them all: it counts part by part (`iter_result_parts`).
    """
    parts = _batched(iter_result_parts(out, columns), _MERGE_PARTS)
    groups = [_concat(group) for group in parts]
    return _concat(groups) if groups else None


_LOCAL_PART = re.compile(r"local-(\d+)\.parquet")
_MERGE_PARTS = 256  # small parts merged at a time: few compute calls, bounded memory


def iter_result_parts(out: OutputDir, columns: list[str] | None = None) -> Iterator[pa.Table]:
    """Each committed results part, in file name order; each file is opened once."""
    from pyarrow import fs as pafs

    filesystem, root = out.filesystem()
    base = f"{root}/results"
    if filesystem.get_file_info(base).type == pafs.FileType.NotFound:
        return
    selector = pafs.FileSelector(base, recursive=True)
    files = sorted(
        i.path
        for i in filesystem.get_file_info(selector)
        if i.path.endswith(".parquet") and i.type == pafs.FileType.File
    )
    for path in files:
        with filesystem.open_input_file(path) as handle:  # ParquetFile: half read_table's cost
            yield pq.ParquetFile(handle).read(columns=columns)


def _batched(tables: Iterator[pa.Table], parts: int, rows: int = 65536) -> Iterator[list]:
    """Consecutive tables in groups of at most `parts` tables, or about `rows` rows."""
    group: list[pa.Table] = []
    for table in tables:
        group.append(table)
        if len(group) == parts or sum(t.num_rows for t in group) >= rows:
            yield group
            group = []
    if group:
        yield group


def _concat(tables: list[pa.Table]) -> pa.Table:
    return pa.concat_tables(tables, promote_options="permissive").combine_chunks()


def committed_ids(out: OutputDir) -> set[str]:
    table = read_results(out, columns=["id"])
    return set() if table is None else set(pc.unique(table.column("id")).to_pylist())


def committed_outputs(out: OutputDir, ids: set[str]) -> int:
    """Distinct outputs in results/ of the rows `ids` (a row with `num_images: k` has k): what
    a resumed run's progress starts from."""
    if not ids:
        return 0
    value_set = pa.array(sorted(ids), type=pa.string())
    seen: set[str] = set()
    for part in iter_result_parts(out, ["id", "output_id"]):
        kept = part.filter(pc.is_in(part["id"], value_set=value_set))
        seen.update(kept["output_id"].to_pylist())
    return len(seen)


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


def run_local(
    config: RunConfig,
    files: list[str],
    stats: RunStats,
    progress: Progress,
    actor_class: type[GenerateBatch] = GenerateBatch,
) -> None:
    """One replica in this process; each chunk's results are committed as one Parquet part.
    `actor_class`: the replica actor (tests and benchmarks pass a subclass)."""
    out = OutputDir(config.out_uri)
    done = committed_ids(out)
    stats.skipped_rows = len(done)
    tracker = RunProgress(progress, skipped=committed_outputs(out, done))
    tracker.loading(f"{config.model.model} in this process")
    t0 = time.perf_counter()
    actor = actor_class(config, progress=tracker)
    stats.stage_seconds["load"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    part = _next_part_number(out)
    chunk_rows = max(config.batch_size * 4, 16)
    for chunk in iter_row_chunks(files, chunk_rows, done):
        _commit_part(out, actor(chunk), part)
        part += 1
    stats.stage_seconds["generate"] = time.perf_counter() - t0
    stats.record(tracker)


def _next_part_number(out: OutputDir) -> int:
    """One past the highest local part number: a committed part is never written over, even
    when an earlier one was deleted."""
    names = (posixpath.basename(path) for path in parquet_files(out.child_uri("results"))[1])
    numbers = [int(m.group(1)) for name in names if (m := _LOCAL_PART.fullmatch(name))]
    return max(numbers, default=-1) + 1


def _commit_part(out: OutputDir, table: pa.Table, part: int) -> None:
    """Write to a temp name and rename, so a crash never leaves half a part."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    out.write_bytes(f"results/local-{part:06d}.parquet", sink.getvalue().to_pybytes())


def count_results(out_uri: str, max_errors: int) -> dict[str, Any]:
    """outputs, unique_outputs, ok and the first `max_errors` errors of OUT/results/ (the
    source of truth). Counted a few hundred parts at a time on whole columns (pyarrow
    compute), never row by row and never all parts at once, so memory stays flat however many
    results there are (`ResultCounts`: 8 bytes an output)."""
    out = OutputDir(out_uri)
    counts = ResultCounts(max_errors)
    for parts in _batched(iter_result_parts(out, list(ResultCounts.COLUMNS)), _MERGE_PARTS):
        counts.add(_concat(parts))
    unique = counts.unique_outputs(out)
    return {"outputs": counts.outputs, "unique": unique, "ok": counts.ok, "errors": counts.errors}


def summarize(
    out: OutputDir,
    stats: RunStats,
    expected_outputs: int,
    max_errors: int,
    count: Callable[[str, int], dict[str, Any]] = count_results,
) -> dict:
    """Counts from results/ (`count`: `count_results` here, or where the Ray executor runs
    it), throughput, stage times -> summary.json."""
    counts = count(out.uri, max_errors)
    wall_s = time.time() - stats.started
    rate = stats.images_per_s
    summary = {
        "executor": stats.executor,
        "expected_outputs": expected_outputs,
        "outputs": counts["outputs"],
        "unique_outputs": counts["unique"],
        "ok": counts["ok"],
        "error": counts["outputs"] - counts["ok"],
        "skipped_already_done_rows": stats.skipped_rows,
        "generated_this_run": stats.generated_outputs,
        "images_per_s": round(rate, 3) if rate is not None else None,  # none made: null
        "images_per_s_per_replica": {
            worker: round(value, 3) for worker, value in stats.images_per_s_per_replica.items()
        },
        "model_load_s": [round(s, 3) for s in stats.model_load_seconds],
        "stage_s": {k: round(v, 3) for k, v in stats.stage_seconds.items()},
        "wall_s": round(wall_s, 3),
        "errors": counts["errors"],
    } | stats.extra
    summary["cost"] = cost_summary(summary, stats.price_per_gpu_hour)
    write_json(out, "summary.json", summary)
    return summary


def cost_summary(summary: dict[str, Any], price_per_gpu_hour: float | None) -> dict[str, Any]:
    """Replica-seconds per image of this run (replicas x the time they were held: pool start
    or model load, then generation) and, given a price, the cost per 1000 images. A replica
    holding 1/k of a GPU costs 1/k; a CPU replica counts as one device. The report recomputes
    the cost from these fields for another price."""
    stages = summary["stage_s"]
    held_s = stages.get("pipeline", stages.get("load", 0.0) + stages.get("generate", 0.0))
    ray = summary.get("ray") or {}
    replicas = ray.get("replicas") or max(1, len(summary["model_load_s"]))
    share = ray.get("num_gpus_per_replica") or 1.0
    images = summary["generated_this_run"]
    per_image = replicas * held_s / images if images else None
    gpu_h = per_image * share * 1000 / 3600 if per_image is not None else None
    cost = gpu_h * price_per_gpu_hour if gpu_h is not None and price_per_gpu_hour else None
    return {
        "replicas": replicas,
        "device_share_per_replica": share,
        "replica_s": round(replicas * held_s, 3),
        "replica_s_per_image": round(per_image, 6) if per_image is not None else None,
        "gpu_hours_per_1000_images": round(gpu_h, 6) if gpu_h is not None else None,
        "price_per_gpu_hour": price_per_gpu_hour,
        "cost_per_1000_images": round(cost, 4) if cost is not None else None,
    }


class ResultCounts:
    """Running totals over results parts: outputs, ok (status "ok"; a null status is an
    error), the first `max_errors` errors, and a 64-bit hash per output_id for counting
    distinct outputs in 8 bytes a row."""

    COLUMNS = ("output_id", "status", "error")

    def __init__(self, max_errors: int) -> None:
        self.max_errors = max_errors
        self.outputs = self.ok = 0
        self.errors: list[dict[str, Any]] = []
        self.id_hashes = array("q")

    def add(self, part: pa.Table) -> None:
        is_ok = pc.fill_null(pc.equal(part.column("status"), "ok"), False)
        self.outputs += part.num_rows
        self.ok += pc.sum(is_ok).as_py() or 0
        room = self.max_errors - len(self.errors)
        if room > 0:
            failed = part.filter(pc.invert(is_ok)).slice(0, room)
            self.errors += failed.select(["output_id", "error"]).to_pylist()
        self.id_hashes.extend(hash(v) for v in part.column("output_id").to_pylist())

    def unique_outputs(self, out: OutputDir) -> int:
        """Distinct output ids: exact from the hashes when they are all distinct (the normal
        case); otherwise counted again on the ids themselves."""
        hashes = np.frombuffer(self.id_hashes, dtype=np.int64)
        hashes.sort()  # in place: np.unique would take copies, ~3x the hashes at 1M outputs
        if not len(hashes) or int(np.count_nonzero(hashes[1:] != hashes[:-1])) + 1 == self.outputs:
            return self.outputs
        table = read_results(out, ["output_id"])
        return 0 if table is None else pc.count_distinct(table["output_id"], mode="all").as_py()

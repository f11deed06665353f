"""Retry failed rows (`sdfleet run --retry-errors`): make again only the rows whose committed
result is an error, keeping every ok row as it is and every output exactly once.

A resume skips every committed row, errors included. To retry, the failed rows are first
*forgotten*: their result rows are taken out of `OUT/results/*.parquet`, then their ids out of
the Ray executor's checkpoint (the record Ray Data skips rows by), each file rewritten
atomically. The run that follows then makes them as if they had never run. A row counts as
failed when any of its outputs has a status other than "ok" (its ok variants are made again
too, under the same names and seeds, so the same bytes), or when the checkpoint holds its id
but the results hold no row of it (a retry stopped between the two steps: the next one
finishes it).

Only committed checkpoint files are touched; Ray's pending ones (`*.pending.parquet`) are its
own two-phase commit and are left to it.
"""

from __future__ import annotations

import io
from typing import Any

from sdfleet.batch.outputs import OutputDir, parquet_files
from sdfleet.batch.paths import write_atomic


def failed_row_ids(out: OutputDir, checkpoint_uri: str | None = None) -> set[str]:
    """Ids of rows with an output that is not ok, or checkpointed with no result row."""
    import pyarrow.compute as pc

    failed: set[str] = set()
    seen: set[str] = set()
    for table in _read_all(out.child_uri("results"), ["id", "status"]):
        is_ok = pc.fill_null(pc.equal(table["status"], "ok"), False)
        failed.update(table.filter(pc.invert(is_ok))["id"].to_pylist())
        seen.update(pc.unique(table["id"]).to_pylist())
    if checkpoint_uri is not None:
        for table in _read_all(checkpoint_uri, ["id"]):
            failed.update(set(pc.unique(table["id"]).to_pylist()) - seen)
    return failed


def forget_failed_rows(out: OutputDir, checkpoint_uri: str | None = None) -> int:
    """Take the failed rows out of the results (then of the checkpoint); the number of rows
    that the next run will make again."""
    failed = failed_row_ids(out, checkpoint_uri)
    if failed:
        forget_ids(out.child_uri("results"), failed)
        if checkpoint_uri is not None:
            forget_ids(checkpoint_uri, failed)
    return len(failed)


def forget_ids(folder_uri: str, ids: set[str]) -> int:
    """Rewrite each Parquet file of the folder without the rows of `ids` (a file left with no
    rows is deleted); the number of rows taken out."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    filesystem, paths = parquet_files(folder_uri, committed=True)
    drop = pa.array(sorted(ids), type=pa.string())
    removed = 0
    for path in paths:
        table = pq.read_table(path, filesystem=filesystem)
        kept = table.filter(pc.invert(pc.is_in(table["id"], value_set=drop)))
        if kept.num_rows == table.num_rows:
            continue
        removed += table.num_rows - kept.num_rows
        if kept.num_rows == 0:
            filesystem.delete_file(path)
        else:
            write_atomic(path, _parquet_bytes(kept), filesystem)
    return removed


def _read_all(folder_uri: str, columns: list[str]) -> list[Any]:
    import pyarrow.parquet as pq

    filesystem, paths = parquet_files(folder_uri, committed=True)
    return [pq.read_table(p, columns=columns, filesystem=filesystem) for p in paths]


def _parquet_bytes(table: Any) -> bytes:
    import pyarrow.parquet as pq

    sink = io.BytesIO()
    pq.write_table(table, sink)  # the schema (and its `datasets` metadata) as it was
    return sink.getvalue()

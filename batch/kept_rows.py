"""A resume keeps what OUT committed: those rows must still be the manifest's rows.

A rerun into OUT skips every committed id. The job's settings are compared with OUT/job.yaml
(`batch.fingerprint`), but the manifest is data, not a setting: the same ids with new prompts
would be reported "already done" while OUT holds the old pictures. `kept_row_changes` expands
each committed row of the manifest as the replica would (`batch.actor.expand_rows`) and
compares its generation parameters (`request_params`, the columns every result row records),
the hashes of the inputs recorded only as hashes (`batch.fingerprint.inputs_fingerprint`: an
init image's bytes, the inpainting mask and its settings, control images, any request field
added later) and its outputs with the results, so a resume either keeps exactly the rows it
would make, or is refused saying which changed. A file's contents are not hashed: a path
whose file was replaced since is kept (a new --out, or new ids, remake it).

Memory: the committed results' parameter columns (Arrow), and one manifest chunk at a time.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sdfleet.batch.actor import RunConfig, expand_rows, request_params
from sdfleet.batch.errors import ConfigError
from sdfleet.batch.fingerprint import INPUTS_COLUMN, inputs_changes
from sdfleet.batch.outputs import OutputDir, parquet_files
from sdfleet.batch.run import read_results
from sdfleet.batch.sources import open_parquet

logger = logging.getLogger(__name__)

CHUNK_ROWS = 65536
SHOWN = 5  # changes named in the message


def check_kept_rows(config: RunConfig, files: list[str], ok_only: bool = False) -> None:
    """ConfigError when committed rows of OUT differ from the manifest's rows of those ids.
    `ok_only`: error rows are left out (``--retry-errors`` makes them again anyway)."""
    total, shown = kept_row_changes(config, files, ok_only)
    if not total:
        return
    more = f"; ... {total - len(shown)} more" if total > len(shown) else ""
    raise ConfigError(
        f"{config.out_uri} holds {total} output(s) made from manifest rows that have changed "
        f"since ({'; '.join(shown)}{more}). A resume keeps the committed images, which would "
        "not match the manifest: use a new --out, give the changed rows new ids, or delete "
        "the folder to start over."
    )


def kept_row_changes(
    config: RunConfig, files: list[str], ok_only: bool = False
) -> tuple[int, list[str]]:
    """(number of changed outputs, the first `SHOWN` of them as ``row 'x': field a -> b``)."""
    done = _committed_params(OutputDir(config.out_uri))
    if done is not None and ok_only:
        done = done.filter(pc.fill_null(pc.equal(done["status"], "ok"), False))
    if done is None or not done.num_rows:
        return 0, []
    committed_ids = pc.unique(done["id"])
    total, shown = 0, []
    for path in files:
        for batch in open_parquet(path).iter_batches(batch_size=CHUNK_ROWS):
            rows = pa.Table.from_batches([batch])
            rows = rows.filter(pc.is_in(rows["id"], value_set=committed_ids))
            if not rows.num_rows:
                continue
            had = done.filter(pc.is_in(done["id"], value_set=rows["id"]))
            for change in _chunk_changes(config, rows.to_pylist(), had.to_pylist()):
                total += 1
                if len(shown) < SHOWN:
                    shown.append(change)
    return total, shown


def _committed_params(out: OutputDir) -> pa.Table | None:
    """id, output_id, status and the parameter columns of every committed result, or None."""
    filesystem, paths = parquet_files(out.child_uri("results"))
    if not paths:
        return None
    present = set(pq.read_schema(paths[0], filesystem=filesystem).names)
    wanted = ["id", "output_id", "status", *sorted(_param_names()), INPUTS_COLUMN]
    return read_results(out, [name for name in wanted if name in present])


def _param_names() -> set[str]:
    from sdfleet.batch.request import GenRequest

    probe = GenRequest(
        row_id="x",
        variant=0,
        output_name="x",
        prompt="",
        negative_prompt="",
        seed=0,
        num_inference_steps=1,
        guidance_scale=1.0,
        width=64,
        height=64,
        scheduler=None,
    )
    return set(request_params(probe, ""))


def _chunk_changes(config: RunConfig, rows: list[dict], had: list[dict]) -> list[str]:
    """What differs between the committed results `had` and the manifest `rows` now."""
    before: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for result in had:
        before[result["id"]][result["output_id"]] = result
    now: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for request in expand_rows(rows, config):
        params = request_params(request, config.model.model)
        params[INPUTS_COLUMN] = request.carried.get(INPUTS_COLUMN)
        now[request.row_id][request.output_name] = params
    changes = []
    for row_id, outputs in now.items():
        made = before.get(row_id, {})
        if set(made) != set(outputs):
            changes.append(
                f"row {row_id!r}: outputs {sorted(made)} were made, the row now asks for "
                f"{sorted(outputs)} (num_images changed)"
            )
            continue
        for output_id, params in outputs.items():
            changes.extend(_field_changes(row_id, output_id, made[output_id], params))
    return changes


def _field_changes(row_id: str, output_id: str, was: dict, now: dict) -> list[str]:
    """``row 'x': prompt 'a' -> 'b'``, or for what the results hold only as hashes (results
    made before they held any are compared by their recorded columns alone), the fields."""
    names = [n for n in now if n in was and was[n] != now[n]]
    if was.get(INPUTS_COLUMN) is None and INPUTS_COLUMN in names:  # an older part: no hashes
        names.remove(INPUTS_COLUMN)
    if not names:
        return []
    where = f"row {row_id!r}" if row_id == output_id else f"row {row_id!r} ({output_id})"
    said = [f"{n} {_short(was[n])} -> {_short(now[n])}" for n in names if n != INPUTS_COLUMN]
    if INPUTS_COLUMN in names and not said:
        inputs = ", ".join(inputs_changes(was[INPUTS_COLUMN], now[INPUTS_COLUMN]))
        said = [f"{inputs} changed (held in the results as a hash, {INPUTS_COLUMN})"]
    return [f"{where}: {', '.join(said[:3])}"]


def _short(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= 40 else shown[:37] + "..."

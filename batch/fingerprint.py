"""The resume fingerprint: which job settings a rerun into the same OUT must keep.

A rerun resumes: what was committed (batch rows, animation frames) is kept and the rest is
made. That is only sound when every setting that changes a pixel or a file name is the same
as in the run that started OUT. So every field of a job (its JSON dump, nested fields as
``parent.child``) counts, except the few listed in `OUTPUT_ONLY_FIELDS`: a field added to a
job model later is covered without anyone remembering to add it here.

Both job kinds use it: the batch runner compares the settings with the job.yaml recorded in
OUT (`settings_changes`, to say what changed); an animation clip hashes them with its plan
(`fingerprint`) into its status and resume state.

Per row, the batch results record a request's parameters by value and the rest of its inputs
as hashes (`inputs_fingerprint`, in the results column `INPUTS_COLUMN`): `batch.kept_rows`
compares both with the manifest's rows before a resume keeps them. Pure: the standard library
only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterator, Mapping
from typing import Any

# Fields that change no pixel and no file name: a resume may differ in them.
OUTPUT_ONLY_FIELDS = frozenset(
    {
        # both kinds: trusting pickled weights loads the same weights
        "allow_pickle",
        # batch: names, where rows come from (a rerun may add rows), reporting, Ray sizing
        "name",
        "manifest",
        "executor",  # checked on its own: each executor keeps its own record of done rows
        "max_reported_errors",
        "ray.address",
        "ray.replicas",
        "ray.replicas_per_gpu",
        "ray.num_cpus_per_replica",
        "ray.rows_per_block",  # rows are padded to batch_size in every block
        "ray.rows_per_pass",
        "ray.allow_fewer_replicas",
        "ray.min_replicas_timeout_s",
        "ray.stall_timeout_s",
        # animation: encoding and contact sheet are made again from the frames; clip lists
        "video",
        "fps",
        "contact_sheet_every",
        "clips",
        "clips_manifest",
    }
)


def pixel_settings(job: Mapping[str, Any]) -> dict[str, Any]:
    """A job's JSON dump without its output-only fields (at any depth, by dotted name)."""
    return _without(job, "")


def _without(values: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    kept = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if name in OUTPUT_ONLY_FIELDS:
            continue
        kept[key] = _without(value, f"{name}.") if isinstance(value, Mapping) else value
    return kept


def settings_changes(before: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """``field: old -> new`` for every pixel setting that differs between two job dumps."""
    old, new = dict(_flatten(pixel_settings(before))), dict(_flatten(pixel_settings(now)))
    names = sorted(old.keys() | new.keys())
    return [f"{n}: {old.get(n)!r} -> {new.get(n)!r}" for n in names if old.get(n) != new.get(n)]


def _flatten(values: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in values.items():
        if isinstance(value, Mapping) and value:
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def fingerprint(job: Mapping[str, Any], *parts: str) -> str:
    """sha256 of `parts` (e.g. an animation's plan) and of the job's pixel settings."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode())
    digest.update(json.dumps(pixel_settings(job), sort_keys=True).encode())
    return digest.hexdigest()


# The results column that holds a request's `inputs_fingerprint`.
INPUTS_COLUMN = "inputs_sha256"


def inputs_fingerprint(request: Any, recorded: frozenset[str]) -> str:
    """``field=<12 hex>;...`` for every dataclass field of `request` not in `recorded`: the
    per-row part of the resume fingerprint. The results record most of a request by value
    (prompt, seed, steps ...), compared column by column on a resume; this covers the rest (an
    init image's bytes, the inpainting mask and settings, control images, and any field added
    later, without anyone remembering to add it), one short sha256 per field so that a change
    can be named. Bytes are hashed, never kept."""
    parts = []
    for item in dataclasses.fields(request):
        if item.name in recorded:
            continue
        text = json.dumps(_canonical(getattr(request, item.name)), sort_keys=True, default=str)
        parts.append(f"{item.name}={hashlib.sha256(text.encode()).hexdigest()[:12]}")
    return ";".join(parts)


def inputs_changes(before: str, now: str) -> list[str]:
    """The field names whose hashes differ between two `inputs_fingerprint`s."""
    old, new = _fields(before), _fields(now)
    return [name for name in sorted(old.keys() | new.keys()) if old.get(name) != new.get(name)]


def _fields(fingerprint: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in fingerprint.split(";") if "=" in part)


def _canonical(value: Any) -> Any:
    """A JSON-able form of a request field: bytes as their sha256, dataclasses as dicts."""
    if isinstance(value, bytes):
        return {"sha256": hashlib.sha256(value).hexdigest()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _canonical(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in value.items()}
    return value

"""An earlier run's results table read as a manifest, so results feed the next img2img run.

Each results row keeps its id, prompt, negative prompt and the columns the manifest carried; its
image becomes `init_image`. Kept apart from `batch.datasets_io` because it needs the results
schema (`batch.outputs`), which itself writes through `datasets_io`.
"""

from __future__ import annotations

import posixpath
from typing import Any

from sdfleet.batch.datasets_io import IMAGE_COLUMN, is_results
from sdfleet.batch.fingerprint import INPUTS_COLUMN


def as_manifest_row(row: dict[str, Any]) -> dict[str, Any]:
    """A row of an earlier run's results as a manifest row for the next (img2img) run:
    its id, prompt and negative prompt, the columns the manifest carried, and its image as
    `init_image` (the embedded `image` struct, else `image_path`, which lies in OUT next to
    the results folder). Its generation settings are not reused: the new job's apply. Other
    rows are returned unchanged."""
    if not is_results(row):
        return row
    from sdfleet.batch.outputs import result_types

    kept = {"id", "prompt", "negative_prompt"}
    # the results' own columns, and those sdfleet adds beside the carried ones: the units of
    # the earlier job's ControlNets and its inputs' hashes describe that run, not this one
    recorded = set(result_types()) | {"controlnets", INPUTS_COLUMN}
    manifest_row = {k: v for k, v in row.items() if k in kept or k not in recorded}
    image = row.get(IMAGE_COLUMN)
    if not isinstance(image, dict) or not image.get("bytes"):
        path = row.get("image_path")
        image = {"bytes": None, "path": posixpath.join("..", path) if path else None}
    manifest_row["init_image"] = image
    return manifest_row

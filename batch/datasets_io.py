"""Hugging Face `datasets` both ways.

Out: a results part that has the `image` {bytes, path} column carries the Arrow schema metadata
`datasets` reads (key `huggingface`: `{"info": {"features": {"image": {"_type": "Image"}}}}`),
so `load_dataset("parquet", data_files="OUT/results/*.parquet")` decodes it to PIL images with
no cast; the other columns keep the types `datasets` infers from Arrow.

In: an `init_image` may be a datasets Image struct `{bytes, path}` (what `Dataset.to_parquet`
writes for an Image column): its bytes when present, else its path. And a previous run's
results work as a manifest (`as_manifest_row`): each row's image becomes `init_image`.

Pure: no torch, no datasets import (the metadata is plain JSON).
"""

from __future__ import annotations

import json
from typing import Any

IMAGE_COLUMN = "image"
DATASETS_KEY = b"huggingface"
# columns only sdfleet's results have: a manifest holding them is an earlier run's results
RESULTS_MARKERS = frozenset({"output_id", "status", "image_path"})


def with_datasets_features(table: Any) -> Any:
    """`table` with the schema metadata that makes `datasets` read `image` as an Image."""
    if IMAGE_COLUMN not in table.column_names:
        return table
    features = {IMAGE_COLUMN: {"_type": "Image"}}
    payload = json.dumps({"info": {"features": features}}).encode()
    return table.replace_schema_metadata((table.schema.metadata or {}) | {DATASETS_KEY: payload})


def image_source(value: Any) -> Any:
    """An init image as sdfleet reads it: a `{bytes, path}` struct gives its bytes if it has
    them, else its path (None when it has neither); other values are returned unchanged."""
    if not isinstance(value, dict):
        return value
    return value.get("bytes") or value.get("path") or None


def is_results(names: Any) -> bool:
    """True for the columns of an sdfleet results table."""
    return RESULTS_MARKERS <= set(names)

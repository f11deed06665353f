"""The files a report is made of: its result record, JSON read leniently, JS data written.

Shared by `jobs.report` and `jobs.report_clips` (kept apart so neither imports the other).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class ReportResult:
    folder: Path
    kind: str
    rows: int = 0
    errors: int = 0
    clips: int = 0
    thumbs_made: int = 0
    thumbs_reused: int = 0
    grids: list[str] = field(default_factory=list)


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_js(path: Path, name: str | None, payload: Any) -> None:
    """`window.NAME = {...};`, or for a detail chunk `SDF_DETAIL(N, [...])`."""
    body = json.dumps(payload, separators=(",", ":"), default=str)  # NaN is valid JS
    if name is None:
        chunk = int(path.stem.rsplit("-", 1)[1])  # detail-BUILD-NNNN
        text = f"window.SDF_DETAIL&&SDF_DETAIL({chunk},{body});\n"
    else:
        text = f"window.{name}={body};\n"
    write_bytes(path, text.encode())


def write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)

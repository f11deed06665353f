"""The figures of `sdfleet bench` written out: spreads over repeats, plain-text tables, the
machine they were measured on, and the JSON report."""

from __future__ import annotations

import json
import os
import platform
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sdfleet.batch.models import ModelSpec


def spread(values: Sequence[float], digits: int = 3) -> dict[str, float]:
    """min / median / max."""
    return {
        "min": round(min(values), digits),
        "median": round(statistics.median(values), digits),
        "max": round(max(values), digits),
    }


def machine_info(spec: ModelSpec | None = None) -> dict[str, Any]:
    """What the figures were measured on."""
    import torch

    from sdfleet.jobs.runner import versions

    info = {
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "torch_threads_default": torch.get_num_threads(),
        "versions": versions(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average_at_start": os.getloadavg(),
    }
    if spec is not None:
        from sdfleet.batch.models import choose_device_dtype

        device, dtype = choose_device_dtype(spec)
        info |= {"device": str(device), "dtype": str(dtype).removeprefix("torch.")}
    return info


def cpuinfo(key: str) -> str | None:
    """The first `key` line of /proc/cpuinfo ("model name", "vendor_id"), or None."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(key):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    return cpuinfo("model name") or platform.processor() or "unknown"


def write_report(path: Path, report: dict[str, Any], quiet: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    if not quiet:
        print(f"wrote {path}")


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table (also valid Markdown)."""
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return "-" if value is None else str(value)


def fmt_spread(entry: dict[str, float] | None, digits: int = 3) -> str:
    """'median (min-max)'."""
    if entry is None:
        return "-"
    return f"{entry['median']:.{digits}g} ({entry['min']:.{digits}g}-{entry['max']:.{digits}g})"

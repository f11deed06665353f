"""An animation plan's schedules as a PNG chart (`sdfleet plan --plot`, the report's clips).

One panel per group of values, frames on a shared x axis: motion (zoom, angle, translations),
denoising (strength, noise), guidance (cfg scale, steps) and the seed; diffused frames are
dots, cadence tweens are not, and a dashed line marks each prompt change, so a Deforum user
sees their keyframes before rendering.
matplotlib's object API with the Agg canvas: no pyplot, no global state, no display needed.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# (panel title, [(record field, label)]): what a Deforum user keys most
PANELS: list[tuple[str, list[tuple[str, str]]]] = [
    ("zoom", [("zoom", "zoom")]),
    ("angle (deg)", [("angle", "angle")]),
    ("translation (px)", [("translation_x", "x"), ("translation_y", "y")]),
    ("denoising", [("strength", "strength"), ("noise", "noise")]),
    ("guidance", [("cfg_scale", "cfg scale"), ("steps", "steps")]),
    ("seed", [("seed", "seed")]),
]


def plot_schedules(records: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Write the chart of `records` (FrameRecord.to_dict() or plan.jsonl lines) to `path`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not records:
        raise ValueError("no frames to plot")
    frames = [r["frame"] for r in records]
    diffused = [i for i, r in enumerate(records) if r.get("diffused", True)]
    figure = Figure(figsize=(9, 1.6 * len(PANELS) + 0.6), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(PANELS), 1, sharex=True)
    for ax, (panel, fields) in zip(axes, PANELS):
        for field, label in fields:
            values = [r.get(field) for r in records]
            if any(v is None for v in values):
                continue
            style = "steps-post" if field in ("seed", "steps") else "default"
            line = ax.plot(frames, values, label=label, linewidth=1.4, drawstyle=style)[0]
            ax.plot([frames[i] for i in diffused], [values[i] for i in diffused], ".",
                    color=line.get_color(), markersize=3)  # fmt: skip
        for frame in prompt_changes(records):
            ax.axvline(frame, color="0.6", linestyle="--", linewidth=0.8)
        ax.set_ylabel(panel, fontsize=9)
        ax.grid(True, alpha=0.3)
        if len(fields) > 1:
            ax.legend(fontsize=8, loc="upper right")
    axes[-1].set_xlabel("frame")
    figure.suptitle(title or f"{len(records)} frames ({len(diffused)} diffused)", fontsize=11)
    figure.savefig(path, format="png")
    logger.debug("schedule plot of %d frames written to %s", len(records), path)
    return Path(path)


def prompt_changes(records: Sequence[dict[str, Any]]) -> list[int]:
    """Frames where the prompt changes (dashed lines on every panel)."""
    return [b["frame"] for a, b in zip(records, records[1:]) if a.get("prompt") != b.get("prompt")]


def add_plot_argument(plan_parser) -> None:
    """`sdfleet plan JOB --plot PNG`."""
    plan_parser.add_argument("--plot", type=Path, help="also draw the schedules into this PNG")


def write_plan_plot(frames: Sequence[Any], path: Path, title: str) -> None:
    """The CLI's side of `--plot`: FrameRecords -> PNG, and a line saying where it went."""
    from sdfleet.batch.errors import ConfigError

    if path.suffix.lower() != ".png":
        raise ConfigError(f"--plot {path}: the chart is a PNG; name the file .png")
    if not path.parent.is_dir():
        raise ConfigError(f"--plot {path}: folder {str(path.parent)!r} does not exist")
    plot_schedules([frame.to_dict() for frame in frames], path, title)
    print(f"schedules plotted to {path}", file=sys.stderr, flush=True)

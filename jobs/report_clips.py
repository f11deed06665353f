"""The report of an animation OUT: each clip's video, contact sheet and schedule plot.

Paths are relative to the report folder (the page opens from file://); a clip's plot is drawn
from its plan.jsonl once, and again only when the plan is newer.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from sdfleet.jobs.report_files import ReportResult, read_json, write_js


def write_clips_data(out: Path, dest: Path, summary: dict, result: ReportResult) -> None:
    """data/clips.js: each clip's video, contact sheet and schedule plot (made from its plan)."""
    from sdfleet.jobs.plot import plot_schedules

    (dest / "plots").mkdir(exist_ok=True)
    clips = []
    for status in clip_statuses(out, summary):
        folder = clip_folder(out, status)
        plot = None
        plan = folder / "plan.jsonl"
        if plan.is_file():
            target = dest / "plots" / f"{status['id']}.png"
            if not target.is_file() or target.stat().st_mtime < plan.stat().st_mtime:
                records = [json.loads(line) for line in plan.read_text().splitlines() if line]
                plot_schedules(records, target, f"{status['id']}: schedules")
            plot = f"plots/{target.name}"
        clips.append(clip_entry(status, folder, dest, plot))
    write_js(dest / "data" / "clips.js", "SDF_CLIPS", clips)
    result.clips = len(clips)
    result.errors = sum(c["status"] != "ok" for c in clips)


def clip_statuses(out: Path, summary: dict) -> list[dict[str, Any]]:
    """The summary's clip rows; a run still going has none yet: its status.json files."""
    if summary.get("statuses"):
        return summary["statuses"]
    found = [out / "status.json"] + sorted(out.glob("*/status.json"))
    rows = []
    for path in found:
        if path.is_file():
            status = read_json(path)
            rows.append(status | {"id": status.get("id") or path.parent.name})
    return rows


def clip_folder(out: Path, status: dict[str, Any]) -> Path:
    """Where a clip's files are: its recorded folder if it is in OUT, else OUT/<id> or OUT."""
    recorded = Path(str(status.get("folder") or out))
    if recorded.is_dir() and recorded.resolve().is_relative_to(out):
        return recorded.resolve()
    return out / str(status["id"]) if (out / str(status["id"])).is_dir() else out


def clip_entry(status: dict, folder: Path, dest: Path, plot: str | None) -> dict[str, Any]:
    def rel(path: Path) -> str | None:
        return Path(os.path.relpath(path, dest)).as_posix() if path.is_file() else None

    video = folder / str(status.get("video") or "")
    return {
        "id": str(status["id"]),
        "status": status.get("status"),
        "error": status.get("error"),
        "frames_written": status.get("frames_written"),
        "max_frames": status.get("max_frames"),
        "video": rel(video) if status.get("video") else None,
        "contact_sheet": rel(folder / "contact_sheet.png"),
        "plot": plot,
    }

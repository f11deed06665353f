"""What `sdfleet` shows on the terminal: the progress bar and the lines after a run.

Only the command line prints; the engines (`batch`, `anim`) log and return summaries.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any


class progress_bar:
    """tqdm with images/s and ETA, or a no-op when disabled."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.enabled, self.bar = total, enabled, None

    def __enter__(self):
        if self.enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, unit="img", dynamic_ncols=True, file=sys.stderr)
        return self

    def update(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()


def report_batch(summary: dict, out: str) -> None:
    """A batch run: counts, rate, the first errors, and what is missing."""
    print(
        f"{out}: {summary['ok']} ok, {summary['error']} error, "
        f"{summary['skipped_already_done_rows']} rows already done; "
        f"{summary['images_per_s']} images/s"
    )
    for item in summary["errors"][:10]:
        print(f"  error {item['output_id']}: {item['error']}")
    if summary["error"]:
        print("  to make the failed rows again (e.g. after fixing them): add --retry-errors")
    if summary["unique_outputs"] < summary["expected_outputs"]:
        print(
            f"  missing: {summary['expected_outputs'] - summary['unique_outputs']} outputs; "
            "run the same command again to resume"
        )


def report_clips(rows: list[dict[str, Any]]) -> None:
    """An animation run: one line per clip."""
    for row in rows:
        if row["status"] == "ok":
            print(
                f"{row['id']}: ok, {row['frames_written']} frames -> "
                f"{Path(row['folder']) / str(row['video'])}"
            )
        else:
            print(f"{row['id']}: error: {row['error']}")
    if any(row["status"] != "ok" for row in rows):
        print("run the same command again to retry the failed clips (finished ones are kept)")

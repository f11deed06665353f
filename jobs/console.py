"""What `sdfleet` shows on the terminal: the progress bar and the lines after a run.

Only the command line prints; the engines (`batch`, `anim`) log and return summaries.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, TextIO

from sdfleet.batch.progress import ProgressEvent, images_per_s


class progress_bar:
    """What a run shows on stderr while it runs: a "loading" line, then outputs done with
    sdfleet's images/s (`batch.progress`) and the time left. On a terminal, a bar; elsewhere (a
    log file, CI) no bar, a plain line every `LINE_EVERY_PERCENT` instead. `update` takes the
    batch engine's `ProgressEvent`s, or a count of frames just written (animation).
    Disabled: shows nothing."""

    LINE_EVERY_PERCENT = 10

    def __init__(self, total: int, enabled: bool, stream: TextIO | None = None):
        self.total, self.enabled, self.bar = total, enabled, None
        self.stream = stream or sys.stderr
        self.done, self.shown_percent = 0, -1
        self.started = time.time()

    def __enter__(self):
        if self.enabled and self.stream.isatty():
            from tqdm import tqdm

            # no tqdm rate: the postfix carries sdfleet's (`batch.progress.images_per_s`)
            bar_format = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]"
            self.bar = tqdm(
                total=self.total, dynamic_ncols=True, file=self.stream, bar_format=bar_format
            )
        return self

    def update(self, event: ProgressEvent | int) -> None:
        if not self.enabled:
            return
        if isinstance(event, int):  # animation: frames written since its bar started
            frames = self.done + event
            self._show(frames, images_per_s(frames, time.time() - self.started), "frames")
        elif event.stage == "loading":
            done = f"; {event.skipped} already done" if event.skipped else ""
            self._say(f"loading {event.detail}{done}")
            self._show(event.done, None)
        else:
            self._show(event.done, event.images_per_s)

    def _show(self, done: int, rate: float | None, unit: str = "images") -> None:
        self.done = done
        rate_now = rate_text(rate, self.total - done, unit)
        if self.bar is not None:
            self.bar.n = done
            self.bar.set_postfix_str(rate_now, refresh=False)
            self.bar.refresh()
            return
        percent = 100 * done // self.total if self.total else 100
        step = percent - percent % self.LINE_EVERY_PERCENT
        if step > self.shown_percent:
            self.shown_percent = step
            self._say(f"{done}/{self.total} ({percent}%)" + (f", {rate_now}" if rate_now else ""))

    def _say(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()


def rate_text(rate: float | None, left: int, unit: str = "images") -> str:
    """E.g. "3.2 images/s, 12 s left"; "" before anything is made."""
    if not rate:
        return ""
    return f"{rate:.3g} {unit}/s, {left / rate:.0f} s left"


def report_batch(summary: dict, out: str) -> None:
    """A batch run: counts, rate, the first errors, and what is missing."""
    rate = summary["images_per_s"]
    print(
        f"{out}: {summary['ok']} ok, {summary['error']} error, "
        f"{summary['skipped_already_done_rows']} rows already done; "
        + (f"{rate:.3g} images/s" if rate else "no images made this run")
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

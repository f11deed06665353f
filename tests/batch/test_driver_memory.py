"""The driver's memory does not follow the row count: what it keeps per pipeline call is
aggregates (`batch.progress.RunProgress`: a `RateClock` per replica), never a list of calls.
docs/PERFORMANCE.md ("The Ray executor") has the measured figures at 100k and 1M rows."""

from __future__ import annotations

import tracemalloc

from sdfleet.batch.progress import CallDone, ProgressEvent, RunProgress


def feed(tracker: RunProgress, calls: int, workers: int = 4) -> None:
    for i in range(calls):
        start = 1000.0 + i * 0.01
        tracker.call_done(CallDone(f"host:{i % workers}", 4, start, start + 0.02))


def traced_growth(calls: int) -> int:
    """Bytes the tracker (and its callback's last event) hold more after `calls` calls than
    after the first 100."""
    last: list[ProgressEvent] = []

    def keep_last(event: ProgressEvent) -> None:
        last[:] = [event]

    tracker = RunProgress(keep_last)
    feed(tracker, 100)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        feed(tracker, calls)
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert tracker.total.images == 4 * (100 + calls)
    return after - before


def test_progress_keeps_no_memory_per_call():
    """30,000 calls (120k rows at 4 rows a call) hold no more than 1,000 calls do: a list of
    `CallDone`s, their times or events would take ~100 bytes a call, 3 MB here."""
    small, large = traced_growth(1_000), traced_growth(30_000)
    assert large < small + 64 * 1024, (small, large)


def test_progress_keeps_one_clock_per_replica_and_the_rates_stay_exact():
    tracker = RunProgress(lambda event: None)
    feed(tracker, 10_000, workers=3)
    assert set(tracker.workers) == {"host:0", "host:1", "host:2"}
    assert tracker.total.images == 40_000
    # the span: first start 1000.0, last end 1000.0 + 9999 * 0.01 + 0.02
    span = 9_999 * 0.01 + 0.02
    assert abs(tracker.images_per_s() - 40_000 / span) < 1e-6

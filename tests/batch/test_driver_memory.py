"""The driver's memory does not follow the row count: what it keeps per pipeline call is
aggregates (`batch.progress.RunProgress`: a `RateClock` per replica), never a list of calls;
the summary counts distinct outputs on 8 bytes a row, sorted in place.
docs/PERFORMANCE.md ("The Ray executor") has the measured figures."""

from __future__ import annotations

import tracemalloc

import pyarrow as pa
import pyarrow.parquet as pq

from sdfleet.batch.outputs import OutputDir
from sdfleet.batch.progress import CallDone, ProgressEvent, RunProgress
from sdfleet.batch.run import ResultCounts


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


# --- the summary's distinct count: hashes sorted in place, no copies -----------------------------


def test_distinct_outputs_are_counted_from_the_hashes_alone(tmp_path):
    counts = ResultCounts(max_errors=5)
    for start in range(0, 3000, 1000):
        ids = [f"row-{i:06d}" for i in range(start, start + 1000)]
        counts.add(pa.table({"output_id": ids, "status": ["ok"] * 1000, "error": [None] * 1000}))
    # no results/ in this OUT: a fall back to reading the ids would count 0
    assert counts.unique_outputs(OutputDir(str(tmp_path))) == 3000 == counts.outputs


def test_a_repeated_output_is_found_and_counted_on_the_ids(tmp_path):
    part = pa.table({"output_id": ["a", "b", "a"], "status": ["ok"] * 3, "error": [None] * 3})
    (tmp_path / "results").mkdir()
    pq.write_table(part, tmp_path / "results" / "part-0.parquet")
    counts = ResultCounts(max_errors=5)
    counts.add(part)
    assert counts.outputs == 3 and counts.unique_outputs(OutputDir(str(tmp_path))) == 2

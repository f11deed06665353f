"""Progress and images/s: per-call events, a resume counted from where it stands, one rate
formula for the bar, the summary and each replica, the terminal-less display, and images
written as they are made (a block keeps small rows, never pictures)."""

from __future__ import annotations

import io
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sdfleet.batch.actor import GenerateBatch, RunConfig, plan_calls
from sdfleet.batch.models import ModelSpec
from sdfleet.batch.progress import CallDone, ProgressEvent, RateClock, RunProgress, images_per_s
from sdfleet.batch.request import RowDefaults
from sdfleet.batch.sources import table_from_rows
from sdfleet.jobs.console import progress_bar, report_batch
from tests.batch.test_ray import rows, write_job


def calls(*spec: tuple[str, int, float, float]) -> list[CallDone]:
    return [CallDone(worker, n, start, end) for worker, n, start, end in spec]


# --- the one images/s --------------------------------------------------------------------------


def test_images_per_s_is_images_over_seconds_and_none_when_there_is_nothing():
    assert images_per_s(10, 4.0) == 2.5
    assert images_per_s(0, 4.0) is None and images_per_s(3, 0.0) is None


def test_bar_summary_and_replica_rates_share_one_formula():
    events: list[ProgressEvent] = []
    tracker = RunProgress(events.append)
    for call in calls(("w1", 4, 100.0, 101.0), ("w2", 4, 100.5, 102.0), ("w1", 4, 101.0, 103.0)):
        tracker.call_done(call)
    # the run: 12 images from the first start (100.0) to the last end (103.0)
    assert tracker.images_per_s() == images_per_s(12, 3.0) == 4.0
    assert events[-1].images_per_s == tracker.images_per_s()  # the bar's last figure
    # each replica over its own span: w1 8 images in 100 -> 103, w2 4 in 100.5 -> 102
    assert tracker.per_replica() == {"w1": images_per_s(8, 3.0), "w2": images_per_s(4, 1.5)}
    # the bar while running: up to each call's end
    assert events[0].images_per_s == images_per_s(4, 1.0)
    assert events[1].images_per_s == images_per_s(8, 2.0)


def test_rate_clock_before_any_image_has_no_rate():
    assert RateClock().images_per_s() is None
    assert RateClock().images_per_s(until=5.0) is None


def test_events_count_each_call_and_start_from_what_a_resume_skips():
    events: list[ProgressEvent] = []
    tracker = RunProgress(events.append, skipped=10)
    tracker.loading("builtin:tiny on 1 replica(s)")
    for call in calls(("w", 2, 0.0, 1.0), ("w", 2, 1.0, 2.0), ("w", 2, 2.0, 3.0)):
        tracker.call_done(call)
    assert [(e.stage, e.done) for e in events] == [
        ("loading", 10),
        ("generating", 12),
        ("generating", 14),
        ("generating", 16),
    ]
    assert events[0].images_per_s is None and events[0].detail.startswith("builtin:tiny")


# --- what the terminal shows -------------------------------------------------------------------


def test_without_a_terminal_there_is_no_bar_but_a_line_every_ten_percent():
    stream = io.StringIO()  # not a tty
    with progress_bar(20, True, stream=stream) as bar:
        bar.update(ProgressEvent("loading", 0, 0, detail="builtin:tiny on 1 replica(s)"))
        for made in range(1, 21):
            bar.update(ProgressEvent("generating", 0, made, images_per_s=2.0))
    lines = stream.getvalue().splitlines()
    assert lines[0] == "loading builtin:tiny on 1 replica(s)"
    assert lines[1] == "0/20 (0%)"
    assert lines[2] == "2/20 (10%), 2 images/s, 9 s left"
    assert lines[-1] == "20/20 (100%), 2 images/s, 0 s left"
    assert len(lines) == 2 + 10 and "\r" not in stream.getvalue()
    assert "None" not in stream.getvalue()


def test_a_resume_shows_what_is_done_and_ends_at_one_hundred_percent():
    stream = io.StringIO()
    with progress_bar(10, True, stream=stream) as bar:
        bar.update(ProgressEvent("loading", 8, 0, detail="m on 1 replica(s)"))
        bar.update(ProgressEvent("generating", 8, 2, images_per_s=1.0))
    lines = stream.getvalue().splitlines()
    assert lines == [
        "loading m on 1 replica(s); 8 already done",
        "8/10 (80%)",
        "10/10 (100%), 1 images/s, 0 s left",
    ]


def test_disabled_progress_shows_nothing():
    stream = io.StringIO()
    with progress_bar(4, False, stream=stream) as bar:
        bar.update(ProgressEvent("loading", 0, 0, detail="m"))
        bar.update(ProgressEvent("generating", 0, 4, images_per_s=1.0))
    assert stream.getvalue() == ""


def test_the_summary_line_never_says_none_images_per_s(capsys):
    summary = {
        "ok": 4,
        "error": 0,
        "skipped_already_done_rows": 4,
        "images_per_s": None,
        "errors": [],
        "unique_outputs": 4,
        "expected_outputs": 4,
    }
    report_batch(summary, "OUT")
    assert (
        capsys.readouterr().out
        == "OUT: 4 ok, 0 error, 4 rows already done; no images made this run\n"
    )
    report_batch(summary | {"images_per_s": 2.345}, "OUT")
    assert capsys.readouterr().out.endswith("; 2.35 images/s\n")


# --- the actor: one call at a time, images written as they are made ----------------------------


def test_calls_are_planned_as_the_replica_groups_them():
    keys = ["a", "b", "a", "a", "b", "a", "c"]
    assert plan_calls(keys, key=lambda k: k, batch_size=2) == [[0, 2], [3, 5], [1, 4], [6]]
    assert plan_calls([], key=lambda k: k, batch_size=2) == []


class Recorder:
    """A `batch.actor.Reporter` that notes, at every call, which images are on disk."""

    def __init__(self, images: Path) -> None:
        self.images, self.seen, self.calls = images, [], []

    def loaded(self, seconds: float) -> None:
        pass

    def call_done(self, call: CallDone) -> None:
        self.calls.append(call)
        self.seen.append(sorted(p.name for p in self.images.glob("*.png")))


def actor_config(tmp_path: Path, **fields) -> RunConfig:
    defaults = RowDefaults(num_inference_steps=2, width=64, height=64)
    return RunConfig(
        model=ModelSpec(),
        defaults=defaults,
        out_uri=str(tmp_path / "out"),
        batch_size=2,
        **fields,
    )


def test_a_block_writes_each_call_s_images_when_the_call_returns(tiny_dir, tmp_path):
    recorder = Recorder(tmp_path / "out" / "images")
    actor = GenerateBatch(actor_config(tmp_path), progress=recorder)
    manifest = [{"id": f"r{i}", "prompt": f"prompt {i}"} for i in range(6)]
    table = actor(table_from_rows(manifest))
    assert [c.images for c in recorder.calls] == [2, 2, 2]  # one report per pipeline call
    # after call k, the images of calls 1..k are on disk: written before the block ended
    assert recorder.seen == [
        ["r0.png", "r1.png"],
        ["r0.png", "r1.png", "r2.png", "r3.png"],
        [f"r{i}.png" for i in range(6)],
    ]
    assert table.column("image_path").to_pylist() == [f"images/r{i}.png" for i in range(6)]


def test_rows_a_block_returns_carry_paths_not_pictures(tiny_dir, tmp_path):
    manifest = table_from_rows([{"id": f"r{i}", "prompt": f"prompt {i}"} for i in range(3)])
    table = GenerateBatch(actor_config(tmp_path))(manifest)
    assert "image" not in table.column_names
    assert not [f.name for f in table.schema if pa.types.is_binary(f.type)]
    for row in table.to_pylist():
        assert all(v is None or isinstance(v, str | int | float | bool) for v in row.values())
    # bytes only when the job asks for them (embed_image_bytes), as the `image` struct
    embedded = GenerateBatch(actor_config(tmp_path, embed_image_bytes=True))(manifest)
    first = embedded.column("image").to_pylist()[0]
    assert first["path"] == "images/r0.png" and first["bytes"][:4] == b"\x89PNG"


# --- on Ray: per-call progress, a resume that ends at 100% --------------------------------------


@pytest.fixture
def local_ray(tiny_dir, monkeypatch):
    import ray

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    # ours, never a running one; 3 CPUs: the replica, reads, and a resume's checkpoint filter
    ray.init(address="local", num_cpus=3, include_dashboard=False)
    yield
    ray.shutdown()


SMALL = {"num_inference_steps": 2, "width": 64, "height": 64}


def run_ray_job(job: Path, out: Path, actor_class=GenerateBatch) -> tuple[dict, list]:
    from sdfleet.jobs.runner import prepare_batch_job, run_batch_job
    from sdfleet.jobs.spec import load_job

    prepared = prepare_batch_job(load_job(job), job, str(out))
    events: list[ProgressEvent] = []
    summary = run_batch_job(prepared, "ray", events.append, actor_class=actor_class)
    return summary, events


@pytest.mark.ray
@pytest.mark.slow
def test_a_16_row_ray_job_reports_every_call(local_ray, tmp_path):
    job = write_job(tmp_path, rows(16), {"rows_per_block": 8})
    summary, events = run_ray_job(job, tmp_path / "out")
    assert events[0].stage == "loading" and events[0].done == 0
    counts = [e.done for e in events if e.stage == "generating"]
    assert counts == [2, 4, 6, 8, 10, 12, 14, 16]  # per call of 2, not per block of 8
    assert summary["generated_this_run"] == 16
    # the summary's figure is the bar's last one, rounded; the replica's is its own span
    assert summary["images_per_s"] == round(events[-1].images_per_s, 3)
    (replica_rate,) = summary["images_per_s_per_replica"].values()
    assert replica_rate == summary["images_per_s"]  # one replica: the same span


@pytest.mark.ray
@pytest.mark.slow
def test_a_resumed_ray_job_counts_what_is_done_and_ends_at_100_percent(local_ray, tmp_path):
    from sdfleet.batch.errors import StorageError
    from tests.batch.faults import faulty_actor

    job, out = write_job(tmp_path, rows(24), {"rows_per_block": 8}), tmp_path / "out"
    # the disk fills at the last block's last call: the first two blocks are committed
    hooks = {"full_disk_on_id": "r023", "full_disk_marker": str(tmp_path / "once")}
    with pytest.raises(StorageError):
        run_ray_job(job, out, faulty_actor(hooks))
    committed = pq.read_table(out / "_checkpoint").num_rows
    assert committed > 0, "the first run committed nothing: the test needs a partial OUT"
    summary, events = run_ray_job(job, out, faulty_actor(hooks))
    assert events[0].stage == "loading" and events[0].skipped == committed
    assert events[-1].done == summary["expected_outputs"] == 24  # the bar ends at 100%
    assert summary["generated_this_run"] == 24 - committed


@pytest.mark.slow  # two runs of 24 rows x 2 images
def test_a_resumed_local_job_counts_outputs_not_rows_and_ends_at_100_percent(tiny_dir, tmp_path):
    from sdfleet.jobs.runner import prepare_batch_job, run_batch_job
    from sdfleet.jobs.spec import load_job

    # 24 rows x 2 images: the local executor commits 16 rows (32 outputs) a part, so 2 parts
    job = write_job(tmp_path, rows(24), executor="local", defaults={"num_images": 2, **SMALL})
    prepared = prepare_batch_job(load_job(job), job, str(tmp_path / "out"))
    run_batch_job(prepared, "local", lambda event: None)
    parts = sorted((tmp_path / "out" / "results").glob("*.parquet"))
    assert len(parts) == 2
    kept = pq.read_table(parts[0]).num_rows
    parts[1].unlink()  # as if the run had stopped after its first part
    events: list[ProgressEvent] = []
    summary = run_batch_job(prepared, "local", events.append)
    assert events[0].stage == "loading" and events[0].skipped == kept == 32
    assert events[-1].done == summary["expected_outputs"] == 48
    assert summary["generated_this_run"] == 48 - kept

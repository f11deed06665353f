"""Parallel segments: a 2D clip with hard cuts rendered as independent segment tasks, then joined.

A hard cut (``hard_cuts: [f, ...]``; in the plan, a 2D frame after 0 in ``txt2img`` mode) keeps
nothing from the frames before it: no init picture, a new colour reference, and the frame before
it is diffused, so no tween spans the cut and no diffused frame is pending across it. Seeds and
noise come from the plan. So the frames from one cut to the next are a function of the plan
alone, and a segment rendered on its own, from an empty state, is byte-identical to the same
frames of the clip rendered in sequence.

    segments(plan) -> [(start, end), ...]          split at the hard cuts
    render_segment(job, paths, model, start, end)  frames start..end-1 into the clip's folder,
                                                   resumable (state/segment_<start>.npz)
    join_segments(job, paths)                      every segment done -> video, sheet, status ok
    SegmentTask (a row for an actor), RenderSegments (the clip actor, one segment per row),
    run_segments_local(tasks), run_segments_ray(tasks, ...)   (then the clips are joined)

Each segment task writes only its own frames and its own state file, so tasks on the pool never
write the same file; the join runs once, after every task, on the driver.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdfleet.anim.clip import (
    ClipPaths,
    FrameModel,
    Progress,
    fingerprint,
    iter_clip_frames,
    output_settings,
    write_clip_record,
    write_frames,
    write_outputs,
    write_status,
)
from sdfleet.anim.plan import FrameRecord, compile_plan
from sdfleet.anim.ray_clips import (
    CLIP_STALL_TIMEOUT_S,
    CLIP_START_TIMEOUT_S,
    RenderClips,
    plan_clip_pool,
    render_rows_on_pool,
)
from sdfleet.anim.spec import AnimationJob
from sdfleet.anim.state import RenderState, load_state, save_state, saved_frames
from sdfleet.batch.errors import ConfigError
from sdfleet.batch.models import model_spec

logger = logging.getLogger(__name__)


def segments(plan: Sequence[FrameRecord]) -> list[tuple[int, int]]:
    """(start, end) frame ranges between the hard cuts (one range for a clip without cuts)."""
    starts = [0] + [r.frame for r in plan if r.frame > 0 and r.mode == "txt2img" and r.diffused]
    if any(record.seed_a is not None for record in plan):  # a walk: no chain to cut
        starts = [0]
    ends = [*starts[1:], len(plan)]
    return list(zip(starts, ends, strict=True))


@dataclass(frozen=True)
class SegmentPaths(ClipPaths):
    """A clip's folder, with the state file of one segment."""

    start: int = 0

    @property
    def state(self) -> Path:  # type: ignore[override]
        return self.root / "state" / f"segment_{self.start:06d}.npz"


def render_segment(
    job: AnimationJob,
    paths: ClipPaths,
    model: FrameModel,
    start: int,
    end: int,
    progress: Progress | None = None,
) -> int:
    """Render frames start..end-1 of the clip into `paths` (continuing from the segment's saved
    state); returns how many frames the segment has written."""
    # 1. the plan; the range must be one of its segments (a cut on either side)
    plan = compile_plan(job)
    if (start, end) not in segments(plan):
        raise ConfigError(
            f"frames {start}..{end - 1} are not a segment of this clip; its segments are "
            f"{segments(plan)} (hard_cuts: {list(job.hard_cuts)})"
        )
    print_ = fingerprint(job, plan)
    where = SegmentPaths(paths.root, paths.name, paths.video_format, start)
    # 2. continue from the segment's state, or start it fresh at its first frame
    state = load_state(where.state, print_) or RenderState(next_frame=start, fingerprint=print_)
    if state.next_frame >= end:
        return end - start
    # 3. the plan up to the segment's end: the chain stops there (the frame after is a cut)
    frames = iter_clip_frames(job, plan[:end], model, state, walk_batch_size=1)
    write_frames(where, job, plan, frames, progress)
    # 4. every frame is on disk; the last one may have been rendered ahead of the tweens
    # before it (counted when promoted, which writes nothing): the state says done
    save_state(where.state, RenderState(next_frame=end, fingerprint=print_))
    return end - start


def join_segments(
    job: AnimationJob,
    paths: ClipPaths,
    clip_id: str = "clip",
    header: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """After every segment: the clip's record, video, contact sheet and an ok status."""
    started = time.perf_counter()
    plan = compile_plan(job)
    missing = [
        (start, end)
        for start, end in segments(plan)
        if saved_frames(SegmentPaths(paths.root, start=start).state) < end
    ]
    if missing:
        raise ConfigError(f"segments {missing} of clip {clip_id} are not rendered yet")
    write_clip_record(paths, job, plan, header or {})
    write_outputs(paths, job)
    status = {
        "id": clip_id,
        "status": "ok",
        "max_frames": job.max_frames,
        "frames_written": job.max_frames,
        "fingerprint": fingerprint(job, plan),
        "video": paths.video.name,
        "outputs": output_settings(job),
        "segments": [list(segment) for segment in segments(plan)],
        "error": None,
        "contact_sheet": paths.contact_sheet.name,
        "seconds": round(time.perf_counter() - started, 3),
    }
    write_status(paths, status)
    return status


# ---------------------------------------------------------------------------- tasks on the pool


@dataclass(frozen=True)
class SegmentTask:
    """One segment of one clip: a row for `RenderSegments`."""

    id: str
    job: AnimationJob
    root: Path
    start: int
    end: int

    def to_row(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "job": self.job.model_dump_json(),
            "root": str(self.root),
            "segment": json.dumps([self.start, self.end]),
        }

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> SegmentTask:
        start, end = json.loads(row["segment"])
        return cls(
            str(row["id"]),
            AnimationJob.model_validate_json(row["job"]),
            Path(row["root"]),
            start,
            end,
        )

    @property
    def paths(self) -> ClipPaths:
        return ClipPaths.for_job(self.root, self.job, self.id)


def segment_tasks(clip_id: str, job: AnimationJob, root: Path) -> list[SegmentTask]:
    return [SegmentTask(clip_id, job, root, s, e) for s, e in segments(compile_plan(job))]


class RenderSegments(RenderClips):
    """The clip actor (one model, loaded once), rendering one segment per row; a failure is
    that row's error, never an exception."""

    def render_row(
        self, row: Mapping[str, Any], progress: Progress | None = None
    ) -> dict[str, Any]:
        task = SegmentTask.from_row(row)
        out: dict[str, Any] = {"id": task.id, "segment": row["segment"], "error": None}
        try:
            frames = self._frames_for(task.job)
            out["frames_written"] = render_segment(
                task.job, task.paths, frames, task.start, task.end, progress
            )
        except Exception as exc:  # noqa: BLE001 - one segment's failure must not stop the others
            logger.warning("clip %s segment %s failed: %s", task.id, row["segment"], exc)
            out |= {"error": f"{type(exc).__name__}: {exc}", "frames_written": None}
        return out


def run_segments_local(
    tasks: Sequence[SegmentTask], actor: RenderSegments | None = None
) -> list[dict[str, Any]]:
    """Every segment task in this process, one after the other; then each clip is joined."""
    if not tasks:
        return []
    actor = actor or RenderSegments()
    rows = [actor.render_row(task.to_row()) for task in tasks]
    join_finished(tasks)
    record_failures(tasks, rows)
    return rows


def run_segments_ray(
    tasks: Sequence[SegmentTask],
    *,
    address: str | None = None,
    replicas: int | None = None,
    num_cpus: float = 1.0,
    out: str | None = None,
    stall_timeout_s: float = CLIP_STALL_TIMEOUT_S,
    start_timeout_s: float = CLIP_START_TIMEOUT_S,
) -> list[dict[str, Any]]:
    """The segment tasks side by side on a clip actor pool (`anim.ray_clips`: sized and
    checked as for clips, never more actors than segments); then each clip whose segments
    all finished is joined on the driver. Returns a row per segment."""
    if not tasks:
        return []
    out = out or str(tasks[0].root)
    spec = model_spec(tasks[0].job)
    plan, threads = plan_clip_pool(len(tasks), address, replicas, num_cpus, out, spec.device)
    rows = [task.to_row() for task in tasks]
    args = (spec, None, plan, threads, stall_timeout_s, start_timeout_s)
    done = render_rows_on_pool(rows, RenderSegments, *args)
    join_finished(tasks)
    record_failures(tasks, done)
    return done


def record_failures(tasks: Sequence[SegmentTask], rows: Sequence[Mapping[str, Any]]) -> None:
    """A clip with a failed segment gets an error status naming the segment and what it
    raised (the clip's status is what the run reports); the frames saved stay for a rerun."""
    failed: dict[str, list[str]] = {}
    for row in rows:
        if row.get("error"):
            start, end = json.loads(row["segment"])
            failed.setdefault(str(row["id"]), []).append(
                f"segment of frames {start}-{end - 1}: {row['error']}"
            )
    for task in {task.id: task for task in tasks if task.id in failed}.values():
        plan = compile_plan(task.job)
        saved = [
            min(saved_frames(SegmentPaths(task.root, start=start).state), end) - start
            for start, end in segments(plan)
        ]
        status = {
            "id": task.id,
            "status": "error",
            "max_frames": task.job.max_frames,
            "frames_written": sum(max(n, 0) for n in saved),
            "segments": [list(segment) for segment in segments(plan)],
            "error": "; ".join(failed[task.id])
            + " (run again to continue: finished segments are kept)",
        }
        write_status(task.paths, status)


def join_finished(tasks: Sequence[SegmentTask]) -> list[str]:
    """Join each clip whose segments are all rendered; the ids joined."""
    joined = []
    for task in {task.id: task for task in tasks}.values():
        plan = compile_plan(task.job)
        where = [SegmentPaths(task.root, start=start).state for start, _ in segments(plan)]
        if all(saved_frames(path) >= end for path, (_, end) in zip(where, segments(plan))):
            join_segments(task.job, task.paths, task.id)
            joined.append(task.id)
    return joined

"""Many clips: a clip list (the job's `clips:` or a Parquet clip manifest) rendered side by side.

    tasks (id, clip job as JSON, folder) -> ray.data.from_items (one block per clip)
      -> map_batches(RenderClips, compute=ActorPoolStrategy(size=N), batch_size=1,
                     num_cpus=c, num_gpus=g)              # one clip per actor at a time
      -> one status row per clip (id, status ok | error, error, frames, video, seconds)

- `RenderClips` is the callable class: it loads one model (`batch.models.load_model`, the loader
  batch replicas use) in ``__init__`` and renders one clip per row with `anim.clip.render_clip`.
  Every exception is caught inside the actor and becomes that clip's status row, so one failing
  clip never stops the others. It runs on a plain dict of columns too: the `local` executor and
  the tests call it directly.
- A rerun resumes: finished clips (status ok, same fingerprint) are not scheduled again, and an
  unfinished one continues from its saved state (`anim.state`).
- The clips' `status.json` files are the source of truth: after the run (even one that Ray
  aborted) the statuses are read back from them.
- A clip whose model differs from the one loaded (a `model:` override) makes the actor load
  that model instead; clips in a manifest normally share one.

A clip manifest is a Parquet file with an ``id`` column and any job fields as further columns
(null = not overridden); rows are validated like the job's `clips:` list, before any model loads.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sdfleet.anim.clip import (
    ClipPaths,
    Progress,
    fingerprint,
    is_finished,
    output_settings,
    read_status,
    render_clip,
    with_absolute_paths,
)
from sdfleet.anim.plan import compile_plan
from sdfleet.anim.spec import AnimationJob, load_animation_job, resolve_clips
from sdfleet.batch.errors import ConfigError
from sdfleet.batch.models import ModelSpec, model_spec
from sdfleet.batch.pool import NodeResources, check_shared_storage, holds_gpu
from sdfleet.batch.ray_context import RayFailure, pipeline_settings, ray_data, ray_failure

logger = logging.getLogger(__name__)

STATUS_COLUMNS = (
    "id",
    "status",
    "error",
    "frames_written",
    "max_frames",
    "video",
    "seconds",
    "folder",
)


@dataclass(frozen=True)
class ClipTask:
    """One clip to render: its id, its resolved job and its output folder."""

    id: str
    job: AnimationJob
    root: Path

    @property
    def paths(self) -> ClipPaths:
        return ClipPaths.for_job(self.root, self.job, self.id)

    def to_row(self) -> dict[str, str]:
        return {"id": self.id, "job": self.job.model_dump_json(), "root": str(self.root)}

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> ClipTask:
        job = AnimationJob.model_validate_json(row["job"])
        return cls(str(row["id"]), job, Path(row["root"]))

    def is_finished(self) -> bool:
        """Rendered and encoded as the job now asks: a finished clip whose video settings
        changed (fps, format, crf, soundtrack, contact sheet) is a task again, which encodes
        its frames anew without rendering them (`anim.clip.refresh_outputs`)."""
        paths = self.paths
        if not is_finished(paths, fingerprint(self.job, compile_plan(self.job))):
            return False
        return (read_status(paths) or {}).get("outputs") == output_settings(self.job)


# ---------------------------------------------------------------------------- clip manifests


def read_clip_manifest(path: Path, base: AnimationJob) -> list[tuple[str, AnimationJob]]:
    """(id, job) per row of a Parquet clip manifest, validated like a job's `clips:` list
    (one ConfigError listing every problem). Nulls are 'not overridden'; relative paths in rows
    are from the manifest's folder."""
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the clip manifest: {exc}") from exc
    if not rows or "id" not in rows[0]:
        raise ConfigError(f"{path}: a clip manifest needs an 'id' column and at least one row")
    clips = [{k: v for k, v in row.items() if v is not None and not _is_nan(v)} for row in rows]
    data = base.model_dump(mode="json", exclude={"clips"}) | {"clips": clips}
    resolved = resolve_clips(load_animation_job(data, source=str(path)))
    return [(clip_id, with_absolute_paths(job, path.parent)) for clip_id, job in resolved]


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


# ---------------------------------------------------------------------------- the actor


class RenderClips:
    """Ray Data callable class: loads one model, renders one clip per row."""

    def __init__(
        self,
        model: ModelSpec | None = None,
        header: Mapping[str, str] | None = None,
        cpu_threads: int | None = None,
        walk_batch_size: int = 4,
    ) -> None:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        self.header = dict(header or {})
        self.cpu_threads = cpu_threads  # CPU replicas: torch threads (None: torch's default)
        self.walk_batch_size = walk_batch_size
        self.spec: ModelSpec | None = None
        self.sampler: Any = None  # batch.sampler.Sampler of the loaded model
        if model is not None:
            self._load(model)

    def __call__(self, batch: Any) -> dict[str, list]:
        from sdfleet.batch.actor import columns_to_rows, rows_to_columns

        rows = [self.render_row(row) for row in columns_to_rows(batch)]
        return rows_to_columns(rows)

    def render_row(
        self, row: Mapping[str, Any], progress: Progress | None = None
    ) -> dict[str, Any]:
        """Render one clip; any failure becomes its status row (never an exception)."""
        try:
            task = ClipTask.from_row(row)
            frames = self._frames_for(task.job)
            render_clip(
                task.job,
                task.paths,
                frames,
                clip_id=task.id,
                header=self.header,
                progress=progress,
                walk_batch_size=self.walk_batch_size,
            )
        except Exception as exc:  # noqa: BLE001 - one clip's failure must not stop the others
            logger.warning("clip %s failed: %s: %s", row.get("id"), type(exc).__name__, exc)
            return status_row(row, read_status_of(row), f"{type(exc).__name__}: {exc}")
        return status_row(row, read_status_of(row))

    def _frames_for(self, job: AnimationJob) -> Any:
        from sdfleet.anim.frames import PipelineFrames

        spec = model_spec(job)  # the scheduler is the clip's own (see `anim.frames`)
        if self.sampler is None or self.spec != spec:
            self._load(spec)
        return PipelineFrames.for_job(self.sampler, job)

    def _load(self, spec: ModelSpec) -> None:
        from sdfleet.batch.models import load_model
        from sdfleet.batch.sampler import Sampler

        self.sampler = self.spec = None  # free the old model before loading the next
        self.sampler = Sampler(load_model(spec, self.cpu_threads))
        self.spec = spec


def read_status_of(row: Mapping[str, Any]) -> dict[str, Any]:
    try:
        return read_status(ClipTask.from_row(row).paths) or {}
    except Exception:  # noqa: BLE001 - a row too broken to parse has no status file
        return {}


def status_row(
    row: Mapping[str, Any], status: Mapping[str, Any], error: str | None = None
) -> dict[str, Any]:
    """The fixed columns of one clip's status (error overrides what the file says)."""
    out = {name: status.get(name) for name in STATUS_COLUMNS}
    out |= {"id": str(row["id"]), "folder": str(row.get("root"))}
    if error is not None:
        out |= {"status": "error", "error": error[:2000]}
    elif out["status"] == "interrupted":  # `anim.clip.mark_interrupted`
        out["error"] = f"interrupted after {out['frames_written']} frames; run again to continue"
    elif out["status"] != "ok":
        out |= {"status": "error", "error": out["error"] or "the clip did not finish"}
    return out


# ---------------------------------------------------------------------------- executors


# A clip is one block, so Ray Data sees progress only when a whole clip finishes: the stall
# timeout bounds the longest clip (Ray 2.60's own default, which clip runs had before), and the
# pool has the batch executor's default time to load its models.
CLIP_STALL_TIMEOUT_S = 1800.0
CLIP_START_TIMEOUT_S = 600.0


def run_clips_local(
    tasks: Sequence[ClipTask],
    header: Mapping[str, str] | None = None,
    progress: Progress | None = None,
) -> list[dict[str, Any]]:
    """Every unfinished clip in this process, one after the other, with one actor object."""
    todo = [task for task in tasks if not task.is_finished()]
    actor = RenderClips(model_spec(todo[0].job) if todo else None, header)
    for task in todo:
        actor.render_row(task.to_row(), progress)
    return collect_statuses(tasks)


def run_clips_ray(
    tasks: Sequence[ClipTask],
    header: Mapping[str, str] | None = None,
    *,
    address: str | None = None,
    replicas: int | None = None,
    num_cpus: float = 1.0,
    out: str | None = None,
    stall_timeout_s: float = CLIP_STALL_TIMEOUT_S,
    start_timeout_s: float = CLIP_START_TIMEOUT_S,
) -> list[dict[str, Any]]:
    """Unfinished clips on a Ray actor pool (joined, or a local cluster started here). `out`
    is OUT as the user wrote it (default: the first clip's folder), checked against the
    cluster's machines by `check_clip_storage`. The run stops when no clip finishes for
    `stall_timeout_s` or the pool is not up within `start_timeout_s` (`batch.ray_context`);
    what finished is kept and a rerun continues the rest."""

    # 1. what is left to do; nothing starts for a finished run
    todo = [task for task in tasks if not task.is_finished()]
    if not todo:
        return collect_statuses(tasks)
    # 2. the cluster and the pool
    out = out or str(todo[0].root)
    device = model_spec(todo[0].job).device
    plan, threads = plan_clip_pool(len(todo), address, replicas, num_cpus, out, device)
    # 3. one block per clip, one clip per actor call
    rows = [task.to_row() for task in todo]
    spec = model_spec(todo[0].job)
    render_rows_on_pool(
        rows, RenderClips, spec, header, plan, threads, stall_timeout_s, start_timeout_s
    )
    # 4. statuses, from the clips' own files
    return collect_statuses(tasks)


def render_rows_on_pool(
    rows: list[dict[str, Any]],
    actor: type[RenderClips],
    spec: ModelSpec,
    header: Mapping[str, str] | None,
    plan: Any,
    threads: int | None,
    stall_timeout_s: float,
    start_timeout_s: float,
) -> list[dict[str, Any]]:
    """One block per row, one row per call of `actor` (RenderClips or a subclass: clips,
    segments) on a pool sized by `plan_clip_pool`; the rows it returned (none when Ray
    stopped: the callers read the outcome back from the files)."""
    import ray

    with ray_data(pipeline_settings(stall_timeout_s, start_timeout_s)):
        dataset = ray.data.from_items(rows, override_num_blocks=len(rows))
        rendered = dataset.map_batches(
            actor,
            fn_constructor_kwargs={
                "model": spec,
                "header": dict(header or {}),
                "cpu_threads": threads,
            },
            compute=ray.data.ActorPoolStrategy(size=plan.replicas),
            batch_size=1,
            num_cpus=plan.num_cpus,
            num_gpus=plan.num_gpus,
        )
        try:
            return rendered.take_all()
        except Exception as exc:  # noqa: BLE001 - the statuses say which tasks are left
            logger.error("%s", stopped_message(exc, stall_timeout_s, start_timeout_s))
            return []


def stopped_message(exc: BaseException, stall_timeout_s: float, start_timeout_s: float) -> str:
    """Why a Ray clip run stopped, in words (`batch.ray_context.ray_failure`)."""
    failure = ray_failure(exc)
    if failure is RayFailure.STALLED:
        return (
            f"no clip finished for {stall_timeout_s:g} s and the Ray run was stopped (a clip "
            "is one unit of progress: a longer clip needs a larger stall_timeout_s); finished "
            "clips are kept and a rerun continues the others from their saved state"
        )
    if failure is RayFailure.POOL_NOT_STARTED:
        return (
            f"the clip actors did not start within {start_timeout_s:g} s: the cluster cannot "
            "host the pool (see `ray status`)"
        )
    return f"the Ray run stopped: {type(exc).__name__}: {exc}"


CLIP_STORAGE_FIX = (
    "Clips write their frames, state and status as files on the node that renders them, and "
    "the driver reads the statuses back: put OUT on a network mount at the same place on every "
    "node and pass it as --out file:///mnt/..., or run on one machine."
)


def check_clip_storage(nodes: list[NodeResources], out: str) -> None:
    """On a cluster spanning machines, OUT must be a shared mount written as file:///..."""
    check_shared_storage(nodes, {"out": out}, fix=CLIP_STORAGE_FIX)


def plan_clip_pool(
    clips: int,
    address: str | None,
    replicas: int | None,
    num_cpus: float,
    out: str,
    device: str | None = None,
) -> tuple[Any, int | None]:
    """Join the cluster; check OUT is seen by every node (`check_clip_storage`); size the pool
    like the batch engine (`batch.pool.plan_pool`: one replica per GPU, else one per machine),
    never more actors than clips. Returns (PoolPlan, torch threads per CPU replica, None
    meaning every core of its machine)."""
    from sdfleet.batch.pool import plan_pool
    from sdfleet.batch.ray_runner import cpu_threads_per_replica, join_cluster

    nodes = join_cluster(address, {"out": out}, CLIP_STORAGE_FIX)  # as `check_clip_storage`
    plan = plan_pool(
        nodes, replicas, num_cpus_per_replica=num_cpus, allow_fewer=True, use_gpus=holds_gpu(device)
    )
    plan = replace(plan, replicas=min(plan.replicas, clips))
    return plan, cpu_threads_per_replica(plan, replicas)


def collect_statuses(tasks: Sequence[ClipTask]) -> list[dict[str, Any]]:
    """One status row per clip, read back from its status.json."""
    return [status_row(task.to_row(), read_status(task.paths) or {}) for task in tasks]

"""Run an animation job: check what needs no model, render the clip(s), write the summary.

`sdfleet validate`, `run` and `plan` list a job's clips one way (`animation_tasks`) and check
them one way (`check_tasks`; `plan` the part that needs no OUT, model or ffmpeg), so whatever
`validate` accepts, `run` accepts, and nothing renders before every clip is checked.

- A job without `clips:` is one clip, rendered into OUT itself (in this process unless
  ``--executor ray``). Its video is named after the job file (``anim_demo.yaml`` ->
  ``OUT/anim_demo.mp4``).
- A job with `clips:` renders each clip into ``OUT/<id>/`` on Ray actors (or one after the other
  with ``--executor local``); one failing clip does not stop the others.
- `run_clip_manifest` does the same for a Parquet clip manifest (an ``id`` column plus job
  fields as columns) over a base job.
- Running the same command again resumes: finished clips are skipped, unfinished ones continue
  from their saved state. OUT/summary.json lists every clip's status.

Exit status: 0 every clip ok, 2 a problem found before rendering (raised as ConfigError and
friends, reported by the CLI), 3 one or more clips failed.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from sdfleet.anim.clip import check_resumable, mark_interrupted, with_absolute_paths
from sdfleet.anim.plan import FrameRecord, compile_plan
from sdfleet.anim.probe import find_ffmpeg
from sdfleet.anim.ray_clips import (
    ClipTask,
    collect_statuses,
    read_clip_manifest,
    run_clips_local,
    run_clips_ray,
)
from sdfleet.anim.segments import run_segments_ray, segment_tasks, segments
from sdfleet.anim.spec import AnimationJob, resolve_clips
from sdfleet.batch.errors import ConfigError, suggest_name
from sdfleet.batch.images import input_image_problems
from sdfleet.batch.model_checks import check_model_files
from sdfleet.batch.models import model_spec
from sdfleet.batch.out_lock import check_out_folder, hold_out
from sdfleet.batch.paths import is_local, is_uri, local_path, resolve_path, write_atomic
from sdfleet.batch.schedulers import SCHEDULERS, scheduler_name_problems
from sdfleet.jobs.console import progress_bar, report_clips
from sdfleet.jobs.runner import EXIT_OK, EXIT_ROWS_FAILED, versions

logger = logging.getLogger(__name__)

DEMO_CLIP = Path(__file__).parent / "examples" / "anim_demo.yaml"


def run_animation_job(
    job: AnimationJob,
    job_path: Path,
    out: str | None,
    executor: str | None,
    address: str | None,
    show_progress: bool = True,
    output: str = "text",
) -> int:
    """Render every clip of `job` (see the module doc); returns the exit status. `output`:
    what is printed after the run: "text" (a line per clip), "json" (the summary on stdout)
    or "quiet" (nothing)."""
    started = time.time()
    out = out or default_out(job_path)
    # 1. the clips, and every check that needs no model (as `validate` makes them)
    tasks = prepare_animation_job(job, job_path, out)
    # 2. render, holding OUT (`batch.out_lock`): a job of several clips on Ray actors unless
    #    told otherwise
    executor = executor or ("ray" if job.clips or job.clips_manifest else "local")
    with hold_out(out, "animation"):
        try:
            rows = render_tasks(tasks, out, executor, address, header(job_path), show_progress)
        except KeyboardInterrupt:  # SIGINT, or SIGTERM (`jobs.cli`): the statuses tell the truth
            for task in tasks:
                mark_interrupted(task.paths)
            write_summary(clip_root(out), collect_statuses(tasks), executor, time.time() - started)
            raise
        # 3. summary and report
        summary = write_summary(clip_root(out), rows, executor, time.time() - started)
    if output == "json":
        print(json.dumps(summary, indent=2))
    elif output == "text":
        report_clips(rows)
    return EXIT_OK if all(row["status"] == "ok" for row in rows) else EXIT_ROWS_FAILED


def run_clip_manifest(
    job: AnimationJob,
    job_path: Path,
    manifest: Path,
    out: str | None,
    executor: str | None = "ray",
    address: str | None = None,
    show_progress: bool = True,
) -> int:
    """Render each row of a Parquet clip manifest (`anim.ray_clips.read_clip_manifest`) over
    the base `job` into OUT/<id>/, as `clips_manifest: MANIFEST` would; the exit status."""
    job = job.model_copy(update={"clips": None, "clips_manifest": str(Path(manifest).resolve())})
    return run_animation_job(job, job_path, out, executor, address, show_progress)


def validate_animation_job(job: AnimationJob, job_path: Path, out: str | None = None) -> int:
    """Every check `run` makes before a model loads (clips, files, model, ffmpeg, earlier
    renders in OUT); returns the number of frames over all clips."""
    return sum(task.job.max_frames for task in prepare_animation_job(job, job_path, out))


def plan_animation_job(job: AnimationJob, job_path: Path) -> list[FrameRecord]:
    """The per-frame plan `sdfleet plan` prints (the base job's, for a job of several clips),
    after the checks of every clip's settings and files (`check_clips`); OUT plays no part."""
    check_clips(animation_tasks(job, job_path, default_out(job_path)), job_path, in_out=False)
    return compile_plan(job)


def prepare_animation_job(job: AnimationJob, job_path: Path, out: str | None) -> list[ClipTask]:
    """The clips of `job` with every check that needs no model made (`check_tasks`): the one
    path `validate` and `run` share."""
    check_out_folder(out or default_out(job_path))  # not a file, writable
    tasks = animation_tasks(job, job_path, out or default_out(job_path))
    check_tasks(tasks, job_path)
    return tasks


def default_out(job_path: Path) -> str:
    """OUT when --out is not given: out/<job file name without .yaml>."""
    return str(Path("out") / Path(job_path).stem)


def clip_root(out: str) -> Path:
    """OUT as a folder: a local path, or file:///... for a mount that every node of a cluster
    sees at the same place (`anim.ray_clips.check_clip_storage`). Object-store URIs are
    refused: a clip writes its frames and resume state as files while it renders."""
    if not is_local(out):
        raise ConfigError(
            f"--out {out!r}: animation outputs are folders (a clip writes its frames and resume "
            "state as files while it renders); use a local folder, or file:///mnt/... for a "
            "network mount every node shares, and copy finished clips to object storage after"
        )
    return Path(local_path(out))


def animation_tasks(job: AnimationJob, job_path: Path, out: str) -> list[ClipTask]:
    """One task per clip, paths made absolute from the job file's folder: each row of
    `clips_manifest` or entry of `clips` into OUT/<id>/, else the job itself into OUT."""
    job_path = Path(job_path)
    base_dir, root = job_path.parent, clip_root(out)
    if job.clips_manifest:
        manifest = resolve_path(job.clips_manifest, base_dir)
        base = with_absolute_paths(job.model_copy(update={"clips_manifest": None}), base_dir)
        clips = read_clip_manifest(manifest, base)
        return [ClipTask(clip_id, clip_job, root / clip_id) for clip_id, clip_job in clips]
    if not job.clips:
        return [ClipTask(job_path.stem, with_absolute_paths(job, base_dir), root)]
    return [
        ClipTask(clip_id, with_absolute_paths(clip_job, base_dir), root / clip_id)
        for clip_id, clip_job in resolve_clips(job)
    ]


def check_tasks(tasks: list[ClipTask], job_path: Path) -> None:
    """Model files (`batch.model_checks`), ffmpeg, then `check_clips`; ModelError/EncodeError
    as they come."""
    for spec in {model_spec(task.job) for task in tasks}:
        check_model_files(spec)
    find_ffmpeg()
    check_clips(tasks, job_path)


def check_clips(tasks: list[ClipTask], job_path: Path, in_out: bool = True) -> None:
    """Raise one ConfigError, naming the job file, listing every clip's `clip_problems` and
    (`in_out`) what an earlier render in its folder rules out (`anim.clip.check_resumable`)."""
    problems = []
    for task in tasks:
        problems += [f"{task.id}: {p}" for p in clip_problems(task.job)]
        if not in_out:
            continue
        try:
            check_resumable(task.paths, task.job)
        except ConfigError as exc:
            problems.append(f"{task.id}: {exc}")
    if problems:
        listed = "\n  ".join(["", *problems]).lstrip("\n")
        raise ConfigError(f"{job_path}: animation job: {listed}")


def clip_problems(job: AnimationJob) -> list[str]:
    """What is wrong with one clip's scheduler or files."""
    problems = []
    for message in scheduler_name_problems(job.scheduler):
        problems.append(f"scheduler: {message}{suggest_name(job.scheduler, SCHEDULERS)}")
    if job.init_image is not None:  # a URI that cannot be read, a missing file, no image
        folder = "the job file's folder"
        for problem in input_image_problems(job.init_image, None, relative_to=folder):
            problems.append(f"init_image: {job.init_image!r}: {problem}")
    soundtrack = job.video.soundtrack
    if soundtrack is not None and not is_uri(soundtrack) and not Path(soundtrack).is_file():
        problems.append(
            f"soundtrack: {soundtrack!r} does not exist; fix the path (relative paths "
            "are from the job file's folder)"
        )
    return problems


def header(job_path: Path) -> dict[str, str]:
    """Comment lines for each clip's job.yaml: where it came from and the versions used."""
    return {"rendered from": str(job_path), "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")} | {
        f"version {name}": value for name, value in versions().items()
    }


def render_tasks(
    tasks: list[ClipTask],
    out: str,
    executor: str,
    address: str | None,
    header: dict[str, str],
    show_progress: bool,
) -> list[dict[str, Any]]:
    if executor == "ray":
        return render_on_ray(tasks, out, address, header)
    if executor != "local":
        raise ConfigError(f"executor: {executor!r} is unknown; use 'ray' or 'local'")
    total = sum(task.job.max_frames for task in tasks)
    with progress_bar(total, show_progress) as bar:
        return run_clips_local(tasks, header, bar.update)


def render_on_ray(
    tasks: list[ClipTask], out: str, address: str | None, header: dict[str, str]
) -> list[dict[str, Any]]:
    """Clips on the Ray pool; an unfinished clip with hard cuts goes as its segments, side by
    side (`anim.segments`: byte-identical to its render in sequence), joined on the driver."""
    todo = [task for task in tasks if not task.is_finished()]
    cut = {task.id for task in todo if len(segments(compile_plan(task.job))) > 1}
    pieces = [s for t in todo if t.id in cut for s in segment_tasks(t.id, t.job, t.root)]
    if pieces:
        run_segments_ray(pieces, address=address, out=out)
    whole = [task for task in tasks if task.id not in cut]
    if whole:
        run_clips_ray(whole, header, address=address, out=out)
    return collect_statuses(tasks)


def write_summary(
    root: Path, rows: list[dict[str, Any]], executor: str, wall_s: float
) -> dict[str, Any]:
    ok = sum(row["status"] == "ok" for row in rows)
    stopped = sum(row["status"] in ("interrupted", "running") for row in rows)
    summary = {
        "executor": executor,
        "clips": len(rows),
        "ok": ok,
        "error": len(rows) - ok - stopped,
        "interrupted": stopped,  # a rerun continues them
        "wall_s": round(wall_s, 3),
        "statuses": rows,
    }
    write_atomic(root / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())
    return summary


def run_demo_clip(out: Path, show_progress: bool = False) -> int:
    """`sdfleet demo`'s clip: jobs/examples/anim_demo.yaml (24 frames, 64x64, builtin:tiny)."""
    from sdfleet.jobs.spec import load_job

    job = load_job(DEMO_CLIP)
    return run_animation_job(job, DEMO_CLIP, str(out), "local", None, show_progress)

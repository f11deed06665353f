"""One clip, start to finish: plan -> frames (resumable) -> video -> contact sheet.

Layout of a clip folder (``ClipPaths``)::

    ROOT/
      frames/frame_000000.png   every frame 0..max_frames-1, PNG with A1111 `parameters` and an
                                `sdfleet` JSON chunk (frame, mode, seed, prompt, denoise ...)
      <name>.mp4 | .webm | .gif the video, per `job.video` (checked: it holds max_frames frames)
      job.yaml                  the clip's job exactly as rendered (loadable by `sdfleet run`)
      plan.jsonl                its plan, one record per frame (`anim.plan.plan_to_jsonl`)
      contact_sheet.png         every `contact_sheet_every`-th frame in one grid
      state/render_state.npz    the resume state (`anim.state`), saved after every frame
      status.json               running | ok | error, frames written, video, error message

`render_clip` is the one way to render a clip; running it again on the same folder continues
an unfinished clip from its state and returns at once for a finished one. The model is any
`FrameModel` (`anim.frames.PipelineFrames`, or a fake in tests). Paths are local: ffmpeg reads
and writes files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import yaml
from PIL import Image

from sdfleet.anim.colour import from_uint8
from sdfleet.anim.contact_sheet import make_contact_sheet
from sdfleet.anim.interpolate import interpolated_frames
from sdfleet.anim.plan import FrameRecord, compile_plan, plan_to_jsonl
from sdfleet.anim.render import ChainOptions, Frame, render_frames
from sdfleet.anim.spec import AnimationJob
from sdfleet.anim.state import (
    RenderState,
    load_state,
    saved_frames,
    state_arrays,
    write_state_arrays,
)
from sdfleet.anim.video import EncodeOptions, encode_frames, read_rgb
from sdfleet.anim.video_input import VideoSource, video_digest
from sdfleet.anim.walk import render_walk_frames
from sdfleet.batch.fingerprint import fingerprint as settings_fingerprint
from sdfleet.batch.outputs import encode_image
from sdfleet.batch.paths import is_uri, resolve_path, write_atomic

logger = logging.getLogger(__name__)

Progress = Callable[[int], None]  # called with the number of frames just written


class FrameModel(Protocol):
    """What a clip needs from a model (see `anim.render.StepFn` and `anim.walk.WalkStepFn`)."""

    latent_shape: tuple[int, int, int]

    def __call__(self, record: FrameRecord, init: torch.Tensor | None) -> torch.Tensor: ...

    def walk(self, records: Sequence[FrameRecord], noise: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class ClipPaths:
    """Where each output of one clip goes."""

    root: Path
    name: str = "clip"  # the video's file stem
    video_format: str = "mp4"

    @property
    def frames_dir(self) -> Path:
        return self.root / "frames"

    def frame(self, index: int) -> Path:
        return self.frames_dir / f"frame_{index:06d}.png"

    @property
    def video(self) -> Path:
        return self.root / f"{self.name}.{self.video_format}"

    job_yaml = property(lambda self: self.root / "job.yaml")
    plan_jsonl = property(lambda self: self.root / "plan.jsonl")
    contact_sheet = property(lambda self: self.root / "contact_sheet.png")
    state = property(lambda self: self.root / "state" / "render_state.npz")
    status = property(lambda self: self.root / "status.json")

    @classmethod
    def for_job(cls, root: Path, job: AnimationJob, name: str) -> ClipPaths:
        return cls(Path(root), name, job.video.format)


# ---------------------------------------------------------------------------- small steps


def fingerprint(job: AnimationJob, plan: Sequence[FrameRecord]) -> str:
    """sha256 of the plan, of every job field that changes pixels (all but
    `batch.fingerprint.OUTPUT_ONLY_FIELDS`, the list the batch resume check uses too) and of
    the bytes of an ``init_video``."""
    parts = (plan_to_jsonl(plan), *video_digest(job))  # the source video's bytes too
    return settings_fingerprint(job.model_dump(mode="json"), *parts)


def read_status(paths: ClipPaths) -> dict[str, Any] | None:
    try:
        return json.loads(paths.status.read_text())
    except (OSError, ValueError):
        return None


def write_status(paths: ClipPaths, payload: Mapping[str, Any]) -> None:
    stamped = {**payload, "updated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    write_atomic(paths.status, json.dumps(stamped, indent=2).encode() + b"\n")


def mark_interrupted(paths: ClipPaths) -> None:
    """A clip left `running` by an interrupt (SIGINT, SIGTERM; in this process or in a Ray
    actor the interrupt took down) says so, with the frames its saved state counts: what a
    rerun continues from."""
    status = read_status(paths)
    if status and status.get("status") == "running":
        frames = saved_frames(paths.state)
        write_status(paths, status | {"status": "interrupted", "frames_written": frames})


def is_finished(paths: ClipPaths, print_: str) -> bool:
    """True when the folder holds this exact clip, rendered and encoded."""
    status = read_status(paths) or {}
    done = status.get("status") == "ok" and status.get("fingerprint") == print_
    return done and paths.video.is_file()


def check_resumable(paths: ClipPaths, job: AnimationJob) -> None:
    """ConfigError now (before any model loads) if the folder holds another job's render."""
    load_state(paths.state, fingerprint(job, compile_plan(job)))


def write_clip_record(
    paths: ClipPaths, job: AnimationJob, plan: Sequence[FrameRecord], header: Mapping[str, str]
) -> None:
    """job.yaml (loadable as a job; versions etc. as comments) and plan.jsonl."""
    comments = "".join(f"# {key}: {value}\n" for key, value in header.items())
    body = yaml.safe_dump(job.model_dump(mode="json", exclude={"clips"}), sort_keys=False)
    write_atomic(paths.job_yaml, (comments + body).encode())
    write_atomic(paths.plan_jsonl, plan_to_jsonl(plan).encode())


def with_absolute_paths(job: AnimationJob, base_dir: Path) -> AnimationJob:
    """The job with a relative `init_image` and `video.soundtrack` made absolute from base_dir
    (the job file's or the clip manifest's folder); URIs and absolute paths are kept."""

    def absolute(value: str | None) -> str | None:
        if value is None or is_uri(value) or Path(value).is_absolute():
            return value
        return str(resolve_path(value, base_dir).resolve())

    from sdfleet.batch.models import relative_to

    video = job.video.model_copy(update={"soundtrack": absolute(job.video.soundtrack)})
    return job.model_copy(
        update={
            "init_image": absolute(job.init_image),
            "video": video,
            "model": relative_to(job.model, base_dir),
        }
    )


def load_init_image(source: str | None, width: int, height: int) -> torch.Tensor | None:
    """The job's init_image as (3, H, W) in [0, 1], resized to the clip with Lanczos."""
    if source is None:
        return None
    from sdfleet.batch.replica import read_image  # the batch engine's reader

    image = read_image(source, width, height)
    return from_uint8(np.array(image))  # a writable copy for torch


def frame_png(image: np.ndarray, record: FrameRecord, job: AnimationJob) -> bytes:
    """PNG bytes of one frame with its generation parameters (deterministic: no timestamps)."""
    params = {
        "prompt": record.prompt,
        "negative_prompt": record.negative_prompt,
        "seed": record.seed,
        "num_inference_steps": record.steps,
        "guidance_scale": record.cfg_scale,
        "width": job.width,
        "height": job.height,
        "model": job.model,
        "scheduler": job.scheduler,
        "frame": record.frame,
        "mode": record.mode,
        "strength": record.denoise if record.mode == "img2img" else None,
    }
    return encode_image(Image.fromarray(image), "png", params)


def iter_clip_frames(
    job: AnimationJob,
    plan: Sequence[FrameRecord],
    model: FrameModel,
    state: RenderState,
    walk_batch_size: int,
) -> Iterator[Frame]:
    """The frames still to render: the 2D chain or the walk."""
    options = ChainOptions.from_job(job)
    if job.animation_mode == "interpolation":
        return render_walk_frames(
            plan, options, model.walk, model.latent_shape, state, walk_batch_size
        )
    init = load_init_image(job.init_image, job.width, job.height)
    video = VideoSource.load(job, [record.frame for record in plan if record.diffused])
    return render_frames(plan, options, model, state, init, video)


def encode_clip_video(paths: ClipPaths, job: AnimationJob) -> Path:
    """Stream frames 0..max_frames-1 to ffmpeg, one at a time; the frame count is verified.
    With ``video.interpolate`` k, the frames between them come from `anim.interpolate` (kept
    in OUT/interpolated_x<k>/) and the video plays k times as many frames at k x fps."""
    factor = job.video.interpolate
    options = EncodeOptions(
        fps=job.fps * factor,
        format=job.video.format,
        crf=job.video.crf,
        preset=job.video.preset,
        soundtrack=job.video.soundtrack,
    )
    frames = (read_rgb(paths.frame(index)) for index in range(job.max_frames))
    if factor > 1:
        frames = interpolated_frames(frames, factor, paths.root / f"interpolated_x{factor}")
    return encode_frames(frames, paths.video, options, frame_count=job.max_frames * factor)


# ---------------------------------------------------------------------------- the clip


def render_clip(
    job: AnimationJob,
    paths: ClipPaths,
    model: FrameModel,
    *,
    clip_id: str = "clip",
    header: Mapping[str, str] | None = None,
    progress: Progress | None = None,
    walk_batch_size: int = 4,
) -> dict[str, Any]:
    """Render (or finish, or skip) one clip into `paths`; returns its status. On failure the
    status says error with the message, and the exception is raised again."""
    started = time.perf_counter()
    # 1. the plan and its fingerprint; a finished clip is not rendered again
    plan = compile_plan(job)
    print_ = fingerprint(job, plan)
    if is_finished(paths, print_):
        return refresh_outputs(paths, job, plan, header or {})
    status = {
        "id": clip_id,
        "max_frames": job.max_frames,
        "fingerprint": print_,
        "video": paths.video.name,
        "outputs": output_settings(job),
    }
    try:
        # 2. what is rendered, exactly; then the state to continue from
        write_clip_record(paths, job, plan, header or {})
        state = load_state(paths.state, print_) or RenderState(fingerprint=print_)
        status["resumed_from"] = state.next_frame or None
        write_status(paths, status | {"status": "running", "frames_written": state.next_frame})
        # 3. the frames, each followed by the state after it
        frames = iter_clip_frames(job, plan, model, state, walk_batch_size)
        write_frames(paths, job, plan, frames, progress)
        # 4. video and contact sheet
        write_outputs(paths, job)
    except Exception as exc:
        close_status(
            paths,
            status,
            started,
            status="error",
            error=f"{type(exc).__name__}: {exc}",
            frames_written=saved_frames(paths.state),
        )
        raise
    # 5. done
    close_status(
        paths,
        status,
        started,
        status="ok",
        error=None,
        frames_written=job.max_frames,
        contact_sheet=paths.contact_sheet.name,
    )
    return read_status(paths) or status


def output_settings(job: AnimationJob) -> str:
    """What the video and contact sheet depend on besides the frames."""
    settings = job.model_dump(mode="json", include={"video", "fps", "contact_sheet_every"})
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def write_outputs(paths: ClipPaths, job: AnimationJob) -> None:
    encode_clip_video(paths, job)
    make_contact_sheet(
        [paths.frame(i) for i in range(job.max_frames)],
        job.contact_sheet_every,
        paths.contact_sheet,
    )


def refresh_outputs(
    paths: ClipPaths, job: AnimationJob, plan: Sequence[FrameRecord], header: Mapping[str, str]
) -> dict[str, Any]:
    """A finished clip whose video settings (fps, format, crf, soundtrack, contact sheet)
    changed is encoded again from its frames; its frames are never rendered again."""
    done = read_status(paths) or {}
    if done.get("outputs") == output_settings(job):
        return done
    write_clip_record(paths, job, plan, header)
    write_outputs(paths, job)
    write_status(paths, done | {"outputs": output_settings(job), "video": paths.video.name})
    return read_status(paths) or done


def write_frames(
    paths: ClipPaths,
    job: AnimationJob,
    plan: Sequence[FrameRecord],
    frames: Iterator[Frame],
    progress: Progress | None,
) -> None:
    """Write each frame (atomically, fsynced: `batch.paths.write_atomic`; a frame is on disk
    before the state that counts it), then the state that follows it, while the next frame
    renders (`FrameWriter`); every frame rendered is written, even when a later one fails."""
    with FrameWriter(paths, job, plan, progress) as writer:
        for index, image, state in frames:
            writer.put(index, image, state)


class FrameWriter:
    """PNG encoding and the frame + state writes on one background thread, in frame order.

    PNG compression and fsync release the GIL, so on a CPU they overlap the next frame's
    model step, and on a GPU they stay off the chain's critical path. The state is
    snapshotted when the frame is handed over and written only after its frame, so a kill
    at any instant leaves a state that matches the frames on disk: a resume re-renders at
    most the `depth` frames that were in flight, byte-identical. `progress` is called on the
    caller's thread, for frames already on disk.
    """

    def __init__(
        self,
        paths: ClipPaths,
        job: AnimationJob,
        plan: Sequence[FrameRecord],
        progress: Progress | None,
        depth: int = 2,
    ) -> None:
        self.paths, self.job, self.plan, self.progress = paths, job, plan, progress
        self._queue: queue.Queue[tuple[int, np.ndarray, dict] | None] = queue.Queue(depth)
        self._error: BaseException | None = None
        self._written = self._reported = 0
        self._thread = threading.Thread(target=self._run, name="sdfleet-frame-writer", daemon=True)

    def __enter__(self) -> FrameWriter:
        self._thread.start()
        return self

    def put(self, index: int, image: np.ndarray, state: RenderState) -> None:
        self._raise_if_failed()
        self._queue.put((index, image, state_arrays(state)))  # a snapshot
        self._report()

    def __exit__(self, kind: type[BaseException] | None, *_: Any) -> None:
        """Wait for every frame handed over; a write error is raised unless another is."""
        self._queue.put(None)
        self._thread.join()
        self._report()
        if kind is None:
            self._raise_if_failed()
        elif self._error is not None:
            logger.error("writing frames failed too: %s", self._error)

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is not None:
                continue  # drain: the caller raises at its next put or on exit
            index, image, arrays = item
            try:
                write_atomic(self.paths.frame(index), frame_png(image, self.plan[index], self.job))
                write_state_arrays(self.paths.state, arrays)
                self._written += 1
            except BaseException as exc:  # handed to the caller's thread
                self._error = exc

    def _report(self) -> None:
        written = self._written
        if self.progress is not None and written > self._reported:
            self.progress(written - self._reported)
        self._reported = written

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error


def close_status(paths: ClipPaths, base: dict[str, Any], started: float, **fields: Any) -> None:
    """The final status of this run: ok or error, with the seconds it took."""
    if fields.get("error"):
        fields["error"] = fields["error"][:2000]
    seconds = round(time.perf_counter() - started, 3)
    write_status(paths, base | fields | {"seconds": seconds})

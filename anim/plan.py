"""Compile an animation job into its plan: one `FrameRecord` per frame 0..max_frames-1.

The render is a function of this plan. Each record carries every scheduled value named after
its field without ``_schedule`` (``zoom``, ``angle``, ..., ``strength``, ``noise``, ``steps``,
``kernel`` ...), the seed, the prompt and its blend partner, and what kind of frame it is.

Choices (documented here because the renderer relies on them):

- ``strength`` is Deforum's (share of the previous frame kept); ``denoise = 1 - strength`` is
  what img2img receives. Every record carries both, even where no img2img runs.
- Cadence N (2D): frames 0, N, 2N, ... are diffused, and so is the last frame, so every index
  0..max_frames-1 exists and no tween trails off the end (Deforum drops or lags the tail). A
  tween records ``tween_prev``/``tween_next`` (the diffused frames it blends) and
  ``tween_weight`` = share of ``tween_next``; it carries the seed of ``tween_prev``.
- ``mode``: ``txt2img`` (frame 0 without ``init_image``; a 2D ``hard_cuts`` frame; every walk
  frame), ``img2img`` (other diffused 2D frames, and frame 0 with ``init_image``) or ``tween``.
  A 2D frame after 0 in ``txt2img`` mode is a hard cut: it keeps nothing from the frames
  before it (no init, a new colour reference), and it and the frame before it are diffused, so
  the clip splits there into segments that render independently (`anim.segments`).
- Walks (``animation_mode: interpolation``): every frame is diffused (independent txt2img, so
  frames batch; cadence is not used). The walk keys are frame 0, every prompt key and the last
  frame; the seed advances once per walk key (by ``seed_behavior``). A frame between keys a and
  b has ``seed_a``, ``seed_b`` and ``seed_t`` = (frame - a) / (b - a) in [0, 1): the renderer
  slerps the initial noise of ``seed_a`` toward ``seed_b``. A key frame has ``seed_t`` 0 and is
  never repeated as t = 1 of the segment before it. ``seed`` = ``seed_a``. In 2D the walk
  fields are None.
- Prompts blend (``blend_prompt``, ``blend_weight``) per ``prompt_transition`` (``cut`` in 2D,
  ``blend`` in walks unless set); see `anim.prompts`.

API:
    compile_plan(job) -> list[FrameRecord]
    FrameRecord.to_dict() -> dict   (JSON-serialisable, field order fixed)
    format_table(records) -> str    (aligned per-frame table of the most useful columns)
    plan_to_jsonl(records) -> str   (one JSON object per line, exactly to_dict())
    diffused_frames(max_frames, cadence) -> list[bool]

The schedules' values come from `anim.rules` (`evaluate_schedules`), which also checks them at
load time.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from sdfleet.anim.inputs import ScheduleInputs, schedule_inputs
from sdfleet.anim.prompts import FramePrompt, frame_prompts, resolve_prompt_keys, split_negative
from sdfleet.anim.rules import evaluate_schedules
from sdfleet.anim.seeds import frame_seeds, seeds_at

if TYPE_CHECKING:
    from sdfleet.anim.spec import AnimationJob

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FrameRecord:
    """Everything the renderer needs for one frame (see the module doc for the choices)."""

    frame: int
    mode: str
    diffused: bool
    seed: int
    seed_a: int | None
    seed_b: int | None
    seed_t: float | None
    prompt: str
    negative_prompt: str
    blend_prompt: str | None
    blend_negative_prompt: str | None
    blend_weight: float
    strength: float
    denoise: float
    noise: float
    contrast: float
    cfg_scale: float
    steps: int
    amount: float
    kernel: int
    sigma: float
    threshold: float
    angle: float
    zoom: float
    translation_x: float
    translation_y: float
    transform_center_x: float
    transform_center_y: float
    perspective_flip: bool
    perspective_flip_theta: float
    perspective_flip_phi: float
    perspective_flip_gamma: float
    perspective_flip_fv: float
    tween_prev: int | None
    tween_next: int | None
    tween_weight: float | None
    audio: dict[str, float] | None = None  # the audio series at this frame (``audio:``)

    def to_dict(self) -> dict[str, Any]:
        """A plain dict (JSON-serialisable) with the fields in declaration order; ``audio``
        only when the job has audio (plans of other jobs are as before)."""
        record = asdict(self)
        if record["audio"] is None:
            del record["audio"]
        return record


def diffused_frames(max_frames: int, cadence: int, cuts: Sequence[int] = ()) -> list[bool]:
    """True for frames 0, N, 2N, ... and for the last frame (so no tween runs off the end);
    a hard cut and the frame before it are diffused too (no tween spans a cut)."""
    around = {*cuts, *(cut - 1 for cut in cuts)}
    return [
        frame % cadence == 0 or frame == max_frames - 1 or frame in around
        for frame in range(max_frames)
    ]


def compile_plan(job: AnimationJob) -> list[FrameRecord]:
    """The per-frame plan of `job` (one clip; for `clips` compile each `resolve_clips` job)."""
    n, walk = job.max_frames, job.animation_mode == "interpolation"
    # 1. schedules, evaluated and range-checked for every frame (with audio and Parseq)
    inputs = schedule_inputs(job)
    values = evaluate_schedules(job, inputs)
    seed_schedule = values.pop("seed_schedule", None)
    parseq = inputs.parseq
    behavior = "schedule" if parseq is not None and parseq.seeds else job.seed_behavior
    # 2. prompts (keys resolved once, shared with the walk); Parseq's per frame replace them
    keys = resolve_prompt_keys(
        job.prompts,
        n,
        job.seed,
        job.animation_prompts_positive,
        job.animation_prompts_negative,
        clock=inputs.clock,
    )
    prompts = frame_prompts(keys, n, job.transition)
    if parseq is not None and parseq.prompts:
        prompts = [FramePrompt(*split_negative(text)) for text in parseq.prompts]
    # 3. which frames are diffused; seeds, tween and walk positions
    if walk and job.diffusion_cadence > 1:
        logger.info("diffusion_cadence %d is not used by walks", job.diffusion_cadence)
    diffused = [True] * n if walk else diffused_frames(n, job.diffusion_cadence, job.hard_cuts)
    seeds = frame_seeds(behavior, job.seed, diffused, job.seed_iter_N, seed_schedule)
    tweens = tween_positions(diffused)
    walk_keys = sorted({0, n - 1, *(key.frame for key in keys)})
    walks = walk_positions(job, walk_keys, seed_schedule) if walk else [(None, None, None)] * n
    # 4. one record per frame
    return [
        FrameRecord(
            frame=frame,
            mode=_mode(job, frame, diffused[frame], walk),
            diffused=diffused[frame],
            seed=seeds[frame] if walks[frame][0] is None else walks[frame][0],
            **dict(zip(("seed_a", "seed_b", "seed_t"), walks[frame], strict=True)),
            **asdict(prompts[frame]),  # prompt, negative_prompt, blend_* (same names)
            denoise=1.0 - values["strength_schedule"][frame],
            perspective_flip=job.enable_perspective_flip,
            **dict(zip(("tween_prev", "tween_next", "tween_weight"), tweens[frame], strict=True)),
            **{_record_name(field): series[frame] for field, series in values.items()},
            audio=_audio_at(inputs, frame),
        )
        for frame in range(n)
    ]


def _audio_at(inputs: ScheduleInputs, frame: int) -> dict[str, float] | None:
    if inputs.audio is None:
        return None
    return {name: series[frame] for name, series in inputs.audio.values.items()}


def _record_name(field: str) -> str:
    return field.removesuffix("_schedule")


def _mode(job: AnimationJob, frame: int, diffused: bool, walk: bool) -> str:
    if walk or (frame == 0 and job.init_image is None and job.init_video is None):
        return "txt2img"
    if frame in job.hard_cuts:  # starts fresh, as frame 0 does (`anim.render`)
        return "txt2img"
    return "img2img" if diffused else "tween"


def tween_positions(
    diffused: Sequence[bool],
) -> list[tuple[int | None, int | None, float | None]]:
    """(previous diffused frame, next diffused frame, share of next) for tweens; Nones for
    diffused frames. The last frame must be diffused (see `diffused_frames`)."""
    keys = [frame for frame, is_diffused in enumerate(diffused) if is_diffused]
    positions: list[tuple[int | None, int | None, float | None]] = []
    index = 0
    for frame, is_diffused in enumerate(diffused):
        if is_diffused:
            index += frame > keys[index]  # keys[index] is the latest diffused frame <= frame
            positions.append((None, None, None))
            continue
        prev, nxt = keys[index], keys[index + 1]
        positions.append((prev, nxt, (frame - prev) / (nxt - prev)))
    return positions


def walk_positions(
    job: AnimationJob, walk_keys: Sequence[int], schedule: Sequence[float] | None
) -> list[tuple[int, int, float]]:
    """(seed_a, seed_b, seed_t) per frame for a walk through `walk_keys` (sorted, from 0 to
    the last frame): the seed advances once per key; a key frame has t = 0."""
    key_seeds = seeds_at(job.seed_behavior, job.seed, walk_keys, job.seed_iter_N, schedule)
    positions, index = [], 0
    for frame in range(job.max_frames):
        while index + 1 < len(walk_keys) and walk_keys[index + 1] <= frame:
            index += 1
        if index + 1 == len(walk_keys):  # the last frame: the final key itself
            positions.append((key_seeds[index], key_seeds[index], 0.0))
            continue
        start, end = walk_keys[index], walk_keys[index + 1]
        positions.append((key_seeds[index], key_seeds[index + 1], (frame - start) / (end - start)))
    return positions


# -- output ---------------------------------------------------------------------------------


def plan_to_jsonl(records: Sequence[FrameRecord]) -> str:
    """JSON Lines: one object per frame, exactly `FrameRecord.to_dict()`, newline-terminated."""
    return "".join(json.dumps(record.to_dict(), ensure_ascii=False) + "\n" for record in records)


def _number(value: float) -> str:
    text = f"{value:.4f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _prompt_cell(record: FrameRecord) -> str:
    """The prompt; when blending, 'prompt -> partner @weight' (each side shortened)."""
    if record.blend_prompt is None or record.blend_weight == 0:
        return _shorten(record.prompt, 60)
    return (
        f"{_shorten(record.prompt, 28)} -> {_shorten(record.blend_prompt, 28)} "
        f"@{record.blend_weight:.2f}"
    )


Column = tuple[str, Callable[[FrameRecord], str]]
_COLUMNS: list[Column] = [
    ("frame", lambda r: str(r.frame)),
    ("mode", lambda r: r.mode),
    ("seed", lambda r: str(r.seed)),
    ("strength", lambda r: _number(r.strength)),
    ("denoise", lambda r: _number(r.denoise)),
    ("noise", lambda r: _number(r.noise)),
    ("cfg", lambda r: _number(r.cfg_scale)),
    ("steps", lambda r: str(r.steps)),
    ("zoom", lambda r: _number(r.zoom)),
    ("angle", lambda r: _number(r.angle)),
    ("tx", lambda r: _number(r.translation_x)),
    ("ty", lambda r: _number(r.translation_y)),
]
_WALK_COLUMNS: list[Column] = [
    ("seed_b", lambda r: str(r.seed_b)),
    ("seed_t", lambda r: _number(r.seed_t or 0.0)),
]


def _audio_columns(records: Sequence[FrameRecord]) -> list[Column]:
    """One column per audio series when the plan has them (``audio:``)."""
    names = list(records[0].audio or {}) if records else []
    return [(name, lambda r, name=name: _number((r.audio or {})[name])) for name in names]


def format_table(records: Sequence[FrameRecord]) -> str:
    """A readable per-frame table: numbers right-aligned, the prompt last (truncated)."""
    columns = list(_COLUMNS)
    if any(record.seed_a is not None for record in records):
        columns[3:3] = _WALK_COLUMNS
    columns += _audio_columns(records)
    header = [name for name, _ in columns]
    rows = [[cell(record) for _, cell in columns] for record in records]
    widths = [max([len(name)] + [len(row[i]) for row in rows]) for i, name in enumerate(header)]

    def line(cells: list[str], prompt: str) -> str:
        aligned = [
            c.ljust(w) if i == 1 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join([*aligned, prompt]).rstrip()

    out = [line(header, "prompt"), line(["-" * w for w in widths], "-" * 6)]
    out += [line(row, _prompt_cell(record)) for row, record in zip(rows, records, strict=True)]
    return "\n".join(out)

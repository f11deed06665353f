"""What each schedule of an animation job may take, checked at every frame of the clip.

`anim.spec` checks a job with `job_problems` when it loads (every problem at once); `anim.plan`
takes the per-frame values from `evaluate_schedules`. Values are checked, never clamped.

API:
    ScheduleRule, SCHEDULE_RULES    (field -> what its values may be, and the fix to suggest)
    evaluate_schedules(job, inputs=None) -> dict[str, list[float]]   (per-frame values by field
                                    name; integer fields hold ints; raises ScheduleError)
    evaluate_field(job, field, inputs=None) -> list[float]   (one field; raises ScheduleError)

`inputs` (`anim.inputs.schedule_inputs`: the clip's clock, audio series, Parseq values) are read
from the job's files when not given. A Parseq document's seeds take the place of
``seed_schedule`` (as in Deforum, whatever the seed_behavior).
    job_problems(job) -> list[str]  (every problem with the job's values; may be empty)

A job here is anything with the fields of `ScheduledJob` (the animation job is one): this
module sits below `anim.spec`, which imports it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from sdfleet.anim.inputs import InputsJob, ScheduleInputs, field_values, schedule_inputs
from sdfleet.anim.prompts import resolve_prompt_keys
from sdfleet.anim.seeds import scheduled_seed
from sdfleet.batch.errors import ConfigError, ScheduleError


class ScheduledJob(InputsJob, Protocol):
    """The fields of an animation job that schedules are evaluated with (`anim.spec`)."""

    seed_behavior: str
    prompts: Mapping[str, str]


@dataclass(frozen=True)
class ScheduleRule:
    """What values a schedule may take; checked at every frame at load time (never clamped)."""

    low: float | None = None
    high: float | None = None
    open_range: bool = False  # the bounds themselves are excluded
    integer: bool = False  # truncated like Deforum's astype(int)
    odd: bool = False  # an even whole number n becomes n + 1 (Deforum's blur would crash)
    fix: str = ""

    def expected(self) -> str:
        lo, hi = (">", "<") if self.open_range else (">=", "<=")
        parts = [f"{lo} {self.low:g}"] if self.low is not None else []
        parts += [f"{hi} {self.high:g}"] if self.high is not None else []
        kind = "a whole number" if self.integer else "a value"
        return f"{kind} {' and '.join(parts)}".strip()

    def accepts(self, value: float) -> bool:
        if self.open_range:
            return (self.low is None or value > self.low) and (
                self.high is None or value < self.high
            )
        return (self.low is None or value >= self.low) and (self.high is None or value <= self.high)


_ANY = ScheduleRule()
MAX_CONTRAST = 10.0
MAX_AMOUNT = 10.0  # unsharp mask: frame + amount * (frame - blurred)
MAX_GUIDANCE = 100.0  # as a batch row's guidance_scale (`batch.manifest`)
MIN_ZOOM, MAX_ZOOM = 0.5, 2.0  # per frame
# fmt: off
# Field -> rule; the plan names each value after its field without "_schedule".
SCHEDULE_RULES: dict[str, ScheduleRule] = {
    "angle": _ANY, "zoom": ScheduleRule(MIN_ZOOM, MAX_ZOOM, fix="zoom scales each frame: 1.0 is "
                                        "still, 1.01 zooms in 1% per frame; beyond 2 or under "
                                        "0.5 a frame keeps less than half of each side of the "
                                        "one before, as a translation past half the canvas does"),
    "translation_x": _ANY, "translation_y": _ANY,
    "transform_center_x": _ANY, "transform_center_y": _ANY,
    "perspective_flip_theta": _ANY, "perspective_flip_phi": _ANY,
    "perspective_flip_gamma": _ANY,
    "perspective_flip_fv": ScheduleRule(0, 180, open_range=True, fix="fv is a field of view in "
                                        "degrees, e.g. 53"),
    "strength_schedule": ScheduleRule(0, 1, fix="strength is the share of the previous frame "
                                      "kept, as in Deforum; img2img gets 1 - strength"),
    "noise_schedule": ScheduleRule(0, 1, fix="noise is the share of fresh noise, e.g. 0.065"),
    "contrast_schedule": ScheduleRule(0, MAX_CONTRAST, fix="contrast multiplies the frame, "
                                      "1.0 = unchanged; past a few every pixel saturates"),
    "cfg_scale_schedule": ScheduleRule(0, MAX_GUIDANCE, fix="a guidance scale such as 7; far "
                                       "above 30 every pixel saturates"),
    "steps_schedule": ScheduleRule(1, 1000, integer=True, fix="steps are denoising steps, e.g. 25"),
    "amount_schedule": ScheduleRule(0, MAX_AMOUNT, fix="anti-blur amount, 0 = off, e.g. 0.1; "
                                    "past a few every edge saturates"),
    "kernel_schedule": ScheduleRule(1, integer=True, odd=True, fix="blur kernel size, e.g. 5; "
                                    "an even size n is used as n + 1"),
    "sigma_schedule": ScheduleRule(0, open_range=True, fix="blur sigma in pixels, e.g. 1.0"),
    "threshold_schedule": ScheduleRule(0, fix="anti-blur threshold, 0 = everywhere"),
}
# fmt: on


def evaluate_schedules(
    job: ScheduledJob, inputs: ScheduleInputs | None = None
) -> dict[str, list[float]]:
    """Every schedule in `SCHEDULE_RULES` (plus ``seed_schedule`` when seed_behavior is
    ``schedule`` or Parseq sets seeds) evaluated for every frame; raises `ScheduleError` on the
    first problem."""
    inputs = inputs or schedule_inputs(job)
    values = {field: evaluate_field(job, field, inputs) for field in SCHEDULE_RULES}
    if _seeds_scheduled(job, inputs):
        values["seed_schedule"] = evaluate_field(job, "seed_schedule", inputs)
    return values


def _seeds_scheduled(job: ScheduledJob, inputs: ScheduleInputs) -> bool:
    parseq_seeds = inputs.parseq is not None and inputs.parseq.seeds is not None
    return job.seed_behavior == "schedule" or parseq_seeds


def evaluate_field(
    job: ScheduledJob, field: str, inputs: ScheduleInputs | None = None
) -> list[float]:
    """One schedule field over the whole clip, checked against its rule at every frame."""
    inputs = inputs or schedule_inputs(job)
    if field == "seed_schedule" and inputs.parseq is not None and inputs.parseq.seeds:
        values = list(inputs.parseq.seeds)
    else:
        values = field_values(job, field, inputs)
    if field == "seed_schedule":
        for frame, value in enumerate(values):
            scheduled_seed(value, job.seed, frame, field)
        return values
    rule = SCHEDULE_RULES[field]
    checked: list[Any] = [int(v) for v in values] if rule.integer else values
    if rule.odd:  # interpolated kernels (5 -> 9) pass through even sizes: 6 -> 7
        checked = [v | 1 for v in checked]
    for frame, value in enumerate(checked):
        if not rule.accepts(value):
            raise ScheduleError(
                f"{field}: gives {value:g} at frame {frame}; expected "
                f"{rule.expected()} ({rule.fix})"
            )
    return checked


def job_problems(job: ScheduledJob) -> list[str]:
    """Every problem found by evaluating the job's schedules and prompt keys (may be empty)."""
    try:
        inputs = schedule_inputs(job)
    except ConfigError as err:  # an unreadable sound or Parseq file: the schedules cannot tell
        return [str(err)]
    problems = []
    fields = [*SCHEDULE_RULES, *(["seed_schedule"] * _seeds_scheduled(job, inputs))]
    for field in fields:
        try:
            evaluate_field(job, field, inputs)
        except ScheduleError as err:
            problems.append(str(err))
    problems += canvas_problems(job, inputs)
    positive = getattr(job, "animation_prompts_positive", "")
    try:
        keys = resolve_prompt_keys(
            job.prompts, job.max_frames, job.seed, positive, clock=inputs.clock
        )
    except ConfigError as err:
        return [*problems, str(err)]
    for key in keys:
        if not key.prompt:
            problems.append(
                f"prompts: the prompt of frame {key.frame} is blank; write what the frames "
                "should show (or set animation_prompts_positive)"
            )
    return problems


# Values that make a frame of a W x H canvas that holds nothing useful: (field, side, share of
# the side it may reach, why).
_CANVAS_LIMITS = (
    ("translation_x", "width", 0.5, "moving a frame more than half its width a frame leaves"),
    ("translation_y", "height", 0.5, "moving a frame more than half its height a frame leaves"),
    ("kernel_schedule", "min_side", 1.0, "an anti-blur kernel wider than the frame leaves"),
)


def canvas_problems(job: ScheduledJob, inputs: ScheduleInputs | None = None) -> list[str]:
    """Motion and filter values out of proportion to the job's canvas, at any frame: one
    problem per field, naming the frame, the value and the bound."""
    inputs = inputs or schedule_inputs(job)
    width, height = getattr(job, "width", 512), getattr(job, "height", 512)
    sides = {"width": width, "height": height, "min_side": min(width, height)}
    problems = []
    for field, side, share, why in _CANVAS_LIMITS:
        bound = sides[side] * share
        try:
            values = field_values(job, field, inputs)
        except ScheduleError:
            continue  # reported by its rule
        frame = next((i for i, v in enumerate(values) if abs(v) > bound), None)
        if frame is not None:
            problems.append(
                f"{field}: gives {values[frame]:g} at frame {frame}, but {why} nothing useful "
                f"({side.replace('_', ' ')}: {sides[side]} px); keep it within {bound:g}"
            )
    return problems

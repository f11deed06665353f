"""What a job's schedules read besides their own text: the clip's clock, audio, Parseq.

- The clock turns keys written as times into frames: ``2s`` by the job's fps, ``4b`` by the
  beats of its ``audio:`` (`anim.audio`).
- ``audio:`` gives per-frame series (``rms``, ``onset``, ``beat``, ``bass``, ``mid``,
  ``treble``) that every schedule expression may read.
- ``parseq:`` gives per-frame values that replace the schedules it defines, and the seeds and
  prompts when it defines them (`anim.parseq`).

`schedule_inputs` reads the files once per call; `anim.rules` and `anim.plan` pass the result
to every field they evaluate.

API:
    SCHEDULE_VARIABLES                       (names a schedule expression may read)
    ScheduleInputs(clock, audio, parseq)
    schedule_inputs(job) -> ScheduleInputs   (ConfigError for unreadable or wrong files)
    field_values(job, field, inputs) -> list[float]   (a schedule's values before its rule)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from sdfleet.anim.audio import AUDIO_SERIES, AudioSeries, AudioSpec, analyse_audio
from sdfleet.anim.expr import VARIABLES
from sdfleet.anim.parseq import ParseqFrames, ParseqSpec, load_parseq
from sdfleet.anim.schedule import KeyClock, parse_schedule
from sdfleet.batch.errors import ConfigError, ScheduleError

SCHEDULE_VARIABLES = (*VARIABLES, *AUDIO_SERIES)


class InputsJob(Protocol):
    """The fields of an animation job that its schedule inputs come from (`anim.spec`)."""

    max_frames: int
    fps: float
    seed: int
    animation_mode: str
    audio: AudioSpec | None
    parseq: ParseqSpec | None

    def interpolation_for(self, field: str) -> str: ...


@dataclass(frozen=True)
class ScheduleInputs:
    clock: KeyClock
    audio: AudioSeries | None = None
    parseq: ParseqFrames | None = None


def schedule_inputs(job: InputsJob) -> ScheduleInputs:
    """The clock, the audio series and the Parseq values of `job` (files read here)."""
    audio = analyse_audio(job.audio, job.fps, job.max_frames) if job.audio else None
    clock = audio.clock() if audio else KeyClock(job.fps)
    if job.parseq is None:
        return ScheduleInputs(clock, audio)
    if job.animation_mode != "2D":
        raise ConfigError(
            f"parseq: {job.parseq.source} drives 2D clips (as in Deforum); this clip's "
            f"animation_mode is {job.animation_mode!r}"
        )
    return ScheduleInputs(clock, audio, load_parseq(job.parseq, job.max_frames, job.fps))


def field_values(job: InputsJob, field: str, inputs: ScheduleInputs) -> list[float]:
    """Schedule `field` over the clip: Parseq's values where it defines the field, else the
    job's schedule evaluated with the audio series and the clock."""
    if inputs.parseq is not None and field in inputs.parseq.series:
        return list(inputs.parseq.series[field])
    schedule = parse_schedule(getattr(job, field), field, variables=SCHEDULE_VARIABLES)
    heard = sorted(schedule.names() & set(AUDIO_SERIES))
    if heard and inputs.audio is None:
        raise ScheduleError(
            f"{field}: {schedule.source!r} reads the audio series {', '.join(heard)}, but the "
            "job has no audio; add `audio: song.wav` (a sound file beside the job)"
        )
    series = inputs.audio.values if inputs.audio is not None else None
    return schedule.evaluate(
        job.max_frames, job.seed, job.interpolation_for(field), series, inputs.clock
    )

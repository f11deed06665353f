"""Parseq documents: their ``rendered_frames`` override the per-frame values they define.

Parseq (a keyframe sequencer for Deforum) renders a value per frame for the fields it manages
and hands the JSON to Deforum; Deforum's Parseq adapter then takes, frame by frame:

- the motion fields from their ``<name>_delta`` values (``use_deltas``, the default) or their
  absolute values: ``angle``, ``zoom``, ``translation_x``/``_y``,
  ``perspective_flip_theta``/``_phi``/``_gamma``;
- ``perspective_flip_fv``, ``noise``, ``strength``, ``contrast``, ``scale`` (cfg),
  ``steps_schedule``, ``antiblur_kernel``/``_sigma``/``_amount``/``_threshold``, and any other
  schedule under its own name (``transform_center_x`` ...);
- ``seed`` (truncated to a whole number, -1 = random, as a ``seed_schedule``) and
  ``deforum_prompt`` (``"positive --neg negative"``, used as it is: the job-wide positive and
  negative texts are not added, as in Deforum).

A field counts when frame 0 defines it (Parseq's contract); fields it does not define keep the
job's schedules. Values are checked against the same rules as the job's own schedules.

Where sdfleet is stricter than Deforum: the document must hold exactly the clip's frames,
0..max_frames-1, each once (Deforum pads or cuts silently); fields Deforum would use but sdfleet
cannot honour (``subseed_strength`` other than 0, ``sampler_schedule``, ``noise_multiplier``,
``clipskip``, ``checkpoint`` ...) are refused by name unless listed in ``accept_differences``.
3D-only fields (``translation_z``, ``rotation_3d_*``, ``fov``, ``near``, ``far``) are ignored,
as Deforum's 2D mode ignores them; so are fields no Deforum schedule reads.

API:
    ParseqSpec                                      (the job's ``parseq:`` field)
    load_parseq(spec, max_frames, fps) -> ParseqFrames   (ConfigError naming file, frame, field)
    unsupported_fields(rendered_frames) -> list[str]
    ParseqFrames.series / .seeds / .prompts
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

from pydantic import ConfigDict, Field, model_validator

from sdfleet.anim.job_files import FileField, read_json_object
from sdfleet.batch.errors import ConfigError

logger = logging.getLogger(__name__)

MOTION = (
    "angle",
    "zoom",
    "translation_x",
    "translation_y",
    "perspective_flip_theta",
    "perspective_flip_phi",
    "perspective_flip_gamma",
)
# Parseq name -> the job's schedule field, where they differ (Deforum's adapter)
RENAMED = {
    "noise": "noise_schedule",
    "strength": "strength_schedule",
    "contrast": "contrast_schedule",
    "scale": "cfg_scale_schedule",
    "steps_schedule": "steps_schedule",
    "antiblur_kernel": "kernel_schedule",
    "antiblur_sigma": "sigma_schedule",
    "antiblur_amount": "amount_schedule",
    "antiblur_threshold": "threshold_schedule",
}
OTHER_FIELDS = ("transform_center_x", "transform_center_y", "perspective_flip_fv")
UNSUPPORTED = {
    "subseed_strength": "variation seeds (A1111 subseeds) are not rendered",
    "sampler_schedule": "the scheduler cannot change from frame to frame",
    "noise_multiplier": "A1111's img2img noise multiplier is not applied",
    "clipskip": "CLIP skip is not applied",
    "checkpoint": "the model cannot change from frame to frame",
    "ddim_eta": "eta schedules are not applied",
    "ancestral_eta": "eta schedules are not applied",
    "hybrid_comp_alpha": "hybrid video compositing is not available",
    "cadence_flow_factor": "optical-flow cadence is not available",
    "redo_flow_factor": "optical-flow redo is not available",
}


class ParseqSpec(FileField):
    """The job's ``parseq:`` field: a Parseq JSON file (a plain string is the file), or the
    document itself as `manifest` (what Deforum's ``parseq_manifest`` holds)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    file: str | None = Field(None, min_length=1, description="Parseq JSON, relative to the job")
    manifest: dict[str, Any] | None = None
    use_deltas: bool = Field(True, description="motion from Parseq's *_delta values")
    accept_differences: tuple[str, ...] = Field(
        (), description="Parseq fields sdfleet cannot honour, rendered without them"
    )

    @model_validator(mode="after")
    def _one_source(self) -> ParseqSpec:
        if (self.file is None) == (self.manifest is None):
            raise ValueError("give the Parseq document as file: (a JSON file) or manifest:, once")
        return self

    @property
    def source(self) -> str:
        return self.file if self.file is not None else "parseq.manifest"


@dataclass(frozen=True)
class ParseqFrames:
    """What a Parseq document sets, per frame, under the job's field names."""

    source: str
    series: dict[str, tuple[float, ...]]  # schedule field (e.g. "zoom", "noise_schedule")
    seeds: tuple[float, ...] | None
    prompts: tuple[str, ...] | None
    fps: float | None


def load_parseq(spec: ParseqSpec, max_frames: int, fps: float | None = None) -> ParseqFrames:
    """Read and check `spec`'s document for a clip of `max_frames` (see the module doc)."""
    # 1. the document and its frames, exactly 0..max_frames-1
    document = spec.manifest if spec.manifest is not None else read_document(spec.source)
    frames = check_frames(document, spec.source, max_frames)
    first = frames[0]
    # 2. refused fields, unless accepted by name
    refused = [
        f"{name} ({UNSUPPORTED[name]})"
        for name in unsupported_fields(frames)
        if name not in spec.accept_differences
    ]
    if refused:
        raise ConfigError(
            f"{spec.source}: Parseq fields sdfleet cannot honour: {'; '.join(refused)}; remove "
            "them from the Parseq document, or list them in parseq.accept_differences to render "
            "without them"
        )
    # 3. the fields it manages, under the job's names
    series = {
        field: _column(frames, name, spec.source)
        for name, field in managed_fields(first, spec.use_deltas).items()
    }
    seeds = _column(frames, "seed", spec.source) if "seed" in first else None
    prompts = _texts(frames, spec.source) if "deforum_prompt" in first else None
    doc_fps = (document.get("options") or {}).get("output_fps")
    if fps is not None and isinstance(doc_fps, (int, float)) and doc_fps != fps:
        logger.warning("%s was made for %g fps; the clip runs at %g fps", spec.source, doc_fps, fps)
    return ParseqFrames(spec.source, series, seeds, prompts, doc_fps)


def read_document(path: str) -> dict[str, Any]:
    try:
        return read_json_object(path)
    except ValueError as exc:
        raise ConfigError(
            f"parseq: {path!r} is not a Parseq document: {exc}; give the JSON Parseq renders "
            "(its 'rendered_frames'), and check the path"
        ) from None


def check_frames(document: dict[str, Any], source: str, max_frames: int) -> list[dict[str, Any]]:
    """`rendered_frames` sorted by frame; exactly frames 0..max_frames-1, each once."""
    frames = document.get("rendered_frames")
    if not isinstance(frames, list) or not frames:
        raise ConfigError(
            f"{source}: no 'rendered_frames' list; give the document Parseq renders for Deforum"
        )
    numbers = []
    for index, frame in enumerate(frames):
        number = frame.get("frame") if isinstance(frame, dict) else None
        if not isinstance(number, int) or isinstance(number, bool):
            raise ConfigError(
                f"{source}: rendered_frames[{index}] has no whole 'frame' number (got {frame!r})"
            )
        numbers.append(number)
    if sorted(numbers) != list(range(max_frames)):
        raise ConfigError(f"{source}: {_frames_problem(numbers, max_frames)}")
    return sorted(frames, key=lambda frame: frame["frame"])


def _frames_problem(numbers: list[int], max_frames: int) -> str:
    twice = sorted({n for n in numbers if numbers.count(n) > 1})
    if twice:
        return f"rendered_frames defines frame(s) {twice[:5]} more than once; each frame once"
    count = max(numbers) + 1
    if count != max_frames or len(numbers) != max_frames:
        return (
            f"rendered_frames holds frames {min(numbers)}..{max(numbers)} ({len(numbers)} "
            f"frames) but the clip has max_frames {max_frames}; render the Parseq document "
            f"for {max_frames} frames, or set max_frames: {count}"
        )
    missing = sorted(set(range(max_frames)) - set(numbers))
    return f"rendered_frames misses frame(s) {missing[:5]}; every frame 0..{max_frames - 1}"


def managed_fields(first: dict[str, Any], use_deltas: bool) -> dict[str, str]:
    """Parseq column -> the job's schedule field, for the columns frame 0 defines."""
    columns = {f"{name}_delta" if use_deltas else name: name for name in MOTION}
    columns |= RENAMED | {name: name for name in OTHER_FIELDS}
    return {column: field for column, field in columns.items() if first.get(column) is not None}


def unsupported_fields(frames: list[Any]) -> list[str]:
    """The fields of `frames` (rendered_frames) that Deforum would use and sdfleet cannot
    honour (`UNSUPPORTED`): set in some frame, and for subseed_strength other than 0."""
    return [name for name in UNSUPPORTED if _changes_picture(name, frames)]


def _changes_picture(name: str, frames: list[Any]) -> bool:
    values = [f.get(name) for f in frames if isinstance(f, dict) and f.get(name) is not None]
    if name == "subseed_strength":
        return any(value != 0 for value in values)
    return bool(values)


def _column(frames: list[dict[str, Any]], name: str, source: str) -> tuple[float, ...]:
    values = []
    for frame in frames:
        value = frame.get(name)
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
        ):
            raise ConfigError(
                f"{source}: frame {frame['frame']}: {name} is {value!r}; Parseq's contract is a "
                "number in every frame once frame 0 defines it"
            )
        values.append(float(value))
    return tuple(values)


def _texts(frames: list[dict[str, Any]], source: str) -> tuple[str, ...]:
    for frame in frames:
        if not isinstance(frame.get("deforum_prompt"), str):
            raise ConfigError(
                f"{source}: frame {frame['frame']}: deforum_prompt is "
                f"{frame.get('deforum_prompt')!r}; expected the prompt text"
            )
    return tuple(frame["deforum_prompt"] for frame in frames)

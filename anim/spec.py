"""The animation job (``kind: animation``): a validated, frozen pydantic model.

Field names are Deforum's where one exists (``max_frames``, ``W``/``H``, ``seed_behavior``,
``zoom``, ``strength_schedule``, ``animation_prompts_negative`` ...) and defaults are Deforum's
(``diffusion_cadence`` 1 as in Deforum's notebook; ``seed`` is a fixed 42 instead of Deforum's
random -1, because a run must repeat). ``strength`` keeps Deforum's meaning: the share of the
previous frame *kept*; the plan also carries ``denoise = 1 - strength`` for img2img.

A schedule field takes a schedule string (``"0:(1.0), 30:(0.5)"``) or a plain number (held for
the whole clip). `load_animation_job` is the edge: it validates the fields, then evaluates every
schedule, seed schedule and prompt key over the whole clip (and over every entry of ``clips``),
so bad input fails at load time naming the file, field, value and fix.

API:
    load_animation_job(data, source="<job>") -> AnimationJob   (raises ConfigError)
    AnimationJob, VideoSpec
    resolve_clips(job) -> list[tuple[str, AnimationJob]]       (one job per entry of `clips`)
    resolve_clip(job, clip) -> AnimationJob

Schedule value rules (`SCHEDULE_RULES`) and the whole-clip checks (`job_problems`) live in
`anim.rules`, which also evaluates the values for the plan (`anim.plan`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from sdfleet.anim.audio import AudioSpec
from sdfleet.anim.frame_adapters import prompt_field_problems
from sdfleet.anim.inputs import SCHEDULE_VARIABLES
from sdfleet.anim.parseq import ParseqSpec
from sdfleet.anim.rules import SCHEDULE_RULES, job_problems
from sdfleet.anim.schedule import parse_schedule, plain_number
from sdfleet.anim.seeds import SEED_MAX
from sdfleet.anim.video import X264_PRESETS, EncodeOptions
from sdfleet.anim.video_input import HYBRID_MOTIONS, VideoInputSpec, video_input_problems
from sdfleet.batch.controlnets import ControlNetOption
from sdfleet.batch.errors import ConfigError, ScheduleError, suggest_name
from sdfleet.batch.manifest import MAX_SIDE_PX, text_problems
from sdfleet.batch.models import recommended_settings
from sdfleet.batch.prompt_options import PromptOptions

logger = logging.getLogger(__name__)

Interpolation = Literal["linear", "step", "cubic"]
DEFAULT_SEED_SCHEDULE = '0:(s), 1:(-1), "max_f-2":(-1), "max_f-1":(s)'
DEFAULT_PROMPTS = {  # Deforum's example prompts
    "0": "tiny cute bunny, vibrant diffraction, highly detailed, intricate, ultra hd, "
    "sharp photo, crepuscular rays, in focus",
    "30": "anthropomorphic clean cat, surrounded by fractals, epic angle and pose, "
    "symmetrical, 3d, depth of field",
    "60": "a beautiful coconut --neg photo, realistic",
    "90": "a beautiful durian, award winning photography",
}


def _schedule_text(value: Any) -> Any:
    """A bare number means 'this value for the whole clip', also written as text (YAML reads
    ``1e-3`` as a string, and ``"1.01"`` is one)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"0:({value})"
    if isinstance(value, str) and plain_number(value) is not None:
        return f"0:({value.strip()})"
    return value


def _canonical(*choices: str, aliases: Mapping[str, str] | None = None) -> Callable[[Any], Any]:
    """Before-validator: match `choices` case-insensitively (plus `aliases`)."""
    table = {choice.lower(): choice for choice in choices}
    table.update({key.lower(): value for key, value in (aliases or {}).items()})
    return lambda value: table.get(value.lower(), value) if isinstance(value, str) else value


Schedule = Annotated[str, BeforeValidator(_schedule_text)]
DEFORUM_COLORS = {f"Match Frame 0 {space}": space for space in ("LAB", "HSV", "RGB")}
ColorCoherence = Annotated[
    Literal["None", "LAB", "HSV", "RGB"],
    BeforeValidator(lambda v: "None" if v is None else v),  # YAML null
    BeforeValidator(_canonical("None", "LAB", "HSV", "RGB", aliases=DEFORUM_COLORS)),
]
DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
Dtype = Annotated[
    Literal["float32", "float16", "bfloat16"] | None,
    BeforeValidator(_canonical(*DTYPES.values(), aliases=DTYPES)),
]
Frozen = ConfigDict(extra="forbid", frozen=True)
MAX_PERLIN_CELLS = 512


def clip_field_names() -> list[str]:
    """Fields a clip may override (everything but kind and clips), with W and H."""
    names = [n for n in AnimationJob.model_fields if n not in ("kind", "clips", "clips_manifest")]
    return [*names, "W", "H"]


def check_clip(clip: dict[str, Any]) -> dict[str, Any]:
    """One clip: a file-safe `id` (it names the clip's output folder) and known field names."""
    clip_id = clip.get("id")
    if not isinstance(clip_id, str) or not clip_id.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"a clip needs an 'id' of letters, digits, - or _ (has {clip_id!r})")
    known = clip_field_names()
    for name in clip:
        if name != "id" and name not in known:
            raise ValueError(f"clip {clip_id!r}: unknown field '{name}'{suggest_name(name, known)}")
    return clip


def check_clip_ids(clips: tuple[dict[str, Any], ...] | None) -> Any:
    """Clip ids must be unique (each names an output folder)."""
    ids = [clip["id"] for clip in clips or ()]
    twice = sorted({clip_id for clip_id in ids if ids.count(clip_id) > 1})
    if twice:
        raise ValueError(f"clip id(s) {', '.join(twice)} used more than once; ids must be unique")
    return clips


Clip = Annotated[dict[str, Any], AfterValidator(check_clip)]


class VideoSpec(BaseModel):
    """How frames become a video (ffmpeg): Deforum's crf 17 / preset slow by default."""

    model_config = Frozen
    format: Literal["mp4", "webm", "gif"] = "mp4"
    crf: int = Field(17, ge=0, le=63, description="quality: lower is better; mp4 allows 0..51")
    preset: Annotated[str, Field(pattern="^(" + "|".join(X264_PRESETS) + ")$")] = "slow"
    soundtrack: str | None = Field(None, description="audio file muxed with -shortest")
    interpolate: int = Field(
        1, ge=1, le=8, description="frames per rendered frame, by optical flow (anim.interpolate)"
    )

    @model_validator(mode="after")
    def _check_encoder(self) -> VideoSpec:
        """What the encoder accepts, checked when the job loads, not after every frame has
        rendered: `anim.video.EncodeOptions` holds the rules (a gif has no soundtrack, ...)."""
        if self.format == "mp4" and self.crf > 51:
            raise ValueError(f"crf {self.crf} is too high for mp4 (H.264); use 0..51")
        try:
            EncodeOptions(
                format=self.format, crf=self.crf, preset=self.preset, soundtrack=self.soundtrack
            )
        except ConfigError as err:
            raise ValueError(str(err)) from None
        return self


class AnimationJob(PromptOptions):
    """One animation clip (or, with `clips`, a base that each clip overrides). The prompt
    syntax, LoRA and embedding fields are `batch.prompt_options.PromptOptions`."""

    model_config = Frozen
    kind: Literal["animation"] = "animation"
    # model and engine
    model: str = Field("builtin:tiny", min_length=1)
    allow_pickle: bool = False
    scheduler: str = Field("euler", pattern=r"^[a-z0-9_+\-]+$")
    device: str | None = Field(None, pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$")
    dtype: Dtype = None
    controlnets: list[ControlNetOption] = Field(
        default_factory=list, max_length=8, description="2D: from each prepared previous frame"
    )
    # clip
    animation_mode: Annotated[
        Literal["2D", "interpolation"], BeforeValidator(_canonical("2D", "interpolation"))
    ] = "2D"
    max_frames: int = Field(120, ge=1, le=100_000)
    fps: float = Field(15, gt=0, le=240)
    width: int = Field(512, ge=8, le=MAX_SIDE_PX, validation_alias=AliasChoices("width", "W"))
    height: int = Field(512, ge=8, le=MAX_SIDE_PX, validation_alias=AliasChoices("height", "H"))
    init_image: str | None = None
    # video input and Deforum's hybrid video (anim.video_input)
    init_video: VideoInputSpec | None = Field(None, description="source video of the init pictures")
    hybrid_composite: bool = False
    hybrid_comp_alpha_schedule: Schedule = "0:(0.5)"
    hybrid_motion: Annotated[
        Literal["None", "optical_flow"],
        BeforeValidator(lambda v: "None" if v is None else v),
        BeforeValidator(_canonical(*HYBRID_MOTIONS, aliases={"Optical Flow": "optical_flow"})),
    ] = "None"
    # what schedules read besides their text (anim.audio, anim.parseq)
    audio: AudioSpec | None = Field(None, description="sound file whose series drive schedules")
    parseq: ParseqSpec | None = Field(None, description="Parseq JSON overriding per-frame values")
    # seeds
    seed: int = Field(42, ge=0, le=SEED_MAX)
    seed_behavior: Literal["iter", "fixed", "random", "ladder", "alternate", "schedule"] = "iter"
    seed_iter_N: int = Field(1, ge=1)  # Deforum's name
    seed_schedule: Schedule = DEFAULT_SEED_SCHEDULE
    # motion (2D)
    angle: Schedule = "0:(0)"
    zoom: Schedule = "0:(1.0025+0.002*sin(1.25*3.14*t/30))"
    translation_x: Schedule = "0:(0)"
    translation_y: Schedule = "0:(0)"
    transform_center_x: Schedule = "0:(0.5)"
    transform_center_y: Schedule = "0:(0.5)"
    enable_perspective_flip: bool = False
    perspective_flip_theta: Schedule = "0:(0)"
    perspective_flip_phi: Schedule = "0:(t%15)"
    perspective_flip_gamma: Schedule = "0:(0)"
    perspective_flip_fv: Schedule = "0:(53)"
    border: Literal["replicate", "wrap"] = "replicate"
    # img2img chain
    strength_schedule: Schedule = "0:(0.65)"
    noise_schedule: Schedule = "0:(0.065)"
    contrast_schedule: Schedule = "0:(1.0)"
    cfg_scale_schedule: Schedule = "0:(7)"
    steps_schedule: Schedule = "0:(25)"
    amount_schedule: Schedule = "0:(0.1)"
    kernel_schedule: Schedule = "0:(5)"
    sigma_schedule: Schedule = "0:(1.0)"
    threshold_schedule: Schedule = "0:(0.0)"
    noise_type: Literal["uniform", "perlin"] = "perlin"
    # cells across the first octave; each octave doubles them (a cell under a pixel is white
    # noise, and the lattice grows with the count: 100000 asked for gigabytes a frame)
    perlin_w: int = Field(8, ge=1, le=MAX_PERLIN_CELLS)
    perlin_h: int = Field(8, ge=1, le=MAX_PERLIN_CELLS)
    perlin_octaves: int = Field(4, ge=1, le=7)
    perlin_persistence: float = Field(0.5, gt=0, le=1)
    diffusion_cadence: int = Field(1, ge=1, le=50)
    hard_cuts: tuple[int, ...] = Field(
        (), description="2D frames that start fresh (txt2img, new colour reference)"
    )
    interpolation: Interpolation = "linear"
    schedule_interpolation: dict[str, Interpolation] = Field(default_factory=dict)
    # colour
    color_coherence: ColorCoherence = "LAB"
    color_reference: Literal["first", "window"] = "first"
    color_reference_window: int = Field(8, ge=1)
    # prompts
    prompts: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_PROMPTS))
    animation_prompts_positive: str = ""
    animation_prompts_negative: str = ""
    prompt_transition: Literal["cut", "blend"] | None = None
    # outputs
    video: VideoSpec = Field(default_factory=VideoSpec)
    contact_sheet_every: int = Field(10, ge=1)
    clips: Annotated[tuple[Clip, ...] | None, AfterValidator(check_clip_ids)] = None
    clips_manifest: str | None = Field(
        None, description="Parquet clip manifest (id + override columns), relative to the job"
    )

    @model_validator(mode="before")
    @classmethod
    def _model_recommends(cls, data: Any) -> Any:
        """The size and guidance a builtin model was made for
        (`batch.models.RECOMMENDED_SETTINGS`) where the job leaves them unset."""
        settings = recommended_settings(data.get("model")) if isinstance(data, dict) else {}
        filled = {}
        for names, key in ((("width", "W"), "width"), (("height", "H"), "height")):
            if key in settings and not any(name in data for name in names):
                filled[names[0]] = settings[key]
        if "guidance_scale" in settings and "cfg_scale_schedule" not in data:
            filled["cfg_scale_schedule"] = f"0:({settings['guidance_scale']:g})"
        return data | filled if filled else data

    @model_validator(mode="after")
    def _one_clip_list(self) -> AnimationJob:
        if self.clips is not None and self.clips_manifest is not None:
            raise ValueError(
                f"clips ({len(self.clips)} entries) and clips_manifest "
                f"({self.clips_manifest!r}) are both set; keep one of them (to render both "
                "sets, add the clips: entries as rows of the manifest)"
            )
        return self

    @model_validator(mode="after")
    def _check_hard_cuts(self) -> AnimationJob:
        """Frames 1..max_frames-1 of a 2D clip without init_video, each once, in order."""
        cuts = self.hard_cuts
        if not cuts:
            return self
        if self.animation_mode != "2D" or self.init_video is not None:
            raise ValueError(
                f"hard_cuts {list(cuts)}: cuts restart the 2D chain; a walk's frames are all "
                "independent, and a video input clip takes every frame from its video. "
                "Remove hard_cuts"
            )
        bad = [cut for cut in cuts if not 0 < cut < self.max_frames]
        if bad or list(cuts) != sorted(set(cuts)):
            raise ValueError(
                f"hard_cuts {list(cuts)}: give increasing frames from 1 to "
                f"{self.max_frames - 1} (max_frames - 1), each once"
            )
        return self

    @model_validator(mode="after")
    def _mux_audio(self) -> AnimationJob:
        """``audio:`` is also the soundtrack unless mux is off, another soundtrack is set, or
        the video is a gif (which has no sound)."""
        video = self.video
        if self.audio is None or not self.audio.mux or video.soundtrack or video.format == "gif":
            return self
        return self.model_copy(
            update={"video": video.model_copy(update={"soundtrack": self.audio.file})}
        )

    @field_validator("seed", mode="before")
    @classmethod
    def _fixed_seed(cls, value: Any) -> Any:
        if value == -1:
            raise ValueError(
                "-1 (Deforum's 'pick a random seed') is not used: sdfleet renders repeatably; "
                f"give any seed from 0 to {SEED_MAX} (seed_behavior: random still varies it "
                "per frame, derived from this seed)"
            )
        return value

    @field_validator("width", "height")
    @classmethod
    def _multiple_of_8(cls, value: int) -> int:
        if value % 8:
            low, high = value - value % 8, value - value % 8 + 8
            raise ValueError(
                f"{value} is not a multiple of 8 (the VAE downsamples by 8); "
                f"use {low or 8} or {high}"
            )
        return value

    @field_validator("seed_schedule", *SCHEDULE_RULES)
    @classmethod
    def _parse_schedule(cls, value: str, info: ValidationInfo) -> str:
        try:
            parse_schedule(value, info.field_name, variables=SCHEDULE_VARIABLES)
        except ScheduleError as err:
            raise ValueError(str(err)) from None
        return value

    @field_validator("prompts", mode="before")
    @classmethod
    def _prompt_mapping(cls, value: Any) -> Any:
        if isinstance(value, str):  # Deforum settings paste prompts as a JSON object
            try:
                value = json.loads(value)
            except json.JSONDecodeError as err:
                raise ValueError(
                    f"prompts text is not valid JSON ({err.msg} at line "
                    f"{err.lineno}, column {err.colno}); write a YAML mapping "
                    "such as {0: 'a cat', 30: 'a dog'}"
                ) from None
        if isinstance(value, Mapping):
            if not value:
                raise ValueError("no prompts; add at least one, e.g. {0: 'a cat'}")
            return {str(key): text for key, text in value.items()}
        return value

    @field_validator("prompts", "animation_prompts_positive", "animation_prompts_negative")
    @classmethod
    def _unicode_text(cls, value: Any) -> Any:
        """No lone surrogate (a YAML escape): frames' metadata and the tokenizer need text."""
        texts = value.items() if isinstance(value, Mapping) else [("", value)]
        for key, text in texts:
            for problem in text_problems(text):
                raise ValueError(f"the prompt of key {key!r}: {problem}" if key else problem)
        return value

    @field_validator("schedule_interpolation")
    @classmethod
    def _known_schedules(cls, value: dict[str, str]) -> dict[str, str]:
        names = ["seed_schedule", *SCHEDULE_RULES]
        out = {}
        for name, kind in value.items():
            full = name if name in names else f"{name}_schedule"
            if full not in names:
                raise ValueError(f"'{name}' is not a schedule field{suggest_name(name, names)}")
            out[full] = kind
        return out

    def interpolation_for(self, field: str) -> str:
        """The interpolation used for schedule `field` (per-field override, else global)."""
        return self.schedule_interpolation.get(field, self.interpolation)

    @property
    def transition(self) -> str:
        """Prompt transition: as set, else ``cut`` in 2D (Deforum) and ``blend`` in walks."""
        if self.prompt_transition is not None:
            return self.prompt_transition
        return "blend" if self.animation_mode == "interpolation" else "cut"


def resolve_clips(job: AnimationJob) -> list[tuple[str, AnimationJob]]:
    """(id, job) for each entry of `clips`, in order (see `resolve_clip`)."""
    return [(clip["id"], resolve_clip(job, clip)) for clip in job.clips or ()]


def resolve_clip(job: AnimationJob, clip: Mapping[str, Any]) -> AnimationJob:
    """The base job with the clip's fields replacing the base's. Whole values are replaced: a
    clip's `prompts` or `video` is not merged into the base's. A bad override raises pydantic's
    ValidationError (`load_animation_job` reports it with the clip's path)."""
    base = job.model_dump(exclude={"clips"})
    aliases = {"W": "width", "H": "height"}
    overrides = {aliases.get(key, key): value for key, value in clip.items() if key != "id"}
    if "audio" in overrides and "video" not in overrides and job.audio is not None:
        if job.video.soundtrack == job.audio.file:  # muxed from the base's audio: not the clip's
            base["video"]["soundtrack"] = None
    return AnimationJob.model_validate({**base, **overrides})


def load_animation_job(data: Mapping[str, Any], source: str = "<job>") -> AnimationJob:
    """Validate a parsed job file; raise one `ConfigError` listing every problem found."""
    # 1. shape and fields
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected a mapping of job fields, got {type(data).__name__}")
    try:
        job = AnimationJob.model_validate(dict(data), context={"base_dir": _job_folder(source)})
    except ValidationError as err:
        raise ConfigError(_report(source, _describe_errors(err))) from None
    # 2. values over the whole clip, for the base job and for every clip
    problems = job_problems(job) + prompt_field_problems(job) + video_input_problems(job)
    for index, clip in enumerate(job.clips or ()):
        prefix = f"clips[{index}] ({clip['id']})"
        try:
            clip_job = resolve_clip(job, clip)
        except ValidationError as err:
            problems += _describe_errors(err, prefix)
            continue
        found = job_problems(clip_job) + prompt_field_problems(clip_job)
        found += video_input_problems(clip_job)
        problems += [f"{prefix}.{problem}" for problem in found]
    if problems:
        raise ConfigError(_report(source, problems))
    return job


def _job_folder(source: str) -> Path:
    """Where relative ``audio``/``parseq`` files are read from: the job file's folder (for a
    job that is no file, such as ``<job>``, the working folder)."""
    return Path(source).parent


def _describe_errors(err: ValidationError, prefix: str = "") -> list[str]:
    """One line per pydantic error: field path, problem, value, fix."""
    problems = []
    for error in err.errors(include_url=False):
        loc = [str(part) for part in error["loc"]]
        path = prefix + "".join(
            f"[{part}]" if isinstance(part, int) else f".{part}" for part in error["loc"]
        )
        path = path.removeprefix(".") or "(job)"
        message = error["msg"].removeprefix("Value error, ")
        message = message.removeprefix(f"{loc[-1]}: ") if loc else message
        value = repr(error.get("input"))
        value = value if len(value) <= 80 else value[:77] + "..."
        if error["type"] == "extra_forbidden":
            known = _known_names(loc[:-1])
            message = (
                f"unknown field{suggest_name(loc[-1], known)}; remove it or use one "
                "of the documented field names"
            )
        first, newline, rest = message.partition("\n")
        problems.append(f"{path}: {first} (got {value}){newline}{rest}")
    return problems


def _known_names(parent: list[str]) -> list[str]:
    nested = {"video": VideoSpec, "audio": AudioSpec, "parseq": ParseqSpec}
    nested["init_video"] = VideoInputSpec
    model = nested.get(parent[-1] if parent else "", AnimationJob)
    return [*model.model_fields, *(["W", "H"] if model is AnimationJob else [])]


def _report(source: str, problems: list[str]) -> str:
    lines = [f"{source}: {len(problems)} problem(s) in the animation job:"]
    for problem in problems:
        lines.append(f"  - {source}: " + problem.replace("\n", "\n      "))
    return "\n".join(lines)

"""Deforum settings files (the JSON Deforum writes beside its frames) as sdfleet animation jobs.

`import_settings` maps every key it can with Deforum's meaning (`anim.deforum_keys` says which
key is which, and Deforum's defaults for keys a file leaves out):

- ``W``/``H``, ``max_frames``, ``fps``, ``border``, every schedule (same names and syntax),
  ``seed_behavior``/``seed_iter_N``/``seed_schedule``, cadence, noise and colour settings;
- ``sampler`` -> the sdfleet scheduler of the same sampler (``Euler a`` -> ``euler_a``,
  ``DPM++ 2M Karras`` -> ``dpmpp_2m_karras``, ...); ``steps`` (or ``steps_schedule`` when
  ``enable_steps_scheduling``);
- ``seed: -1`` -> a random seed, drawn here and recorded in the job (and in OUT/job.yaml);
- ``prompts`` with ``animation_prompts_positive``/``_negative`` joined as Deforum joins them
  (``"{positive} {prompt} --neg {negative}"``). A file Deforum wrote beside a render holds
  ``positive_prompts``/``negative_prompts`` instead, and its prompts are already joined: they
  are taken as they are (loading such a file, Deforum would add the negative text again);
- ``use_init`` + ``init_image`` -> ``init_image``, with Deforum's ``strength`` for frame 0
  (later frames follow ``strength_schedule``, as in Deforum);
- ``animation_mode: Video Input`` (and 2D ``hybrid_composite``/``hybrid_motion``) with a local
  ``video_init_path`` -> ``init_video`` (``extract_nth_frame``, ``extract_from_frame``),
  ``hybrid_composite: Normal`` + ``hybrid_comp_alpha_schedule``, ``hybrid_motion: Optical
  Flow`` -> ``optical_flow`` (Farneback; another ``hybrid_flow_method`` is listed);
- ``add_soundtrack: File`` + ``soundtrack_path`` -> ``video.soundtrack``; ``make_gif`` -> the
  video is a GIF (Deforum writes it besides the MP4; rerun with ``video.format: mp4`` to
  re-encode the same frames); ``parseq_manifest`` -> ``parseq`` (`anim.parseq`);
  ``frame_interpolation_x_amount`` -> ``video.interpolate`` once the engine's difference (optical
  flow, not RIFE/FILM) is accepted;
- ``sd_model_name`` -> the checkpoint of that name beside the settings file, or ``model``.

Keys that change the picture and cannot be honoured (3D mode, face restoration, masks,
ControlNet, noise multiplier, a sampler with no equivalent, a checkpoint not found ...) become
`Difference` entries: `check_differences` refuses them all, by name with the reason, unless the
user accepts them. UI state is ignored quietly.

API:
    looks_like_settings(path) -> bool
    read_settings(path) -> dict                     (ConfigError naming the file)
    import_settings(settings, source, seed=None, model=None, base_dir=None) -> DeforumImport
    check_differences(imported, accept) -> None     (DeforumDifferences unless accepted)
    load_deforum_job(path, accept=False, seed=None, model=None) -> (AnimationJob, DeforumImport)
    job_yaml(imported) -> str                       (the equivalent job file)
    pin_first_frame(schedule, value, max_frames, seed, field) -> str
"""

from __future__ import annotations

import json
import logging
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sdfleet.anim import deforum_keys as keys
from sdfleet.anim.job_files import read_json_object
from sdfleet.anim.parseq import UNSUPPORTED as PARSEQ_UNSUPPORTED
from sdfleet.anim.parseq import unsupported_fields
from sdfleet.anim.schedule import parse_schedule
from sdfleet.anim.seeds import SEED_MODULUS
from sdfleet.anim.spec import AnimationJob, load_animation_job
from sdfleet.batch.errors import ConfigError, ScheduleError
from sdfleet.batch.paths import is_uri

logger = logging.getLogger(__name__)

SIGNATURE_KEYS = ("prompts", "animation_prompts", "animation_mode", "max_frames", "sampler")
_EMPHASIS = re.compile(r"[()\[\]]")
ACCEPT_FLAG = "--accept-deforum-differences"


class DeforumDifferences(ConfigError):
    """A settings file holds keys sdfleet cannot honour, and they were not accepted."""


@dataclass(frozen=True)
class Difference:
    key: str
    value: Any
    reason: str

    def line(self) -> str:
        shown = repr(self.value)
        return f"{self.key} = {shown if len(shown) <= 60 else shown[:57] + '...'}: {self.reason}"


@dataclass
class DeforumImport:
    source: str
    job: dict[str, Any] = field(default_factory=lambda: {"kind": "animation"})
    differences: list[Difference] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def looks_like_settings(path: str | Path) -> bool:
    """A JSON object without ``kind`` holding Deforum's keys (a job file is YAML with kind)."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    if not text.lstrip().startswith("{"):
        return False
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return Path(path).suffix.lower() == ".txt"  # read_settings reports the JSON error
    return isinstance(data, dict) and "kind" not in data and any(k in data for k in SIGNATURE_KEYS)


def read_settings(path: str | Path) -> dict[str, Any]:
    try:
        return read_json_object(path)
    except ValueError as exc:
        raise ConfigError(
            f"{path}: not a valid Deforum settings file: {exc}; give the JSON file Deforum "
            "writes beside its frames (an edited file may have lost a comma or quote)"
        ) from None


def import_settings(
    settings: dict[str, Any],
    source: str,
    seed: int | None = None,
    model: str | None = None,
    base_dir: Path | None = None,
) -> DeforumImport:
    """The animation job `settings` mean (see the module doc); differences listed, not raised."""
    out = DeforumImport(source)
    given = {keys.RENAMED.get(k, k): v for k, v in settings.items()}
    s = {**keys.DEFAULTS, **given}
    # 1. what the frames are: size, mode, model, sampler, seed
    _frame_size(s, out)
    _mode(s, out)
    _model(s, out, model, base_dir or Path("."))
    _sampler(s, out)
    _seed(s, out, seed)
    # 2. schedules and values with the same meaning; init image; prompts
    _schedules(s, out)
    _init(s, out)
    _video_input(s, out)
    _prompts(s, given, out)
    # 3. outputs and Parseq
    _video(s, out)
    _parseq(s, out)
    # 4. switches sdfleet cannot honour, and keys it does not know
    _gates(s, out)
    _unknown(given, out)
    return out


def check_differences(imported: DeforumImport, accept: bool) -> None:
    """Raise `DeforumDifferences` listing every difference, unless `accept`."""
    if not imported.differences:
        return
    lines = [f"  - {difference.line()}" for difference in imported.differences]
    if accept:
        for line in lines:
            logger.warning("%s: accepted difference: %s", imported.source, line.strip(" -"))
        return
    raise DeforumDifferences(
        f"{imported.source}: {len(lines)} Deforum setting(s) change the picture and cannot be "
        "honoured by sdfleet:\n" + "\n".join(lines) + f"\nrun again with {ACCEPT_FLAG} to "
        "render without them (the frames will differ from Deforum's in these ways)"
    )


def load_deforum_job(
    path: str | Path, accept: bool = False, seed: int | None = None, model: str | None = None
) -> tuple[AnimationJob, DeforumImport]:
    """Read, import and check a settings file; the validated job and what the import found."""
    path = Path(path)
    imported = import_settings(read_settings(path), str(path), seed, model, path.parent)
    check_differences(imported, accept)
    return load_animation_job(imported.job, source=str(path)), imported


def job_yaml(imported: DeforumImport) -> str:
    """The equivalent job file: the job, with the notes and accepted differences as comments."""
    lines = [f"# imported from the Deforum settings file {imported.source}"]
    lines += [f"# note: {note}" for note in imported.notes]
    lines += [f"# accepted difference: {d.line()}" for d in imported.differences]
    body = yaml.safe_dump(imported.job, sort_keys=False, allow_unicode=True, width=100)
    return "\n".join(lines) + "\n" + body


# -- readers, one concern each --------------------------------------------------------------


def _refuse(out: DeforumImport, key: str, value: Any, reason: str) -> None:
    out.differences.append(Difference(key, value, reason))


def _frame_size(s: dict[str, Any], out: DeforumImport) -> None:
    for key in ("W", "H"):
        value = s[key]
        if isinstance(value, int) and value >= 8 and value % 8:
            _refuse(out, key, value, f"not a multiple of 8; rendered at {value - value % 8}")
            value -= value % 8
        out.job[key] = value


def _mode(s: dict[str, Any], out: DeforumImport) -> None:
    mode = s["animation_mode"]
    modes = {"2D": "2D", "Interpolation": "interpolation", "Video Input": "2D"}  # + init_video
    if mode not in modes:
        reason = {"3D": keys.THREE_D_REASON}.get(mode, "an unknown animation mode; rendered as 2D")
        _refuse(out, "animation_mode", mode, reason)
    out.job["animation_mode"] = modes.get(mode, "2D")


def _model(s: dict[str, Any], out: DeforumImport, model: str | None, base_dir: Path) -> None:
    name = s.get("sd_model_name")
    if model is not None:
        out.job["model"] = model
    elif name and (base_dir / name).exists():
        out.job["model"] = name
    elif name:
        _refuse(
            out,
            "sd_model_name",
            name,
            "that checkpoint is not beside the settings file; give --model PATH (the same "
            "checkpoint, as a .safetensors file or diffusers folder), or accept to render "
            "with builtin:tiny (the small test model)",
        )
    else:
        out.notes.append("the file names no model; rendering with builtin:tiny (give --model)")


def _sampler(s: dict[str, Any], out: DeforumImport) -> None:
    name = s["sampler"]
    if s.get("enable_sampler_scheduling") is True:
        names = _texts(s, "sampler_schedule", out)
        if len(set(names)) > 1:
            _refuse(
                out,
                "sampler_schedule",
                s["sampler_schedule"],
                f"the scheduler cannot change during a clip; rendered with {names[0]!r}",
            )
        name = names[0] if names else name
    if not isinstance(name, str):
        _refuse(out, "sampler", name, "not a sampler name; rendered with euler_a")
        out.job["scheduler"] = "euler_a"
        return
    scheduler = keys.SAMPLERS.get(name.lower())
    if scheduler is None:
        scheduler = keys.NEAREST_SAMPLERS.get(name.lower(), "euler_a")
        _refuse(out, "sampler", name, f"no exact sdfleet scheduler; rendered with {scheduler}")
    out.job["scheduler"] = scheduler


def _seed(s: dict[str, Any], out: DeforumImport, seed: int | None) -> None:
    value = s["seed"]
    if value in (-1, None, "-1"):
        how = "given" if seed is not None else "drawn"
        value = seed if seed is not None else secrets.randbelow(SEED_MODULUS)
        out.notes.append(f"seed -1 (random): seed {value} {how} and recorded")
    out.job["seed"] = value


def _schedules(s: dict[str, Any], out: DeforumImport) -> None:
    for key in (*keys.SCHEDULES, *keys.SAME):
        out.job[key] = s[key]
    out.job["steps_schedule"] = (
        s["steps_schedule"] if s.get("enable_steps_scheduling") is True else f"0:({s['steps']})"
    )
    for key in ("perlin_w", "perlin_h"):
        value = s[key]
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int):
            whole = max(1, round(value)) if isinstance(value, float) else 8
            _refuse(out, key, value, f"Perlin cells must be whole here; rendered with {whole}")
            value = whole
        out.job[key] = value
    colour = s["color_coherence"]
    if colour in ("Video Input", "Image"):
        _refuse(out, "color_coherence", colour, "no video or image to match; matched to frame 0")
        colour = "LAB"
    out.job["color_coherence"] = colour


def _init(s: dict[str, Any], out: DeforumImport) -> None:
    image = s.get("init_image")
    if s.get("use_init") is not True or image in (None, "", "None"):
        return
    if is_uri(str(image)):
        _refuse(out, "init_image", image, "sdfleet downloads nothing; save it and give its path")
        return
    out.job["init_image"] = image
    out.job["strength_schedule"] = pin_first_frame(
        s["strength_schedule"], float(s["strength"]), s["max_frames"], out.job["seed"]
    )
    out.notes.append(f"frame 0 keeps {float(s['strength']):g} of init_image (Deforum's strength)")


def _video_input(s: dict[str, Any], out: DeforumImport) -> None:
    """Video Input mode and 2D hybrid video -> init_video and the hybrid fields
    (`anim.video_input`): Deforum's extract_nth_frame mapping, Normal compositing at the alpha
    schedule, optical-flow motion by Farneback."""
    composite = s.get("hybrid_composite") not in ("None", False, None)
    motion = s.get("hybrid_motion") not in ("None", None)
    if s["animation_mode"] != "Video Input" and not (composite or motion):
        return
    path = s.get("video_init_path")
    if path in (None, "") or is_uri(str(path)):  # refused under the key that asked for it
        key = "animation_mode" if s["animation_mode"] == "Video Input" else "hybrid_motion"
        key = "hybrid_composite" if composite else key
        reason = f"needs a local video_init_path (has {path!r}; sdfleet downloads nothing)"
        _refuse(out, key, s[key], reason + "; rendered without the video")
        return
    nth, start = int(s.get("extract_nth_frame", 1)), int(s.get("extract_from_frame", 0))
    out.job["init_video"] = {
        "file": str(path),
        "extract_nth_frame": nth,
        "extract_from_frame": start,
    }
    out.notes.append("max_frames is the settings' own (Deforum counts the extracted frames)")
    if composite:
        if s["hybrid_composite"] not in ("Normal", True):
            reason = "only Normal compositing (after motion) is rendered"
            _refuse(out, "hybrid_composite", s["hybrid_composite"], reason)
        out.job["hybrid_composite"] = True
        out.job["hybrid_comp_alpha_schedule"] = s.get("hybrid_comp_alpha_schedule", "0:(0.5)")
    if motion and s["hybrid_motion"] != "Optical Flow":
        reason = "only optical-flow hybrid motion is rendered; not applied"
        _refuse(out, "hybrid_motion", s["hybrid_motion"], reason)
    elif motion:
        out.job["hybrid_motion"] = "optical_flow"
        method = s.get("hybrid_flow_method", "RAFT")
        if method != "Farneback":
            reason = "flow by OpenCV Farneback (no flow model weights)"
            _refuse(out, "hybrid_flow_method", method, reason)


def _prompts(s: dict[str, Any], given: dict[str, Any], out: DeforumImport) -> None:
    prompts = s.get("prompts")
    if isinstance(prompts, str):
        try:
            prompts = json.loads(prompts)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{out.source}: prompts is not valid JSON ({err.msg})") from None
    if prompts is None:
        out.notes.append("the file has no prompts; Deforum's example prompts are used")
        return
    if not isinstance(prompts, dict):
        raise ConfigError(f"{out.source}: prompts must map frames to prompts, got {prompts!r}")
    if "positive_prompts" in given and "animation_prompts_positive" not in given:
        out.notes.append("prompts already joined with positive/negative_prompts (as Deforum saves)")
    else:
        positive = given.get("animation_prompts_positive", "")
        negative = str(given.get("animation_prompts_negative", "")).replace("--neg", "")
        prompts = {
            key: f"{positive} {text} {'' if '--neg' in str(text) else '--neg'} {negative}"
            for key, text in prompts.items()
        }
    if any(_EMPHASIS.search(str(text)) for text in prompts.values()):
        _refuse(
            out,
            "prompts",
            "( ) or [ ] in a prompt",
            "A1111 reads them as attention weights; sdfleet gives the text as it is",
        )
    out.job["prompts"] = {str(key): text for key, text in prompts.items()}


def _video(s: dict[str, Any], out: DeforumImport) -> None:
    video: dict[str, Any] = {}
    track, path = s.get("add_soundtrack"), s.get("soundtrack_path") or ""
    if track is True or track == "File":
        if is_uri(path):
            _refuse(out, "soundtrack_path", path, "sdfleet downloads nothing; give a local file")
        elif path:
            video["soundtrack"] = path
    elif track == "Init Video":
        _refuse(out, "add_soundtrack", track, "there is no init video to take the sound from")
    engine, amount = s.get("frame_interpolation_engine"), s.get("frame_interpolation_x_amount")
    if engine not in (None, "None") and isinstance(amount, int) and amount > 1:
        video["interpolate"] = min(amount, 8)  # refused by its gate unless accepted
    if s.get("make_gif") is True and "soundtrack" in video:  # Deforum writes both; one here
        out.notes.append("make_gif: the video is an MP4 with the soundtrack (a gif has no sound)")
    elif s.get("make_gif") is True:
        video["format"] = "gif"
        out.notes.append("make_gif: the video is a GIF (rerun with video.format: mp4 for an MP4)")
    if video:
        out.job["video"] = video


def _parseq(s: dict[str, Any], out: DeforumImport) -> None:
    text = (s.get("parseq_manifest") or "").strip()
    if not text:
        return
    if text.startswith("http"):
        _refuse(out, "parseq_manifest", text, "sdfleet downloads nothing; save the JSON locally")
        return
    try:
        document = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{out.source}: parseq_manifest is not JSON ({err.msg})") from None
    frames = document.get("rendered_frames") if isinstance(document, dict) else None
    accepted = unsupported_fields(frames if isinstance(frames, list) else [])
    for name in accepted:
        _refuse(out, f"parseq_manifest.{name}", "(in rendered_frames)", PARSEQ_UNSUPPORTED[name])
    spec: dict[str, Any] = {"manifest": document, "use_deltas": bool(s["parseq_use_deltas"])}
    if accepted:
        spec["accept_differences"] = accepted
    out.job["parseq"] = spec


def _gates(s: dict[str, Any], out: DeforumImport) -> None:
    for key, (is_on, reason) in keys.GATES.items():
        if is_on(s):
            _refuse(out, key, s[key], reason)
    for key, value in s.items():
        if re.fullmatch(r"cn_\d+_enabled", key) and value is True:
            _refuse(out, key, value, "ControlNet is not available in animations")
    for switch, (schedule, neutral, reason) in keys.SCHEDULE_GATES.items():
        if s.get(switch) is True and any(v != neutral for v in _numbers(s, schedule, out)):
            _refuse(out, schedule, s[schedule], reason)


def _unknown(given: dict[str, Any], out: DeforumImport) -> None:
    for key, value in given.items():
        known = key in keys.MAPPED or key in keys.GATES or keys.is_quiet(key)
        if not known and not re.fullmatch(r"cn_\d+_enabled", key):
            _refuse(out, key, value, "unknown to sdfleet (from another Deforum version?); unused")


def _numbers(s: dict[str, Any], key: str, out: DeforumImport) -> list[float]:
    try:
        return parse_schedule(str(s[key]), key).evaluate(s["max_frames"], 0)
    except ScheduleError as err:
        _refuse(out, key, s[key], f"cannot be read ({err}); not applied")
        return []


def _texts(s: dict[str, Any], key: str, out: DeforumImport) -> list[str]:
    try:
        return parse_schedule(str(s[key]), key, numeric=False).evaluate_text(s["max_frames"], 0)
    except ScheduleError as err:
        _refuse(out, key, s[key], f"cannot be read ({err}); not applied")
        return []


def pin_first_frame(text: str, value: float, max_frames: int, seed: int, field: str = "") -> str:
    """`text` with frame 0 set to `value` and every other frame unchanged: frame 1 gets its
    own key (the expression that governs it, or its value on the linear ramp, which keeps the
    rest of the ramp on the same line)."""
    field = field or "strength_schedule"
    schedule = parse_schedule(str(text), field)
    if max_frames == 1:
        return f"0:({value!r})"
    pairs = schedule.keys_in_range(max_frames, seed)
    at_one = [keyframe for frame, keyframe in pairs if frame == 1]
    at_zero = [keyframe for frame, keyframe in pairs if frame == 0]
    if at_one:
        one = at_one[-1].text
    elif at_zero and at_zero[-1].expr is not None:
        one = at_zero[-1].text  # evaluated from frame 1 on: the same values
    else:
        one = repr(schedule.evaluate(max_frames, seed)[1])
    rest = [f"{frame}:({keyframe.text})" for frame, keyframe in pairs if frame >= 2]
    return ", ".join([f"0:({value!r})", f"1:({one})", *rest])

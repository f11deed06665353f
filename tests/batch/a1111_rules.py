"""How AUTOMATIC1111's web UI (1.10) reads an image's generation parameters, rebuilt here from
its rules so tests check our files against the consumer, not against our own writer:

- where the text is (`modules/images.py`, `read_info_from_image`): a PNG's `parameters` text;
  a JPEG/WEBP's Exif (Pillow's `info["exif"]`) loaded with piexif, tag UserComment, decoded
  with `piexif.helper.UserComment.load`;
- how it is split (`modules/infotext_utils.py`, `parse_generation_parameters`): the last line
  holds the settings when at least 3 `Key: value` pairs match in it; the lines before are the
  prompt until one starts with `Negative prompt:`, the rest the negative prompt; a value in
  double quotes is JSON-decoded; `WxH` values become `<Key>-1` / `<Key>-2`;
- which sampler a pasted text selects (`modules/sd_samplers.py`, `get_sampler_and_scheduler`):
  a known scheduler name at the end of the sampler name is split off; an unknown sampler name
  silently becomes the first sampler; a schedule equal to the sampler's own default reads as
  Automatic, and Automatic means that default (or the model's own spacing, Uniform).
"""

from __future__ import annotations

import io
import json
import re

import piexif
import piexif.helper
from PIL import Image

# A key starts with a word character and continues with word characters, spaces, '-' or '/';
# a value is a double-quoted string (backslash escapes allowed) or a run without commas.
_PAIR = re.compile(
    r"""\s*
    (?P<key>\w[\w \-/]+) : \s*
    (?P<value> "(?: \\. | [^\\"] )+" | [^,]* )
    (?: , | $)""",
    re.VERBOSE,
)
_SIZE = re.compile(r"^(\d+)x(\d+)$")

# A1111 1.10's samplers in its order (the first is the fallback), with their default schedule
SAMPLERS = {
    "DPM++ 2M": "karras",
    "DPM++ SDE": "karras",
    "DPM++ 2M SDE": "exponential",
    "DPM++ 2M SDE Heun": "exponential",
    "DPM++ 2S a": "karras",
    "DPM++ 3M SDE": "exponential",
    "Euler a": None,
    "Euler": None,
    "LMS": None,
    "Heun": None,
    "DPM2": "karras",
    "DPM2 a": "karras",
    "DPM fast": None,
    "DPM adaptive": None,
    "Restart": "karras",
    "DDIM": None,
    "DDIM CFG++": None,
    "PLMS": None,
    "UniPC": None,
    "LCM": None,
}
# A1111 1.10's schedule types: name -> label
SCHEDULES = {
    "automatic": "Automatic",
    "uniform": "Uniform",
    "karras": "Karras",
    "exponential": "Exponential",
    "polyexponential": "Polyexponential",
    "sgm_uniform": "SGM Uniform",
    "kl_optimal": "KL Optimal",
    "align_your_steps": "Align Your Steps",
    "simple": "Simple",
    "normal": "Normal",
    "ddim": "DDIM",
    "beta": "Beta",
}


def read_parameters(data: bytes) -> str | None:
    """The parameters text of an image file, found where A1111 looks for it."""
    with Image.open(io.BytesIO(data)) as image:
        info = dict(image.info)
    text = info.get("parameters")
    if "exif" in info:
        exif = piexif.load(info["exif"])
        raw = exif.get("Exif", {}).get(piexif.ExifIFD.UserComment, b"")
        try:
            comment = piexif.helper.UserComment.load(raw)
        except ValueError:
            comment = raw.decode("utf8", errors="ignore")
        text = comment or text
    return text


def parse(text: str) -> dict[str, str]:
    """Prompt, Negative prompt and every `Key: value` of the settings line."""
    *lines, last = text.strip().split("\n")
    if len(_PAIR.findall(last)) < 3:
        lines, last = [*lines, last], ""
    prompt, negative, in_negative = [], [], False
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            in_negative, line = True, line[len("Negative prompt:") :].strip()
        (negative if in_negative else prompt).append(line)
    found = {"Prompt": "\n".join(prompt), "Negative prompt": "\n".join(negative)}
    for match in _PAIR.finditer(last):
        key, value = match.group("key"), match.group("value")
        if len(value) > 1 and value[0] == value[-1] == '"':
            try:
                value = json.loads(value)
            except ValueError:
                pass
        size = _SIZE.match(value)
        if size:
            found[f"{key}-1"], found[f"{key}-2"] = size.groups()
        else:
            found[key] = value
    return found


def pasted_sampler(fields: dict[str, str]) -> tuple[str, str]:
    """(sampler, schedule name actually used) that pasting `fields` selects in A1111."""
    name = fields.get("Sampler") or next(iter(SAMPLERS))
    schedule = _schedule_name(fields.get("Schedule type")) or "automatic"
    for schedule_name, label in SCHEDULES.items():
        suffix = next((s for s in (label, schedule_name) if name.endswith(" " + s)), None)
        if suffix:
            name, schedule = name[: -len(suffix) - 1], schedule_name
            break
    sampler = name if name in SAMPLERS else next(iter(SAMPLERS))
    if schedule == "automatic":
        schedule = SAMPLERS[sampler] or "uniform"
    return sampler, schedule


def _schedule_name(value: str | None) -> str | None:
    for name, label in SCHEDULES.items():
        if value in (name, label):
            return name
    return None

"""Prompt keyframes -> the prompt (and blend partner) of every frame.

`prompts` maps a frame key (an int, digits, or an expression in ``max_f``/``s`` such as
``"max_f-10"``) to ``"positive text --neg negative text"``. Keys outside the clip are ignored
(as in Deforum); when two keys land on one frame the later entry wins. Before the first key the
first prompt is held (Deforum needs a ``0`` key; we do not).

The job-wide texts go where Deforum puts them, joined with ", ": ``animation_prompts_positive``
before every key's positive text, ``animation_prompts_negative`` after every key's negative
text. A ``--neg`` marker in the job-wide positive text starts job-wide negative text; markers
in negative text are dropped (Deforum's "received by mistake").

Transitions:
- ``cut`` (Deforum 2D): each key's prompt holds until the next key.
- ``blend``: from key i to key i+1 the frame records key i's prompt, key i+1's prompt as its
  blend partner and ``blend_weight`` = (frame - key_i) / (key_i+1 - key_i), in [0, 1). At and
  after the last key there is no partner (weight 0). The renderer lerps the text embeddings.

API:
    split_negative(text) -> (positive, negative)
    resolve_prompt_keys(prompts, max_frames, seed=0, positive="", negative="", clock=None)
        -> list[PromptKey]   (`clock`: keys in seconds or beats, see `anim.schedule.KeyClock`)
    frame_prompts(keys, max_frames, transition="cut") -> list[FramePrompt]
    plan_prompts(prompts, max_frames, seed=0, transition="cut", positive="", negative="")
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sdfleet.anim.schedule import KeyClock, compile_key
from sdfleet.batch.errors import ConfigError

logger = logging.getLogger(__name__)

TRANSITIONS = ("cut", "blend")
_NEG = re.compile(r"--neg\b")


@dataclass(frozen=True)
class PromptKey:
    """One prompt keyframe, resolved to a frame, with the global texts already appended."""

    frame: int
    prompt: str
    negative_prompt: str


@dataclass(frozen=True)
class FramePrompt:
    """What one frame is conditioned on; `blend_*` is None/0.0 when nothing is blended."""

    prompt: str
    negative_prompt: str
    blend_prompt: str | None = None
    blend_negative_prompt: str | None = None
    blend_weight: float = 0.0


def split_negative(text: str) -> tuple[str, str]:
    """``"a cat --neg blurry"`` -> ``("a cat", "blurry")`` (Deforum's ``--neg`` marker). All
    text after the first marker is negative; further markers are dropped, as Deforum does."""
    first, *rest = _NEG.split(text)
    return first.strip(), " ".join(part.strip() for part in rest if part.strip())


def join_texts(*texts: str) -> str:
    """Join the non-empty texts with ", "."""
    return ", ".join(text.strip() for text in texts if text and text.strip())


def resolve_prompt_keys(
    prompts: Mapping[str | int, str],
    max_frames: int,
    seed: int = 0,
    positive: str = "",
    negative: str = "",
    field: str = "prompts",
    clock: KeyClock | None = None,
) -> list[PromptKey]:
    """Prompt keys inside the clip, sorted by frame; raise `ConfigError` if none is. `clock`
    places keys written as times (``2s``, ``4b``)."""
    positive, negative_in_positive = split_negative(positive)
    negative = join_texts(negative_in_positive, split_negative("--neg " + negative)[1])
    by_frame: dict[int, PromptKey] = {}
    for raw_key, text in prompts.items():
        key_field = f"{field}[{raw_key!r}]"
        if not isinstance(text, str):
            raise ConfigError(f"{key_field}: expected prompt text, got {text!r}")
        frame = compile_key(str(raw_key), key_field).resolve(max_frames - 1, seed, clock)
        if not 0 <= frame < max_frames:
            logger.debug("%s -> frame %d is outside the clip; ignored", key_field, frame)
            continue
        pos, neg = split_negative(text)
        by_frame[frame] = PromptKey(frame, join_texts(positive, pos), join_texts(neg, negative))
    if not by_frame:
        raise ConfigError(
            f"{field}: no prompt key falls inside frames 0..{max_frames - 1} (keys: "
            f"{', '.join(map(str, prompts)) or 'none'}); add a key such as 0"
        )
    return [by_frame[frame] for frame in sorted(by_frame)]


def frame_prompts(
    keys: Sequence[PromptKey], max_frames: int, transition: str = "cut"
) -> list[FramePrompt]:
    """One `FramePrompt` per frame for sorted `keys` (see the module doc for transitions)."""
    if transition not in TRANSITIONS:
        raise ConfigError(
            f"prompt_transition: unknown value {transition!r}; expected one of "
            f"{', '.join(TRANSITIONS)}"
        )
    records, index = [], 0
    for frame in range(max_frames):
        while index + 1 < len(keys) and keys[index + 1].frame <= frame:
            index += 1
        current = keys[index]
        nxt = keys[index + 1] if index + 1 < len(keys) else None
        if transition == "cut" or nxt is None or frame < current.frame:
            records.append(FramePrompt(current.prompt, current.negative_prompt))
            continue
        weight = (frame - current.frame) / (nxt.frame - current.frame)
        records.append(
            FramePrompt(
                current.prompt, current.negative_prompt, nxt.prompt, nxt.negative_prompt, weight
            )
        )
    return records


def plan_prompts(
    prompts: Mapping[str | int, str],
    max_frames: int,
    seed: int = 0,
    transition: str = "cut",
    positive: str = "",
    negative: str = "",
) -> list[FramePrompt]:
    """`resolve_prompt_keys` then `frame_prompts`: the prompt side of the plan."""
    keys = resolve_prompt_keys(prompts, max_frames, seed, positive, negative)
    return frame_prompts(keys, max_frames, transition)

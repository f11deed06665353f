"""A1111's prompt syntax, read the way A1111 reads it (pure: no torch).

Emphasis (A1111 `modules/prompt_parser.py`, `parse_prompt_attention`):

- `(text)` multiplies the attention of `text` by 1.1, `((text))` by 1.1 * 1.1, `(text:1.3)` by
  1.3 (whitespace around the number allowed), `[text]` divides it by 1.1;
- `\\(`, `\\)`, `\\[`, `\\]`, `\\\\` are the literal characters; any other backslash is dropped;
- a closing bracket with no opener is literal text; an opener never closed applies its multiplier
  to everything after it (A1111 closes it at the end). `prompt_problems` refuses both before a
  run (see there), so a job never depends on that guess;
- `BREAK` (the word, upper case) ends the current 75-token chunk;
- neighbouring pieces with equal weights are merged, so `(a)(b)` is one piece `ab` at 1.1.

One deliberate difference: a `BREAK` inside brackets is still a chunk break here. A1111
multiplies its marker weight with the bracket and then encodes the word "BREAK" as text.

Extra networks (A1111 `modules/extra_networks.py`): `<kind:arg1:arg2...>` tags are removed from
the prompt before emphasis is read. `lora` (and its alias `lyco`) takes `<lora:name>`,
`<lora:name:w>` (text encoder and UNet at w) or `<lora:name:te:unet>`, and the named forms
`te=`/`unet=`; other kinds are refused (A1111 skips unknown ones with a log line).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal

from sdfleet.batch.errors import ConfigError

PromptSyntax = Literal["a1111", "plain"]
SYNTAXES: tuple[str, ...] = ("a1111", "plain")
LORA_KINDS = ("lora", "lyco")
ROUND_MULTIPLIER = 1.1
SQUARE_MULTIPLIER = 1 / 1.1

# One token of the attention syntax per match, tried in this order (A1111's order).
_TOKEN = re.compile(
    r"""
    (?P<escape>\\[()\[\]\\])
    | (?P<backslash>\\)
    | (?P<open>[(\[])
    | :\s*(?P<weight>[+-]?[.\d]+)\s*\)
    | (?P<close>[)\]])
    | (?P<text>[^\\()\[\]:]+)
    | (?P<colon>:)
    """,
    re.X,
)
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)
_EXTRA_NETWORK = re.compile(r"<(\w+):([^>]+)>")


@dataclass(frozen=True)
class Fragment:
    """A run of prompt text at one attention weight, or a chunk break."""

    text: str
    weight: float = 1.0
    is_break: bool = False


@dataclass(frozen=True)
class NetworkTag:
    """One `<lora:name:...>` tag as written, with its text-encoder and UNet multipliers."""

    kind: str
    name: str
    te_weight: float
    unet_weight: float
    tag: str


@dataclass(frozen=True)
class ParsedPrompt:
    """A prompt read in one syntax: the text the encoder sees and the LoRA tags it named."""

    text: str
    fragments: tuple[Fragment, ...]
    loras: tuple[NetworkTag, ...] = ()

    @property
    def is_plain(self) -> bool:
        """No emphasis and no break: diffusers' own encoding of `text` means the same."""
        return all(f.weight == 1.0 and not f.is_break for f in self.fragments)


class PromptSyntaxError(ConfigError, ValueError):
    """A prompt cannot be read; `position` is the character offset of the cause. A ConfigError
    for the CLI, and a ValueError so that job-model validators report it as a field error."""

    def __init__(self, message: str, position: int) -> None:
        super().__init__(message)
        self.position = position


# ------------------------------------------------------------------------------- emphasis


def parse_prompt_attention(text: str) -> list[Fragment]:
    """A1111's (text, weight) pieces of `text`, breaks included; never empty.

    >>> [(f.text, f.weight) for f in parse_prompt_attention("an (important) word")]
    [('an ', 1.0), ('important', 1.1), (' word', 1.0)]
    """
    pieces: list[list] = []  # [text, weight, is_break], mutated as brackets close
    round_opens: list[int] = []
    square_opens: list[int] = []
    for match in _TOKEN.finditer(text):
        kind, value = match.lastgroup, match.group(0)
        if kind == "escape":
            pieces.append([value[1], 1.0, False])
        elif kind == "backslash":
            continue
        elif kind == "open":
            (round_opens if value == "(" else square_opens).append(len(pieces))
        elif kind == "weight" and round_opens:
            _multiply(pieces, round_opens.pop(), _weight_value(match))
        elif kind == "close" and value == ")" and round_opens:
            _multiply(pieces, round_opens.pop(), ROUND_MULTIPLIER)
        elif kind == "close" and value == "]" and square_opens:
            _multiply(pieces, square_opens.pop(), SQUARE_MULTIPLIER)
        else:
            _append_text(pieces, value)
    for start in round_opens:
        _multiply(pieces, start, ROUND_MULTIPLIER)
    for start in square_opens:
        _multiply(pieces, start, SQUARE_MULTIPLIER)
    return _merged(pieces)


def _weight_value(match: re.Match) -> float:
    written = match.group("weight")
    try:
        weight = float(written)
    except ValueError:
        raise PromptSyntaxError(
            f"the weight {written!r} is not a number; write it like (word:1.3)", match.start()
        ) from None
    if not math.isfinite(weight):
        raise PromptSyntaxError(f"the weight {written!r} is not finite", match.start())
    return weight


def _multiply(pieces: list[list], start: int, multiplier: float) -> None:
    for piece in pieces[start:]:
        if not piece[2]:
            piece[1] *= multiplier


def _append_text(pieces: list[list], text: str) -> None:
    for index, part in enumerate(_BREAK.split(text)):
        if index > 0:
            pieces.append(["BREAK", 1.0, True])
        pieces.append([part, 1.0, False])


def _merged(pieces: list[list]) -> list[Fragment]:
    merged: list[list] = []
    for text, weight, is_break in pieces or [["", 1.0, False]]:
        last = merged[-1] if merged else None
        if last is not None and not is_break and not last[2] and last[1] == weight:
            last[0] += text
        else:
            merged.append([text, weight, is_break])
    return [Fragment(text, weight, is_break) for text, weight, is_break in merged]


# ------------------------------------------------------------------------------- extra networks


def extract_extra_networks(text: str) -> tuple[str, list[NetworkTag]]:
    """The prompt without its `<kind:...>` tags, and the tags in order of appearance."""
    tags: list[NetworkTag] = []

    def take(match: re.Match) -> str:
        tags.append(_network_tag(match))
        return ""

    return _EXTRA_NETWORK.sub(take, text), tags


def _network_tag(match: re.Match) -> NetworkTag:
    kind, args = match.group(1), match.group(2).split(":")
    tag = match.group(0)
    if kind not in LORA_KINDS:
        raise PromptSyntaxError(
            f"{tag!r}: extra network {kind!r} is not supported (only <lora:name:weight>); "
            "remove the tag",
            match.start(),
        )
    positional = [a for a in args if "=" not in a]
    named = dict(a.split("=", 1) for a in args if "=" in a)
    unknown = sorted(set(named) - {"te", "unet"})
    if unknown or not positional or not positional[0].strip() or len(positional) > 3:
        raise PromptSyntaxError(
            f"{tag!r}: write <lora:name>, <lora:name:weight> or <lora:name:te_weight:unet_weight>",
            match.start(),
        )
    te = _tag_weight(named.get("te", positional[1] if len(positional) > 1 else "1"), tag, match)
    unet_default = positional[2] if len(positional) > 2 else str(te)
    unet = _tag_weight(named.get("unet", unet_default), tag, match)
    return NetworkTag("lora", positional[0].strip(), te, unet, tag)


def _tag_weight(written: str, tag: str, match: re.Match) -> float:
    try:
        weight = float(written)
    except ValueError:
        weight = math.nan
    if not math.isfinite(weight):
        raise PromptSyntaxError(
            f"{tag!r}: the weight {written!r} is not a finite number; write it like "
            "<lora:name:0.8>",
            match.start(),
        )
    return weight


# ------------------------------------------------------------------------------- whole prompts


def parse_prompt(text: str, syntax: PromptSyntax = "a1111") -> ParsedPrompt:
    """Read a prompt in `syntax`: `plain` is the text itself at weight 1 with no tags."""
    if syntax == "plain":
        return ParsedPrompt(text, (Fragment(text),))
    if syntax != "a1111":
        raise ValueError(f"unknown prompt syntax {syntax!r}")
    stripped, tags = extract_extra_networks(text)
    return ParsedPrompt(stripped, tuple(parse_prompt_attention(stripped)), tuple(tags))


def prompt_problems(text: str, syntax: PromptSyntax = "a1111", allow_loras: bool = True):
    """Why `text` should not run in `syntax`, one line each (empty when it is fine).

    Beyond what A1111 accepts, brackets must balance: A1111 silently treats a stray `)` as
    text and closes an unclosed `(` at the end of the prompt, which is rarely what was meant.
    Escape a literal bracket as `\\(`, or choose `prompt_syntax: plain`.
    """
    if syntax == "plain":
        return []
    problems: list[str] = []
    try:
        stripped, tags = extract_extra_networks(text)
        if tags and not allow_loras:
            problems.append(f"{tags[0].tag!r}: LoRA tags belong in the prompt, not here; move it")
        parse_prompt_attention(stripped)
        problems += _bracket_problems(stripped)
    except PromptSyntaxError as exc:
        problems.append(f"{exc} (at character {exc.position + 1})")
    return problems


def _bracket_problems(text: str) -> list[str]:
    """Round and square brackets pair up separately, as A1111 pairs them."""
    opens: dict[str, list[int]] = {"(": [], "[": []}
    for match in _TOKEN.finditer(text):
        kind, value = match.lastgroup, match.group(0)
        if kind == "open":
            opens[value].append(match.start())
        elif kind in ("close", "weight"):
            closer = "]" if value == "]" else ")"
            stack = opens["[" if closer == "]" else "("]
            if not stack:
                return [_unbalanced(f"{closer!r} closes nothing", text, match.end() - 1)]
            stack.pop()
    unclosed = sorted((start, bracket) for bracket, starts in opens.items() for start in starts)
    if unclosed:
        start, bracket = unclosed[0]
        return [_unbalanced(f"{bracket!r} is never closed", text, start)]
    return []


def _unbalanced(what: str, text: str, position: int) -> str:
    around = text[max(0, position - 20) : position + 20]
    return (
        f"unbalanced brackets: {what} (at character {position + 1}, near {around!r}); close it, "
        "escape a literal bracket as \\( \\) \\[ \\], or set prompt_syntax: plain"
    )

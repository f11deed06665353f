"""Deforum keyframe schedules: ``"0:(1.0), 30:(0.5), "max_f-2":(sin(t))"`` -> one value per frame.

Semantics (Deforum's, minus its crashes):

- Entries are ``key:(value)`` separated by commas. A key is a whole frame number or an
  expression in ``max_f`` (= max_frames - 1) and ``s`` (the seed), optionally quoted
  (``"max_f-2":(-1)``); expression keys are floored. A key may also be a time: ``2s`` /
  ``2.5s`` (seconds) or ``4b`` / ``4.5b`` (beats of the job's audio); it lands on the frame
  nearest that time, ``floor(seconds * fps + 0.5)``, so it stays put when fps changes (a
  `KeyClock` turns times into frames; seconds need only fps, beats need ``audio:``). Keys
  outside 0..max_f are ignored; when two keys land on the same frame the later entry wins
  (as Deforum's dict does).
- A value that is a plain number (``1``, ``-.5``, ``+2.``, ``1e-3``; redundant parentheses
  allowed) is a *numeric keyframe*: frames between keyframes are interpolated.
- Any other value is an *expression keyframe*: it is evaluated at every frame from its key up
  to the next key with ``t`` (the frame index), ``max_f`` and ``s`` (and any further
  per-frame series the caller allows, such as the audio series of `anim.audio`). Its value at
  its own key is also the anchor that the ramp from the previous numeric keyframe runs to.
- Before the first key the first value is held (Deforum crashes without a ``0:`` key); after
  the last key the last value is held.
- Interpolation between anchors: ``linear`` (Deforum's default), ``step`` (hold the previous
  anchor) or ``cubic`` (monotone piecewise-cubic Hermite, PCHIP: smooth, passes through every
  anchor and never overshoots them; not bit-identical to Deforum's pandas "cubic").
- Values are scanned with a real scanner that respects parentheses and quotes, so commas
  inside calls work (``where(t>5,1,0)``); Deforum's ``split(",")`` crashes on them.
- Text schedules (sampler names, ...) use the same syntax and are held, never interpolated.

Syntax errors name the field, show the schedule with a caret under the column, and say what
was expected.

API:
    parse_schedule(text, field, numeric=True, variables=VARIABLES) -> Schedule
    Schedule.evaluate(max_frames, seed=0, interpolation="linear", series=None, clock=None)
        -> list[float]   (`series`: per-frame values of the extra variables expressions read)
    Schedule.evaluate_text(max_frames, seed=0, clock=None) -> list[str]
    Schedule.names() -> frozenset[str]     (the variables its expressions read)
    KeyClock(fps, beat_seconds=None)       (times in keys -> frames)
    evaluate_schedule(text, max_frames, seed=0, field=..., interpolation=...) -> list[float]
    compile_key(text, field) -> FrameKey   (also used for prompt keys)
    plain_number(text) -> float | None     ("1e-3", "(2)": a number; anything else: None)

Values must be finite, and a schedule is at most `MAX_SCHEDULE_CHARS` long.
"""

from __future__ import annotations

import logging
import math
import re
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from sdfleet.anim.expr import KEY_VARIABLES, VARIABLES, Expression, compile_expression, syntax_error
from sdfleet.batch.errors import ScheduleError

logger = logging.getLogger(__name__)

INTERPOLATIONS = ("linear", "step", "cubic")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_KEY_EXPECTED = (
    'a frame number such as 0 or 30, an expression in max_f such as "max_f-2", '
    "or a time such as 2s or 4b"
)
MAX_SCHEDULE_CHARS = 100_000  # a key a frame for thousands of frames; parsing stays fast
_TIME_KEY = re.compile(r"(\d+\.?\d*|\.\d+)\s*([sb])")
TIME_UNITS = {"s": "seconds", "b": "beats"}


@dataclass(frozen=True)
class KeyClock:
    """Turns keys written as times into frames: ``2s`` at `fps`, ``4b`` through `beat_seconds`
    (beat position -> seconds from the start, from the job's audio; None without audio)."""

    fps: float
    beat_seconds: Callable[[float], float] | None = None

    def frame(self, amount: float, unit: str, field: str, text: str) -> int:
        if unit == "b":
            if self.beat_seconds is None:
                raise ScheduleError(
                    f"{field}: key {text!r} is in beats, but the job has no audio to take beats "
                    "from; add `audio: song.wav` (or write the key in seconds, e.g. 2s)"
                )
            seconds = self.beat_seconds(amount)
        else:
            seconds = amount
        return math.floor(seconds * self.fps + 0.5)


@dataclass(frozen=True)
class FrameKey:
    """The frame part of an entry: a whole number, an expression in max_f and s, or a time
    (`amount` in `unit` ``s`` or ``b``)."""

    text: str
    number: int | None
    expr: Expression | None
    unit: str | None = None
    amount: float = 0.0
    field: str = "key"

    def resolve(self, max_f: int, seed: int = 0, clock: KeyClock | None = None) -> int:
        """The frame this key names (floored; may lie outside 0..max_f, callers skip those)."""
        if self.number is not None:
            return self.number
        if self.unit is not None:
            if clock is None:
                raise ScheduleError(
                    f"{self.field}: {self.text!r} is a time ({TIME_UNITS[self.unit]}) key, "
                    "which needs the clip's fps; use a frame number here"
                )
            return clock.frame(self.amount, self.unit, self.field, self.text)
        assert self.expr is not None
        return math.floor(self.expr.evaluate(max_f=max_f, s=seed))


def compile_key(text: str, field: str, source: str | None = None, offset: int = 0) -> FrameKey:
    """Check a frame key (``30``, ``max_f-2``); `source`/`offset` place error carets."""
    source = text if source is None else source
    stripped = text.strip()
    column = offset + len(text) - len(text.lstrip())
    if _unquote(stripped) != stripped:  # '"max_f-2"' given where no scanner removed the quotes
        inner = stripped[1:-1]
        column += 1 + len(inner) - len(inner.lstrip())
        stripped = inner.strip()
        if _unquote(stripped) != stripped:
            raise syntax_error(field, source, column, "a frame key quoted twice", _KEY_EXPECTED)
    if not stripped:
        raise syntax_error(field, source, column, "missing frame key", _KEY_EXPECTED)
    if re.fullmatch(r"[0-9]+", stripped):
        return FrameKey(stripped, int(stripped), None)
    if time := _TIME_KEY.fullmatch(stripped):
        return FrameKey(stripped, None, None, time.group(2), float(time.group(1)), field)
    if _NUMBER.fullmatch(stripped):
        raise syntax_error(
            field,
            source,
            column,
            f"frame key {stripped!r} is not a whole number >= 0",
            _KEY_EXPECTED,
        )
    expr = compile_expression(stripped, field, KEY_VARIABLES, source, column)
    return FrameKey(stripped, None, expr)


@dataclass(frozen=True)
class Keyframe:
    """One ``key:(value)`` entry. Exactly one of `number`/`expr` is set for numeric schedules;
    neither for text schedules. `column` is where the value starts in the schedule."""

    key: FrameKey
    text: str
    column: int
    number: float | None = None
    expr: Expression | None = None


@dataclass(frozen=True)
class Schedule:
    """A parsed schedule; evaluate it for a clip length (and seed) with `evaluate`."""

    field: str
    source: str
    keyframes: tuple[Keyframe, ...]

    def names(self) -> frozenset[str]:
        """The variables the expressions of this schedule read (t, max_f, s, audio series...)."""
        return frozenset().union(*(k.expr.names for k in self.keyframes if k.expr is not None))

    def keys_in_range(
        self, max_frames: int, seed: int = 0, clock: KeyClock | None = None
    ) -> list[tuple[int, Keyframe]]:
        """(frame, keyframe) pairs inside 0..max_frames-1, sorted; later duplicates win."""
        by_frame: dict[int, Keyframe] = {}
        for keyframe in self.keyframes:
            frame = keyframe.key.resolve(max_frames - 1, seed, clock)
            if 0 <= frame < max_frames:
                by_frame[frame] = keyframe
            else:
                logger.debug(
                    "%s: key %r -> frame %d is outside the clip; ignored",
                    self.field,
                    keyframe.key.text,
                    frame,
                )
        if not by_frame:
            raise ScheduleError(
                f"{self.field}: no key of {self.source!r} falls inside frames 0..{max_frames - 1}"
                "; expected at least one key in that range, such as 0:(...)"
            )
        return sorted(by_frame.items())

    def evaluate(
        self,
        max_frames: int,
        seed: int = 0,
        interpolation: str = "linear",
        series: Mapping[str, Sequence[float]] | None = None,
        clock: KeyClock | None = None,
    ) -> list[float]:
        """One float per frame 0..max_frames-1 (Deforum semantics, see the module doc).

        `series` holds one value per frame for every extra variable the expressions read
        (`names` minus t, max_f, s); `clock` resolves time keys (``2s``, ``4b``)."""
        if interpolation not in INTERPOLATIONS:
            raise ScheduleError(
                f"{self.field}: unknown interpolation {interpolation!r}; "
                f"expected one of {', '.join(INTERPOLATIONS)}"
            )
        keys = self.keys_in_range(max_frames, seed, clock)
        extra = self._series_checked(series or {}, max_frames)
        values: list[float | None] = [None] * max_frames
        for index, (frame, keyframe) in enumerate(keys):
            if keyframe.number is not None:
                values[frame] = keyframe.number
                continue
            if keyframe.expr is None:
                raise ScheduleError(f"{self.field}: this is a text schedule; use evaluate_text")
            end = keys[index + 1][0] if index + 1 < len(keys) else max_frames
            names = [name for name in keyframe.expr.names if name in extra]
            for t in range(frame, end):
                at_t = {name: extra[name][t] for name in names}
                values[t] = keyframe.expr.evaluate(t, max_frames - 1, seed, at_t)
        # Hold the first value backwards and the last forwards (Deforum pins frames 0 and -1).
        if values[0] is None:
            values[0] = values[keys[0][0]]
        if values[-1] is None:
            values[-1] = values[keys[-1][0]]
        filled = fill_gaps(values, interpolation)
        for frame, value in enumerate(filled):
            if not math.isfinite(value):  # e.g. between 1e308 and -1e308 (cubic overshoot)
                raise ScheduleError(
                    f"{self.field}: {self.source!r} gives {value} at frame {frame} "
                    f"({interpolation} interpolation); expected finite values: use smaller ones"
                )
        return filled

    def _series_checked(
        self, series: Mapping[str, Sequence[float]], max_frames: int
    ) -> Mapping[str, Sequence[float]]:
        """`series`, after checking that it covers every extra name read, at every frame."""
        for name in sorted(self.names() - set(VARIABLES)):
            if name not in series:
                raise ScheduleError(
                    f"{self.field}: {self.source!r} reads {name!r}, which has no values here"
                )
            if len(series[name]) < max_frames:
                raise ValueError(
                    f"series {name!r} has {len(series[name])} values, not {max_frames}"
                )
        return series

    def evaluate_text(
        self, max_frames: int, seed: int = 0, clock: KeyClock | None = None
    ) -> list[str]:
        """One string per frame: each key's text held until the next key (never interpolated)."""
        keys = self.keys_in_range(max_frames, seed, clock)
        values, index = [], 0
        for frame in range(max_frames):
            while index + 1 < len(keys) and keys[index + 1][0] <= frame:
                index += 1
            values.append(_unquote(keys[index][1].text))
        return values


def parse_schedule(
    text: str,
    field: str = "schedule",
    numeric: bool = True,
    variables: tuple[str, ...] = VARIABLES,
) -> Schedule:
    """Parse a schedule string; raise `ScheduleError` with a caret on any syntax problem.
    Expressions may read `variables` (t, max_f, s, plus any per-frame series the caller
    will give to `Schedule.evaluate`)."""
    if not isinstance(text, str):
        raise ScheduleError(f'{field}: expected a schedule string such as "0:(1.0)", got {text!r}')
    if len(text) > MAX_SCHEDULE_CHARS:
        raise ScheduleError(
            f"{field}: the schedule is {len(text):,} characters long (starting {text[:40]!r}); "
            f"expected at most {MAX_SCHEDULE_CHARS:,}: use fewer keys, or an expression"
        )
    entries = _Scanner(text, field).entries()
    keyframes = [_compile_entry(text, field, entry, numeric, variables) for entry in entries]
    return Schedule(field, text, tuple(keyframes))


def evaluate_schedule(
    text: str,
    max_frames: int,
    seed: int = 0,
    field: str = "schedule",
    interpolation: str = "linear",
) -> list[float]:
    """Parse and evaluate in one call: one float per frame."""
    return parse_schedule(text, field).evaluate(max_frames, seed, interpolation)


# -- scanning -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Entry:
    key_text: str
    key_column: int
    value_text: str
    value_column: int


class _Scanner:
    """Splits schedule text into entries, respecting parentheses and quotes."""

    def __init__(self, text: str, field: str) -> None:
        self.text, self.field, self.pos = text, field, 0

    def error(self, column: int, problem: str, expected: str) -> ScheduleError:
        return syntax_error(self.field, self.text, column, problem, expected)

    def at_end(self) -> bool:
        return self.pos >= len(self.text)

    def skip_space(self) -> None:
        while not self.at_end() and self.text[self.pos].isspace():
            self.pos += 1

    def entries(self) -> list[_Entry]:
        self.skip_space()
        if self.at_end():
            raise self.error(0, "empty schedule", 'at least one frame:(value) entry, e.g. "0:(1)"')
        found = []
        while True:
            found.append(self.entry())
            self.skip_space()
            if self.at_end():
                return found
            if self.text[self.pos] != ",":
                raise self.error(
                    self.pos,
                    f"unexpected {self.text[self.pos]!r} after a value",
                    "',' before the next frame:(value) entry, or the end",
                )
            self.pos += 1
            self.skip_space()
            if self.at_end():  # a trailing comma is harmless
                return found

    def entry(self) -> _Entry:
        key_text, key_column = self.key()
        self.skip_space()
        if self.at_end() or self.text[self.pos] != ":":
            raise self.error(self.pos, "missing ':' after the frame key", "frame:(value)")
        self.pos += 1
        self.skip_space()
        value_text, value_column = self.value()
        return _Entry(key_text, key_column, value_text, value_column)

    def key(self) -> tuple[str, int]:
        start = self.pos
        quote = self.text[start]
        if quote in "\"'":
            end = self.text.find(quote, start + 1)
            if end < 0:
                raise self.error(
                    start,
                    f"quote {quote} is never closed",
                    f"a closing {quote} after the frame key",
                )
            self.pos = end + 1
            return self.text[start + 1 : end], start + 1
        self.pos = self.scan_to(":,")
        return self.text[start : self.pos], start

    def value(self) -> tuple[str, int]:
        if self.at_end():
            raise self.error(self.pos, "missing value after ':'", "(value), e.g. 0:(1.0)")
        start = self.pos
        if self.text[start] == "(":
            close = self.matching_paren(start)
            self.pos = close + 1
            return self.text[start + 1 : close], start + 1
        self.pos = self.scan_to(",")
        return self.text[start : self.pos], start

    def matching_paren(self, open_at: int) -> int:
        """Index of the ')' matching the '(' at `open_at`, skipping quoted text."""
        depth, pos, quote = 0, open_at, ""
        while pos < len(self.text):
            ch = self.text[pos]
            if quote:
                quote = "" if ch == quote else quote
            elif ch in "\"'":
                quote = ch
            elif ch == "(":
                depth += 1
            elif ch == ")":
                depth -= 1
                if depth == 0:
                    return pos
            pos += 1
        raise self.error(open_at, "'(' is never closed", "a matching ')'")

    def scan_to(self, stops: str) -> int:
        """Index of the first character in `stops` outside parentheses/quotes (or the end)."""
        pos = self.pos
        while pos < len(self.text) and self.text[pos] not in stops:
            ch = self.text[pos]
            if ch == "(":
                pos = self.matching_paren(pos)
            elif ch == ")":
                raise self.error(pos, "')' without a matching '('", "balanced parentheses")
            pos += 1
        return pos


def _compile_entry(
    text: str, field: str, entry: _Entry, numeric: bool, variables: tuple[str, ...]
) -> Keyframe:
    key = compile_key(entry.key_text, field, text, entry.key_column)
    value = entry.value_text.strip()
    column = entry.value_column + len(entry.value_text) - len(entry.value_text.lstrip())
    if not value:
        raise syntax_error(
            field,
            text,
            column,
            "empty value",
            "a number or an expression inside the parentheses, e.g. 0:(1.0)",
        )
    if not numeric:
        return Keyframe(key, value, column)
    number = plain_number(value)
    if number is not None and not math.isfinite(number):
        raise syntax_error(
            field,
            text,
            column,
            f"{value} is too large for a number",
            "a finite number (at most about 1.8e308)",
        )
    if number is not None:
        return Keyframe(key, value, column, number=number)
    expr = compile_expression(entry.value_text, field, variables, text, entry.value_column)
    return Keyframe(key, value, column, expr=expr)


def plain_number(value: str) -> float | None:
    """The number if `value` is a plain literal (outer parentheses allowed), else None."""
    inner = value.strip("()" + string.whitespace)
    if not _NUMBER.fullmatch(inner):
        return None
    # '((1))' but not '(1' or '(1))': a number has no parentheses of its own to balance
    opened, closed = value[: value.index(inner)], value[value.index(inner) + len(inner) :]
    return float(inner) if opened.count("(") == closed.count(")") else None


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        return text[1:-1]
    return text


# -- interpolation --------------------------------------------------------------------------


def fill_gaps(values: list[float | None], interpolation: str = "linear") -> list[float]:
    """Fill the None entries between known anchors (`values[0]`, `values[-1]` must be set)."""
    anchors = [index for index, value in enumerate(values) if value is not None]
    xs = [float(index) for index in anchors]
    ys = [float(values[index]) for index in anchors]  # type: ignore[arg-type]
    slopes = pchip_slopes(xs, ys) if interpolation == "cubic" and len(xs) > 1 else []
    filled = list(values)
    for k in range(len(anchors) - 1):
        x0, x1 = anchors[k], anchors[k + 1]
        for x in range(x0 + 1, x1):
            if interpolation == "step":
                filled[x] = ys[k]
            elif interpolation == "cubic":
                filled[x] = _hermite(
                    xs[k], xs[k + 1], ys[k], ys[k + 1], slopes[k], slopes[k + 1], x
                )
            else:  # as numpy.interp (and so pandas, Deforum) computes it
                filled[x] = ys[k] + (ys[k + 1] - ys[k]) * (x - x0) / (x1 - x0)
    return filled  # type: ignore[return-value]


def pchip_slopes(xs: list[float], ys: list[float]) -> list[float]:
    """Fritsch-Carlson monotone tangents, as scipy's PchipInterpolator computes them."""
    h = [xs[i + 1] - xs[i] for i in range(len(xs) - 1)]
    d = [(ys[i + 1] - ys[i]) / h[i] for i in range(len(h))]
    if len(xs) == 2:
        return [d[0], d[0]]
    slopes = [0.0] * len(xs)
    for k in range(1, len(xs) - 1):
        if d[k - 1] * d[k] > 0:  # same sign: weighted harmonic mean; else a flat tangent
            w1, w2 = 2 * h[k] + h[k - 1], h[k] + 2 * h[k - 1]
            slopes[k] = (w1 + w2) / (w1 / d[k - 1] + w2 / d[k])
    slopes[0] = _edge_slope(h[0], h[1], d[0], d[1])
    slopes[-1] = _edge_slope(h[-1], h[-2], d[-1], d[-2])
    return slopes


def _edge_slope(h0: float, h1: float, d0: float, d1: float) -> float:
    slope = ((2 * h0 + h1) * d0 - h0 * d1) / (h0 + h1)
    if math.copysign(1, slope) != math.copysign(1, d0) or d0 == 0:
        return 0.0
    if math.copysign(1, d0) != math.copysign(1, d1) and abs(slope) > 3 * abs(d0):
        return 3 * d0
    return slope


def _hermite(x0: float, x1: float, y0: float, y1: float, m0: float, m1: float, x: float) -> float:
    h = x1 - x0
    s = (x - x0) / h
    return (
        (2 * s**3 - 3 * s**2 + 1) * y0
        + (s**3 - 2 * s**2 + s) * h * m0
        + (-2 * s**3 + 3 * s**2) * y1
        + (s**3 - s**2) * h * m1
    )

"""Deforum schedule strings -> per-frame values, against hand-computed expectations."""

from __future__ import annotations

import math
import time

import pytest

from sdfleet.anim.schedule import evaluate_schedule, parse_schedule
from sdfleet.batch.errors import ScheduleError

S4 = math.sin(4)


def ramp(a: float, b: float, steps: int) -> list[float]:
    """a .. b inclusive in `steps` equal steps (steps + 1 values)."""
    return [a + (b - a) * i / steps for i in range(steps + 1)]


# (schedule, max_frames, seed, expected per-frame values), worked out by hand from Deforum's
# rules: numeric keys ramp linearly; an expression key runs every frame up to the next key and
# its value at its key ends the ramp from the previous numeric key; hold before/after.
CASES = [
    # Deforum's defaults
    (
        "0:(1.0025+0.002*sin(1.25*3.14*t/30))",
        4,
        0,
        [1.0025 + 0.002 * math.sin(1.25 * 3.14 * t / 30) for t in range(4)],
    ),
    ("0: (0.65)", 3, 0, [0.65] * 3),
    ("0: (0.065)", 3, 0, [0.065] * 3),
    ("0: (7)", 2, 0, [7.0, 7.0]),
    ("0:(0)", 2, 0, [0.0, 0.0]),
    ("0:(t%15)", 17, 0, [float(t % 15) for t in range(17)]),
    # ANIMATION.md's worked example: 0, -0.189, -0.378, -0.568, sin(4..7), 2, 2
    (
        "0:(0), 4:(sin(t)), 8:(2)",
        10,
        0,
        [0, S4 / 4, S4 / 2, 3 * S4 / 4, S4, math.sin(5), math.sin(6), math.sin(7), 2, 2],
    ),
    # multi-key ramps
    ("0:(0), 10:(1)", 11, 0, ramp(0, 1, 10)),
    ("0:(1), 4:(0), 8:(1)", 9, 0, [1, 0.75, 0.5, 0.25, 0, 0.25, 0.5, 0.75, 1]),
    ("10:(1), 0:(0)", 11, 0, ramp(0, 1, 10)),  # keys in any order
    ("0:(1), 2:(3),", 3, 0, [1, 2, 3]),  # trailing comma
    ("0: (0.5),\n  4: (1.5)", 5, 0, [0.5, 0.75, 1.0, 1.25, 1.5]),  # YAML block text
    ("0:((0.5)), 2:(1)", 3, 0, [0.5, 0.75, 1.0]),  # redundant parentheses: still a number
    ("0:(1), 0:(2)", 2, 0, [2.0, 2.0]),  # later duplicate wins, like Deforum's dict
    # no 0: key (Deforum crashes): hold the first value backwards
    ("2:(5)", 5, 0, [5.0] * 5),
    ("3:(1), 5:(3)", 8, 0, [1, 1, 1, 1, 2, 3, 3, 3]),
    ("3:(t)", 6, 0, [3, 3, 3, 3, 4, 5]),  # an expression's value at its key is held back too
    # keys past the end are ignored (no ramp toward them)
    ("0:(0), 20:(1)", 10, 0, [0.0] * 10),
    ("0:(0), 5:(1), 50:(9)", 8, 0, [0, 0.2, 0.4, 0.6, 0.8, 1, 1, 1]),
    # quoted and expression keys
    ('0:(0), "max_f-2":(-1)', 10, 0, [-i / 7 for i in range(8)] + [-1, -1]),
    ('0:(0), "max_f":(1)', 5, 0, [0, 0.25, 0.5, 0.75, 1]),
    ("0:(0), max_f:(4)", 5, 0, [0, 1, 2, 3, 4]),
    ("'max_f-1':(2)", 3, 0, [2, 2, 2]),
    ('0:(0), "max_f/2":(1)', 10, 0, [0, 0.25, 0.5, 0.75, 1, 1, 1, 1, 1, 1]),  # 4.5 -> frame 4
    ('0:(s), 1:(-1), "max_f-2":(-1), "max_f-1":(s)', 6, 100, [100, -1, -1, -1, 100, 100]),
    ("0:(s)", 2, 5, [5.0, 5.0]),
    # negative and leading-dot numbers
    ("0:(-.5), 4:(.25)", 6, 0, [-0.5, -0.3125, -0.125, 0.0625, 0.25, 0.25]),
    ("0:(-1), 2:(+1)", 3, 0, [-1, 0, 1]),
    ("0:(-2.), 1:(-.75)", 2, 0, [-2.0, -0.75]),
    # expression keys: commas inside calls (Deforum crashes), anchors, hard jumps
    ("0:(where(t>5,1,0))", 8, 0, [0, 0, 0, 0, 0, 0, 1, 1]),
    ("0:(0), 3:(where(t>4, t, -t)), 6:(10)", 8, 0, [0, -1, -2, -3, -4, 5, 10, 10]),
    ("0:(t), 5:(1), 9:(3)", 10, 0, [0, 1, 2, 3, 4, 1, 1.5, 2, 2.5, 3]),
    ("0:(1), 3:(2*t)", 6, 0, [1, 1 + 5 / 3, 1 + 10 / 3, 6, 8, 10]),
    ("0:(2**3), 4:(0)", 6, 0, [8, 8, 8, 8, 0, 0]),  # an expression holds; no ramp out of it
    ("0:(0), 2:(pi)", 3, 0, [0, math.pi / 2, math.pi]),
    ("0:(max(1, min(t, 3)))", 5, 0, [1, 1, 2, 3, 3]),
]


@pytest.mark.parametrize(("text", "max_frames", "seed", "expected"), CASES)
def test_deforum_semantics(text: str, max_frames: int, seed: int, expected: list[float]) -> None:
    values = evaluate_schedule(text, max_frames, seed=seed)
    assert len(values) == max_frames
    assert values == pytest.approx(expected, abs=1e-12)


def test_the_table_is_big_enough() -> None:
    assert len(CASES) >= 25


def test_worked_example_matches_the_rounded_reference() -> None:
    values = evaluate_schedule("0:(0), 4:(sin(t)), 8:(2)", 10)
    assert [round(v, 3) for v in values[:4]] == [0, -0.189, -0.378, -0.568]


def test_scientific_notation_is_a_plain_number() -> None:
    # A documented choice: Deforum would treat 1e-3 as an expression (held, no ramp).
    assert evaluate_schedule("0:(1e-3), 2:(1e-1)", 3) == pytest.approx([0.001, 0.0505, 0.1])


def test_step_interpolation_holds_the_previous_key() -> None:
    values = evaluate_schedule("0:(0), 5:(1), 9:(0)", 10, interpolation="step")
    assert values == [0] * 5 + [1] * 4 + [0]


def test_cubic_interpolation_is_smooth_monotone_and_hits_the_keys() -> None:
    values = evaluate_schedule("0:(0), 5:(1), 9:(0)", 10, interpolation="cubic")
    # PCHIP by hand: tangents 0.45 at x=0 (edge formula), 0 at x=5 (slopes change sign);
    # at x=1, s=0.2: h10*h*m0 + h01*y1 = 0.128*5*0.45 + 0.104*1 = 0.392
    assert values[1] == pytest.approx(0.392)
    assert values[0] == 0 and values[5] == 1 and values[9] == 0
    assert all(0 <= v <= 1 for v in values)  # no overshoot
    rising = evaluate_schedule("0:(0), 3:(1), 9:(2)", 10, interpolation="cubic")
    assert rising == sorted(rising)
    line = evaluate_schedule("0:(0), 4:(1)", 5, interpolation="cubic")
    assert line == pytest.approx(ramp(0, 1, 4))  # two anchors: a straight line


def test_text_schedules_are_held_not_interpolated() -> None:
    schedule = parse_schedule('0:("euler"), 3:(ddim), "max_f":(\'lms\')', "sampler", numeric=False)
    assert schedule.evaluate_text(6) == ["euler", "euler", "euler", "ddim", "ddim", "lms"]


def test_plain_number_keyframes_and_expressions_are_told_apart() -> None:
    keyframes = parse_schedule("0:(-.5), 4:(sin(t)), 8:((2))").keyframes
    assert [k.number for k in keyframes] == [-0.5, None, 2.0]
    assert keyframes[1].expr is not None and keyframes[1].expr.source == "sin(t)"


@pytest.mark.parametrize(
    ("text", "column", "needle"),
    [
        ("0:(1), 5:(2", 10, "'(' is never closed"),
        ("0(1)", 5, "missing ':' after the frame key"),
        ("0:(1) 5:(2)", 7, "expected ',' before the next frame:(value) entry"),
        ("0:(1)), 2:(3)", 6, "unexpected ')'"),
        ("0:()", 4, "empty value"),
        ("-1:(2)", 1, "not a whole number >= 0"),
        ("2.5:(1)", 1, "not a whole number >= 0"),
        ('"max_f:(1)', 1, 'quote " is never closed'),
        ("0:(sin(t)), 5:(foo)", 16, "unknown name 'foo'"),
        ("0:(1), 5:(t.real)", 11, "attribute access"),
        ("0:(1), x:(2)", 8, "unknown name 'x'"),
        ("0:(1), 4:", 10, "missing value after ':'"),
        ("", 1, "empty schedule"),
    ],
)
def test_syntax_errors_show_schedule_column_and_expectation(
    text: str, column: int, needle: str
) -> None:
    with pytest.raises(ScheduleError) as caught:
        parse_schedule(text, "strength_schedule")
    lines = str(caught.value).splitlines()
    assert lines[0].startswith("strength_schedule: ")
    assert needle in lines[0]
    assert f"column {column}" in lines[0] and "expected" in lines[0]
    assert lines[-2] == "    " + text
    assert lines[-1] == "    " + " " * (column - 1) + "^"


def test_errors_in_multiline_schedules_name_the_line() -> None:
    with pytest.raises(ScheduleError) as caught:
        parse_schedule("0:(1),\n  5:(t.x)", "zoom")
    lines = str(caught.value).splitlines()
    assert "line 2, column 6" in lines[0]
    assert lines[-2:] == ["      5:(t.x)", "         ^"]


def test_no_key_inside_the_clip_is_an_error() -> None:
    with pytest.raises(ScheduleError, match=r"zoom: no key of '20:\(1\)' falls inside frames 0..9"):
        evaluate_schedule("20:(1)", 10, field="zoom")


def test_runaway_power_in_a_schedule_fails_fast() -> None:
    start = time.perf_counter()
    with pytest.raises(ScheduleError, match="too large"):
        parse_schedule("0:(9**9**9)", "zoom")
    with pytest.raises(ScheduleError, match="too large"):
        evaluate_schedule("0:(t**t**t)", 200, field="zoom")
    assert time.perf_counter() - start < 1.0


def test_unknown_interpolation_is_an_error() -> None:
    with pytest.raises(ScheduleError, match="expected one of linear, step, cubic"):
        evaluate_schedule("0:(1)", 2, interpolation="spline")


def test_long_clips_evaluate_quickly() -> None:
    start = time.perf_counter()
    values = evaluate_schedule("0:(1.0025+0.002*sin(1.25*3.14*t/30)), 5000:(1), 9000:(t%7)", 10_000)
    assert time.perf_counter() - start < 1.0
    assert values[9001] == 9001 % 7


def test_numbers_must_be_finite() -> None:
    with pytest.raises(ScheduleError, match=r"angle: 1e400 is too large for a number at column 4"):
        parse_schedule("0:(1e400)", "angle")
    with pytest.raises(ScheduleError, match=r"gives -inf at frame 1 \(linear interpolation\)"):
        evaluate_schedule("0:(1e308), 5:(-1e308)", 6, field="translation_x")


def test_a_key_quoted_again_and_again_is_an_error_not_a_crash() -> None:
    with pytest.raises(ScheduleError, match="a frame key quoted twice"):
        parse_schedule("'" + '"' * 1200 + "0" + '"' * 1200 + "':(1)", "zoom")
    assert evaluate_schedule("'\"max_f\"':(3), 0:(1)", 3) == [1.0, 2.0, 3.0]  # once is fine


def test_deep_parentheses_and_huge_schedules_stay_cheap() -> None:
    start = time.perf_counter()
    deep = "0:(" + "(" * 40_000 + "2" + ")" * 40_000 + ")"  # was quadratic: minutes
    assert evaluate_schedule(deep, 2) == [2.0, 2.0]
    with pytest.raises(ScheduleError, match="120,005 characters long.*at most 100,000"):
        parse_schedule("0:(" + "(" * 60_000 + "2" + ")" * 60_000 + ")", "zoom")
    assert time.perf_counter() - start < 5.0

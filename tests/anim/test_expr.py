"""The safe expression evaluator: what it computes, what it refuses, and how fast."""

from __future__ import annotations

import builtins
import math
import time

import pytest

from sdfleet.anim.expr import compile_expression
from sdfleet.batch.errors import ScheduleError


@pytest.mark.parametrize(
    ("source", "t", "expected"),
    [
        ("1.0025+0.002*sin(1.25*3.14*t/30)", 7, 1.0025 + 0.002 * math.sin(1.25 * 3.14 * 7 / 30)),
        ("t%15", 17, 2.0),
        ("-.5", 0, -0.5),
        ("2**10", 0, 1024.0),
        ("7//2", 0, 3.0),
        ("where(t>5,1,0)", 6, 1.0),
        ("where(t>5, 1, 0)", 5, 0.0),
        ("where(t>0, 1/t, 0)", 0, 0.0),  # only the chosen branch runs
        ("0 < t < 5", 3, 1.0),
        ("0 < t < 5", 5, 0.0),
        ("t > 2 and 7 or 9", 1, 9.0),
        ("not t", 0, 1.0),
        ("1 if t >= 3 else -1", 3, 1.0),
        ("max(1, t, 3) + min(t, 2)", 6, 8.0),
        ("clip(t, 0, 2)", 9, 2.0),
        ("atan2(1, 1) * 4", 0, math.pi),
        ("arcsin(1) + arccos(1) + arctan(0)", 0, math.pi / 2),
        ("log(e) + log10(100) + log2(8) + log(8, 2)", 0, 9.0),
        ("sqrt(16) + abs(-2) + floor(1.7) + ceil(1.2) + round(2.5)", 0, 11.0),
        ("exp(0) + sinh(0) + cosh(0) + tanh(0) + tan(0) + cos(pi)", 0, 1.0),
        ("max_f - s", 0, 4.0),
    ],
)
def test_evaluates_like_python_math(source: str, t: float, expected: float) -> None:
    assert compile_expression(source).evaluate(t=t, max_f=9, s=5) == pytest.approx(expected)


def test_constant_expressions_fold_once() -> None:
    expr = compile_expression("2 * pi")
    assert expr.constant == pytest.approx(2 * math.pi)
    assert expr.names == frozenset()
    assert compile_expression("t + s").names == frozenset({"t", "s"})


@pytest.mark.parametrize(
    ("source", "needle"),
    [
        ("__import__('os')", "unknown function '__import__'"),
        ("__import__('os').system('echo hi')", "attribute access"),
        ("t.real", "attribute access"),
        ("().__class__", "attribute access"),
        ("foo + 1", "unknown name 'foo'"),
        ("os", "unknown name 'os'"),
        ("9**9**9", "too large"),
        ("10**400", "too large"),
        ("[1][0]", "subscript"),
        ("lambda: 1", "lambda"),
        ("sin", "used without a call"),
        ("sinn(t)", "did you mean 'sin'"),
        ("'abc'", "not a number"),
        ("sin(x=1)", "plain arguments"),
        ("min(t)", "min() got 1 argument"),
        ("~t", "'~'"),
        ("t in t", "'is'/'in'"),
        ("1/0", "division by zero"),
        ("(-8)**(1/3)", "fails"),
        ("1e308*10", "fails"),
        ("sin(t", "never closed"),
        ("", "empty expression"),
    ],
)
def test_refuses_with_a_clear_error_fast(source: str, needle: str) -> None:
    start = time.perf_counter()
    with pytest.raises(ScheduleError) as caught:
        compile_expression(source, field="zoom").evaluate(t=3)
    assert time.perf_counter() - start < 1.0
    message = str(caught.value)
    assert needle in message
    assert message.startswith("zoom: ")


def test_error_points_at_the_column_with_a_caret() -> None:
    with pytest.raises(ScheduleError) as caught:
        compile_expression("1 + foo", field="angle")
    lines = str(caught.value).splitlines()
    assert "column 5" in lines[0] and "expected one of t, max_f, s, pi, e" in lines[0]
    assert lines[-2] == "    1 + foo"
    assert lines[-1] == "    " + " " * 4 + "^"


def test_runaway_power_with_variables_fails_at_evaluation_in_bounded_time() -> None:
    expr = compile_expression("t**t**t", field="zoom")
    start = time.perf_counter()
    with pytest.raises(ScheduleError, match="too large"):
        expr.evaluate(t=100)
    assert time.perf_counter() - start < 1.0
    assert expr.evaluate(t=2) == 16.0


def test_non_finite_results_are_errors_naming_the_frame() -> None:
    with pytest.raises(ScheduleError, match="cannot be evaluated at t=3: float division by zero"):
        compile_expression("1/(t-3)", field="zoom").evaluate(t=3)


def test_key_expressions_cannot_read_t() -> None:
    with pytest.raises(ScheduleError, match="'t' cannot be used here"):
        compile_expression("t-2", field="prompts", variables=("max_f", "s"))


def test_size_limits_bound_the_cost() -> None:
    with pytest.raises(ScheduleError, match="too large or too deeply nested"):
        compile_expression("+".join(["t"] * 500))
    with pytest.raises(ScheduleError, match="characters long"):
        compile_expression("1" + " " * 3000)


def test_never_calls_eval_or_exec(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("eval/exec must not be used")

    monkeypatch.setattr(builtins, "eval", forbidden)
    monkeypatch.setattr(builtins, "exec", forbidden)
    assert compile_expression("sin(t) + where(t>1, 2, 3)").evaluate(t=2) == pytest.approx(
        math.sin(2) + 2
    )


def test_compiled_expression_is_fast_over_many_frames() -> None:
    expr = compile_expression("1.0025+0.002*sin(1.25*3.14*t/30)")
    start = time.perf_counter()
    values = [expr.evaluate(t, 9999, 0) for t in range(10_000)]
    assert time.perf_counter() - start < 1.0
    assert values[30] == pytest.approx(1.0025 + 0.002 * math.sin(1.25 * 3.14))

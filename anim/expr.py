"""A small, safe evaluator for the math expressions users write in schedules and keys.

Deforum hands schedule text to `numexpr`/`eval`; we parse it with Python's `ast` module
(``mode="eval"``) and walk the tree ourselves, accepting only a fixed whitelist:

- numbers (int/float literals; every value is a Python ``float``),
- the names ``t``, ``max_f``, ``s`` (which ones a caller allows) and the constants ``pi``, ``e``,
- ``+ - * / % ** //``, unary ``+ -``, ``not``, ``and``/``or``, comparisons (chained too),
  ``a if cond else b``,
- calls to the functions in `FUNCTIONS` (``where(cond, a, b)``, ``clip(x, lo, hi)``, math ...).

Anything else (attribute access, subscripts, lambdas, other names, keywords) is a
`ScheduleError` that names the field, shows the text with a caret under the offending
column and says what was expected. Cost is bounded: the text length, node count and depth
are capped, and powers whose result would overflow are refused before computing.

API:
    compile_expression(source, field=..., variables=...) -> Expression  (compile once)
    Expression.evaluate(t=..., max_f=..., s=..., extra=None) -> float   (evaluate many times;
        `extra`: values of further variables allowed at compile time, such as audio series)
    syntax_error(field, text, column, problem, expected) -> ScheduleError  (caret display;
        shared with the schedule parser)
"""

from __future__ import annotations

import ast
import dataclasses
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from sdfleet.batch.errors import ScheduleError, suggest_name

logger = logging.getLogger(__name__)

Env = Mapping[str, float]
Node = Callable[[Env], float]

VARIABLES = ("t", "max_f", "s")
KEY_VARIABLES = ("max_f", "s")
CONSTANTS = {"pi": math.pi, "e": math.e}
MAX_SOURCE_CHARS = 2000
MAX_NODES = 400
MAX_DEPTH = 60
MAX_POWER_LOG10 = 300.0  # refuse powers above ~1e300 before computing them


def _log(x: float, base: float | None = None) -> float:
    return math.log(x) if base is None else math.log(x, base)


def _round(x: float, ndigits: float = 0) -> float:
    return float(round(x, int(ndigits)))  # half-to-even, like numpy


def _clip(x: float, lo: float, hi: float) -> float:
    if lo > hi:
        raise ValueError(f"clip(x, lo, hi) needs lo <= hi, got lo={lo:g}, hi={hi:g}")
    return min(max(x, lo), hi)


# name -> (function, min args, max args); `where` is special-cased (lazy branches).
# fmt: off
FUNCTIONS: dict[str, tuple[Callable[..., float], int, int]] = {
    "sin": (math.sin, 1, 1), "cos": (math.cos, 1, 1), "tan": (math.tan, 1, 1),
    "asin": (math.asin, 1, 1), "arcsin": (math.asin, 1, 1),
    "acos": (math.acos, 1, 1), "arccos": (math.acos, 1, 1),
    "atan": (math.atan, 1, 1), "arctan": (math.atan, 1, 1),
    "atan2": (math.atan2, 2, 2), "arctan2": (math.atan2, 2, 2),
    "sinh": (math.sinh, 1, 1), "cosh": (math.cosh, 1, 1), "tanh": (math.tanh, 1, 1),
    "log": (_log, 1, 2), "log10": (math.log10, 1, 1), "log2": (math.log2, 1, 1),
    "exp": (math.exp, 1, 1), "sqrt": (math.sqrt, 1, 1), "abs": (abs, 1, 1),
    "floor": (math.floor, 1, 1), "ceil": (math.ceil, 1, 1), "round": (_round, 1, 2),
    "min": (min, 2, 64), "max": (max, 2, 64), "clip": (_clip, 3, 3),
    "where": (lambda c, a, b: a if c else b, 3, 3),
}
# fmt: on


def locate(text: str, column: int) -> tuple[str, str]:
    """For 0-based `column` in `text`: ('column C' or 'line L, column C', text line + caret)."""
    column = max(0, min(column, len(text)))
    line_start = text.rfind("\n", 0, column) + 1
    line_end = text.find("\n", column)
    line = text[line_start : line_end if line_end >= 0 else len(text)]
    where = f"column {column - line_start + 1}"
    if "\n" in text:
        where = f"line {text.count(chr(10), 0, column) + 1}, {where}"
    return where, f"    {line}\n    {' ' * (column - line_start)}^"


def syntax_error(
    field_name: str, text: str, column: int, problem: str, expected: str
) -> ScheduleError:
    """The one error shape for bad schedule/expression text: field, problem, where, caret."""
    where, display = locate(text, column)
    return ScheduleError(f"{field_name}: {problem} at {where}; expected {expected}\n{display}")


def _safe_pow(base: float, exponent: float) -> float:
    if base == 0.0 and exponent < 0:
        raise ZeroDivisionError("0 cannot be raised to a negative power")
    if base != 0.0 and abs(exponent * math.log10(abs(base))) > MAX_POWER_LOG10:
        if exponent * math.log10(abs(base)) > 0:
            raise OverflowError(f"power {base:g}**{exponent:g} is too large (over 1e300)")
        return 0.0  # underflows to zero; nothing to compute
    return math.pow(base, exponent)  # ValueError for a negative base to a fractional power


# fmt: off
_BINARY: dict[type, Callable[[float, float], float]] = {
    ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b, ast.Div: lambda a, b: a / b,
    ast.Mod: lambda a, b: a % b, ast.FloorDiv: lambda a, b: float(a // b),
    ast.Pow: _safe_pow,
}
_COMPARE: dict[type, Callable[[float, float], bool]] = {
    ast.Lt: lambda a, b: a < b, ast.LtE: lambda a, b: a <= b,
    ast.Gt: lambda a, b: a > b, ast.GtE: lambda a, b: a >= b,
    ast.Eq: lambda a, b: a == b, ast.NotEq: lambda a, b: a != b,
}
_UNARY: dict[type, Callable[[float], float]] = {
    ast.USub: lambda a: -a, ast.UAdd: lambda a: a, ast.Not: lambda a: float(not a),
}
# fmt: on


@dataclass(frozen=True)
class Expression:
    """A compiled expression: evaluate it at any frame with `evaluate`.

    `names` are the variables it reads; `constant` is its value when it reads none.
    """

    source: str
    field: str
    names: frozenset[str]
    constant: float | None
    _node: Node = dataclasses.field(repr=False, compare=False)

    def evaluate(
        self, t: float = 0.0, max_f: float = 0.0, s: float = 0.0, extra: Env | None = None
    ) -> float:
        """Value at frame `t` with `max_f` (= max_frames - 1) and seed `s`; errors name both.

        `extra` gives the values of further variables the caller allowed at compile time
        (e.g. the audio series of `anim.audio` at this frame); each one read must be there.
        """
        if self.constant is not None:
            return self.constant
        env = {"t": t, "max_f": max_f, "s": s}
        if extra:
            env.update(extra)
        try:
            value = float(self._node(env))
        except (ArithmeticError, ValueError) as err:
            raise ScheduleError(
                f"{self.field}: {self.source!r} cannot be evaluated {self._at(env)}: {err}"
            ) from None
        if not math.isfinite(value):
            raise ScheduleError(
                f"{self.field}: {self.source!r} gives {value} {self._at(env)}; "
                "expected a finite number (check divisions and powers)"
            )
        return value

    def _at(self, env: Env) -> str:
        """Where it failed, in the names it uses (a frame key has no t)."""
        if "t" in self.names:
            return f"at t={env['t']:g}"
        shown = [f"{name}={env[name]:g}" for name in sorted(self.names) if name in env]
        return f"with {', '.join(shown)}" if shown else "at all"


def compile_expression(
    source: str,
    field: str = "expression",
    variables: tuple[str, ...] = VARIABLES,
    text: str | None = None,
    offset: int = 0,
) -> Expression:
    """Parse and check `source`; return an `Expression` that evaluates fast.

    `variables` are the names it may read (keys allow only max_f and s). For error carets
    inside a larger schedule, pass the whole schedule as `text` and where `source` starts in
    it as `offset`.
    """
    compiler = _Compiler(source, field, variables, text if text is not None else source, offset)
    node, constant = compiler.compile_tree()
    return Expression(source, field, frozenset(compiler.names_used), constant, node)


class _Compiler:
    """Turns a checked `ast` tree into nested closures; one instance per expression."""

    def __init__(
        self, source: str, field: str, variables: tuple[str, ...], text: str, offset: int
    ) -> None:
        self.source, self.field, self.variables = source, field, variables
        self.text, self.offset = text, offset
        self.names_used: set[str] = set()
        # Parse one line: newlines/tabs become spaces (lengths kept, so columns still match
        # the user's text) and leading spaces are skipped (eval mode rejects an indent).
        flat = source.translate(str.maketrans("\n\r\t", "   "))
        self.flat = flat.lstrip(" ")
        self.lead = len(flat) - len(self.flat)

    # -- errors ---------------------------------------------------------------------------
    def error(self, column: int, problem: str, expected: str) -> ScheduleError:
        return syntax_error(self.field, self.text, self.offset + column, problem, expected)

    def column_of(self, node: ast.AST) -> int:
        col_bytes = getattr(node, "col_offset", 0)  # ast columns count UTF-8 bytes
        return self.lead + len(self.flat.encode()[:col_bytes].decode(errors="ignore"))

    # -- parse and check ------------------------------------------------------------------
    def compile_tree(self) -> tuple[Node, float | None]:
        if len(self.source) > MAX_SOURCE_CHARS:
            raise self.error(
                0,
                f"expression is {len(self.source)} characters long",
                f"at most {MAX_SOURCE_CHARS}",
            )
        if not self.source.strip():
            raise self.error(0, "empty expression", "a number or an expression such as sin(t)")
        tree = self.parse()
        self.check_size(tree)
        node, constant = self.visit(tree.body)
        return node, constant

    def parse(self) -> ast.Expression:
        try:
            return ast.parse(self.flat, mode="eval")
        except SyntaxError as err:
            column = self.lead + max((err.offset or 1) - 1, 0)
            raise self.error(
                min(column, len(self.source)),
                f"invalid expression {self.source.strip()!r} ({err.msg})",
                "a number, a name (t, max_f, s, pi, e), an operator or a function call",
            ) from None

    def check_size(self, tree: ast.AST) -> None:
        stack, count = [(tree, 0)], 0
        while stack:
            node, depth = stack.pop()
            count += 1
            if count > MAX_NODES or depth > MAX_DEPTH:
                raise self.error(
                    0,
                    "expression is too large or too deeply nested",
                    f"at most {MAX_NODES} parts and {MAX_DEPTH} levels",
                )
            stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))

    # -- tree walk: each visit returns (closure, constant value or None) ------------------
    def visit(self, node: ast.AST) -> tuple[Node, float | None]:
        method = getattr(self, f"visit_{type(node).__name__}", None)
        if method is None:
            raise self.refuse(node)
        closure, is_const = method(node)
        if not is_const:
            return closure, None
        try:
            value = float(closure({}))
            if not math.isfinite(value):
                raise OverflowError(f"result is {value}")
        except (ArithmeticError, ValueError) as err:
            raise self.error(
                self.column_of(node),
                f"{ast.unparse(node)!r} fails: {err}",
                "an expression that can be computed",
            ) from None
        return (lambda env: value), value

    def refuse(self, node: ast.AST) -> ScheduleError:
        kind = {
            ast.Attribute: "attribute access (a.b)",
            ast.Subscript: "a subscript (a[b])",
            ast.Lambda: "a lambda",
            ast.Call: "this call",
            ast.JoinedStr: "text",
            ast.Tuple: "a tuple (a, b)",
            ast.List: "a list",
            ast.Starred: "*",
        }.get(type(node), f"'{type(node).__name__}' syntax")
        return self.error(
            self.column_of(node),
            f"{kind} is not allowed",
            "numbers, t, max_f, s, pi, e, + - * / % ** //, comparisons, "
            "and/or/not, x if c else y, or math functions such as sin(t)",
        )

    def visit_Constant(self, node: ast.Constant) -> tuple[Node, bool]:
        value = node.value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.error(self.column_of(node), f"{value!r} is not a number", "a number")
        try:
            number = float(value)
        except OverflowError:
            raise self.error(self.column_of(node), "number too large", "at most 1e300") from None
        return (lambda env: number), True

    def visit_Name(self, node: ast.Name) -> tuple[Node, bool]:
        name = node.id
        if name in CONSTANTS:
            const = CONSTANTS[name]
            return (lambda env: const), True
        if name in self.variables:
            self.names_used.add(name)
            return (lambda env: env[name]), False
        known = (*self.variables, *CONSTANTS)
        hint = suggest_name(name, (*known, *FUNCTIONS)) if name not in FUNCTIONS else ""
        what = f"unknown name '{name}'"
        if name in VARIABLES:  # t in a frame key: keys are computed once, not per frame
            what = f"'{name}' cannot be used here"
        elif name in FUNCTIONS:
            what = f"function '{name}' used without a call"
        raise self.error(self.column_of(node), what + hint, "one of " + ", ".join(known))

    def visit_UnaryOp(self, node: ast.UnaryOp) -> tuple[Node, bool]:
        op = _UNARY.get(type(node.op))
        if op is None:
            raise self.error(self.column_of(node), "operator '~' is not allowed", "+, - or not")
        operand, const = self.visit(node.operand)
        return (lambda env: op(operand(env))), const is not None

    def visit_BinOp(self, node: ast.BinOp) -> tuple[Node, bool]:
        op = _BINARY.get(type(node.op))
        if op is None:
            raise self.error(
                self.column_of(node),
                f"operator {type(node.op).__name__} is not allowed",
                "+ - * / % ** //",
            )
        (left, lc), (right, rc) = self.visit(node.left), self.visit(node.right)
        return (lambda env: op(left(env), right(env))), lc is not None and rc is not None

    def visit_BoolOp(self, node: ast.BoolOp) -> tuple[Node, bool]:
        parts = [self.visit(value) for value in node.values]
        closures = [closure for closure, _ in parts]
        is_and = isinstance(node.op, ast.And)

        def run(env: Env) -> float:
            value = 0.0
            for closure in closures:
                value = closure(env)
                if bool(value) != is_and:  # `and` stops at a falsy value, `or` at a truthy one
                    return value
            return value

        return run, all(const is not None for _, const in parts)

    def visit_Compare(self, node: ast.Compare) -> tuple[Node, bool]:
        ops = [_COMPARE.get(type(op)) for op in node.ops]
        if None in ops:
            raise self.error(
                self.column_of(node), "'is'/'in' comparisons are not allowed", "< <= > >= == !="
            )
        parts = [self.visit(node.left), *(self.visit(c) for c in node.comparators)]
        closures = [closure for closure, _ in parts]

        def run(env: Env) -> float:
            left = closures[0](env)
            for op, closure in zip(ops, closures[1:], strict=True):
                right = closure(env)
                if not op(left, right):  # type: ignore[misc]
                    return 0.0
                left = right
            return 1.0

        return run, all(const is not None for _, const in parts)

    def visit_IfExp(self, node: ast.IfExp) -> tuple[Node, bool]:
        parts = [self.visit(node.test), self.visit(node.body), self.visit(node.orelse)]
        test, body, orelse = (closure for closure, _ in parts)
        return (lambda env: body(env) if test(env) else orelse(env)), all(
            const is not None for _, const in parts
        )

    def visit_Call(self, node: ast.Call) -> tuple[Node, bool]:
        func = node.func
        if not isinstance(func, ast.Name):
            raise self.refuse(func if isinstance(func, ast.Attribute) else node)
        if func.id not in FUNCTIONS:
            hint = suggest_name(func.id, FUNCTIONS)
            raise self.error(
                self.column_of(func),
                f"unknown function '{func.id}'{hint}",
                "one of " + ", ".join(sorted(FUNCTIONS)),
            )
        fn, low, high = FUNCTIONS[func.id]
        if node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
            raise self.error(
                self.column_of(node),
                f"{func.id}() takes plain arguments",
                f"{func.id}(a, b, ...) without keywords or *",
            )
        if not low <= len(node.args) <= high:
            count = str(low) if low == high else f"{low} to {high}"
            raise self.error(
                self.column_of(node),
                f"{func.id}() got {len(node.args)} argument(s)",
                f"{count} argument(s)",
            )
        parts = [self.visit(arg) for arg in node.args]
        args = [closure for closure, _ in parts]
        is_const = all(const is not None for _, const in parts)
        if func.id == "where":  # evaluate only the chosen branch: where(t>0, 1/t, 0) works
            cond, yes, no = args
            return (lambda env: yes(env) if cond(env) else no(env)), is_const
        return (lambda env: float(fn(*(arg(env) for arg in args)))), is_const

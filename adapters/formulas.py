"""The `multi` grader's `calculate_output`: a small arithmetic language, parsed with `ast` and walked by hand.

OpenAI's graders guide lists what a formula may use: the sub-graders' names, numbers, `+ - * /`, `^` for a
power, and the functions `min max abs floor ceil exp sqrt log`. Nothing else is accepted: no attribute,
subscript, comparison, lambda, keyword argument or call to any other name, so a formula cannot reach Python.
`^` is read as Python's `**` (so a power binds tighter than `*` and groups from the right, as in
mathematics, not as Python's `^`, which is a bitwise xor below `+`), and `**` is taken too. Every value is a
float, so `9 ^ 9 ^ 9` overflows into an error instead of building a huge integer.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

MAX_FORMULA_CHARS = 2000
MAX_NODES = 500

# name -> (function, fewest arguments, most arguments or None for any number)
FUNCTIONS: dict[str, tuple[Callable[..., float], int, int | None]] = {
    "min": (min, 1, None),
    "max": (max, 1, None),
    "abs": (abs, 1, 1),
    "floor": (lambda x: float(math.floor(x)), 1, 1),
    "ceil": (lambda x: float(math.ceil(x)), 1, 1),
    "exp": (math.exp, 1, 1),
    "sqrt": (math.sqrt, 1, 1),
    "log": (math.log, 1, 1),
}

_BINARY: dict[type[ast.operator], Callable[[float, float], float]] = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
    ast.Pow: lambda a, b: a**b,
}
_UNARY: dict[type[ast.unaryop], Callable[[float], float]] = {ast.USub: lambda a: -a, ast.UAdd: lambda a: a}


class FormulaError(ValueError):
    """A formula that is not in the language, or names something that is not a sub-grader."""


class FormulaRuntimeError(ArithmeticError):
    """A well-formed formula that has no finite value for these scores (a division by zero, log of 0)."""


@dataclass(frozen=True)
class Formula:
    """A checked formula; `evaluate` gives its value for the sub-graders' scores."""

    text: str
    tree: ast.Expression
    names: frozenset[str]

    def evaluate(self, scores: Mapping[str, float]) -> float:
        try:
            value = _evaluate(self.tree.body, scores)
        except (ZeroDivisionError, OverflowError, ValueError) as exc:
            raise FormulaRuntimeError(f"{self.text!r} has no value for {dict(scores)}: {exc}") from None
        if not math.isfinite(value):
            raise FormulaRuntimeError(f"{self.text!r} is {value} for {dict(scores)}")
        return value


def parse(text: str, names: set[str] | frozenset[str]) -> Formula:
    """Check `text` against the language and the sub-graders' `names`; raise FormulaError saying what is wrong."""
    if not text.strip():
        raise FormulaError("the formula is empty")
    if len(text) > MAX_FORMULA_CHARS:
        raise FormulaError(f"the formula has {len(text)} characters, more than {MAX_FORMULA_CHARS}")
    try:
        # No strings in the language, so every `^` is an operator (a quoted one is refused below anyway)
        tree = ast.parse(text.strip().replace("^", "**"), mode="eval")
    except SyntaxError as exc:
        raise FormulaError(f"{text!r} does not parse: {exc.msg}") from None
    except (RecursionError, MemoryError):
        raise FormulaError("the formula is nested too deeply") from None
    nodes = list(ast.walk(tree))
    if len(nodes) > MAX_NODES:
        raise FormulaError(f"the formula has more than {MAX_NODES} parts")
    used: set[str] = set()
    callees = {id(node.func) for node in nodes if isinstance(node, ast.Call)}
    for node in nodes:
        _check(node, names, used, callees)
    return Formula(text, tree, frozenset(used))


def _check(node: ast.AST, names: set[str] | frozenset[str], used: set[str], callees: set[int]) -> None:
    if isinstance(node, ast.Expression | ast.Load) or type(node) in _BINARY or type(node) in _UNARY:
        return
    if isinstance(node, ast.BinOp):
        if type(node.op) not in _BINARY:
            raise FormulaError(f"operator {_source(node)!r} is not one of + - * / ^")
        return
    if isinstance(node, ast.UnaryOp):
        if type(node.op) not in _UNARY:
            raise FormulaError(f"operator in {_source(node)!r} is not one of + -")
        return
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, int | float):
            raise FormulaError(f"{node.value!r} is not a number")
        return
    if isinstance(node, ast.Name):
        if node.id in FUNCTIONS:
            if id(node) not in callees:
                raise FormulaError(f"{node.id} is a function: call it, as in {node.id}(...)")
            return
        if node.id not in names:
            known = ", ".join(sorted(names)) or "none"
            raise FormulaError(f"{node.id!r} is not a grader of this multi grader (graders: {known})")
        used.add(node.id)
        return
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
            raise FormulaError(f"{_source(node.func)!r} is not one of the functions {', '.join(FUNCTIONS)}")
        if node.keywords or any(isinstance(arg, ast.Starred) for arg in node.args):
            raise FormulaError(f"{node.func.id}() takes plain arguments only")
        _, fewest, most = FUNCTIONS[node.func.id]
        if len(node.args) < fewest or (most is not None and len(node.args) > most):
            wanted = f"{fewest}" if most == fewest else f"at least {fewest}"
            raise FormulaError(f"{node.func.id}() takes {wanted} argument(s), not {len(node.args)}")
        return
    raise FormulaError(f"{_source(node)!r} is not allowed in a formula (numbers, grader names, + - * / ^, "
                       f"{', '.join(FUNCTIONS)})")


def _evaluate(node: ast.expr, scores: Mapping[str, float]) -> float:
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
        return float(node.value)
    if isinstance(node, ast.Name) and node.id not in FUNCTIONS:
        return float(scores[node.id])
    if isinstance(node, ast.BinOp):
        result = _BINARY[type(node.op)](_evaluate(node.left, scores), _evaluate(node.right, scores))
        if isinstance(result, complex):  # (-8) ^ 0.5
            raise ValueError("the power has no real value")
        return float(result)
    if isinstance(node, ast.UnaryOp):
        return _UNARY[type(node.op)](_evaluate(node.operand, scores))
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        function = FUNCTIONS[node.func.id][0]
        return float(function(*(_evaluate(arg, scores) for arg in node.args)))
    raise ValueError(f"{_source(node)!r} is not a value")


def _source(node: ast.AST) -> str:
    try:
        return ast.unparse(node)
    except Exception:  # noqa: BLE001 - only used to word an error message
        return type(node).__name__

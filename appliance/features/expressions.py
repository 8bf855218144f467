"""Arithmetic feature expressions, parsed without eval.

An expression such as ``"amount / (user_amount_mean_7d + 1)"`` is compiled once into a tree of
small closures over the feature dict. Names are features or event fields; a missing operand or a
division by zero makes the result missing (the feature is left out), never an error at run time.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable

from appliance.errors import ConfigError

Value = float | None
Compiled = Callable[[dict], Value]

_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
           ast.Div: operator.truediv, ast.Pow: operator.pow, ast.Mod: operator.mod}
_FUNCTIONS: dict[str, Callable[..., float]] = {
    "log1p": math.log1p, "log": math.log, "sqrt": math.sqrt, "abs": abs, "min": min, "max": max,
    "exp": math.exp,
}


def compile_expression(text: str, known: set[str]) -> tuple[Compiled, set[str]]:
    """Compile `text` into a function of the feature dict; return it and the names it reads.

    >>> fn, names = compile_expression("a / (b + 1)", {"a", "b"})
    >>> fn({"a": 6.0, "b": 2.0}), fn({"a": 6.0}), sorted(names)
    (2.0, None, ['a', 'b'])
    """
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        raise ConfigError(f'expression "{text}" is not valid: {exc.msg}') from None
    names: set[str] = set()
    return _compile(tree.body, text, known, names), names


def _compile(node: ast.AST, text: str, known: set[str], names: set[str]) -> Compiled:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        constant = float(node.value)
        return lambda values: constant
    if isinstance(node, ast.Name):
        if node.id not in known:
            raise ConfigError(f'expression "{text}": unknown name "{node.id}"; known: {", ".join(sorted(known))}')
        names.add(node.id)
        name = node.id
        return lambda values: values.get(name)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        inner = _compile(node.operand, text, known, names)
        sign = -1.0 if isinstance(node.op, ast.USub) else 1.0
        return lambda values: None if (v := inner(values)) is None else sign * v
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        return _binary(_BINARY[type(node.op)], _compile(node.left, text, known, names),
                       _compile(node.right, text, known, names))
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCTIONS and not node.keywords:
        args = [_compile(arg, text, known, names) for arg in node.args]
        return _call(_FUNCTIONS[node.func.id], args)
    fragment = ast.get_source_segment(text, node) or type(node).__name__
    raise ConfigError(
        f'expression "{text}": "{fragment}" is not allowed; use numbers, feature names, + - * / ** %, '
        f'and {", ".join(sorted(_FUNCTIONS))}'
    )


def _binary(op: Callable[[float, float], float], left: Compiled, right: Compiled) -> Compiled:
    def evaluate(values: dict) -> Value:
        a = left(values)
        b = right(values)
        if a is None or b is None:
            return None
        try:
            result = op(a, b)
        except (ZeroDivisionError, OverflowError, ValueError):
            return None
        return result if isinstance(result, float) and math.isfinite(result) else _finite(result)

    return evaluate


def _call(function: Callable[..., float], args: list[Compiled]) -> Compiled:
    def evaluate(values: dict) -> Value:
        operands = [arg(values) for arg in args]
        if any(v is None for v in operands):
            return None
        try:
            return _finite(function(*operands))
        except (ValueError, OverflowError, TypeError):
            return None

    return evaluate


def _finite(result: object) -> Value:
    if isinstance(result, (int, float)) and not isinstance(result, bool) and math.isfinite(result):
        return float(result)
    return None

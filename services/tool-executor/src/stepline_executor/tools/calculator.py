"""`calculator`: arithmetic on a parsed expression tree; no `eval`, bounded work."""

from __future__ import annotations

import ast
import json
import math
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from stepline_executor.model import CallContext, ToolError, ToolOutput, ToolSpec
from stepline_executor.tools.base import ModelArguments

__all__ = ["Calculator", "CalculatorArguments", "evaluate"]

Number = int | float

_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {
    ast.UAdd: operator.pos,
    ast.USub: operator.neg,
}
_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "abs": abs,
    "round": round,
    "min": min,
    "max": max,
    "sqrt": math.sqrt,
    "log": math.log,
    "log10": math.log10,
    "exp": math.exp,
    "sin": math.sin,
    "cos": math.cos,
    "tan": math.tan,
    "floor": math.floor,
    "ceil": math.ceil,
}
_CONSTANTS: dict[str, float] = {"pi": math.pi, "e": math.e}
_MAX_EXPONENT = 1_000
_MAX_MAGNITUDE = 10**300
_MAX_NODES = 200


class CalculatorArguments(BaseModel):
    """Arguments of `calculator`."""

    model_config = ConfigDict(extra="forbid")

    expression: str = Field(
        min_length=1,
        max_length=500,
        description="Arithmetic expression, e.g. '(12.5 * 3 + 4) / 2' or 'sqrt(2) * pi'. "
        "Operators + - * / // % ** and functions "
        + ", ".join(sorted(_FUNCTIONS))
        + "; constants pi, e.",
    )


def evaluate(expression: str) -> Number:
    """The value of `expression`, or `ToolError` saying what is not supported."""
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as error:
        raise ToolError(f"not a valid expression: {error.msg}") from None
    if sum(1 for _ in ast.walk(tree)) > _MAX_NODES:
        raise ToolError(f"expression too long (more than {_MAX_NODES} parts)")
    try:
        return _value(tree.body)
    except ZeroDivisionError:
        raise ToolError("division by zero") from None
    except (OverflowError, ValueError, TypeError) as error:
        raise ToolError(f"cannot compute: {error}") from None


def _value(node: ast.AST) -> Number:
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
        if isinstance(node.value, bool):
            raise ToolError("booleans are not numbers here")
        return node.value
    if isinstance(node, ast.Name) and node.id in _CONSTANTS:
        return _CONSTANTS[node.id]
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _value(node.left), _value(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > _MAX_EXPONENT:
            raise ToolError(f"exponent {right} is larger than {_MAX_EXPONENT}")
        return _bounded(_BINARY[type(node.op)](left, right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _bounded(_UNARY[type(node.op)](_value(node.operand)))
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in _FUNCTIONS
        and not node.keywords
    ):
        return _bounded(_FUNCTIONS[node.func.id](*(_value(a) for a in node.args)))
    raise ToolError(f"unsupported syntax: {ast.unparse(node)!r}")


def _bounded(value: Any) -> Number:
    if isinstance(value, complex):
        raise ToolError("the result is a complex number")
    if not isinstance(value, int | float):
        raise ToolError("the result is not a number")
    if isinstance(value, int) and abs(value) > _MAX_MAGNITUDE:
        raise ToolError("the result is too large")
    if isinstance(value, float) and not math.isfinite(value):
        raise ToolError("the result is not finite")
    return value


@dataclass(frozen=True)
class Calculator:
    """The `calculator` tool."""

    spec: ToolSpec
    arguments: ModelArguments[CalculatorArguments]

    @classmethod
    def build(cls, **limits: Any) -> Calculator:
        """The tool with its spec; `limits` override ToolSpec defaults."""
        arguments = ModelArguments(CalculatorArguments)
        spec = ToolSpec(
            name="calculator",
            description="Evaluate an arithmetic expression exactly as written and return the "
            "number. Use it instead of doing arithmetic in your head.",
            parameters=arguments.schema,
            idempotent=True,
            **limits,
        )
        return cls(spec, arguments)

    def parse(self, arguments: dict[str, Any]) -> CalculatorArguments:
        """Validated arguments."""
        return self.arguments.parse(arguments)

    async def run(self, parsed: CalculatorArguments, context: CallContext) -> ToolOutput:
        """Evaluate the expression."""
        result = evaluate(parsed.expression)
        return ToolOutput(json.dumps({"expression": parsed.expression, "result": result}))

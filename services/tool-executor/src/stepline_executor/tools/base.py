"""Argument checking shared by tools: pydantic models for built-ins, JSON Schema for the rest."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Generic, TypeVar

# No stubs for jsonschema in the workspace's dev tools; its API used here is tiny and stable.
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from pydantic import BaseModel, ValidationError

from stepline_executor.model import ArgumentsError

__all__ = ["ModelArguments", "SchemaArguments", "schema_of"]

M = TypeVar("M", bound=BaseModel)

_MAX_PROBLEMS = 8


def schema_of(model: type[BaseModel]) -> dict[str, Any]:
    """The JSON Schema models see for a pydantic arguments model."""
    schema = model.model_json_schema()
    schema.pop("title", None)
    return schema


class ModelArguments(Generic[M]):
    """Parse arguments with a pydantic model; errors name each field and what is wrong."""

    def __init__(self, model: type[M]) -> None:
        self.model = model
        self.schema = schema_of(model)

    def parse(self, arguments: dict[str, Any]) -> M:
        """The validated model, or `ArgumentsError`."""
        try:
            return self.model.model_validate(arguments)
        except ValidationError as error:
            problems = []
            for item in error.errors()[:_MAX_PROBLEMS]:
                where = ".".join(str(p) for p in item["loc"]) or "(arguments)"
                problems.append(f"{where}: {item['msg']}")
            raise ArgumentsError("; ".join(problems)) from None


class SchemaArguments:
    """Validate arguments against a JSON Schema (webhook and MCP tools)."""

    def __init__(self, schema: Mapping[str, Any]) -> None:
        try:
            Draft202012Validator.check_schema(schema)
        except SchemaError as error:
            raise ValueError(f"invalid JSON Schema: {error.message}") from error
        self.schema = dict(schema)
        self._validator = Draft202012Validator(self.schema)

    def parse(self, arguments: dict[str, Any]) -> dict[str, Any]:
        """`arguments` unchanged when valid, else `ArgumentsError` listing every problem."""
        errors = sorted(self._validator.iter_errors(arguments), key=lambda e: list(e.path))
        if not errors:
            return arguments
        problems = []
        for error in errors[:_MAX_PROBLEMS]:
            where = ".".join(str(p) for p in error.absolute_path) or "(arguments)"
            problems.append(f"{where}: {error.message}")
        raise ArgumentsError("; ".join(problems))

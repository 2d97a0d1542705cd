"""What both HTTP wire formats share: the bad-input error and typed readers of JSON values."""

from __future__ import annotations

from typing import Any

__all__ = ["WireError", "as_list", "as_object", "optional_number", "text_of"]


class WireError(ValueError):
    """The request body is invalid; `param` names the field to fix (OpenAI's `param`)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def as_object(value: Any, where: str) -> dict[str, Any]:
    """`value` as a JSON object, or `WireError`."""
    if not isinstance(value, dict):
        raise WireError(f"{where} must be an object", where)
    return value


def as_list(value: Any, where: str) -> list[Any]:
    """`value` as a JSON array, or `WireError`."""
    if not isinstance(value, list):
        raise WireError(f"{where} must be an array", where)
    return value


def text_of(value: Any, where: str) -> str:
    """`value` as a non-empty string, or `WireError`."""
    if not isinstance(value, str) or not value:
        raise WireError(f"{where} must be a non-empty string", where)
    return value


def optional_number(data: dict[str, Any], key: str) -> float | None:
    """`data[key]` as a number when present, or `WireError`."""
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise WireError(f"{key} must be a number", key)
    return float(value)

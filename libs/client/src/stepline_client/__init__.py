"""Stepline's Python client: submit goals, stream run events, wait, approve, deny, cancel."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stepline_client.client import Goal, Stepline
    from stepline_client.events import TERMINAL, is_terminal

__all__ = ["TERMINAL", "Goal", "Stepline", "is_terminal"]

# Imported on first use, so importing a light module of the package (the CLI's helpers) does not
# pull in the Kafka client.
_HOMES = {
    "Goal": "stepline_client.client",
    "Stepline": "stepline_client.client",
    "TERMINAL": "stepline_client.events",
    "is_terminal": "stepline_client.events",
}


def __getattr__(name: str) -> Any:
    """The public names, imported lazily."""
    if name not in _HOMES:
        raise AttributeError(f"module 'stepline_client' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)

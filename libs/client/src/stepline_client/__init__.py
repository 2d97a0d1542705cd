"""Stepline's Python client: submit goals, stream run events, wait, approve, deny, cancel."""

from stepline_client.client import Goal, Stepline
from stepline_client.events import TERMINAL, is_terminal

__all__ = ["TERMINAL", "Goal", "Stepline", "is_terminal"]

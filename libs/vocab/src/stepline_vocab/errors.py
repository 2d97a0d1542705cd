"""One error tree: every Stepline exception is a `SteplineError`, sorted by whose fault it is."""

from __future__ import annotations

__all__ = ["BadInputError", "ConfigurationError", "ProviderError", "SteplineError"]


class SteplineError(Exception):
    """Root of every exception Stepline raises on purpose."""


class ConfigurationError(SteplineError, ValueError):
    """A configuration file or setting is invalid; the message names the entry and the fix."""


class BadInputError(SteplineError, ValueError):
    """A request or event from outside is invalid; it is refused, never retried as is."""


class ProviderError(SteplineError):
    """An upstream model provider or tool backend failed or answered something unusable."""

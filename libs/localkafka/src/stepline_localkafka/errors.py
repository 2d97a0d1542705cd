"""Errors raised by the local Kafka tool."""

from __future__ import annotations

from stepline_vocab import SteplineError

__all__ = ["KafkaNotReadyError", "LocalKafkaError"]


class LocalKafkaError(SteplineError):
    """A problem the user has to act on; the message says what to do."""


class KafkaNotReadyError(LocalKafkaError):
    """The broker did not become ready (topic create + produce + consume) in time."""

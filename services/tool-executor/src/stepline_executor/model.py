"""Core types of the executor: requests, tool specs, outcomes. No Kafka, no protobuf, no I/O."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol

from stepline_vocab import BadInputError, ProviderError

__all__ = [
    "ArgumentsError",
    "CallContext",
    "CallProgress",
    "CallRequest",
    "ErrorKind",
    "Outcome",
    "Tool",
    "ToolError",
    "ToolInterruptedError",
    "ToolNotSentError",
    "ToolOutput",
    "ToolSpec",
]


class ErrorKind(StrEnum):
    """Why a call produced no output; mirrors `stepline.v1.ToolCallErrorKind` without prefix."""

    INVALID_ARGUMENTS = "INVALID_ARGUMENTS"
    NOT_ALLOWED = "NOT_ALLOWED"
    TIMED_OUT = "TIMED_OUT"
    EXECUTION_FAILED = "EXECUTION_FAILED"
    OUTCOME_UNKNOWN = "OUTCOME_UNKNOWN"
    CANCELLED = "CANCELLED"
    UNKNOWN_TOOL = "UNKNOWN_TOOL"


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """Everything the registry knows about one tool; the schema is the one models see."""

    name: str
    description: str
    parameters: Mapping[str, Any]
    source: str = "builtin"
    idempotent: bool = False
    requires_approval: bool = False
    timeout_s: float = 30.0
    max_concurrency: int = 8
    max_output_bytes: int = 16_384


@dataclass(frozen=True, slots=True)
class CallRequest:
    """One tool call as the core sees it (decoded from `ToolCallRequested`)."""

    run_id: str
    tenant_id: str
    step_id: str
    call_id: str
    tool: str
    arguments_json: str
    idempotency_key: str = ""
    agent: str = ""
    deadline: datetime | None = None
    # Offset of the request in its partition; orders it against cancellations of the same run.
    sequence: int = -1
    # Partition of the request: the call's intent and outcome records live in the same one.
    partition: int = 0
    metadata: Mapping[str, str] = field(default_factory=dict)
    # The original run id when the call belongs to a replay or fork (marks its usage record).
    replay_of: str = ""


@dataclass(slots=True)
class CallProgress:
    """What a running tool reports about its request, read if the call is cut off."""

    # False until the request may have left the process, then True; None: the tool never says.
    sent: bool | None = None


@dataclass(frozen=True, slots=True)
class CallContext:
    """What a running tool may know about the call (never the whole request)."""

    tenant_id: str
    run_id: str
    call_id: str
    idempotency_key: str
    timeout_s: float
    progress: CallProgress = field(default_factory=CallProgress)


@dataclass(frozen=True, slots=True)
class ToolOutput:
    """What a tool returned."""

    text: str
    content_type: str = "application/json"


class ToolError(ProviderError):
    """A tool ran and failed; `message` is shown to the model, so it never carries secrets."""

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable


class ToolNotSentError(ToolError):
    """Nothing left the process (e.g. connection refused): the call had no effect anywhere."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=True)


class ToolInterruptedError(ToolError):
    """The request was sent but no answer came back (connection died, read timed out).

    Whether the target acted is unknown: the executor reports a non-idempotent tool's call as
    `OUTCOME_UNKNOWN`, an idempotent one's as a retryable failure.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=True)


class ArgumentsError(BadInputError):
    """Arguments do not fit the tool; the message says exactly what to change."""


class Tool(Protocol):
    """A runnable tool: parse/validate arguments first, then run them."""

    @property
    def spec(self) -> ToolSpec:
        """The tool's registry entry."""

    def parse(self, arguments: dict[str, Any]) -> Any:
        """Validate `arguments`; return what `run` needs or raise `ArgumentsError`."""

    async def run(self, parsed: Any, context: CallContext) -> ToolOutput:
        """Execute; raise `ToolError` on failure."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """The result of one call: completed (output) or failed (error kind and message)."""

    output: str | None = None
    content_type: str = "text/plain"
    truncated: bool = False
    original_size: int = 0
    error_kind: ErrorKind | None = None
    message: str = ""
    retryable: bool = False
    duration_s: float = 0.0
    finished_at: datetime | None = None
    # The tool was started (so it may have cost something); rejections before start are not.
    executed: bool = False
    # Re-emitted from the outcome store on redelivery instead of produced now.
    replayed: bool = False

    @property
    def succeeded(self) -> bool:
        """True when the call completed with an output."""
        return self.error_kind is None

    @classmethod
    def failed(
        cls,
        kind: ErrorKind,
        message: str,
        *,
        finished_at: datetime,
        duration_s: float = 0.0,
        retryable: bool = False,
        executed: bool = False,
    ) -> Outcome:
        """A failed outcome."""
        return cls(
            error_kind=kind,
            message=message,
            finished_at=finished_at,
            duration_s=duration_s,
            retryable=retryable,
            executed=executed,
        )

    def as_replayed(self) -> Outcome:
        """The same outcome flagged as re-emitted."""
        return replace(self, replayed=True)

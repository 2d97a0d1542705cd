"""Provider-neutral model call types used by the core, the adapters and the handlers.

`Message`, `Role`, `ToolCall` and the token counts (`Usage`) are the shared vocabulary of
`stepline_vocab`, re-exported here so the router's modules keep one import.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any, TypeVar

from stepline_vocab import Message, Role, Tokens, ToolCall

__all__ = [
    "Completion",
    "EmbeddingInput",
    "FinishReason",
    "Message",
    "ModelRequest",
    "Params",
    "ResponseFormat",
    "Role",
    "ToolCall",
    "ToolChoice",
    "ToolSpec",
    "Usage",
]


T = TypeVar("T")


class ToolChoice(StrEnum):
    """Whether the model may, must or must not call tools."""

    AUTO = "auto"
    NONE = "none"
    REQUIRED = "required"


class FinishReason(StrEnum):
    """Why the model stopped."""

    STOP = "stop"
    LENGTH = "length"
    TOOL_CALLS = "tool_calls"
    CONTENT_FILTER = "content_filter"
    INCOMPLETE = "incomplete"


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A tool offered to the model; `parameters` is its JSON Schema as a dict (read-only)."""

    name: str
    description: str
    parameters: dict[str, Any]
    # Work derived from this definition alone (its token estimate, the offline model's view of
    # it), kept with it: the Kafka port hands every request the same instance for the same
    # definition, so an agent's tools are worked out once, not on every step.
    _derived: dict[str, Any] = field(default_factory=dict, init=False, compare=False, repr=False)

    def derived(self, key: str, compute: Callable[[ToolSpec], T]) -> T:
        """`compute(self)`, worked out once per instance and `key` (a pure function of it)."""
        try:
            value: T = self._derived[key]
        except KeyError:
            value = self._derived[key] = compute(self)
        return value


@dataclass(frozen=True, slots=True)
class ResponseFormat:
    """Structured output request: `text`, `json_object` or `json_schema`."""

    type: str = "text"
    schema: dict[str, Any] | None = None
    name: str = ""
    strict: bool = False


@dataclass(frozen=True, slots=True)
class Params:
    """Sampling and output settings; None and 0 mean the deployment default."""

    temperature: float | None = None
    top_p: float | None = None
    max_output_tokens: int = 0
    stop: tuple[str, ...] = ()
    tool_choice: ToolChoice = ToolChoice.AUTO
    tool_name: str = ""
    response_format: ResponseFormat = field(default_factory=ResponseFormat)
    seed: int | None = None
    reasoning_effort: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class EmbeddingInput:
    """What to embed: texts or token arrays, and the vector size wanted (None: the model's)."""

    inputs: tuple[str | tuple[int, ...], ...]
    dimensions: int | None = None


@dataclass(frozen=True, slots=True)
class ModelRequest:
    """One model call on a route, with the ids usage records need."""

    call_id: str
    tenant_id: str
    route: str
    messages: tuple[Message, ...]
    tools: tuple[ToolSpec, ...] = ()
    params: Params = field(default_factory=Params)
    deadline: datetime | None = None
    max_cost: Decimal | None = None
    stream: bool = False
    run_id: str = ""
    step_id: str = ""
    agent: str = ""
    # The original run id when the calling run is a replay (marks its usage records).
    replay_of: str = ""
    # Set: an embeddings call (only deployments that serve embeddings take it; no messages).
    embedding: EmbeddingInput | None = None


# Token counts are the shared ones: one type from provider response to cost and billing.
Usage = Tokens


@dataclass(frozen=True, slots=True)
class Completion:
    """A provider's answer; `incomplete` when a stream broke after tool-call output began."""

    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    finish_reason: FinishReason = FinishReason.STOP
    usage: Usage = field(default_factory=Usage)
    # The HTTP status of the answer; 0 when none was received (the offline provider).
    status_code: int = 0
    incomplete: bool = False
    incomplete_reason: str = ""
    # The model that answered, as the provider names it (a dated snapshot); "" when unsaid.
    model: str = ""
    # The vectors of an embeddings call, one per input in order (output tokens are 0).
    embeddings: tuple[tuple[float, ...], ...] = ()

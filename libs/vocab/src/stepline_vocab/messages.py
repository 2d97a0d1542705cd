"""Provider-neutral transcript turns, shared by the planner and the model router."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = ["Message", "Role", "ToolCall"]


class Role(StrEnum):
    """Who speaks in a turn; values are the OpenAI Chat Completions spelling."""

    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"
    TOOL = "tool"


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A model's request to call a tool.

    `call_id` is the id the model gave the call (not a Stepline step call id); `arguments_json`
    is the arguments object as JSON text, exactly as the model produced it.
    """

    call_id: str
    name: str
    arguments_json: str


@dataclass(frozen=True, slots=True)
class Message:
    """One turn of a transcript; `tool_call_id` answers a `ToolCall.call_id` (TOOL turns)."""

    role: Role
    content: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str = ""
    name: str = ""

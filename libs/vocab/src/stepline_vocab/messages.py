"""Provider-neutral transcript turns, shared by the planner and the model router."""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum

__all__ = ["Message", "Role", "ToolCall", "canonical_arguments"]


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


def canonical_arguments(arguments_json: str) -> str:
    """Tool-call arguments in one spelling (sorted keys, no spaces), so key order or spacing
    never hides that two calls are the same (replays match calls on tool and this)."""
    try:
        parsed = json.loads(arguments_json or "{}")
    except json.JSONDecodeError:
        return arguments_json.strip()
    return json.dumps(parsed, sort_keys=True, separators=(",", ":"), ensure_ascii=False)

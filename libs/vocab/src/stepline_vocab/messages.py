"""Provider-neutral transcript turns, shared by the planner and the model router."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from enum import StrEnum

__all__ = ["Message", "Role", "ToolCall", "canonical_arguments", "image_ref", "split_data_uri"]

_DATA_URI = re.compile(r"^data:(image/[a-z0-9.+-]+);base64,([A-Za-z0-9+/=\s]+)$")


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
    """One turn of a transcript; `tool_call_id` answers a `ToolCall.call_id` (TOOL turns).

    `images` are the turn's image inputs (USER turns), each an http(s) URL or a base64
    `data:image/…` URI, in the order they were given, after the text.
    """

    role: Role
    content: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str = ""
    name: str = ""
    images: tuple[str, ...] = ()


def canonical_arguments(arguments_json: str) -> str:
    """Tool-call arguments in one spelling (sorted keys, no spaces), so key order or spacing
    never hides that two calls are the same (replays match calls on tool and this)."""
    try:
        parsed = json.loads(arguments_json or "{}")
    except json.JSONDecodeError:
        return arguments_json.strip()
    return json.dumps(parsed, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def image_ref(value: str) -> str | None:
    """`value` if it is an image reference a provider can take (http(s) URL or data URI)."""
    if value.startswith(("https://", "http://")) or split_data_uri(value) is not None:
        return value
    return None


def split_data_uri(value: str) -> tuple[str, str] | None:
    """(media type, base64 data) of a `data:image/…;base64,…` URI, or None."""
    found = _DATA_URI.match(value)
    return None if found is None else (found.group(1), found.group(2))

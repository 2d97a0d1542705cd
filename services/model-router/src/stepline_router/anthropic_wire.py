"""Anthropic Messages wire format at the gateway's door: parse requests, write answers and events.

Only the HTTP port uses this module; JSON shapes stop here.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from stepline_router.gateway import CallSummary, GatewayRequest, ModelEntry
from stepline_router.providers.fields import object_arguments
from stepline_router.router import CallSucceeded
from stepline_router.stream import ContentDelta, Restarted, TextDelta
from stepline_router.types import (
    Completion,
    FinishReason,
    Message,
    Params,
    Role,
    ToolCall,
    ToolChoice,
    ToolSpec,
    Usage,
)
from stepline_router.wire import WireError, as_list, as_object, optional_number, text_of
from stepline_vocab import image_ref

__all__ = [
    "OLDEST_VERSION",
    "EventWriter",
    "error_body",
    "message_body",
    "models_body",
    "parse_messages_request",
    "version_supported",
]

# The oldest `anthropic-version` whose Messages format this gateway speaks; later dated
# versions (the SDKs send their own release date) keep that format.
OLDEST_VERSION = "2023-01-01"
_VERSION = re.compile(r"^\d{4}-\d{2}-\d{2}$")

_STOP = {
    FinishReason.STOP: "end_turn",
    FinishReason.LENGTH: "max_tokens",
    FinishReason.TOOL_CALLS: "tool_use",
    FinishReason.CONTENT_FILTER: "refusal",
    # Never sent: an incomplete answer ends with an error event instead.
    FinishReason.INCOMPLETE: "end_turn",
}
# Blocks a model produced that carry nothing another provider could take.
_SKIPPED_BLOCKS = frozenset({"thinking", "redacted_thinking"})


def version_supported(version: str | None) -> bool:
    """Whether an `anthropic-version` header names a Messages format this gateway speaks."""
    return version is not None and bool(_VERSION.match(version)) and version >= OLDEST_VERSION


def _text(value: Any, where: str) -> str:
    """A string, or the text of a list of text blocks."""
    if isinstance(value, str):
        return value
    parts = []
    for i, block in enumerate(as_list(value, where)):
        block = as_object(block, f"{where}[{i}]")
        if block.get("type") != "text":
            raise WireError(
                f"{where}[{i}]: block type {block.get('type')!r} is not supported here; send text"
            )
        parts.append(str(block.get("text") or ""))
    return "".join(parts)


def _turn(raw: Any, i: int) -> list[Message]:
    where = f"messages.{i}"
    data = as_object(raw, where)
    role = data.get("role")
    if role not in ("user", "assistant"):
        raise WireError(f"{where}.role: must be 'user' or 'assistant'")
    content = data.get("content")
    if isinstance(content, str):
        return [Message(Role.USER if role == "user" else Role.ASSISTANT, content)]
    text: list[str] = []
    images: list[str] = []
    calls: list[ToolCall] = []
    results: list[Message] = []
    for j, block in enumerate(as_list(content, f"{where}.content")):
        block = as_object(block, f"{where}.content.{j}")
        kind = block.get("type")
        if kind == "text":
            text.append(str(block.get("text") or ""))
        elif kind == "image" and role == "user":
            images.append(_image(block.get("source"), f"{where}.content.{j}.source"))
        elif kind == "tool_use" and role == "assistant":
            calls.append(
                ToolCall(
                    text_of(block.get("id"), f"{where}.content.{j}.id"),
                    text_of(block.get("name"), f"{where}.content.{j}.name"),
                    json.dumps(block.get("input") or {}),
                )
            )
        elif kind == "tool_result" and role == "user":
            result = _text(block.get("content") or "", f"{where}.content.{j}.content")
            if block.get("is_error"):
                result = f"error: {result}"
            results.append(
                Message(
                    Role.TOOL,
                    result,
                    tool_call_id=text_of(
                        block.get("tool_use_id"), f"{where}.content.{j}.tool_use_id"
                    ),
                )
            )
        elif kind in _SKIPPED_BLOCKS:
            continue
        else:
            raise WireError(f"{where}.content.{j}: block type {kind!r} is not supported")
    if role == "assistant":
        return [Message(Role.ASSISTANT, "".join(text), tuple(calls))]
    # Tool results answer the previous assistant turn, so they come before new user text.
    asked = [Message(Role.USER, "".join(text), images=tuple(images))] if text or images else []
    return results + asked


def _image(raw: Any, where: str) -> str:
    """An image block's source as an image reference (URL or data URI)."""
    source = as_object(raw, where)
    if source.get("type") == "base64":
        ref = image_ref(f"data:{source.get('media_type')};base64,{source.get('data')}")
    elif source.get("type") == "url":
        url = source.get("url")
        ref = image_ref(url) if isinstance(url, str) else None
    else:
        ref = None
    if ref is None:
        raise WireError(f"{where}: an image source is base64 (media_type image/…, data) or a URL")
    return ref


def _tools(raw: Any) -> tuple[ToolSpec, ...]:
    specs = []
    for i, tool in enumerate(as_list(raw or [], "tools")):
        tool = as_object(tool, f"tools.{i}")
        if tool.get("type") not in (None, "custom"):
            raise WireError(f"tools.{i}: server tool {tool.get('type')!r} is not supported")
        specs.append(
            ToolSpec(
                text_of(tool.get("name"), f"tools.{i}.name"),
                str(tool.get("description") or ""),
                as_object(tool.get("input_schema"), f"tools.{i}.input_schema"),
            )
        )
    return tuple(specs)


def _tool_choice(raw: Any) -> tuple[ToolChoice, str]:
    if raw is None:
        return ToolChoice.AUTO, ""
    data = as_object(raw, "tool_choice")
    kind = data.get("type")
    if kind == "auto":
        return ToolChoice.AUTO, ""
    if kind == "none":
        return ToolChoice.NONE, ""
    if kind == "any":
        return ToolChoice.REQUIRED, ""
    if kind == "tool":
        return ToolChoice.REQUIRED, text_of(data.get("name"), "tool_choice.name")
    raise WireError("tool_choice.type: must be 'auto', 'any', 'tool' or 'none'")


def parse_messages_request(raw: Any) -> GatewayRequest:
    """The core request a Messages body asks for; `WireError` names what to fix."""
    data = as_object(raw, "body")
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise WireError("model: Field required (a route such as 'default', or a deployment)")
    max_tokens = data.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise WireError("max_tokens: Field required (a positive integer)")
    turns = as_list(data.get("messages"), "messages")
    if not turns:
        raise WireError("messages: at least one message is required")
    messages: list[Message] = []
    system = data.get("system")
    if system:
        messages.append(Message(Role.SYSTEM, _text(system, "system")))
    for i, turn in enumerate(turns):
        messages.extend(_turn(turn, i))
    choice, tool_name = _tool_choice(data.get("tool_choice"))
    stops = data.get("stop_sequences") or []
    metadata = as_object(data.get("metadata") or {}, "metadata")
    user = metadata.get("user_id")
    return GatewayRequest(
        model=model,
        messages=tuple(messages),
        tools=_tools(data.get("tools")),
        params=Params(
            temperature=optional_number(data, "temperature"),
            top_p=optional_number(data, "top_p"),
            max_output_tokens=max_tokens,
            stop=tuple(text_of(s, "stop_sequences") for s in as_list(stops, "stop_sequences")),
            tool_choice=choice,
            tool_name=tool_name,
        ),
        stream=bool(data.get("stream")),
        user=user if isinstance(user, str) else "",
    )


def _usage(usage: Usage) -> dict[str, int]:
    """Anthropic counts cached and cache-written input apart from `input_tokens`."""
    return {
        "input_tokens": usage.input - usage.cached_input - usage.cache_write_input,
        "output_tokens": usage.output,
        "cache_read_input_tokens": usage.cached_input,
        "cache_creation_input_tokens": usage.cache_write_input,
    }


def _blocks(answer: Completion) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    if answer.content:
        blocks.append({"type": "text", "text": answer.content})
    blocks += [
        {
            "type": "tool_use",
            "id": c.call_id,
            "name": c.name,
            "input": object_arguments(c.arguments_json),
        }
        for c in answer.tool_calls
    ]
    return blocks


def message_body(outcome: CallSucceeded, request_id: str) -> dict[str, Any]:
    """The Messages response for an answered call (`model` = deployment)."""
    answer = outcome.completion
    return {
        "id": request_id,
        "type": "message",
        "role": "assistant",
        "model": outcome.deployment.name,
        "content": _blocks(answer),
        "stop_reason": _STOP[answer.finish_reason],
        "stop_sequence": None,
        "usage": _usage(answer.usage),
    }


def models_body(entries: list[ModelEntry]) -> dict[str, Any]:
    """`GET /v1/models` for Anthropic clients: the routes and deployments a key may name."""
    data = [
        {
            "type": "model",
            "id": e.name,
            "display_name": f"{e.name} ({e.kind}, {e.owned_by})",
            "created_at": "1970-01-01T00:00:00Z",
            "lifecycle": "active",
        }
        for e in entries
    ]
    return {
        "data": data,
        "has_more": False,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    }


def error_body(kind: str, message: str, request_id: str = "") -> dict[str, Any]:
    """An Anthropic error body."""
    body: dict[str, Any] = {"type": "error", "error": {"type": kind, "message": message}}
    if request_id:
        body["request_id"] = request_id
    return body


def _event(kind: str, payload: dict[str, Any]) -> bytes:
    data = json.dumps({"type": kind, **payload}, separators=(",", ":"))
    return f"event: {kind}\ndata: {data}\n\n".encode()


@dataclass
class EventWriter:
    """Server-sent events of one streamed message: blocks opened and closed as output moves."""

    request_id: str
    model: str
    _block: int = -1
    _open_kind: str = ""
    _calls: dict[int, int] = field(default_factory=dict)

    def opened(self) -> bytes:
        """`message_start` (usage follows in `message_delta`, once known)."""
        message: dict[str, Any] = {
            "id": self.request_id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return _event("message_start", {"message": message})

    def _close(self) -> bytes:
        if not self._open_kind:
            return b""
        self._open_kind = ""
        return _event("content_block_stop", {"index": self._block})

    def _start(self, kind: str, block: dict[str, Any]) -> bytes:
        out = self._close()
        self._block += 1
        self._open_kind = kind
        return out + _event("content_block_start", {"index": self._block, "content_block": block})

    def delta(self, delta: ContentDelta) -> bytes:
        """The events of one content delta."""
        if isinstance(delta, TextDelta):
            out = (
                b""
                if self._open_kind == "text"
                else self._start("text", {"type": "text", "text": ""})
            )
            return out + _event(
                "content_block_delta",
                {"index": self._block, "delta": {"type": "text_delta", "text": delta.text}},
            )
        out = b""
        if delta.index not in self._calls:
            block = {"type": "tool_use", "id": delta.id, "name": delta.name, "input": {}}
            out = self._start("tool_use", block)
            self._calls[delta.index] = self._block
        if not delta.arguments:
            return out
        return out + _event(
            "content_block_delta",
            {
                "index": self._calls[delta.index],
                "delta": {"type": "input_json_delta", "partial_json": delta.arguments},
            },
        )

    def restarted(self, event: Restarted) -> bytes:
        """Close the open block, then a `stepline_restart` event (SDKs skip unknown events): the
        answer starts over in the next block, and a client drops the blocks before it."""
        return self._close() + _event(
            "stepline_restart", {"deployment": event.deployment, "reason": event.reason}
        )

    def finished(self, outcome: CallSucceeded) -> bytes:
        """Close the open block, then `message_delta` (stop reason, usage) and `message_stop`."""
        answer = outcome.completion
        return (
            self._close()
            + _event(
                "message_delta",
                {
                    "delta": {"stop_reason": _STOP[answer.finish_reason], "stop_sequence": None},
                    "usage": _usage(answer.usage),
                    # The call's attempts and cost: a stream has no headers left to carry them.
                    "stepline": CallSummary.of(outcome).as_json(),
                },
            )
            + _event("message_stop", {})
        )

    def error(self, kind: str, message: str) -> bytes:
        """An in-band `error` event; the stream then closes without `message_stop`."""
        return _event("error", {"error": {"type": kind, "message": message}})

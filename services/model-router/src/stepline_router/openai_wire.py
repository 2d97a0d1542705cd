"""OpenAI Chat Completions wire format at the gateway's door: parse requests, write answers.

Only the HTTP port uses this module; JSON shapes stop here and the core sees `GatewayRequest`,
`CallSucceeded` and deltas.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from stepline_router.gateway import CallSummary, GatewayRequest, ModelEntry
from stepline_router.router import CallSucceeded
from stepline_router.stream import ContentDelta, Restarted, TextDelta
from stepline_router.types import (
    FinishReason,
    Message,
    Params,
    ResponseFormat,
    Role,
    ToolCall,
    ToolChoice,
    ToolSpec,
    Usage,
)
from stepline_router.wire import WireError, as_list, as_object, optional_number, text_of
from stepline_vocab import image_ref

__all__ = [
    "ChatRequest",
    "ChunkWriter",
    "completion_body",
    "error_body",
    "models_body",
    "parse_chat_request",
]

_ROLES = {
    "system": Role.SYSTEM,
    "developer": Role.SYSTEM,
    "user": Role.USER,
    "assistant": Role.ASSISTANT,
    "tool": Role.TOOL,
}
_FINISH = {
    FinishReason.STOP: "stop",
    FinishReason.LENGTH: "length",
    FinishReason.TOOL_CALLS: "tool_calls",
    FinishReason.CONTENT_FILTER: "content_filter",
    # Never sent: an incomplete answer ends with an error event instead.
    FinishReason.INCOMPLETE: "stop",
}


def _content(value: Any, where: str, *, images: bool = False) -> tuple[str, tuple[str, ...]]:
    """Message content: a string or a list of text (and, in user turns, image) parts."""
    if value is None:
        return "", ()
    if isinstance(value, str):
        return value, ()
    parts: list[str] = []
    found: list[str] = []
    for i, part in enumerate(as_list(value, where)):
        part = as_object(part, f"{where}[{i}]")
        kind = part.get("type")
        if kind == "image_url" and images:
            found.append(_image_url(part.get("image_url"), f"{where}[{i}].image_url"))
            continue
        if kind not in ("text", "input_text", "output_text"):
            accepted = "text or image_url" if images else "text"
            raise WireError(
                f"{where}[{i}]: content part type {kind!r} is not supported; send {accepted}",
                f"{where}[{i}].type",
            )
        parts.append(text_of(part.get("text"), f"{where}[{i}].text"))
    return "".join(parts), tuple(found)


def _image_url(raw: Any, where: str) -> str:
    url = raw if isinstance(raw, str) else as_object(raw, where).get("url")
    ref = image_ref(url) if isinstance(url, str) else None
    if ref is None:
        raise WireError(
            f"{where}.url must be an http(s) URL or a base64 data:image/… URI", f"{where}.url"
        )
    return ref


def _message(raw: Any, i: int) -> Message:
    where = f"messages[{i}]"
    data = as_object(raw, where)
    role = _ROLES.get(str(data.get("role")))
    if role is None:
        raise WireError(f"{where}.role must be one of {sorted(_ROLES)}", f"{where}.role")
    content, images = _content(data.get("content"), f"{where}.content", images=role is Role.USER)
    if role is Role.TOOL:
        call_id = data.get("tool_call_id")
        if not isinstance(call_id, str) or not call_id:
            raise WireError(f"{where}: a tool message needs tool_call_id", f"{where}.tool_call_id")
        return Message(role, content, tool_call_id=call_id)
    calls = []
    for j, call in enumerate(as_list(data.get("tool_calls") or [], f"{where}.tool_calls")):
        call = as_object(call, f"{where}.tool_calls[{j}]")
        function = as_object(call.get("function"), f"{where}.tool_calls[{j}].function")
        calls.append(
            ToolCall(
                text_of(call.get("id"), f"{where}.tool_calls[{j}].id"),
                text_of(function.get("name"), f"{where}.tool_calls[{j}].function.name"),
                str(function.get("arguments") or "{}"),
            )
        )
    name = data.get("name")
    return Message(
        role, content, tuple(calls), name=name if isinstance(name, str) else "", images=images
    )


def _tools(raw: Any) -> tuple[ToolSpec, ...]:
    specs = []
    for i, tool in enumerate(as_list(raw or [], "tools")):
        tool = as_object(tool, f"tools[{i}]")
        if tool.get("type", "function") != "function":
            raise WireError(f"tools[{i}].type must be 'function'", f"tools[{i}].type")
        function = as_object(tool.get("function"), f"tools[{i}].function")
        parameters = function.get("parameters") or {"type": "object", "properties": {}}
        specs.append(
            ToolSpec(
                text_of(function.get("name"), f"tools[{i}].function.name"),
                str(function.get("description") or ""),
                as_object(parameters, f"tools[{i}].function.parameters"),
            )
        )
    return tuple(specs)


def _tool_choice(raw: Any) -> tuple[ToolChoice, str]:
    if raw is None or raw == "auto":
        return ToolChoice.AUTO, ""
    if raw == "none":
        return ToolChoice.NONE, ""
    if raw == "required":
        return ToolChoice.REQUIRED, ""
    if isinstance(raw, dict) and raw.get("type") == "function":
        function = as_object(raw.get("function"), "tool_choice.function")
        return ToolChoice.REQUIRED, text_of(function.get("name"), "tool_choice.function.name")
    raise WireError("tool_choice must be 'auto', 'none', 'required' or a function", "tool_choice")


def _response_format(raw: Any) -> ResponseFormat:
    if raw is None:
        return ResponseFormat()
    data = as_object(raw, "response_format")
    kind = data.get("type")
    if kind in ("text", "json_object"):
        return ResponseFormat(type=str(kind))
    if kind == "json_schema":
        spec = as_object(data.get("json_schema"), "response_format.json_schema")
        return ResponseFormat(
            type="json_schema",
            schema=as_object(spec.get("schema") or {}, "response_format.json_schema.schema"),
            name=str(spec.get("name") or ""),
            strict=bool(spec.get("strict")),
        )
    raise WireError(
        "response_format.type must be 'text', 'json_object' or 'json_schema'",
        "response_format.type",
    )


def _stop(raw: Any) -> tuple[str, ...]:
    if raw is None:
        return ()
    if isinstance(raw, str):
        return (raw,)
    return tuple(text_of(s, "stop") for s in as_list(raw, "stop"))


def _int(data: dict[str, Any], key: str) -> int | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise WireError(f"{key} must be a non-negative integer", key)
    return value


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """A parsed Chat Completions request: the core request plus stream options."""

    request: GatewayRequest
    include_usage: bool = False


def parse_chat_request(raw: Any) -> ChatRequest:
    """The core request a Chat Completions body asks for; `WireError` names what to fix."""
    data = as_object(raw, "body")
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise WireError("model is required (a route such as 'default', or a deployment)", "model")
    messages = as_list(data.get("messages"), "messages")
    if not messages:
        raise WireError("messages must not be empty", "messages")
    if (_int(data, "n") or 1) != 1:
        raise WireError("only n=1 is supported", "n")
    choice, tool_name = _tool_choice(data.get("tool_choice"))
    max_tokens = _int(data, "max_completion_tokens") or _int(data, "max_tokens") or 0
    seed = _int(data, "seed")
    effort = data.get("reasoning_effort")
    params = Params(
        temperature=optional_number(data, "temperature"),
        top_p=optional_number(data, "top_p"),
        max_output_tokens=max_tokens,
        stop=_stop(data.get("stop")),
        tool_choice=choice,
        tool_name=tool_name,
        response_format=_response_format(data.get("response_format")),
        seed=seed,
        reasoning_effort=effort if isinstance(effort, str) else "",
    )
    stream = bool(data.get("stream"))
    options = as_object(data.get("stream_options") or {}, "stream_options")
    user = data.get("user")
    return ChatRequest(
        GatewayRequest(
            model=model,
            messages=tuple(_message(m, i) for i, m in enumerate(messages)),
            tools=_tools(data.get("tools")),
            params=params,
            stream=stream,
            user=user if isinstance(user, str) else "",
        ),
        include_usage=stream and bool(options.get("include_usage")),
    )


def _usage(usage: Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.input,
        "completion_tokens": usage.output,
        "total_tokens": usage.input + usage.output,
        "prompt_tokens_details": {"cached_tokens": usage.cached_input},
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning},
    }


def completion_body(outcome: CallSucceeded, request_id: str, created: int) -> dict[str, Any]:
    """The Chat Completions response for an answered call (`model` = deployment)."""
    answer = outcome.completion
    message: dict[str, Any] = {"role": "assistant", "content": answer.content or None}
    if answer.finish_reason is FinishReason.CONTENT_FILTER:
        message["refusal"] = answer.content or None
    else:
        message["refusal"] = None
    if answer.tool_calls:
        message["tool_calls"] = [
            {
                "id": call.call_id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments_json},
            }
            for call in answer.tool_calls
        ]
    return {
        "id": request_id,
        "object": "chat.completion",
        "created": created,
        "model": outcome.deployment.name,
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": _FINISH[answer.finish_reason],
                "logprobs": None,
            }
        ],
        "usage": _usage(answer.usage),
    }


def error_body(message: str, kind: str, code: str | None = None, param: str | None = None) -> Any:
    """An OpenAI error body."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def models_body(entries: list[ModelEntry]) -> dict[str, Any]:
    """`GET /v1/models`: the routes and deployments a key may name."""
    return {
        "object": "list",
        "data": [
            {"id": e.name, "object": "model", "created": 0, "owned_by": e.owned_by} for e in entries
        ],
    }


def _event(payload: Any) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


@dataclass
class ChunkWriter:
    """Server-sent `chat.completion.chunk` events of one streamed answer."""

    request_id: str
    created: int
    model: str
    include_usage: bool
    _calls: set[int] = field(default_factory=set)

    def _chunk(
        self, delta: dict[str, Any], finish: str | None = None, summary: Any = None
    ) -> bytes:
        chunk: dict[str, Any] = {
            "id": self.request_id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
        }
        if summary is not None:
            chunk["stepline"] = summary
        return _event(chunk)

    def opened(self) -> bytes:
        """The first chunk: the assistant role."""
        return self._chunk({"role": "assistant", "content": ""})

    def delta(self, delta: ContentDelta) -> bytes:
        """One content delta."""
        if isinstance(delta, TextDelta):
            return self._chunk({"content": delta.text})
        part: dict[str, Any] = {"index": delta.index, "function": {"arguments": delta.arguments}}
        if delta.index not in self._calls:
            self._calls.add(delta.index)
            part.update(id=delta.id, type="function")
            part["function"]["name"] = delta.name
        return self._chunk({"tool_calls": [part]})

    def restarted(self, event: Restarted) -> bytes:
        """A chunk with no choices saying the answer starts over (opt-in restart): a client
        drops the text it got; the next chunks are the whole new answer."""
        restart = {"event": "restart", "deployment": event.deployment, "reason": event.reason}
        return _event(
            {
                "id": self.request_id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": event.deployment,
                "choices": [],
                "stepline": restart,
            }
        )

    def finished(self, outcome: CallSucceeded) -> bytes:
        """The finish chunk (with the call's attempts and cost in `stepline`, as a stream has no
        headers left to carry them), the usage chunk when asked for, and `[DONE]`."""
        answer = outcome.completion
        out = self._chunk({}, _FINISH[answer.finish_reason], CallSummary.of(outcome).as_json())
        if self.include_usage:
            out += _event(
                {
                    "id": self.request_id,
                    "object": "chat.completion.chunk",
                    "created": self.created,
                    "model": self.model,
                    "choices": [],
                    "usage": _usage(answer.usage),
                }
            )
        return out + b"data: [DONE]\n\n"

    def error(self, message: str, kind: str, code: str) -> bytes:
        """An in-band error event; the stream then closes without `[DONE]`."""
        return _event(error_body(message, kind, code))

"""OpenAI Responses API over httpx: `input` items, flattened function tools, semantic events.

The second OpenAI wire format (`POST /v1/responses`). Requests are sent with `store: false`:
a router keeps no conversation state at the provider, so every call carries its transcript.
The Responses API has no stop sequences and no seed; a request's `stop` and `seed` are not sent.
Errors are OpenAI's own, classified as the Chat Completions adapter classifies them.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from stepline_router.errors import Outcome, ProviderError
from stepline_router.providers.adapter import HttpAdapter, request_headers
from stepline_router.providers.events import EventParser, not_a
from stepline_router.providers.fields import sampling, schema_fields
from stepline_router.providers.http import ChunkParser, stream_error
from stepline_router.providers.openai import DEFAULT_BASE_URL
from stepline_router.routes import Deployment
from stepline_router.stream import Delta, Finished, TextDelta, ToolCallDelta, UsageDelta
from stepline_router.types import (
    Completion,
    FinishReason,
    Message,
    ModelRequest,
    Role,
    ToolCall,
    ToolChoice,
    Usage,
)

__all__ = ["ResponsesProvider", "parse_response", "responses_body"]

# Generation settings by their Responses names (it has no stop sequences and no seed).
_SAMPLING = {
    "max_output_tokens": "max_output_tokens",
    "temperature": "temperature",
    "top_p": "top_p",
}
# Why a response stopped short (`incomplete_details.reason`).
_INCOMPLETE = {
    "max_output_tokens": FinishReason.LENGTH,
    "content_filter": FinishReason.CONTENT_FILTER,
}


def _items(message: Message) -> list[dict[str, Any]]:
    if message.role is Role.TOOL:
        return [
            {
                "type": "function_call_output",
                "call_id": message.tool_call_id,
                "output": message.content,
            }
        ]
    if message.role is Role.ASSISTANT:
        out: list[dict[str, Any]] = []
        if message.content:
            out.append({"type": "message", "role": "assistant", "content": message.content})
        out += [
            {
                "type": "function_call",
                "call_id": call.call_id,
                "name": call.name,
                "arguments": call.arguments_json,
            }
            for call in message.tool_calls
        ]
        return out
    if message.images:
        parts: list[dict[str, Any]] = [{"type": "input_text", "text": message.content}]
        # A URL or a data URI alike; "auto" is the API's default detail, which the SDK requires.
        parts += [
            {"type": "input_image", "image_url": ref, "detail": "auto"} for ref in message.images
        ]
        return [{"type": "message", "role": message.role.value, "content": parts}]
    return [{"type": "message", "role": message.role.value, "content": message.content}]


def responses_body(deployment: Deployment, request: ModelRequest) -> dict[str, Any]:
    """The Responses API request body for `request` on `deployment`."""
    params = request.params
    system = [m.content for m in request.messages if m.role is Role.SYSTEM and m.content]
    body: dict[str, Any] = {
        "model": deployment.model,
        "input": [
            item for m in request.messages if m.role is not Role.SYSTEM for item in _items(m)
        ],
        "store": False,
    }
    if system:
        body["instructions"] = "\n\n".join(system)
    if request.tools:
        body["tools"] = [
            {
                "type": "function",
                "name": tool.name,
                "description": tool.description,
                "parameters": tool.parameters,
                # Chat Completions' default; strict mode would reject many existing schemas.
                "strict": False,
            }
            for tool in request.tools
        ]
        if params.tool_choice is ToolChoice.REQUIRED and params.tool_name:
            body["tool_choice"] = {"type": "function", "name": params.tool_name}
        else:
            body["tool_choice"] = params.tool_choice.value
    body.update(sampling(params, _SAMPLING))
    if params.reasoning_effort:
        body["reasoning"] = {"effort": params.reasoning_effort}
    fmt = params.response_format
    if fmt.type == "json_object":
        body["text"] = {"format": {"type": "json_object"}}
    elif fmt.type == "json_schema":
        body["text"] = {"format": {"type": "json_schema", **schema_fields(fmt)}}
    if request.stream:
        body["stream"] = True
    body.update(params.extra)
    return body


def _usage(data: Any) -> Usage:
    """Input counts cached and cache-written tokens, output reasoning ones (all subsets)."""
    if not isinstance(data, dict):
        return Usage()
    details = data.get("input_tokens_details") or {}
    reasoning = (data.get("output_tokens_details") or {}).get("reasoning_tokens")
    return Usage(
        input=int(data.get("input_tokens") or 0),
        output=int(data.get("output_tokens") or 0),
        cached_input=int(details.get("cached_tokens") or 0),
        cache_write_input=int(details.get("cache_write_tokens") or 0),
        reasoning=int(reasoning or 0),
    )


def _failed(response: dict[str, Any], status: int) -> ProviderError:
    error = response.get("error") or {}
    code = error.get("code") or "failed"
    return stream_error({"type": code, "message": error.get("message", "")}, status)


def _finish(response: dict[str, Any], calls: bool, refused: bool, status: int) -> FinishReason:
    """The finish of a `completed` or `incomplete` response; `failed` raises its error."""
    state = response.get("status")
    if state == "failed":
        raise _failed(response, status)
    if state == "incomplete":
        reason = (response.get("incomplete_details") or {}).get("reason")
        return _INCOMPLETE.get(str(reason), FinishReason.LENGTH)
    if state != "completed":
        raise ProviderError(
            Outcome.MALFORMED_RESPONSE, f"response has status {state!r}", status_code=status
        )
    if refused:
        return FinishReason.CONTENT_FILTER
    return FinishReason.TOOL_CALLS if calls else FinishReason.STOP


def parse_response(data: Any, status: int = 200) -> Completion:
    """A `Completion` from a Responses API response body (raises on a wrong shape)."""
    try:
        text: list[str] = []
        calls: list[ToolCall] = []
        refused = False
        for item in data["output"]:
            if item["type"] == "message":
                for part in item["content"]:
                    if part["type"] == "output_text":
                        text.append(part["text"])
                    elif part["type"] == "refusal":
                        text.append(part["refusal"])
                        refused = True
            elif item["type"] == "function_call":
                calls.append(ToolCall(item["call_id"], item["name"], item["arguments"] or "{}"))
        finish = _finish(data, bool(calls), refused, status)
        return Completion("".join(text), tuple(calls), finish, _usage(data.get("usage")), status)
    except (KeyError, TypeError, AttributeError) as error:
        raise not_a("a Responses API response", error, status) from error


class _EventParser(EventParser):
    """Responses stream events → deltas; ends at `response.completed` or `.incomplete`."""

    end_marker = "response.completed"

    def __init__(self) -> None:
        super().__init__()
        self._refused = False

    def _number(self, data: dict[str, Any]) -> int:
        return self.calls.number(int(data["output_index"]))

    def _deltas(self, kind: str, data: dict[str, Any], status: int) -> list[Delta]:
        if kind == "error":
            raise stream_error(
                {"type": data.get("code") or "error", "message": data.get("message", "")}, status
            )
        if kind == "response.output_text.delta":
            return [TextDelta(str(data["delta"]))]
        if kind == "response.refusal.delta":
            self._refused = True
            return [TextDelta(str(data["delta"]))]
        if kind == "response.output_item.added":
            item = data["item"]
            if item.get("type") != "function_call":
                return []
            return [
                ToolCallDelta(
                    self._number(data),
                    str(item["call_id"]),
                    str(item["name"]),
                    str(item.get("arguments") or ""),
                )
            ]
        if kind == "response.function_call_arguments.delta":
            return [ToolCallDelta(self._number(data), arguments=str(data["delta"]))]
        if kind in ("response.completed", "response.incomplete", "response.failed"):
            response = data["response"]
            finish = _finish(response, bool(self.calls), self._refused, status)
            self.done = True
            return [UsageDelta(_usage(response.get("usage"))), Finished(finish)]
        # Lifecycle events, `.done` summaries (their deltas came first), reasoning summaries.
        return []


class ResponsesProvider(HttpAdapter):
    """Adapter for the OpenAI Responses wire format."""

    # A trailing assistant item is context, not a prefix to continue.
    continues_answers = False

    def _request(
        self, deployment: Deployment, request: ModelRequest, credential: str | None, stream: bool
    ) -> tuple[str, dict[str, str], dict[str, Any]]:
        url = f"{deployment.base_url or DEFAULT_BASE_URL}/responses"
        headers = request_headers(deployment, credential)
        return url, headers, responses_body(deployment, replace(request, stream=stream))

    def parse(self, data: Any, status: int, request: ModelRequest) -> Completion:
        """The answer of a non-streamed response body."""
        return parse_response(data, status)

    def chunk_parser(self, request: ModelRequest) -> ChunkParser:
        """A fresh parser for one streamed response."""
        return _EventParser()

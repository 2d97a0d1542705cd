"""Anthropic Messages over httpx: tool_use/tool_result blocks, streaming events, cache usage."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from stepline_router.providers.adapter import HttpAdapter, request_headers
from stepline_router.providers.events import EventParser, not_a
from stepline_router.providers.fields import object_arguments, sampling
from stepline_router.providers.http import ChunkParser, stream_error
from stepline_router.providers.turns import block_turns
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
from stepline_vocab import split_data_uri

__all__ = ["AnthropicProvider", "anthropic_body", "parse_anthropic_message"]

DEFAULT_BASE_URL = "https://api.anthropic.com"
API_VERSION = "2023-06-01"

# Generation settings by their Messages names (`max_tokens` is always sent, apart).
_SAMPLING = {"temperature": "temperature", "top_p": "top_p", "stop": "stop_sequences"}

_FINISH = {
    "end_turn": FinishReason.STOP,
    "stop_sequence": FinishReason.STOP,
    "pause_turn": FinishReason.STOP,
    "max_tokens": FinishReason.LENGTH,
    "tool_use": FinishReason.TOOL_CALLS,
    "refusal": FinishReason.CONTENT_FILTER,
}


def _blocks(message: Message) -> list[dict[str, Any]]:
    if message.role is Role.TOOL:
        return [
            {
                "type": "tool_result",
                "tool_use_id": message.tool_call_id,
                "content": message.content,
            }
        ]
    # Images first: Anthropic reads an image best before the text about it.
    blocks: list[dict[str, Any]] = [_image_block(ref) for ref in message.images]
    if message.content:
        blocks.append({"type": "text", "text": message.content})
    for call in message.tool_calls:
        blocks.append(
            {
                "type": "tool_use",
                "id": call.call_id,
                "name": call.name,
                "input": object_arguments(call.arguments_json),
            }
        )
    return blocks


def _image_block(ref: str) -> dict[str, Any]:
    split = split_data_uri(ref)
    if split is None:
        return {"type": "image", "source": {"type": "url", "url": ref}}
    media_type, data = split
    return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}


def anthropic_body(deployment: Deployment, request: ModelRequest) -> dict[str, Any]:
    """The Messages API request body for `request` on `deployment`."""
    params = request.params
    body: dict[str, Any] = {
        "model": deployment.model,
        "max_tokens": params.max_output_tokens or deployment.capabilities.max_output_tokens,
        "messages": block_turns(request.messages, _blocks),
    }
    system = "\n\n".join(m.content for m in request.messages if m.role is Role.SYSTEM)
    if system:
        body["system"] = system
    if request.tools:
        body["tools"] = [
            {"name": t.name, "description": t.description, "input_schema": t.parameters}
            for t in request.tools
        ]
        if params.tool_choice is ToolChoice.REQUIRED:
            body["tool_choice"] = (
                {"type": "tool", "name": params.tool_name} if params.tool_name else {"type": "any"}
            )
        elif params.tool_choice is ToolChoice.NONE:
            body["tool_choice"] = {"type": "none"}
        else:
            body["tool_choice"] = {"type": "auto"}
    body.update(sampling(params, _SAMPLING))
    if request.stream:
        body["stream"] = True
    body.update(params.extra)
    return body


def _usage(data: Any, previous: Usage | None = None) -> Usage:
    """Our usage counts all input tokens; Anthropic's `input_tokens` excludes cached ones."""
    if not isinstance(data, dict):
        return previous or Usage()
    base = previous or Usage()
    read = int(data.get("cache_read_input_tokens") or 0) or base.cached_input
    written = int(data.get("cache_creation_input_tokens") or 0) or base.cache_write_input
    plain = data.get("input_tokens")
    fresh = (
        int(plain) if plain is not None else base.input - base.cached_input - base.cache_write_input
    )
    output = data.get("output_tokens")
    return Usage(
        input=fresh + read + written,
        output=int(output) if output is not None else base.output,
        cached_input=read,
        cache_write_input=written,
    )


def parse_anthropic_message(data: Any, status: int = 200) -> Completion:
    """A `Completion` from a Messages API response body (raises on a wrong shape)."""
    try:
        text: list[str] = []
        calls: list[ToolCall] = []
        for block in data["content"]:
            if block["type"] == "text":
                text.append(block["text"])
            elif block["type"] == "tool_use":
                calls.append(ToolCall(block["id"], block["name"], json.dumps(block["input"])))
        finish = _FINISH.get(data.get("stop_reason") or "end_turn", FinishReason.STOP)
        return Completion(
            "".join(text),
            tuple(calls),
            finish,
            _usage(data.get("usage")),
            status,
            model=str(data.get("model") or ""),
        )
    except (KeyError, TypeError, AttributeError) as error:
        raise not_a("a message", error, status) from error


class _EventParser(EventParser):
    """Messages stream events → deltas; the stream ends at `message_stop`."""

    end_marker = "message_stop"

    def __init__(self) -> None:
        super().__init__()
        self._usage = Usage()
        self._model = ""

    def _deltas(self, kind: str, data: dict[str, Any], status: int) -> list[Delta]:
        if kind == "error":
            raise stream_error(data.get("error") or {}, status)
        if kind == "message_start":
            message = data.get("message") or {}
            self._model = str(message.get("model") or "")
            self._usage = _usage(message.get("usage"))
            return [UsageDelta(self._usage)]
        if kind == "content_block_start":
            block = data.get("content_block") or {}
            if block.get("type") == "tool_use":
                number = self.calls.number(int(data.get("index", 0)))
                return [ToolCallDelta(number, block.get("id", ""), block.get("name", ""))]
            if block.get("type") == "text" and block.get("text"):
                return [TextDelta(block["text"])]
            return []
        if kind == "content_block_delta":
            delta = data.get("delta") or {}
            if delta.get("type") == "text_delta":
                return [TextDelta(str(delta.get("text", "")))]
            if delta.get("type") == "input_json_delta":
                number = self.calls.number(int(data.get("index", 0)))
                return [ToolCallDelta(number, arguments=str(delta.get("partial_json", "")))]
            return []
        if kind == "message_delta":
            out: list[Delta] = []
            reason = (data.get("delta") or {}).get("stop_reason")
            self._usage = _usage(data.get("usage"), self._usage)
            out.append(UsageDelta(self._usage))
            if reason:
                out.append(Finished(_FINISH.get(reason, FinishReason.STOP), self._model))
            return out
        if kind == "message_stop":
            self.done = True
        return []


class AnthropicProvider(HttpAdapter):
    """Adapter for the Messages wire format."""

    # Messages continues a trailing assistant turn (prefill).
    continues_answers = True

    def _request(
        self, deployment: Deployment, request: ModelRequest, credential: str | None, stream: bool
    ) -> tuple[str, dict[str, str], dict[str, Any]]:
        url = f"{deployment.base_url or DEFAULT_BASE_URL}/v1/messages"
        headers = request_headers(
            deployment, credential, "x-api-key", "", fixed={"anthropic-version": API_VERSION}
        )
        return url, headers, anthropic_body(deployment, replace(request, stream=stream))

    def parse(self, data: Any, status: int, request: ModelRequest) -> Completion:
        """The answer of a non-streamed response body."""
        return parse_anthropic_message(data, status)

    def chunk_parser(self, request: ModelRequest) -> ChunkParser:
        """A fresh parser for one streamed response."""
        return _EventParser()

"""Anthropic Messages over httpx: tool_use/tool_result blocks, streaming events, cache usage."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from dataclasses import replace
from typing import Any

import httpx

from stepline_router.errors import Outcome, ProviderError
from stepline_router.providers.base import AttemptLimits
from stepline_router.providers.http import (
    NowFn,
    json_or_malformed,
    post_json,
    sse_deltas,
    stream_error,
)
from stepline_router.providers.turns import block_turns
from stepline_router.routes import Deployment
from stepline_router.stream import (
    Delta,
    Finished,
    TextDelta,
    ToolCallDelta,
    UsageDelta,
)
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

__all__ = ["AnthropicProvider", "anthropic_body", "parse_anthropic_message", "tool_input"]

DEFAULT_BASE_URL = "https://api.anthropic.com"
API_VERSION = "2023-06-01"

_FINISH = {
    "end_turn": FinishReason.STOP,
    "stop_sequence": FinishReason.STOP,
    "pause_turn": FinishReason.STOP,
    "max_tokens": FinishReason.LENGTH,
    "tool_use": FinishReason.TOOL_CALLS,
    "refusal": FinishReason.CONTENT_FILTER,
}


def tool_input(text: str) -> dict[str, Any]:
    """A tool call's argument text as the object Anthropic requires (unparsable text kept)."""
    try:
        value = json.loads(text or "{}")
    except ValueError:
        value = None
    # Anthropic requires an object; keep what the model produced so the transcript stays honest.
    return value if isinstance(value, dict) else {"_unparsed_arguments": text}


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
                "input": tool_input(call.arguments_json),
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
    if params.temperature is not None:
        body["temperature"] = params.temperature
    if params.top_p is not None:
        body["top_p"] = params.top_p
    if params.stop:
        body["stop_sequences"] = list(params.stop)
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
        raise ProviderError(
            Outcome.MALFORMED_RESPONSE,
            f"response is not a message ({type(error).__name__}: {error})",
            status_code=status,
        ) from error


class _EventParser:
    """Messages stream events → deltas; the stream ends at `message_stop`."""

    end_marker = "message_stop"

    def __init__(self) -> None:
        self.done = False
        self._usage = Usage()
        # Content block index → tool call number (callers see 0, 1, … in order).
        self._calls: dict[int, int] = {}
        self._model = ""

    @property
    def ended(self) -> bool:
        return self.done

    @property
    def complete(self) -> bool:
        return self.done

    def feed(self, event: str, data: str, status: int) -> list[Delta]:
        payload = json_or_malformed(data, status, event)
        if not isinstance(payload, dict):
            raise ProviderError(
                Outcome.MALFORMED_RESPONSE, f"{event} event is not an object", status_code=status
            )
        try:
            return self._deltas(payload.get("type", event), payload, status)
        except (AttributeError, TypeError, ValueError) as error:
            raise ProviderError(
                Outcome.MALFORMED_RESPONSE,
                f"{event} event has a wrong shape ({type(error).__name__})",
                status_code=status,
            ) from error

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
                number = self._calls.setdefault(int(data.get("index", 0)), len(self._calls))
                return [ToolCallDelta(number, block.get("id", ""), block.get("name", ""))]
            if block.get("type") == "text" and block.get("text"):
                return [TextDelta(block["text"])]
            return []
        if kind == "content_block_delta":
            delta = data.get("delta") or {}
            if delta.get("type") == "text_delta":
                return [TextDelta(str(delta.get("text", "")))]
            if delta.get("type") == "input_json_delta":
                number = self._calls.setdefault(int(data.get("index", 0)), len(self._calls))
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


class AnthropicProvider:
    """Adapter for the Messages wire format."""

    # Messages continues a trailing assistant turn (prefill).
    continues_answers = True
    # Image inputs (`Message.images`) are sent in this wire format.
    sends_images = True

    def __init__(self, client: httpx.AsyncClient, now: NowFn) -> None:
        self._client = client
        self._now = now

    def _request(
        self, deployment: Deployment, request: ModelRequest, credential: str | None, stream: bool
    ) -> tuple[str, dict[str, str], dict[str, Any]]:
        url = f"{deployment.base_url or DEFAULT_BASE_URL}/v1/messages"
        headers = {
            "content-type": "application/json",
            "anthropic-version": API_VERSION,
            **deployment.headers,
        }
        if credential:
            headers["x-api-key"] = credential
        return url, headers, anthropic_body(deployment, replace(request, stream=stream))

    async def complete(
        self,
        deployment: Deployment,
        request: ModelRequest,
        limits: AttemptLimits,
        credential: str | None,
    ) -> Completion:
        """One attempt against `deployment`, not streamed (the router streams with `stream`)."""
        url, headers, body = self._request(deployment, request, credential, stream=False)
        data, status = await post_json(self._client, url, headers, body, limits, self._now())
        return parse_anthropic_message(data, status)

    async def stream(
        self,
        deployment: Deployment,
        request: ModelRequest,
        limits: AttemptLimits,
        credential: str | None,
    ) -> AsyncGenerator[Delta, None]:
        """One streamed attempt against `deployment`."""
        url, headers, body = self._request(deployment, request, credential, stream=True)
        parser = _EventParser()
        async for delta in sse_deltas(self._client, url, headers, body, limits, self._now, parser):
            yield delta

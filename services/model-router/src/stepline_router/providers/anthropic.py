"""Anthropic Messages over httpx: tool_use/tool_result blocks, streaming events, cache usage."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx

from stepline_router.errors import Outcome, ProviderError
from stepline_router.providers.base import AttemptLimits
from stepline_router.providers.http import (
    NowFn,
    StreamState,
    error_from_response,
    httpx_timeout,
    iter_sse,
    json_or_malformed,
    post_json,
    stream_error,
    transport_error,
)
from stepline_router.routes import Deployment
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

__all__ = ["AnthropicProvider", "anthropic_body", "parse_anthropic_message"]

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


def _arguments(text: str) -> dict[str, Any]:
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
    blocks: list[dict[str, Any]] = []
    if message.content:
        blocks.append({"type": "text", "text": message.content})
    for call in message.tool_calls:
        blocks.append(
            {
                "type": "tool_use",
                "id": call.call_id,
                "name": call.name,
                "input": _arguments(call.arguments_json),
            }
        )
    return blocks


def _messages(messages: tuple[Message, ...]) -> list[dict[str, Any]]:
    """User/assistant turns; tool results ride in user turns; same-role neighbours merge."""
    out: list[dict[str, Any]] = []
    for message in messages:
        if message.role is Role.SYSTEM:
            continue
        role = "assistant" if message.role is Role.ASSISTANT else "user"
        blocks = _blocks(message)
        if not blocks:
            continue
        if out and out[-1]["role"] == role:
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": role, "content": blocks})
    return out


def anthropic_body(deployment: Deployment, request: ModelRequest) -> dict[str, Any]:
    """The Messages API request body for `request` on `deployment`."""
    params = request.params
    body: dict[str, Any] = {
        "model": deployment.model,
        "max_tokens": params.max_output_tokens or deployment.capabilities.max_output_tokens,
        "messages": _messages(request.messages),
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
        return Completion("".join(text), tuple(calls), finish, _usage(data.get("usage")), status)
    except (KeyError, TypeError, AttributeError) as error:
        raise ProviderError(
            Outcome.MALFORMED_RESPONSE,
            f"response is not a message ({type(error).__name__}: {error})",
            status_code=status,
        ) from error


class AnthropicProvider:
    """Adapter for the Messages wire format."""

    def __init__(self, client: httpx.AsyncClient, now: NowFn) -> None:
        self._client = client
        self._now = now

    async def complete(
        self,
        deployment: Deployment,
        request: ModelRequest,
        limits: AttemptLimits,
        credential: str | None,
    ) -> Completion:
        """One attempt against `deployment`."""
        url = f"{deployment.base_url or DEFAULT_BASE_URL}/v1/messages"
        headers = {
            "content-type": "application/json",
            "anthropic-version": API_VERSION,
            **deployment.headers,
        }
        if credential:
            headers["x-api-key"] = credential
        body = anthropic_body(deployment, request)
        if request.stream:
            return await self._stream(url, headers, body, limits)
        data, status = await post_json(self._client, url, headers, body, limits, self._now())
        return parse_anthropic_message(data, status)

    async def _stream(
        self, url: str, headers: dict[str, str], body: dict[str, Any], limits: AttemptLimits
    ) -> Completion:
        state = StreamState()
        try:
            async with (
                asyncio.timeout(limits.total_s),
                self._client.stream(
                    "POST", url, json=body, headers=headers, timeout=httpx_timeout(limits)
                ) as response,
            ):
                state.status_code = response.status_code
                if not response.is_success:
                    raw = await response.aread()
                    raise error_from_response(
                        response.status_code, response.headers, raw, self._now()
                    )
                async for event, data in iter_sse(response):
                    _fold_event(state, event, json_or_malformed(data, state.status_code, event))
                    if state.done:
                        break
        except TimeoutError:
            return state.broken(
                ProviderError(Outcome.TIMED_OUT, f"total timeout {limits.total_s:.1f}s")
            )
        except httpx.HTTPError as error:
            return state.broken(transport_error(error))
        except ProviderError as error:
            if error.status_code >= 400:
                raise
            return state.broken(error)
        if not state.done:
            return state.broken(
                ProviderError(Outcome.CONNECTION_FAILED, "stream ended before message_stop")
            )
        return state.completion()


def _fold_event(state: StreamState, event: str, data: Any) -> None:
    if not isinstance(data, dict):
        raise ProviderError(Outcome.MALFORMED_RESPONSE, f"{event} event is not an object")
    kind = data.get("type", event)
    if kind == "error":
        raise stream_error(data.get("error") or {}, state.status_code)
    if kind == "message_start":
        state.usage = _usage((data.get("message") or {}).get("usage"))
    elif kind == "content_block_start":
        block = data.get("content_block") or {}
        if block.get("type") == "tool_use":
            call = state.call(int(data.get("index", 0)))
            call.id, call.name = block.get("id", ""), block.get("name", "")
        elif block.get("type") == "text" and block.get("text"):
            state.text.append(block["text"])
    elif kind == "content_block_delta":
        delta = data.get("delta") or {}
        if delta.get("type") == "text_delta":
            state.text.append(delta.get("text", ""))
        elif delta.get("type") == "input_json_delta":
            state.call(int(data.get("index", 0))).arguments += delta.get("partial_json", "")
    elif kind == "message_delta":
        reason = (data.get("delta") or {}).get("stop_reason")
        if reason:
            state.finish = _FINISH.get(reason, FinishReason.STOP)
        state.usage = _usage(data.get("usage"), state.usage)
    elif kind == "message_stop":
        state.done = True

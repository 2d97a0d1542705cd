"""OpenAI Chat Completions over httpx; with `base_url` also vLLM, Ollama, llama.cpp, OpenRouter."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import httpx

from stepline_router.errors import Outcome, ProviderError
from stepline_router.providers.adapter import HttpAdapter, request_headers
from stepline_router.providers.base import AttemptLimits
from stepline_router.providers.events import (
    SHAPE_ERRORS,
    CallNumbers,
    decoded_object,
    not_a,
    wrong_shape,
)
from stepline_router.providers.fields import sampling, schema_fields
from stepline_router.providers.http import ChunkParser, NowFn, post_json, stream_error
from stepline_router.routes import Deployment, SchemaStyle
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

__all__ = [
    "ChatChunkParser",
    "ChunkCheck",
    "OpenAIProvider",
    "openai_body",
    "openai_embeddings_body",
    "openai_usage",
    "parse_openai_completion",
    "parse_openai_embeddings",
]

DEFAULT_BASE_URL = "https://api.openai.com/v1"
_CHAT_PATH = "/chat/completions"

# Generation settings by their Chat Completions names (the token limit's name varies).
_SAMPLING = {"temperature": "temperature", "top_p": "top_p", "stop": "stop", "seed": "seed"}

_FINISH = {
    "stop": FinishReason.STOP,
    "length": FinishReason.LENGTH,
    "tool_calls": FinishReason.TOOL_CALLS,
    "function_call": FinishReason.TOOL_CALLS,
    "content_filter": FinishReason.CONTENT_FILTER,
}


def _message(message: Message) -> dict[str, Any]:
    if message.role is Role.TOOL:
        return {"role": "tool", "tool_call_id": message.tool_call_id, "content": message.content}
    if message.role is Role.ASSISTANT:
        out: dict[str, Any] = {"role": "assistant", "content": message.content or None}
        if message.tool_calls:
            out["tool_calls"] = [
                {
                    "id": call.call_id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments_json},
                }
                for call in message.tool_calls
            ]
        return out
    if message.images:
        parts: list[dict[str, Any]] = [{"type": "text", "text": message.content}]
        parts += [{"type": "image_url", "image_url": {"url": ref}} for ref in message.images]
        return {"role": message.role.value, "content": parts}
    return {"role": message.role.value, "content": message.content}


def openai_body(
    deployment: Deployment, request: ModelRequest, *, max_tokens_field: str = "max_tokens"
) -> dict[str, Any]:
    """The Chat Completions request body for `request` on `deployment`."""
    params = request.params
    body: dict[str, Any] = {
        "model": deployment.model,
        "messages": [_message(m) for m in request.messages],
    }
    if request.tools:
        body["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": tool.name,
                    "description": tool.description,
                    "parameters": tool.parameters,
                },
            }
            for tool in request.tools
        ]
        if params.tool_choice is ToolChoice.REQUIRED and params.tool_name:
            body["tool_choice"] = {"type": "function", "function": {"name": params.tool_name}}
        else:
            body["tool_choice"] = params.tool_choice.value
    body.update(sampling(params, {"max_output_tokens": max_tokens_field, **_SAMPLING}))
    if params.reasoning_effort:
        body["reasoning_effort"] = params.reasoning_effort
    fmt = params.response_format
    if fmt.type == "json_object":
        body["response_format"] = {"type": "json_object"}
    elif fmt.type == "json_schema" and deployment.schema_style is SchemaStyle.JSON_OBJECT:
        body["response_format"] = {"type": "json_object", "schema": fmt.schema or {}}
    elif fmt.type == "json_schema":
        body["response_format"] = {"type": "json_schema", "json_schema": schema_fields(fmt)}
    if request.stream:
        body["stream"] = True
        # Without this the stream carries no token counts at all.
        body["stream_options"] = {"include_usage": True}
    body.update(params.extra)
    return body


def openai_usage(data: Any) -> Usage:
    """Token counts of a Chat Completions `usage` object (cached and reasoning included)."""
    if not isinstance(data, dict):
        return Usage()
    prompt = data.get("prompt_tokens_details") or {}
    completion = data.get("completion_tokens_details") or {}
    # DeepSeek reports cache hits as `prompt_cache_hit_tokens` instead.
    cached = prompt.get("cached_tokens") or data.get("prompt_cache_hit_tokens")
    return Usage(
        input=int(data.get("prompt_tokens") or 0),
        output=int(data.get("completion_tokens") or 0),
        cached_input=int(cached or 0),
        reasoning=int(completion.get("reasoning_tokens") or 0),
    )


def parse_openai_completion(data: Any, status: int = 200) -> Completion:
    """A `Completion` from a Chat Completions response body (raises on a wrong shape)."""
    try:
        choice = data["choices"][0]
        message = choice["message"]
        calls = tuple(
            ToolCall(c["id"], c["function"]["name"], c["function"].get("arguments") or "{}")
            for c in message.get("tool_calls") or ()
        )
        content = message.get("content") or ""
        finish = _FINISH.get(choice.get("finish_reason") or "stop", FinishReason.STOP)
        if message.get("refusal"):
            content, finish = str(message["refusal"]), FinishReason.CONTENT_FILTER
        return Completion(
            str(content),
            calls,
            finish,
            openai_usage(data.get("usage")),
            status,
            model=str(data.get("model") or ""),
        )
    except (KeyError, IndexError, TypeError, AttributeError) as error:
        raise not_a("a chat completion", error, status) from error


def openai_embeddings_body(deployment: Deployment, request: ModelRequest) -> dict[str, Any]:
    """The `/embeddings` request body (floats asked for: the gateway encodes for its caller)."""
    assert request.embedding is not None
    body: dict[str, Any] = {
        "model": deployment.model,
        "input": [
            item if isinstance(item, str) else list(item) for item in request.embedding.inputs
        ],
        "encoding_format": "float",
    }
    if request.embedding.dimensions is not None:
        body["dimensions"] = request.embedding.dimensions
    return body


def parse_openai_embeddings(data: Any, expected: int, status: int = 200) -> Completion:
    """A `Completion` carrying the vectors of an `/embeddings` response, in input order."""
    try:
        items = sorted(data["data"], key=lambda item: int(item.get("index", 0)))
        vectors = tuple(tuple(float(x) for x in item["embedding"]) for item in items)
        usage = data.get("usage") or {}
        tokens = int(usage.get("prompt_tokens") or usage.get("total_tokens") or 0)
    except SHAPE_ERRORS as error:
        raise not_a("an embeddings list", error, status) from error
    if len(vectors) != expected:
        raise ProviderError(
            Outcome.MALFORMED_RESPONSE,
            f"{len(vectors)} embeddings for {expected} inputs",
            status_code=status,
        )
    return Completion("", usage=Usage(input=tokens), status_code=status, embeddings=vectors)


# A look at each decoded stream chunk before it is parsed (a provider's own refusals).
ChunkCheck = Callable[[dict[str, Any], int], None]


class ChatChunkParser:
    """Chat Completions chunks → deltas; the stream ends at `[DONE]`."""

    end_marker = "[DONE]"

    def __init__(self, check: ChunkCheck | None = None) -> None:
        self.done = False
        self.finished = False
        self._calls = CallNumbers()
        self._check = check

    @property
    def ended(self) -> bool:
        """Whether `[DONE]` came."""
        return self.done

    @property
    def complete(self) -> bool:
        """Whole at `[DONE]` or, since some compatible servers never send it, a finish reason."""
        return self.done or self.finished

    def feed(self, event: str, data: str, status: int) -> list[Delta]:
        """The deltas of one chunk; `ProviderError` for a malformed or error chunk."""
        if data.strip() == "[DONE]":
            self.done = True
            return []
        chunk = decoded_object(data, status, "stream chunk")
        if "error" in chunk:
            raise stream_error(chunk["error"], status)
        if self._check is not None:
            self._check(chunk, status)
        out: list[Delta] = []
        try:
            for choice in chunk.get("choices") or ():
                delta = choice.get("delta") or {}
                if delta.get("content"):
                    out.append(TextDelta(str(delta["content"])))
                if delta.get("refusal"):
                    out.append(TextDelta(str(delta["refusal"])))
                for part in delta.get("tool_calls") or ():
                    # Providers number calls by their own index; callers get 0, 1, … in order.
                    index = self._calls.number(int(part.get("index", 0)))
                    function = part.get("function") or {}
                    out.append(
                        ToolCallDelta(
                            index,
                            part.get("id") or "",
                            function.get("name") or "",
                            function.get("arguments") or "",
                        )
                    )
                if choice.get("finish_reason"):
                    self.finished = True
                    reason = _FINISH.get(choice["finish_reason"], FinishReason.STOP)
                    out.append(Finished(reason, str(chunk.get("model") or "")))
                elif delta.get("refusal"):
                    out.append(Finished(FinishReason.CONTENT_FILTER))
        except (AttributeError, TypeError, ValueError) as error:
            raise wrong_shape("stream chunk", error, status) from error
        if chunk.get("usage"):
            out.append(UsageDelta(openai_usage(chunk["usage"])))
        return out


class OpenAIProvider(HttpAdapter):
    """Adapter for the Chat Completions wire format."""

    # Chat Completions answers a trailing assistant turn anew.
    continues_answers = False

    def __init__(
        self,
        client: httpx.AsyncClient,
        now: NowFn,
        *,
        max_tokens_field: str = "max_tokens",
        stream_usage: bool = True,
        renamed: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(client, now)
        # OpenAI itself wants `max_completion_tokens`; most compatible servers `max_tokens`.
        self._max_tokens_field = max_tokens_field
        # Quirks of compatible services (see stepline_routes.presets): whether to ask for
        # usage on streams, and request fields they spell differently.
        self._stream_usage = stream_usage
        self._renamed = dict(renamed or {})

    def endpoint(
        self, deployment: Deployment, credential: str | None
    ) -> tuple[str, dict[str, str]]:
        """The Chat Completions URL of `deployment` and its headers (credential included)."""
        url = f"{deployment.base_url or DEFAULT_BASE_URL}/chat/completions"
        return url, request_headers(deployment, credential)

    def parse(self, data: Any, status: int, request: ModelRequest) -> Completion:
        """The answer of a non-streamed response body."""
        return parse_openai_completion(data, status)

    def chunk_parser(self, request: ModelRequest) -> ChunkParser:
        """A fresh parser for one streamed response."""
        return ChatChunkParser()

    def _request(
        self, deployment: Deployment, request: ModelRequest, credential: str | None, stream: bool
    ) -> tuple[str, dict[str, str], dict[str, Any]]:
        url, headers = self.endpoint(deployment, credential)
        if request.stream is not stream:
            request = replace(request, stream=stream)
        body = openai_body(deployment, request, max_tokens_field=self._max_tokens_field)
        if not self._stream_usage:
            body.pop("stream_options", None)
        for ours, theirs in self._renamed.items():
            if ours in body:
                body[theirs] = body.pop(ours)
        return url, headers, body

    async def embed(
        self,
        deployment: Deployment,
        request: ModelRequest,
        limits: AttemptLimits,
        credential: str | None,
    ) -> Completion:
        """One embeddings attempt against `deployment`: `/embeddings` beside the deployment's
        `/chat/completions` (its query and headers kept, so Azure's deployment URLs work too)."""
        assert request.embedding is not None
        chat, headers = self.endpoint(deployment, credential)
        path, _, query = chat.partition("?")
        if not path.endswith(_CHAT_PATH):
            raise ProviderError(
                Outcome.BAD_REQUEST, f"{deployment.name}: no embeddings endpoint beside {path}"
            )
        url = path.removesuffix(_CHAT_PATH) + "/embeddings" + (f"?{query}" if query else "")
        body = openai_embeddings_body(deployment, request)
        data, status = await post_json(
            self._client, url, headers, body, limits, self._now(), errors=self.errors
        )
        return parse_openai_embeddings(data, len(request.embedding.inputs), status)

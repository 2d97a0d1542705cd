"""`tool_mode = "json"`: tool calling for a model without it, through constrained JSON output.

The tools are described in the prompt and the model must answer with one JSON object that a
JSON schema `response_format` constrains (llama.cpp turns it into a grammar; vLLM and Ollama
into guided decoding): `{"tool": NAME, "arguments": {...}}` to call a tool, or
`{"answer": ...}` to answer. The router parses the tool call back out; output that is not such
an object is a model error (`MALFORMED_RESPONSE`: retried, then failed over), never passed on.
A streamed attempt is read whole before anything is handed on: the JSON is not the answer.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import replace
from typing import Any

from stepline_router.errors import Outcome, ProviderError
from stepline_router.providers.base import AttemptLimits, Provider
from stepline_router.providers.http import safe_text
from stepline_router.routes import Deployment, ToolMode
from stepline_router.stream import Delta, Opened, StreamFold, UsageDelta, completion_deltas
from stepline_router.types import (
    Completion,
    FinishReason,
    Message,
    ModelRequest,
    ResponseFormat,
    Role,
    ToolCall,
    ToolChoice,
)

__all__ = [
    "JsonToolProvider",
    "json_tool_request",
    "parse_json_tool_answer",
    "uses_json_tools",
]

_SCHEMA_NAME = "tool_call_or_answer"


def uses_json_tools(deployment: Deployment, request: ModelRequest) -> bool:
    """Whether `request` goes to `deployment` through JSON tool mode (tools or tool turns)."""
    if deployment.tool_mode is not ToolMode.JSON:
        return False
    return bool(request.tools) or any(m.role is Role.TOOL or m.tool_calls for m in request.messages)


def _offered(request: ModelRequest) -> tuple[dict[str, Any], ...]:
    """The tools the model may call now, as schema branches."""
    params = request.params
    if params.tool_choice is ToolChoice.NONE:
        return ()
    return tuple(
        {
            "type": "object",
            "properties": {"tool": {"type": "string", "enum": [t.name]}, "arguments": t.parameters},
            "required": ["tool", "arguments"],
        }
        for t in request.tools
        if not params.tool_name or t.name == params.tool_name
    )


def _schema(request: ModelRequest) -> dict[str, Any]:
    branches = list(_offered(request))
    if request.params.tool_choice is not ToolChoice.REQUIRED or not branches:
        fmt = request.params.response_format
        answer = fmt.schema if fmt.type == "json_schema" and fmt.schema else {"type": "string"}
        branches.append(
            {"type": "object", "properties": {"answer": answer}, "required": ["answer"]}
        )
    return branches[0] if len(branches) == 1 else {"anyOf": branches}


def _instructions(request: ModelRequest) -> str:
    offered = {b["properties"]["tool"]["enum"][0] for b in _offered(request)}
    tools = [t for t in request.tools if t.name in offered]
    lines = ["Reply with exactly one JSON object and nothing else."]
    if tools:
        lines.append(
            'To call a tool: {"tool": "<tool name>", "arguments": {<arguments>}}. '
            'To answer the user: {"answer": "<your answer>"}.'
            if request.params.tool_choice is not ToolChoice.REQUIRED
            else 'Call one tool: {"tool": "<tool name>", "arguments": {<arguments>}}.'
        )
        lines.append("Tools:")
        lines.extend(
            f"- {t.name}: {t.description} Arguments (JSON schema): "
            f"{json.dumps(t.parameters, separators=(',', ':'))}"
            for t in tools
        )
    else:
        lines.append('Answer the user: {"answer": "<your answer>"}.')
    return "\n".join(lines)


def _history(messages: tuple[Message, ...]) -> list[Message]:
    """Tool turns as plain turns: a chat template without tool roles can render them."""
    names: dict[str, str] = {}
    out: list[Message] = []
    for message in messages:
        if message.tool_calls:
            if message.content:
                out.append(Message(Role.ASSISTANT, json.dumps({"answer": message.content})))
            for call in message.tool_calls:
                names[call.call_id] = call.name
                out.append(Message(Role.ASSISTANT, _call_json(call)))
        elif message.role is Role.TOOL:
            name = names.get(message.tool_call_id, "the tool")
            out.append(Message(Role.USER, f"Result of {name}: {message.content}"))
        else:
            out.append(message)
    return out


def _call_json(call: ToolCall) -> str:
    try:
        arguments = json.loads(call.arguments_json or "{}")
    except ValueError:
        arguments = call.arguments_json
    return json.dumps({"tool": call.name, "arguments": arguments})


def json_tool_request(request: ModelRequest) -> ModelRequest:
    """`request` as a deployment in JSON tool mode gets it: no tools, a schema-bound answer."""
    history = _history(request.messages)
    instructions = _instructions(request)
    if history and history[0].role is Role.SYSTEM:
        history[0] = replace(history[0], content=f"{history[0].content}\n\n{instructions}")
    else:
        history.insert(0, Message(Role.SYSTEM, instructions))
    fmt = ResponseFormat(type="json_schema", schema=_schema(request), name=_SCHEMA_NAME)
    params = replace(request.params, tool_choice=ToolChoice.AUTO, tool_name="", response_format=fmt)
    return replace(request, messages=tuple(history), tools=(), params=params)


def _malformed(completion: Completion, why: str) -> ProviderError:
    cut = " (cut at max_tokens)" if completion.finish_reason is FinishReason.LENGTH else ""
    return ProviderError(
        Outcome.MALFORMED_RESPONSE,
        f"tool_mode json: {why}{cut}: {safe_text(completion.content[:200])!r}",
        status_code=completion.status_code,
        usage=completion.usage,
    )


def parse_json_tool_answer(completion: Completion, request: ModelRequest) -> Completion:
    """The tool call or answer in a JSON tool mode reply; `ProviderError` when it is neither."""
    if completion.incomplete:
        return completion
    try:
        data = json.loads(completion.content)
    except ValueError:
        raise _malformed(completion, "the model's output is not valid JSON") from None
    if not isinstance(data, dict):
        raise _malformed(completion, "the model's output is not a JSON object")
    offered = {b["properties"]["tool"]["enum"][0] for b in _offered(request)}
    if "tool" in data:
        name, arguments = data.get("tool"), data.get("arguments", {})
        if name not in offered:
            raise _malformed(completion, f"the model called {name!r}, not an offered tool")
        if not isinstance(arguments, dict):
            raise _malformed(completion, "the tool call's arguments are not a JSON object")
        # Deterministic: a redelivered call that gets the same output names the same call.
        digest = hashlib.sha256(f"{request.call_id}\x1f{completion.content}".encode()).hexdigest()
        call = ToolCall(f"call_{digest[:24]}", str(name), json.dumps(arguments))
        return replace(
            completion, content="", tool_calls=(call,), finish_reason=FinishReason.TOOL_CALLS
        )
    if "answer" in data and (request.params.tool_choice is not ToolChoice.REQUIRED or not offered):
        answer = data["answer"]
        text = answer if isinstance(answer, str) else json.dumps(answer)
        return replace(completion, content=text, tool_calls=())
    raise _malformed(completion, 'the model\'s output has neither "tool" nor "answer"')


class JsonToolProvider:
    """Wraps a provider so a deployment in JSON tool mode serves tool-calling requests."""

    continues_answers = False

    def __init__(self, inner: Provider) -> None:
        self._inner = inner

    async def complete(
        self,
        deployment: Deployment,
        request: ModelRequest,
        limits: AttemptLimits,
        credential: str | None,
    ) -> Completion:
        """One attempt in JSON tool mode: the parsed tool call or answer."""
        answer = await self._inner.complete(
            deployment, json_tool_request(request), limits, credential
        )
        return parse_json_tool_answer(answer, request)

    async def stream(
        self,
        deployment: Deployment,
        request: ModelRequest,
        limits: AttemptLimits,
        credential: str | None,
    ) -> AsyncGenerator[Delta, None]:
        """One streamed attempt, read whole, then handed on as the parsed answer's deltas."""
        fold = StreamFold()
        deltas = self._inner.stream(deployment, json_tool_request(request), limits, credential)
        async with aclosing(deltas):
            async for delta in deltas:
                fold.add(delta)
                if isinstance(delta, Opened):
                    yield delta
        for delta in completion_deltas(parse_json_tool_answer(fold.completion(), request)):
            if fold.usage_seen or not isinstance(delta, UsageDelta):
                # No counts from the server: left for the router to estimate, not zero.
                yield delta

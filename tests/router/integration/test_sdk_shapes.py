"""The bodies we send and the fakes we parse, validated against the official SDK types."""

from __future__ import annotations

import json
from typing import Any

from anthropic.types import Message as AnthropicMessage
from anthropic.types import RawMessageStreamEvent
from anthropic.types.message_create_params import MessageCreateParamsNonStreaming
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.chat.completion_create_params import (
    CompletionCreateParamsNonStreaming,
    CompletionCreateParamsStreaming,
)
from pydantic import TypeAdapter

from stepline_router.providers.anthropic import anthropic_body
from stepline_router.providers.openai import openai_body
from stepline_router.routes import Deployment
from stepline_router.types import Message, Params, Role, ToolCall, ToolChoice
from tests.router.fakes import (
    anthropic_events,
    anthropic_message,
    openai_chunks,
    openai_completion,
)
from tests.router.support import request, weather_tool

TRANSCRIPT = (
    Message(Role.SYSTEM, "be brief"),
    Message(Role.USER, "weather in Oslo?"),
    Message(Role.ASSISTANT, "checking", (ToolCall("call_1", "get_weather", '{"city":"Oslo"}'),)),
    Message(Role.TOOL, "sunny", tool_call_id="call_1"),
    Message(Role.USER, "and Rome?"),
)


def _strict(adapter: TypeAdapter[Any], body: dict[str, Any]) -> None:
    """Validate, and make sure no key we send is unknown to the SDK type."""
    validated = adapter.validate_python(body)
    assert set(body) <= set(validated)


def test_openai_request_bodies_match_the_sdk_params() -> None:
    deployment = Deployment("d", "openai", "gpt-4o-mini")
    req = request(
        tools=(weather_tool(),),
        params=Params(max_output_tokens=50, temperature=0.2, seed=3, stop=("END",)),
    )
    from dataclasses import replace

    req = replace(req, messages=TRANSCRIPT)
    body = openai_body(deployment, req, max_tokens_field="max_completion_tokens")
    _strict(TypeAdapter(CompletionCreateParamsNonStreaming), body)
    streaming = openai_body(deployment, replace(req, stream=True))
    _strict(TypeAdapter(CompletionCreateParamsStreaming), streaming)
    forced = openai_body(
        deployment,
        replace(req, params=Params(tool_choice=ToolChoice.REQUIRED, tool_name="get_weather")),
    )
    _strict(TypeAdapter(CompletionCreateParamsNonStreaming), forced)


def test_anthropic_request_bodies_match_the_sdk_params() -> None:
    from dataclasses import replace

    deployment = Deployment("d", "anthropic", "claude-haiku-4-5")
    req = replace(request(tools=(weather_tool(),)), messages=TRANSCRIPT)
    body = anthropic_body(deployment, req)
    _strict(TypeAdapter(MessageCreateParamsNonStreaming), body)
    # tool result rides in a user turn, and the next user text merges into the same turn
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    assert body["messages"][2]["content"][0]["type"] == "tool_result"
    for choice in (ToolChoice.NONE, ToolChoice.REQUIRED):
        _strict(
            TypeAdapter(MessageCreateParamsNonStreaming),
            anthropic_body(deployment, replace(req, params=Params(tool_choice=choice))),
        )


def test_fake_openai_server_speaks_the_real_format() -> None:
    ChatCompletion.model_validate(openai_completion(None, [("c", "get_weather", "{}")]))
    for event in openai_chunks(["a"], [("c", "get_weather", ['{"ci', 'ty": 1}'])]):
        data = event.removeprefix("data: ")
        if data != "[DONE]":
            ChatCompletionChunk.model_validate(json.loads(data))


def test_fake_anthropic_server_speaks_the_real_format() -> None:
    AnthropicMessage.model_validate(
        anthropic_message("x", [("t", "get_weather", {"city": "Oslo"})], cache_read=3)
    )
    adapter: TypeAdapter[Any] = TypeAdapter(RawMessageStreamEvent)
    for event in anthropic_events(["a"], ("t", "get_weather", ['{"city"', ': "Oslo"}'])):
        name, data = event.split("\n", 1)
        if name != "event: ping":
            adapter.validate_python(json.loads(data.removeprefix("data: ")))

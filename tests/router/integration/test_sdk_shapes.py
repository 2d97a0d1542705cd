"""The bodies we send and the fakes we parse, validated against the official SDK types."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any, get_args

import pytest
from anthropic.types import Message as AnthropicMessage
from anthropic.types import RawMessageStreamEvent
from anthropic.types.message_create_params import MessageCreateParamsNonStreaming
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.chat.completion_create_params import (
    CompletionCreateParamsNonStreaming,
    CompletionCreateParamsStreaming,
)
from openai.types.responses import Response, ResponseStreamEvent
from openai.types.responses.response_create_params import (
    ResponseCreateParamsNonStreaming,
    ResponseCreateParamsStreaming,
)
from pydantic import BaseModel, TypeAdapter

from stepline_router.providers.anthropic import anthropic_body
from stepline_router.providers.openai import openai_body
from stepline_router.providers.responses import parse_response, responses_body
from stepline_router.routes import Deployment
from stepline_router.types import (
    FinishReason,
    Message,
    Params,
    ResponseFormat,
    Role,
    ToolCall,
    ToolChoice,
)
from tests.router.fakes import (
    anthropic_events,
    anthropic_message,
    openai_chunks,
    openai_completion,
)
from tests.router.responses_fakes import (
    response_body,
    response_error_event,
    response_events,
    response_failed,
)
from tests.router.support import TOOL_TRANSCRIPT, request, weather_tool

TRANSCRIPT = TOOL_TRANSCRIPT


def _strict(adapter: TypeAdapter[Any], body: dict[str, Any]) -> None:
    """Validate, and make sure no key we send (nor one of a message's) is unknown to the SDK."""
    validated = adapter.validate_python(body)
    assert set(body) <= set(validated)
    for key in ("messages", "input"):
        for sent, checked in zip(body.get(key, ()), validated.get(key, ()), strict=True):
            assert set(sent) <= set(checked), sent


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


# Built once: the Responses request TypedDicts are large.
RESPONSES: TypeAdapter[Any] = TypeAdapter(ResponseCreateParamsNonStreaming)
RESPONSES_STREAMING: TypeAdapter[Any] = TypeAdapter(ResponseCreateParamsStreaming)
RESPONSES_DEPLOYMENT = Deployment("d", "openai_responses", "o4-mini")


@pytest.mark.parametrize(
    "params",
    [
        Params(max_output_tokens=50, temperature=0.2, top_p=0.9, reasoning_effort="low"),
        Params(tool_choice=ToolChoice.REQUIRED, tool_name="get_weather"),
        Params(tool_choice=ToolChoice.NONE),
        Params(response_format=ResponseFormat("json_schema", {"type": "object"}, "answer")),
        Params(response_format=ResponseFormat("json_object")),
    ],
)
def test_responses_request_bodies_match_the_sdk_params(params: Params) -> None:
    req = replace(request(tools=(weather_tool(),), params=params), messages=TOOL_TRANSCRIPT)
    _strict(RESPONSES, responses_body(RESPONSES_DEPLOYMENT, req))
    streaming = responses_body(RESPONSES_DEPLOYMENT, replace(req, stream=True))
    _strict(RESPONSES_STREAMING, streaming)
    assert [item.get("type") for item in streaming["input"]] == [
        "message",
        "message",
        "function_call",
        "function_call_output",
        "message",
    ]


def test_responses_image_inputs_match_the_sdk_params() -> None:
    url = "https://images.example.test/cat.jpg"
    seen = Message(Role.USER, "What is this?", images=("data:image/png;base64,iVBORw0K", url))
    body = responses_body(RESPONSES_DEPLOYMENT, replace(request(), messages=(seen,)))
    _strict(RESPONSES, body)
    (message,) = body["input"]
    validated = RESPONSES.validate_python(body)["input"][0]["content"]
    for sent, checked in zip(message["content"], validated, strict=True):
        assert sent == checked  # every part as the SDK types it, no key unknown to them


def test_fake_responses_server_answers_are_sdk_responses() -> None:
    bodies = [
        response_body("hi", [("c", "get_weather", "{}")], cached=3, reasoning=2),
        response_body("partial", status="incomplete", incomplete="max_output_tokens"),
        response_body("no", refusal=True),
    ]
    for body in bodies:
        Response.model_validate(body)
    # And what the SDK itself would serialise parses the same.
    sdk = Response.model_validate(bodies[0]).model_dump(mode="json")
    completion = parse_response(sdk)
    assert completion.tool_calls == (ToolCall("c", "get_weather", "{}"),)
    assert (completion.usage.cached_input, completion.usage.reasoning) == (3, 2)
    assert parse_response(bodies[2]).finish_reason is FinishReason.CONTENT_FILTER


def _event_types() -> dict[str, type[BaseModel]]:
    """Each stream event class of the SDK by its `type` (the union's discriminator)."""
    union = get_args(ResponseStreamEvent)[0]
    return {get_args(c.model_fields["type"].annotation)[0]: c for c in get_args(union)}


def test_fake_responses_server_events_are_sdk_stream_events() -> None:
    classes = _event_types()
    events = response_events(["a", "b"], ("c", "get_weather", ['{"ci', 'ty": 1}']), cached=1)
    events += response_events(["x"], status="incomplete", incomplete="content_filter")
    events += [response_failed("server_error", "boom"), response_error_event("e", "boom")]
    for event in events:
        name, data = event.split("\n", 1)
        payload = json.loads(data.removeprefix("data: "))
        assert name == f"event: {payload['type']}"
        classes[payload["type"]].model_validate(payload)

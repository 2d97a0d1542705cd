"""Responses API bodies we send and the test server's answers, against the `openai` SDK types."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any, get_args

import pytest
from openai.types.responses import Response, ResponseStreamEvent
from openai.types.responses.response_create_params import (
    ResponseCreateParamsNonStreaming,
    ResponseCreateParamsStreaming,
)
from pydantic import BaseModel, TypeAdapter

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
from tests.router.responses_fakes import (
    response_body,
    response_error_event,
    response_events,
    response_failed,
)
from tests.router.support import request, weather_tool

DEPLOYMENT = Deployment("d", "openai_responses", "o4-mini")
TRANSCRIPT = (
    Message(Role.SYSTEM, "be brief"),
    Message(Role.USER, "weather in Oslo?"),
    Message(Role.ASSISTANT, "checking", (ToolCall("call_1", "get_weather", '{"city":"Oslo"}'),)),
    Message(Role.TOOL, "sunny", tool_call_id="call_1"),
    Message(Role.USER, "and Rome?"),
)

# Built once: the request TypedDicts are large.
NON_STREAMING: TypeAdapter[Any] = TypeAdapter(ResponseCreateParamsNonStreaming)
STREAMING: TypeAdapter[Any] = TypeAdapter(ResponseCreateParamsStreaming)


def _strict(adapter: TypeAdapter[Any], body: dict[str, Any]) -> None:
    """Validate, and make sure no key we send is unknown to the SDK type."""
    validated = adapter.validate_python(body)
    assert set(body) <= set(validated)
    for sent, checked in zip(body["input"], validated["input"], strict=True):
        assert set(sent) <= set(checked), sent


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
def test_request_bodies_match_the_sdk_params(params: Params) -> None:
    req = replace(request(tools=(weather_tool(),), params=params), messages=TRANSCRIPT)
    _strict(NON_STREAMING, responses_body(DEPLOYMENT, req))
    streaming = responses_body(DEPLOYMENT, replace(req, stream=True))
    _strict(STREAMING, streaming)
    assert [item.get("type") for item in streaming["input"]] == [
        "message",
        "message",
        "function_call",
        "function_call_output",
        "message",
    ]


def test_the_test_servers_responses_are_sdk_responses() -> None:
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


def test_the_test_servers_events_are_sdk_stream_events() -> None:
    classes = _event_types()
    events = response_events(["a", "b"], ("c", "get_weather", ['{"ci', 'ty": 1}']), cached=1)
    events += response_events(["x"], status="incomplete", incomplete="content_filter")
    events += [response_failed("server_error", "boom"), response_error_event("e", "boom")]
    for event in events:
        name, data = event.split("\n", 1)
        payload = json.loads(data.removeprefix("data: "))
        assert name == f"event: {payload['type']}"
        classes[payload["type"]].model_validate(payload)

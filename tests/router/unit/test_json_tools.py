"""tool_mode = "json": tools through constrained JSON output, parsed back into tool calls."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from stepline_router.clock import ManualClock
from stepline_router.credentials import StaticCredentials
from stepline_router.errors import Outcome, ProviderError
from stepline_router.providers.json_tools import json_tool_request, parse_json_tool_answer
from stepline_router.providers.scripted import ScriptedProvider, ScriptedStream
from stepline_router.router import CallSucceeded, Router
from stepline_router.stream import Finished, Opened, TextDelta, ToolCallDelta, UsageDelta
from stepline_router.types import (
    Completion,
    FinishReason,
    Message,
    Params,
    Role,
    ToolCall,
    ToolChoice,
    Usage,
)
from tests.router.support import BOOK, request, routes, weather_tool

ROUTES = routes(
    '[deployments.small]\nprovider = "scripted"\nmodel = "cheap"\ntool_mode = "json"\n'
    "capabilities = { tools = false }\n"
    '[deployments.big]\nprovider = "scripted"\nmodel = "dear"\n'
    '[routes.default]\ndeployments = ["small", "big"]\n',
    defaults="retries_per_deployment = 0",
)
CALL = '{"tool": "get_weather", "arguments": {"city": "Paris"}}'


def _router(scripted: ScriptedProvider) -> Router:
    return Router(
        routes=lambda: ROUTES,
        prices=lambda: BOOK,
        providers={"scripted": scripted},
        credentials=StaticCredentials({}),
        clock=ManualClock(),
        random=lambda: 0.5,
    )


def test_the_request_carries_no_tools_and_a_schema_of_call_or_answer() -> None:
    sent = json_tool_request(request(tools=(weather_tool(),)))
    assert sent.tools == ()
    fmt = sent.params.response_format
    assert fmt.type == "json_schema"
    assert fmt.schema is not None
    tool, answer = fmt.schema["anyOf"]
    assert tool["properties"]["tool"] == {"type": "string", "enum": ["get_weather"]}
    assert tool["properties"]["arguments"] == weather_tool().parameters
    assert answer["required"] == ["answer"]
    assert "get_weather: Current weather for a city" in sent.messages[0].content
    assert sent.messages[0].content.startswith("be brief")  # the caller's system prompt first


def test_a_required_tool_has_no_answer_branch() -> None:
    params = Params(tool_choice=ToolChoice.REQUIRED, tool_name="get_weather")
    schema = json_tool_request(request(tools=(weather_tool(),), params=params))
    assert schema.params.response_format.schema is not None
    assert schema.params.response_format.schema["required"] == ["tool", "arguments"]


def test_tool_turns_become_plain_turns() -> None:
    base = request(tools=(weather_tool(),))
    history = (
        *base.messages,
        Message(Role.ASSISTANT, "", (ToolCall("c1", "get_weather", '{"city":"Oslo"}'),)),
        Message(Role.TOOL, "-3 C, snow", tool_call_id="c1"),
    )
    sent = json_tool_request(replace(base, messages=history))
    assert [m.role for m in sent.messages] == [Role.SYSTEM, Role.USER, Role.ASSISTANT, Role.USER]
    assert json.loads(sent.messages[2].content) == {
        "tool": "get_weather",
        "arguments": {"city": "Oslo"},
    }
    assert sent.messages[3].content == "Result of get_weather: -3 C, snow"


def test_parsing_a_call_an_answer_and_garbage() -> None:
    ask = request(tools=(weather_tool(),))
    call = parse_json_tool_answer(Completion(CALL, usage=Usage(5, 5)), ask)
    assert call.finish_reason is FinishReason.TOOL_CALLS
    assert call.content == ""
    assert (call.tool_calls[0].name, json.loads(call.tool_calls[0].arguments_json)) == (
        "get_weather",
        {"city": "Paris"},
    )
    # Deterministic ids: the same call and output name the same tool call on redelivery.
    assert (
        call.tool_calls[0].call_id
        == parse_json_tool_answer(Completion(CALL), ask).tool_calls[0].call_id
    )
    answer = parse_json_tool_answer(Completion('{"answer": "It is sunny."}'), ask)
    assert (answer.content, answer.tool_calls) == ("It is sunny.", ())


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        ('{"tool": "get_weather", "arguments": {"city": "Pa', "not valid JSON"),
        ('["get_weather"]', "not a JSON object"),
        ('{"tool": "rm_rf", "arguments": {}}', "not an offered tool"),
        ('{"tool": "get_weather", "arguments": "Paris"}', "arguments are not a JSON object"),
        ('{"city": "Paris"}', 'neither "tool" nor "answer"'),
    ],
)
def test_output_that_is_neither_a_call_nor_an_answer_is_a_model_error(bad: str, why: str) -> None:
    with pytest.raises(ProviderError) as raised:
        parse_json_tool_answer(Completion(bad, usage=Usage(9, 9)), request(tools=(weather_tool(),)))
    assert raised.value.outcome is Outcome.MALFORMED_RESPONSE
    assert why in raised.value.message
    assert raised.value.usage == Usage(9, 9)  # the failed attempt is still billed


async def test_a_json_mode_deployment_answers_a_tool_request_with_a_parsed_call() -> None:
    scripted = ScriptedProvider(per_deployment={"small": [Completion(CALL, usage=Usage(50, 12))]})
    outcome = await _router(scripted).complete(request(tools=(weather_tool(),)))
    assert isinstance(outcome, CallSucceeded)
    assert outcome.deployment.name == "small"
    assert outcome.completion.tool_calls[0].name == "get_weather"
    sent = scripted.calls[0].request
    assert sent.tools == ()
    assert sent.params.response_format.type == "json_schema"


async def test_invalid_json_fails_over_with_a_clear_error() -> None:
    scripted = ScriptedProvider(
        per_deployment={
            "small": [Completion("Sure! The weather in Paris", usage=Usage(50, 6))],
            "big": [Completion("", (ToolCall("x1", "get_weather", '{"city":"Paris"}'),))],
        }
    )
    outcome = await _router(scripted).complete(request(tools=(weather_tool(),)))
    assert isinstance(outcome, CallSucceeded)
    assert outcome.deployment.name == "big"
    failed = outcome.attempts[0]
    assert failed.outcome is Outcome.MALFORMED_RESPONSE
    assert "tool_mode json: the model's output is not valid JSON" in failed.error
    assert failed.usage == Usage(50, 6)
    assert failed.cost is not None
    assert failed.cost > 0
    assert scripted.calls[1].request.tools == (weather_tool(),)  # native tools on `big`


async def test_a_streamed_json_mode_answer_is_handed_on_as_a_tool_call_only() -> None:
    pieces = [CALL[:10], CALL[10:30], CALL[30:]]
    stream = ScriptedStream(
        (
            Opened(200),
            *(TextDelta(p) for p in pieces),
            UsageDelta(Usage(40, 20)),
            Finished(FinishReason.STOP),
        )
    )
    scripted = ScriptedProvider(per_deployment={"small": [stream]})
    call = _router(scripted).stream(request(tools=(weather_tool(),), stream=True))
    deltas = [d async for d in call]
    assert not any(isinstance(d, TextDelta) and d.text for d in deltas)  # never the raw JSON
    assert [d.name for d in deltas if isinstance(d, ToolCallDelta) and d.name] == ["get_weather"]
    assert isinstance(call.outcome, CallSucceeded)
    assert call.outcome.completion.finish_reason is FinishReason.TOOL_CALLS
    assert call.outcome.attempts[0].usage == Usage(40, 20)


async def test_plain_requests_reach_a_json_mode_deployment_unchanged() -> None:
    scripted = ScriptedProvider(per_deployment={"small": [Completion("hi")]})
    outcome = await _router(scripted).complete(request())
    assert isinstance(outcome, CallSucceeded)
    assert outcome.completion.content == "hi"
    assert scripted.calls[0].request.params.response_format.type == "text"

"""tool_mode = "json" over real HTTP: what a local OpenAI-compatible fake receives and answers."""

from __future__ import annotations

import json

import httpx
import pytest

from stepline_router.credentials import StaticCredentials
from stepline_router.errors import Outcome
from stepline_router.router import CallSucceeded, Router
from stepline_router.routes import RoutesConfig
from stepline_router.stream import TextDelta, ToolCallDelta
from tests.router.fakes import FakeProvider, Reply, openai_chunks, openai_completion
from tests.router.support import http_router, request, routes, weather_tool

CALL = {"tool": "get_weather", "arguments": {"city": "Paris"}}


def _config(small: str, big: str, style: str = "openai") -> RoutesConfig:
    return routes(
        f'[deployments.small]\nprovider = "openai_compatible"\nmodel = "small-model"\n'
        f'base_url = "{small}"\ntool_mode = "json"\nschema_style = "{style}"\n'
        "capabilities = { tools = false }\n"
        f'[deployments.big]\nprovider = "openai"\nmodel = "gpt-4o-mini"\nbase_url = "{big}"\n'
        '[routes.default]\ndeployments = ["small", "big"]\n',
        defaults="retries_per_deployment = 0",
    )


def _router(config: RoutesConfig, client: httpx.AsyncClient) -> Router:
    return http_router(config, client, StaticCredentials({}))


@pytest.mark.parametrize("style", ["openai", "json_object"])
async def test_the_wire_carries_a_schema_and_no_tools_and_the_call_comes_back(
    servers: tuple[FakeProvider, FakeProvider], client: httpx.AsyncClient, style: str
) -> None:
    small, big = servers
    small.queue(Reply(body=openai_completion(json.dumps(CALL), model="small-model")))
    outcome = await _router(_config(small.url, big.url, style), client).complete(
        request(tools=(weather_tool(),))
    )
    assert isinstance(outcome, CallSucceeded)
    (call,) = outcome.completion.tool_calls
    assert (call.name, json.loads(call.arguments_json)) == ("get_weather", {"city": "Paris"})
    (sent,) = small.received
    assert "tools" not in sent.body
    assert "tool_choice" not in sent.body
    fmt = sent.body["response_format"]
    schema = fmt["json_schema"]["schema"] if style == "openai" else fmt["schema"]
    assert fmt["type"] == ("json_schema" if style == "openai" else "json_object")
    assert [b["required"] for b in schema["anyOf"]] == [["tool", "arguments"], ["answer"]]
    assert "get_weather" in sent.body["messages"][0]["content"]
    assert big.received == []


async def test_prose_instead_of_json_fails_over_to_native_tools(
    servers: tuple[FakeProvider, FakeProvider], client: httpx.AsyncClient
) -> None:
    small, big = servers
    small.queue(Reply(body=openai_completion("I think you should call get_weather for Paris.")))
    big.queue(Reply(body=openai_completion(None, [("call_1", "get_weather", '{"city":"Paris"}')])))
    outcome = await _router(_config(small.url, big.url), client).complete(
        request(tools=(weather_tool(),))
    )
    assert isinstance(outcome, CallSucceeded)
    assert outcome.deployment.name == "big"
    failed, answered = outcome.attempts
    assert failed.outcome is Outcome.MALFORMED_RESPONSE
    assert failed.error.startswith("tool_mode json: the model's output is not valid JSON")
    assert failed.usage.input == 11  # the fake's counts: the failed attempt is billed
    assert answered.outcome is Outcome.SUCCEEDED
    assert big.received[0].body["tools"][0]["function"]["name"] == "get_weather"


async def test_a_streamed_json_answer_reaches_the_caller_as_a_tool_call_only(
    servers: tuple[FakeProvider, FakeProvider], client: httpx.AsyncClient
) -> None:
    small, big = servers
    text = json.dumps(CALL)
    small.queue(Reply(events=openai_chunks([text[:9], text[9:25], text[25:]], usage=(40, 18))))
    stream = _router(_config(small.url, big.url), client).stream(
        request(tools=(weather_tool(),), stream=True)
    )
    deltas = [d async for d in stream]
    assert not [d for d in deltas if isinstance(d, TextDelta) and d.text]
    assert [d.name for d in deltas if isinstance(d, ToolCallDelta) and d.name] == ["get_weather"]
    assert isinstance(stream.outcome, CallSucceeded)
    assert stream.outcome.attempts[0].usage.output == 18
    assert not stream.outcome.attempts[0].usage_estimated

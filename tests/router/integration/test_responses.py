"""The OpenAI Responses API on loopback: items, function calls, semantic events, faults."""

from __future__ import annotations

import json
from dataclasses import replace

import httpx
import pytest
from openai import AsyncOpenAI, BadRequestError

from stepline_router.credentials import StaticCredentials
from stepline_router.errors import Outcome
from stepline_router.router import CallFailed, CallSucceeded, Router
from stepline_router.routes import RoutesConfig
from stepline_router.types import FinishReason, Message, Params, ResponseFormat, Role, ToolCall
from tests.router.fakes import FakeProvider, Reply, openai_error
from tests.router.responses_fakes import (
    response_body,
    response_error_event,
    response_events,
    response_failed,
)
from tests.router.stream_faults import check_cut_streams, fails_over_from, retried_on_primary
from tests.router.support import (
    catalog_cost,
    http_router,
    pair_routes,
    request,
    shipped_book,
    weather_tool,
)

SECRET = "sk-test-responses-0123456789"
MODEL = "o4-mini"
BOOK = shipped_book()


def _config(primary: str, fallback: str) -> RoutesConfig:
    return pair_routes(primary, fallback, "openai_responses", MODEL)


def _router(config: RoutesConfig, client: httpx.AsyncClient) -> Router:
    return http_router(config, client, StaticCredentials({"KEY": SECRET}), BOOK)


def _catalog_cost(input_tokens: int, output: int, cached: int, written: int = 0) -> object:
    return catalog_cost(MODEL, "openai", input_tokens, output, cached, written)


async def test_function_call_round_trip_usage_and_catalog_price(
    servers: tuple[FakeProvider, FakeProvider], client: httpx.AsyncClient
) -> None:
    primary, fallback = servers
    primary.queue(
        Reply(
            body=response_body(
                "",
                [("call_1", "get_weather", '{"city": "Oslo"}')],
                input_tokens=500,
                output_tokens=60,
                cached=400,
                reasoning=40,
            )
        )
    )
    req = replace(
        request(tools=(weather_tool(),), params=Params(max_output_tokens=300)),
        messages=(
            Message(Role.SYSTEM, "be brief"),
            Message(Role.USER, "weather?"),
            Message(Role.ASSISTANT, "", (ToolCall("call_0", "get_weather", '{"city":"Rome"}'),)),
            Message(Role.TOOL, "sunny", tool_call_id="call_0"),
        ),
    )
    outcome = await _router(_config(primary.url, fallback.url), client).complete(req)
    assert isinstance(outcome, CallSucceeded)
    completion = outcome.completion
    assert completion.tool_calls == (ToolCall("call_1", "get_weather", '{"city": "Oslo"}'),)
    assert completion.finish_reason is FinishReason.TOOL_CALLS
    usage = completion.usage
    assert (usage.input, usage.cached_input, usage.output, usage.reasoning) == (500, 400, 60, 40)
    assert outcome.attempts[0].cost == _catalog_cost(500, 60, 400)
    sent = primary.received[0]
    assert sent.path == "/responses"
    assert sent.headers["authorization"] == f"Bearer {SECRET}"
    assert sent.body["instructions"] == "be brief"
    assert sent.body["store"] is False
    assert sent.body["max_output_tokens"] == 300
    assert sent.body["input"] == [
        {"type": "message", "role": "user", "content": "weather?"},
        {
            "type": "function_call",
            "call_id": "call_0",
            "name": "get_weather",
            "arguments": '{"city":"Rome"}',
        },
        {"type": "function_call_output", "call_id": "call_0", "output": "sunny"},
    ]
    assert sent.body["tools"][0]["name"] == "get_weather"
    assert sent.body["tools"][0]["parameters"]["required"] == ["city"]


async def test_json_schema_output_is_asked_through_text_format(
    servers: tuple[FakeProvider, FakeProvider], client: httpx.AsyncClient
) -> None:
    primary, fallback = servers
    primary.queue(Reply(body=response_body('{"answer": 4}')))
    schema = {"type": "object", "properties": {"answer": {"type": "integer"}}}
    params = Params(response_format=ResponseFormat("json_schema", schema, "sum", strict=True))
    outcome = await _router(_config(primary.url, fallback.url), client).complete(
        request(params=params)
    )
    assert isinstance(outcome, CallSucceeded)
    assert json.loads(outcome.completion.content) == {"answer": 4}
    assert primary.received[0].body["text"] == {
        "format": {"type": "json_schema", "name": "sum", "schema": schema, "strict": True}
    }


async def test_429_retry_after_then_5xx_failover(
    servers: tuple[FakeProvider, FakeProvider], client: httpx.AsyncClient
) -> None:
    primary, fallback = servers
    primary.queue(
        Reply(429, {"error": {"message": "rate", "type": "requests"}}, {"retry-after": "0.2"}),
    )
    primary.default = lambda _: openai_error(502, "upstream broke", "server_error")
    fallback.queue(Reply(body=response_body("from fallback")))
    outcome = await _router(_config(primary.url, fallback.url), client).complete(request())
    assert isinstance(outcome, CallSucceeded)
    assert outcome.completion.content == "from fallback"
    assert [a.outcome for a in outcome.attempts] == [
        Outcome.RATE_LIMITED,
        Outcome.SERVER_ERROR,
        Outcome.SUCCEEDED,
    ]
    assert outcome.attempts[0].retry_after_s == pytest.approx(0.2)
    assert all(SECRET not in a.error for a in outcome.attempts)


async def test_context_length_fails_over_and_a_content_policy_error_fails_now(
    servers: tuple[FakeProvider, FakeProvider], client: httpx.AsyncClient
) -> None:
    primary, fallback = servers
    primary.queue(
        openai_error(
            400,
            "Your input exceeds the context window",
            "invalid_request_error",
            "context_length_exceeded",
        )
    )
    fallback.queue(Reply(body=response_body("shorter window elsewhere")))
    outcome = await _router(_config(primary.url, fallback.url), client).complete(request())
    assert isinstance(outcome, CallSucceeded)
    assert [a.outcome for a in outcome.attempts] == [Outcome.CONTEXT_TOO_LONG, Outcome.SUCCEEDED]
    primary.queue(
        openai_error(
            400,
            "flagged by our content policy",
            "invalid_request_error",
            "content_policy_violation",
        )
    )
    refused = await _router(_config(primary.url, fallback.url), client).complete(request())
    assert isinstance(refused, CallFailed)
    assert [a.outcome for a in refused.attempts] == [Outcome.CONTENT_REFUSED]
    assert len(fallback.received) == 1


@pytest.mark.parametrize(
    ("reason", "finish"),
    [("max_output_tokens", FinishReason.LENGTH), ("content_filter", FinishReason.CONTENT_FILTER)],
)
async def test_an_incomplete_response_is_an_answer_with_its_reason(
    servers: tuple[FakeProvider, FakeProvider],
    client: httpx.AsyncClient,
    reason: str,
    finish: FinishReason,
) -> None:
    primary, fallback = servers
    primary.queue(Reply(body=response_body("partial", status="incomplete", incomplete=reason)))
    primary.queue(Reply(events=response_events(["part"], status="incomplete", incomplete=reason)))
    config = _config(primary.url, fallback.url)
    for stream in (False, True):
        outcome = await _router(config, client).complete(request(stream=stream))
        assert isinstance(outcome, CallSucceeded)
        assert outcome.completion.finish_reason is finish
        assert len(outcome.attempts) == 1
    assert fallback.received == []


async def test_stream_text_function_call_and_usage(
    servers: tuple[FakeProvider, FakeProvider], client: httpx.AsyncClient
) -> None:
    primary, fallback = servers
    events = response_events(
        ["Let me ", "check. "],
        ("call_2", "get_weather", ['{"city"', ': "Oslo"}']),
        input_tokens=300,
        output_tokens=50,
        cached=256,
        written=16,
        reasoning=32,
    )
    primary.queue(Reply(events=events))
    req = request(stream=True, tools=(weather_tool(),))
    outcome = await _router(_config(primary.url, fallback.url), client).complete(req)
    assert isinstance(outcome, CallSucceeded)
    assert outcome.completion.content == "Let me check. "
    assert outcome.completion.tool_calls == (ToolCall("call_2", "get_weather", '{"city": "Oslo"}'),)
    assert outcome.completion.finish_reason is FinishReason.TOOL_CALLS
    usage = outcome.completion.usage
    assert (usage.input, usage.cached_input, usage.output, usage.reasoning) == (300, 256, 50, 32)
    assert usage.cache_write_input == 16
    assert outcome.attempts[0].cost == _catalog_cost(300, 50, 256, 16)
    assert primary.received[0].body["stream"] is True


async def test_stream_cut_before_output_fails_over_and_after_a_call_began_is_incomplete(
    servers: tuple[FakeProvider, FakeProvider], client: httpx.AsyncClient
) -> None:
    primary, fallback = servers
    events = response_events(call=("call_9", "get_weather", ['{"ci', 'ty": "Oslo"}']))
    await check_cut_streams(
        _router(_config(primary.url, fallback.url), client),
        servers,
        lambda texts: Reply(events=response_events(texts)),
        Reply(events=events, cut_after=3),  # created, call added, first arguments
        "call_9",
    )


async def test_a_malformed_event_is_retried(
    servers: tuple[FakeProvider, FakeProvider], client: httpx.AsyncClient
) -> None:
    primary, fallback = servers
    events = response_events(["fine"])
    await retried_on_primary(
        _router(_config(primary.url, fallback.url), client),
        primary,
        Reply(events=[events[0], 'event: response.output_text.delta\ndata: {"type": "resp']),
        Reply(events=events),
    )


@pytest.mark.parametrize(
    ("event", "outcome"),
    [
        (response_failed("server_error", "The model failed"), Outcome.SERVER_ERROR),
        (response_error_event("context_length_exceeded", "too long"), Outcome.CONTEXT_TOO_LONG),
        (response_failed("rate_limit_exceeded", "slow down"), Outcome.RATE_LIMITED),
    ],
)
async def test_failed_and_error_events_are_classified(
    servers: tuple[FakeProvider, FakeProvider],
    client: httpx.AsyncClient,
    event: str,
    outcome: Outcome,
) -> None:
    primary, fallback = servers
    result = await fails_over_from(
        _router(_config(primary.url, fallback.url), client),
        servers,
        Reply(events=[response_events(["x"])[0], event]),
        Reply(events=response_events(["from fallback"])),
    )
    assert result.attempts[0].outcome is outcome


async def test_the_openai_sdk_talks_to_the_test_server(
    servers: tuple[FakeProvider, FakeProvider],
) -> None:
    """The fake is faithful: the official client parses its response, its events, its errors."""
    primary, _ = servers
    call = ("call_1", "get_weather", ['{"city"', ': "Oslo"}'])
    primary.queue(
        Reply(body=response_body("hi", cached=3, reasoning=2)),
        Reply(events=response_events(["a", "b"], call, cached=4)),
        openai_error(400, "too long", "invalid_request_error", "context_length_exceeded"),
    )
    sdk = AsyncOpenAI(base_url=primary.url, api_key=SECRET, max_retries=0)
    answer = await sdk.responses.create(model=MODEL, input="hi")
    assert answer.output_text == "hi"
    assert answer.usage is not None
    assert answer.usage.input_tokens_details.cached_tokens == 3
    stream = await sdk.responses.create(model=MODEL, input="hi", stream=True)
    kinds = [event.type async for event in stream]
    assert kinds[0] == "response.created"
    assert kinds[-1] == "response.completed"
    assert "response.function_call_arguments.delta" in kinds
    with pytest.raises(BadRequestError) as refused:
        await sdk.responses.create(model=MODEL, input="hi")
    assert refused.value.code == "context_length_exceeded"
    await sdk.close()
    # The SDK posts where the adapter posts.
    assert [r.path for r in primary.received] == ["/responses"] * 3

"""Real HTTP on loopback: each provider's wire format with injected faults, through the router."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta
from decimal import Decimal

import httpx
import pytest

from stepline_router.clock import SystemClock
from stepline_router.credentials import StaticCredentials
from stepline_router.errors import Outcome
from stepline_router.router import CallFailed, CallSucceeded, ErrorKind, Router
from stepline_router.routes import RoutesConfig
from stepline_router.types import FinishReason, Message, Role, ToolCall
from tests.router.fakes import (
    FakeProvider,
    Reply,
    anthropic_error,
    anthropic_events,
    anthropic_message,
    closed_port,
    openai_chunks,
    openai_completion,
    openai_error,
)
from tests.router.support import http_router, pair_routes, request, weather_tool

SECRET = "sk-test-0123456789abcdef"


def _config(primary: str, fallback: str, kind: str = "openai", **extra: str) -> RoutesConfig:
    model = "claude-haiku-4-5" if kind == "anthropic" else "gpt-4o-mini"
    return pair_routes(primary, fallback, kind, model, **extra)


def _router(config: RoutesConfig, client: httpx.AsyncClient) -> Router:
    return http_router(config, client, StaticCredentials({"KEY": SECRET}))


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_openai_5xx_retries_then_fails_over(
    servers: tuple[FakeProvider, FakeProvider], client: httpx.AsyncClient, status: int
) -> None:
    primary, fallback = servers
    primary.default = lambda _: openai_error(status, "upstream broke", "server_error")
    fallback.queue(Reply(body=openai_completion("from fallback")))
    outcome = await _router(_config(primary.url, fallback.url), client).complete(request())
    assert isinstance(outcome, CallSucceeded)
    assert outcome.completion.content == "from fallback"
    assert [a.status_code for a in outcome.attempts] == [status, status, 200]
    assert len(primary.received) == 2
    # the credential travels only in the Authorization header
    assert fallback.received[0].headers["authorization"] == f"Bearer {SECRET}"
    assert all(SECRET not in a.error for a in outcome.attempts)


async def test_429_retry_after_is_honoured_on_the_same_deployment(
    servers: tuple[FakeProvider, FakeProvider], client: httpx.AsyncClient
) -> None:
    primary, fallback = servers
    primary.queue(
        Reply(429, {"error": {"message": "rate", "type": "requests"}}, {"retry-after": "0.2"}),
        Reply(body=openai_completion("after the wait")),
    )
    outcome = await _router(_config(primary.url, fallback.url), client).complete(request())
    assert isinstance(outcome, CallSucceeded)
    assert outcome.deployment.name == "primary"
    assert outcome.attempts[0].outcome is Outcome.RATE_LIMITED
    assert outcome.attempts[0].retry_after_s == pytest.approx(0.2)
    assert fallback.received == []


async def test_read_timeout_fails_over(
    servers: tuple[FakeProvider, FakeProvider], client: httpx.AsyncClient
) -> None:
    primary, fallback = servers
    primary.queue(Reply(body=openai_completion("late"), delay_s=2))
    fallback.queue(Reply(body=openai_completion("on time")))
    config = _config(
        primary.url, fallback.url, timeouts="{ connect_s = 1, first_byte_s = 0.3, total_s = 3 }"
    )
    outcome = await _router(config, client).complete(request())
    assert isinstance(outcome, CallSucceeded)
    assert outcome.attempts[0].outcome is Outcome.TIMED_OUT
    assert outcome.completion.content == "on time"


async def test_connection_refused_reset_and_malformed_json(
    servers: tuple[FakeProvider, FakeProvider], client: httpx.AsyncClient
) -> None:
    _primary, fallback = servers
    refused = f"http://127.0.0.1:{closed_port()}"
    fallback.queue(Reply(body=openai_completion("x"), reset_mid_body=True))
    config = _config(refused, fallback.url, defaults="retries_per_deployment = 2")
    outcome = await _router(config, client).complete(request())
    assert isinstance(outcome, CallFailed)
    assert outcome.kind is ErrorKind.ALL_DEPLOYMENTS_FAILED
    assert outcome.retryable
    assert [a.outcome for a in outcome.attempts] == [
        Outcome.CONNECTION_FAILED,  # refused
        Outcome.CONNECTION_FAILED,  # reset mid-body: fail over (nowhere left)
    ]
    fallback.queue(Reply(raw=b'{"choices": [ {"mess'), Reply(body=openai_completion("fine")))
    outcome = await _router(_config(fallback.url, refused), client).complete(request())
    assert isinstance(outcome, CallSucceeded)
    assert outcome.attempts[0].outcome is Outcome.MALFORMED_RESPONSE


async def test_all_deployments_down_fails_clearly_within_the_deadline(
    client: httpx.AsyncClient,
) -> None:
    dead = [f"http://127.0.0.1:{closed_port()}" for _ in range(2)]
    clock = SystemClock()
    started = clock.monotonic()
    req = replace(request(), deadline=clock.now() + timedelta(seconds=5))
    outcome = await _router(_config(*dead), client).complete(req)
    assert isinstance(outcome, CallFailed)
    assert outcome.kind is ErrorKind.ALL_DEPLOYMENTS_FAILED
    assert "primary: CONNECTION_FAILED" in outcome.message
    assert "fallback: CONNECTION_FAILED" in outcome.message
    assert clock.monotonic() - started < 5


async def test_hanging_providers_end_at_the_call_deadline(
    servers: tuple[FakeProvider, FakeProvider], client: httpx.AsyncClient
) -> None:
    primary, fallback = servers
    primary.default = lambda _: Reply(body=openai_completion(), delay_s=30)
    fallback.default = lambda _: Reply(body=openai_completion(), delay_s=30)
    clock = SystemClock()
    started = clock.monotonic()
    config = _config(
        primary.url, fallback.url, timeouts="{ connect_s = 1, first_byte_s = 20, total_s = 20 }"
    )
    req = replace(request(), deadline=clock.now() + timedelta(seconds=1.5))
    outcome = await _router(config, client).complete(req)
    assert isinstance(outcome, CallFailed)
    assert outcome.kind is ErrorKind.DEADLINE_EXCEEDED
    assert clock.monotonic() - started < 5


async def test_openai_tools_round_trip_and_usage(
    servers: tuple[FakeProvider, FakeProvider], client: httpx.AsyncClient
) -> None:
    primary, fallback = servers
    primary.queue(
        Reply(
            body=openai_completion(
                None, [("call_1", "get_weather", '{"city": "Oslo"}')], cached_tokens=4
            )
        )
    )
    req = replace(
        request(tools=(weather_tool(),)),
        messages=(
            Message(Role.USER, "weather?"),
            Message(Role.ASSISTANT, "", (ToolCall("call_0", "get_weather", '{"city":"Rome"}'),)),
            Message(Role.TOOL, "sunny", tool_call_id="call_0"),
        ),
    )
    outcome = await _router(_config(primary.url, fallback.url), client).complete(req)
    assert isinstance(outcome, CallSucceeded)
    assert outcome.completion.tool_calls == (ToolCall("call_1", "get_weather", '{"city": "Oslo"}'),)
    assert outcome.completion.finish_reason is FinishReason.TOOL_CALLS
    assert outcome.completion.usage.cached_input == 4
    sent = primary.received[0]
    assert sent.path == "/chat/completions"
    assert sent.body["model"] == "gpt-4o-mini"
    assert sent.body["messages"][1]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert sent.body["messages"][2] == {
        "role": "tool",
        "tool_call_id": "call_0",
        "content": "sunny",
    }
    assert sent.body["tools"][0]["function"]["parameters"]["required"] == ["city"]


async def test_openai_stream_with_usage_chunk(
    servers: tuple[FakeProvider, FakeProvider], client: httpx.AsyncClient
) -> None:
    primary, fallback = servers
    primary.queue(Reply(events=openai_chunks(["Hel", "lo"], usage=(30, 5))))
    outcome = await _router(_config(primary.url, fallback.url), client).complete(
        request(stream=True)
    )
    assert isinstance(outcome, CallSucceeded)
    assert outcome.completion.content == "Hello"
    assert (outcome.completion.usage.input, outcome.completion.usage.output) == (30, 5)
    assert primary.received[0].body["stream_options"] == {"include_usage": True}


async def test_sse_cut_before_tool_output_fails_over(
    servers: tuple[FakeProvider, FakeProvider], client: httpx.AsyncClient
) -> None:
    primary, fallback = servers
    primary.queue(Reply(events=openai_chunks(["Hel", "lo"]), cut_after=2))
    fallback.queue(Reply(events=openai_chunks(["whole"])))
    outcome = await _router(_config(primary.url, fallback.url), client).complete(
        request(stream=True)
    )
    assert isinstance(outcome, CallSucceeded)
    assert outcome.completion.content == "whole"
    assert outcome.attempts[0].outcome is Outcome.CONNECTION_FAILED


async def test_sse_cut_after_tool_call_began_is_incomplete_not_failed_over(
    servers: tuple[FakeProvider, FakeProvider], client: httpx.AsyncClient
) -> None:
    primary, fallback = servers
    events = openai_chunks(tool_calls=[("call_9", "get_weather", ['{"ci', 'ty": "Oslo"}'])])
    primary.queue(Reply(events=events, cut_after=3))  # role, tool call start, first args
    outcome = await _router(_config(primary.url, fallback.url), client).complete(
        request(stream=True, tools=(weather_tool(),))
    )
    assert isinstance(outcome, CallSucceeded)
    assert outcome.completion.incomplete
    assert "tool call started" in outcome.completion.incomplete_reason
    assert outcome.completion.tool_calls == (ToolCall("call_9", "get_weather", '{"ci'),)
    assert outcome.attempts[-1].outcome is Outcome.INCOMPLETE
    assert fallback.received == []


async def test_anthropic_529_overloaded_then_fallback_with_cache_usage(
    servers: tuple[FakeProvider, FakeProvider], client: httpx.AsyncClient
) -> None:
    primary, fallback = servers
    primary.default = lambda _: anthropic_error(529, "overloaded_error", "Overloaded")
    fallback.queue(
        Reply(
            body=anthropic_message(
                "done",
                [("toolu_1", "get_weather", {"city": "Oslo"})],
                input_tokens=10,
                cache_read=100,
                cache_creation=20,
            )
        )
    )
    config = _config(primary.url, fallback.url, "anthropic")
    outcome = await _router(config, client).complete(request(tools=(weather_tool(),)))
    assert isinstance(outcome, CallSucceeded)
    assert [a.outcome for a in outcome.attempts] == [Outcome.OVERLOADED] * 2 + [Outcome.SUCCEEDED]
    usage = outcome.completion.usage
    assert (usage.input, usage.cached_input, usage.cache_write_input) == (130, 100, 20)
    # 10×1 + 100×0.10 + 20×1.25 + 9×5 per M
    assert outcome.attempts[-1].cost == Decimal("0.00009")
    assert json.loads(outcome.completion.tool_calls[0].arguments_json) == {"city": "Oslo"}
    sent = fallback.received[0]
    assert sent.path == "/v1/messages"
    assert sent.headers["x-api-key"] == SECRET
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert sent.body["system"] == "be brief"
    assert sent.body["tools"][0]["input_schema"]["required"] == ["city"]


async def test_anthropic_stream_tool_use_and_cut(
    servers: tuple[FakeProvider, FakeProvider], client: httpx.AsyncClient
) -> None:
    primary, fallback = servers
    events = anthropic_events(
        ["Let me check. "], ("toolu_2", "get_weather", ['{"city"', ': "Oslo"}'])
    )
    primary.queue(Reply(events=events))
    config = _config(primary.url, fallback.url, "anthropic")
    req = request(stream=True, tools=(weather_tool(),))
    outcome = await _router(config, client).complete(req)
    assert isinstance(outcome, CallSucceeded)
    assert outcome.completion.content == "Let me check. "
    assert outcome.completion.tool_calls == (
        ToolCall("toolu_2", "get_weather", '{"city": "Oslo"}'),
    )
    assert outcome.completion.usage.output == 9
    primary.queue(Reply(events=events, cut_after=7))
    cut = await _router(config, client).complete(req)
    assert isinstance(cut, CallSucceeded)
    assert cut.completion.incomplete
    assert fallback.received == []

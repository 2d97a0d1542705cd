"""Gemini and Azure OpenAI over real HTTP on loopback: wire shapes, faults, usage and prices."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from datetime import date
from typing import Any

import genai_prices
import httpx
import pytest
from google.genai import types as gtypes

from stepline_pricebook import PriceBook
from stepline_router.app import build_providers
from stepline_router.clock import SystemClock
from stepline_router.credentials import StaticCredentials
from stepline_router.errors import Outcome
from stepline_router.providers.gemini import SKIP_SIGNATURE
from stepline_router.router import CallFailed, CallSucceeded, ErrorKind, Router
from stepline_router.routes import RoutesConfig, parse_routes
from stepline_router.types import FinishReason, Message, Role, ToolCall
from tests.router.cloud_fakes import (
    azure_completion,
    azure_content_filter_error,
    azure_filtered_chunks,
    gemini_chunks,
    gemini_error,
    gemini_response,
)
from tests.router.fakes import FakeProvider, Reply, openai_chunks, openai_error
from tests.router.support import pair_routes, request, weather_tool

KEY = "AIza-test-0123456789abcdef"
GEMINI = "gemini-2.5-flash"
# The catalog under a local layer that prices nothing itself: every price is the catalog's.
BOOK = PriceBook.parse(
    'version = "t"\ncurrency = "USD"\n[catalog]\npackage = "genai-prices"\n'
    'provider_ids = { gemini = "google", azure_openai = "azure" }\n',
    as_of=date(2026, 12, 1),
)


def _config(primary: str, fallback: str, kind: str, fallback_kind: str = "") -> RoutesConfig:
    def model(provider: str) -> str:
        return GEMINI if provider == "gemini" else "gpt-4o-mini"

    other = fallback_kind or kind
    return pair_routes(
        primary, fallback, kind, model(kind), fallback_provider=other, fallback_model=model(other)
    )


def _router(config: RoutesConfig, client: httpx.AsyncClient, key: str = KEY) -> Router:
    clock = SystemClock()
    return Router(
        routes=lambda: config,
        prices=lambda: BOOK,
        providers=build_providers(client, clock),
        credentials=StaticCredentials({"KEY": key}),
        clock=clock,
        random=random.Random(7).random,
    )


def _tool_transcript() -> tuple[Message, ...]:
    return (
        Message(Role.SYSTEM, "be brief"),
        Message(Role.USER, "weather in Oslo and Rome?"),
        Message(
            Role.ASSISTANT,
            "",
            (
                ToolCall("call_a", "get_weather", '{"city": "Oslo"}'),
                ToolCall("call_b", "get_time", '{"city": "Rome"}'),
            ),
        ),
        # answered out of order: the adapter puts them back in call order
        Message(Role.TOOL, '{"time": "12:00"}', tool_call_id="call_b"),
        Message(Role.TOOL, "sunny", tool_call_id="call_a"),
    )


def _sdk_request(body: dict[str, Any]) -> None:
    """Our request body, parsed by the SDK's own (extra=forbid) types piece by piece."""
    known = {"contents", "systemInstruction", "tools", "toolConfig", "generationConfig"}
    assert set(body) <= known
    for content in body["contents"]:
        gtypes.Content.model_validate(content)
    if "systemInstruction" in body:
        gtypes.Content.model_validate(body["systemInstruction"])
    for tool in body.get("tools", ()):
        gtypes.Tool.model_validate(tool)
    if "toolConfig" in body:
        gtypes.ToolConfig.model_validate(body["toolConfig"])
    if "generationConfig" in body:
        gtypes.GenerationConfig.model_validate(body["generationConfig"])


async def test_gemini_tools_usage_and_catalog_price(
    servers: tuple[FakeProvider, FakeProvider], client: httpx.AsyncClient
) -> None:
    primary, fallback = servers
    answer = gemini_response(
        None,
        [("get_weather", {"city": "Bergen"})],
        prompt=1200,
        output=30,
        cached=1000,
        thoughts=50,
        signature="c2lnLTE=",
    )
    gtypes.GenerateContentResponse.model_validate(answer)
    primary.queue(Reply(body=answer), Reply(body=gemini_response("done")))
    req = replace(request(tools=(weather_tool(),)), messages=_tool_transcript())
    router = _router(_config(primary.url, fallback.url, "gemini"), client)
    outcome = await router.complete(req)
    assert isinstance(outcome, CallSucceeded)
    completion = outcome.completion
    assert completion.finish_reason is FinishReason.TOOL_CALLS
    (call,) = completion.tool_calls
    assert (call.name, json.loads(call.arguments_json)) == ("get_weather", {"city": "Bergen"})
    assert call.call_id.startswith("gcall_")
    usage = completion.usage
    assert (usage.input, usage.cached_input, usage.output, usage.reasoning) == (1200, 1000, 80, 50)
    assert completion.model == GEMINI
    # priced from the catalog (google), equal to the package's own figure
    entry = BOOK.model_entry("gemini", GEMINI)
    assert entry is not None
    assert entry.source.value == "catalog"
    cost = outcome.attempts[0].cost
    assert cost is not None
    assert cost == entry.price.cost(usage)
    theirs = genai_prices.calc_price(
        genai_prices.Usage(input_tokens=1200, cache_read_tokens=1000, output_tokens=80),
        model_ref=GEMINI,
        provider_id="google",
    )
    assert cost == theirs.total_price

    sent = primary.received[0]
    assert sent.path == f"/v1beta/models/{GEMINI}:generateContent"
    assert sent.headers["x-goog-api-key"] == KEY
    assert "authorization" not in sent.headers
    body = sent.body
    _sdk_request(body)
    assert body["systemInstruction"] == {"parts": [{"text": "be brief"}]}
    assert [c["role"] for c in body["contents"]] == ["user", "model", "user"]
    model_turn, results = body["contents"][1]["parts"], body["contents"][2]["parts"]
    assert [p["functionCall"]["name"] for p in model_turn] == ["get_weather", "get_time"]
    # a call this adapter never saw gets the documented stand-in signature (first call only)
    assert model_turn[0]["thoughtSignature"] == SKIP_SIGNATURE
    assert "thoughtSignature" not in model_turn[1]
    assert [p["functionResponse"]["name"] for p in results] == ["get_weather", "get_time"]
    assert results[1]["functionResponse"]["response"] == {"output": {"time": "12:00"}}
    assert body["tools"][0]["functionDeclarations"][0]["parametersJsonSchema"]["required"] == [
        "city"
    ]
    assert body["toolConfig"] == {"functionCallingConfig": {"mode": "AUTO"}}

    # the next turn replays the call with the signature Gemini gave it, never an id
    follow = replace(
        req,
        messages=(
            *req.messages,
            Message(Role.ASSISTANT, "", completion.tool_calls),
            Message(Role.TOOL, "rain", tool_call_id=call.call_id),
        ),
    )
    again = await router.complete(follow)
    assert isinstance(again, CallSucceeded)
    assert again.completion.content == "done"
    replayed = primary.received[1].body["contents"][3]["parts"][0]
    assert replayed["thoughtSignature"] == "c2lnLTE="
    assert "id" not in replayed["functionCall"]
    # the same response parsed again gives the same synthesized id
    primary.queue(Reply(body=answer))
    third = await router.complete(req)
    assert isinstance(third, CallSucceeded)
    assert third.completion.tool_calls[0].call_id == call.call_id


async def test_gemini_stream_text_tool_call_and_usage(
    servers: tuple[FakeProvider, FakeProvider], client: httpx.AsyncClient
) -> None:
    primary, fallback = servers
    events = gemini_chunks(
        ["Let me ", "check."], [("get_weather", {"city": "Oslo"})], cached=30, thoughts=7
    )
    for event in events:
        gtypes.GenerateContentResponse.model_validate_json(event[6:])
    primary.queue(Reply(events=events))
    router = _router(_config(primary.url, fallback.url, "gemini"), client)
    outcome = await router.complete(request(stream=True, tools=(weather_tool(),)))
    assert isinstance(outcome, CallSucceeded)
    assert outcome.completion.content == "Let me check."
    assert [c.name for c in outcome.completion.tool_calls] == ["get_weather"]
    assert outcome.completion.finish_reason is FinishReason.TOOL_CALLS
    usage = outcome.completion.usage
    assert (usage.input, usage.cached_input, usage.output, usage.reasoning) == (40, 30, 19, 7)
    assert primary.received[0].path == f"/v1beta/models/{GEMINI}:streamGenerateContent?alt=sse"
    assert outcome.attempts[0].cost is not None


async def test_gemini_429_waits_for_retry_info_then_succeeds(
    servers: tuple[FakeProvider, FakeProvider], client: httpx.AsyncClient
) -> None:
    primary, fallback = servers
    primary.queue(
        gemini_error(429, "RESOURCE_EXHAUSTED", "Quota exceeded", retry_delay="0.2s"),
        Reply(body=gemini_response("after the wait")),
    )
    outcome = await _router(_config(primary.url, fallback.url, "gemini"), client).complete(
        request()
    )
    assert isinstance(outcome, CallSucceeded)
    assert outcome.deployment.name == "primary"
    first = outcome.attempts[0]
    assert (first.outcome, first.status_code) == (Outcome.RATE_LIMITED, 429)
    assert first.retry_after_s == pytest.approx(0.2)
    assert "RESOURCE_EXHAUSTED" in first.error
    assert fallback.received == []


async def test_gemini_503_retries_then_fails_over_and_400_fails_now(
    servers: tuple[FakeProvider, FakeProvider], client: httpx.AsyncClient
) -> None:
    primary, fallback = servers
    primary.default = lambda _: gemini_error(503, "UNAVAILABLE", "The model is overloaded.")
    fallback.queue(Reply(body=gemini_response("from fallback")))
    config = _config(primary.url, fallback.url, "gemini")
    outcome = await _router(config, client).complete(request())
    assert isinstance(outcome, CallSucceeded)
    assert [a.outcome for a in outcome.attempts] == [Outcome.OVERLOADED] * 2 + [Outcome.SUCCEEDED]

    primary.default = lambda _: gemini_error(400, "INVALID_ARGUMENT", "Invalid JSON payload")
    failed = await _router(config, client).complete(request())
    assert isinstance(failed, CallFailed)
    assert failed.kind is ErrorKind.INVALID_REQUEST
    assert len(fallback.received) == 1  # not tried again


async def test_gemini_context_length_fails_over_without_retry(
    servers: tuple[FakeProvider, FakeProvider], client: httpx.AsyncClient
) -> None:
    primary, fallback = servers
    primary.default = lambda _: gemini_error(
        400,
        "INVALID_ARGUMENT",
        "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576).",
    )
    fallback.queue(Reply(body=gemini_response("bigger window")))
    outcome = await _router(_config(primary.url, fallback.url, "gemini"), client).complete(
        request()
    )
    assert isinstance(outcome, CallSucceeded)
    assert [a.outcome for a in outcome.attempts] == [Outcome.CONTEXT_TOO_LONG, Outcome.SUCCEEDED]
    assert len(primary.received) == 1


async def test_gemini_safety_is_a_refusal_not_retried(
    servers: tuple[FakeProvider, FakeProvider], client: httpx.AsyncClient
) -> None:
    primary, fallback = servers
    ratings = [
        {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH", "blocked": True}
    ]
    refused = gemini_response(None, finish="SAFETY", ratings=ratings)
    gtypes.GenerateContentResponse.model_validate(refused)
    primary.queue(Reply(body=refused))
    outcome = await _router(_config(primary.url, fallback.url, "gemini"), client).complete(
        request()
    )
    assert isinstance(outcome, CallFailed)
    assert outcome.kind is ErrorKind.CONTENT_REFUSED
    assert "SAFETY" in outcome.message
    assert "HARM_CATEGORY_DANGEROUS_CONTENT" in outcome.message
    assert outcome.attempts[0].usage.input == 40  # the refused attempt is still billed
    assert fallback.received == []
    assert len(primary.received) == 1


async def test_gemini_stream_cut_malformed_and_in_band_error(
    servers: tuple[FakeProvider, FakeProvider], client: httpx.AsyncClient
) -> None:
    primary, fallback = servers
    config = _config(primary.url, fallback.url, "gemini")
    # cut before the finishing chunk: the stream is not whole, fail over
    primary.queue(Reply(events=gemini_chunks(["Hel", "lo"]), cut_after=2))
    fallback.queue(Reply(events=gemini_chunks(["whole"])))
    outcome = await _router(config, client).complete(request(stream=True))
    assert isinstance(outcome, CallSucceeded)
    assert outcome.completion.content == "whole"
    assert outcome.attempts[0].outcome is Outcome.CONNECTION_FAILED
    # a clean close without a finish reason is not a whole answer either
    primary.queue(Reply(events=gemini_chunks(["Hel"])[:1]))
    fallback.queue(Reply(events=gemini_chunks(["whole"])))
    early = await _router(config, client).complete(request(stream=True))
    assert isinstance(early, CallSucceeded)
    assert "finishReason" in early.attempts[0].error
    # a malformed chunk is retried; an in-band error is classified by its status
    primary.queue(
        Reply(events=["data: {not json"]),
        Reply(
            events=['data: {"error": {"code": 503, "message": "busy", "status": "UNAVAILABLE"}}']
        ),
    )
    fallback.queue(Reply(events=gemini_chunks(["ok"])))
    faults = await _router(config, client).complete(request(stream=True))
    assert isinstance(faults, CallSucceeded)
    assert [a.outcome for a in faults.attempts] == [
        Outcome.MALFORMED_RESPONSE,
        Outcome.OVERLOADED,
        Outcome.SUCCEEDED,
    ]


def _azure(primary: str, fallback: str, *, primary_url: str = "") -> RoutesConfig:
    return _config(primary_url or primary, fallback, "azure_openai")


async def test_azure_deployment_url_api_key_tools_and_price(
    servers: tuple[FakeProvider, FakeProvider], client: httpx.AsyncClient
) -> None:
    primary, fallback = servers
    primary.queue(
        Reply(
            body=azure_completion(
                None,
                [("call_1", "get_weather", '{"city": "Oslo"}')],
                cached_tokens=4,
                reasoning_tokens=2,
            )
        )
    )
    outcome = await _router(_azure(primary.url, fallback.url), client, "azure-key").complete(
        request(tools=(weather_tool(),))
    )
    assert isinstance(outcome, CallSucceeded)
    assert outcome.completion.tool_calls == (ToolCall("call_1", "get_weather", '{"city": "Oslo"}'),)
    usage = outcome.completion.usage
    assert (usage.cached_input, usage.reasoning) == (4, 2)
    assert outcome.completion.model == "gpt-4o-mini-2024-07-18"
    sent = primary.received[0]
    assert sent.path == "/openai/deployments/gpt-4o-mini/chat/completions?api-version=2024-10-21"
    assert sent.headers["api-key"] == "azure-key"
    assert "authorization" not in sent.headers
    assert sent.body["tools"][0]["function"]["name"] == "get_weather"
    # the catalog prices Azure by its OpenAI entry
    entry = BOOK.model_entry("azure_openai", "gpt-4o-mini")
    assert entry is not None
    assert outcome.attempts[0].cost == entry.price.cost(usage)


async def test_azure_explicit_deployment_url_and_entra_token(
    servers: tuple[FakeProvider, FakeProvider], client: httpx.AsyncClient
) -> None:
    primary, fallback = servers
    primary.queue(Reply(events=openai_chunks(["Hel", "lo"], usage=(30, 5))))
    url = f"{primary.url}/openai/deployments/my-4o?api-version=2025-04-01-preview"
    config = _azure(primary.url, fallback.url, primary_url=url)
    outcome = await _router(config, client, "Bearer eyJ0eXAi.token").complete(request(stream=True))
    assert isinstance(outcome, CallSucceeded)
    assert outcome.completion.content == "Hello"
    assert (outcome.completion.usage.input, outcome.completion.usage.output) == (30, 5)
    sent = primary.received[0]
    assert sent.path == "/openai/deployments/my-4o/chat/completions?api-version=2025-04-01-preview"
    assert sent.headers["authorization"] == "Bearer eyJ0eXAi.token"
    assert "api-key" not in sent.headers


async def test_azure_content_filter_is_refused_with_its_reason(
    servers: tuple[FakeProvider, FakeProvider], client: httpx.AsyncClient
) -> None:
    primary, fallback = servers
    config = _azure(primary.url, fallback.url)
    primary.queue(azure_content_filter_error({"violence": "high", "jailbreak": "medium"}))
    prompt = await _router(config, client).complete(request())
    assert isinstance(prompt, CallFailed)
    assert prompt.kind is ErrorKind.CONTENT_REFUSED
    assert not prompt.retryable
    assert "violence (high)" in prompt.message
    assert "jailbreak (medium)" in prompt.message
    assert len(primary.received) == 1
    assert fallback.received == []

    primary.queue(
        Reply(
            body=azure_completion("partial", finish="content_filter", filtered={"hate": "medium"})
        )
    )
    answer = await _router(config, client).complete(request())
    assert isinstance(answer, CallFailed)
    assert answer.kind is ErrorKind.CONTENT_REFUSED
    assert "hate (medium)" in answer.message
    assert answer.attempts[0].usage.output == 7  # billed all the same

    primary.queue(Reply(events=azure_filtered_chunks(["bad"], "sexual")))
    streamed = await _router(config, client).complete(request(stream=True))
    assert isinstance(streamed, CallFailed)
    assert streamed.kind is ErrorKind.CONTENT_REFUSED
    assert "sexual (high)" in streamed.message
    assert fallback.received == []


async def test_azure_429_5xx_cut_and_context_length(
    servers: tuple[FakeProvider, FakeProvider], client: httpx.AsyncClient
) -> None:
    primary, fallback = servers
    config = _azure(primary.url, fallback.url)
    primary.queue(
        Reply(
            429,
            {"error": {"code": "429", "message": "Rate limit exceeded"}},
            {"retry-after-ms": "150"},
        ),
        Reply(body=azure_completion("ok")),
    )
    limited = await _router(config, client).complete(request())
    assert isinstance(limited, CallSucceeded)
    assert limited.attempts[0].outcome is Outcome.RATE_LIMITED
    assert limited.attempts[0].retry_after_s == pytest.approx(0.15)

    primary.default = lambda _: openai_error(500, "Internal server error", "server_error")
    fallback.queue(
        Reply(events=openai_chunks(["Hel", "lo"]), cut_after=2), Reply(body=azure_completion("x"))
    )
    broken = await _router(config, client).complete(request(stream=True))
    assert isinstance(broken, CallFailed)
    assert [a.outcome for a in broken.attempts] == [
        Outcome.SERVER_ERROR,
        Outcome.SERVER_ERROR,
        Outcome.CONNECTION_FAILED,
    ]

    primary.default = lambda _: openai_error(
        400,
        "This model's maximum context length is 128000 tokens.",
        "invalid_request_error",
        "context_length_exceeded",
    )
    fallback.replies.clear()
    fallback.queue(Reply(body=azure_completion("fits")))
    moved = await _router(config, client).complete(request())
    assert isinstance(moved, CallSucceeded)
    assert [a.outcome for a in moved.attempts] == [Outcome.CONTEXT_TOO_LONG, Outcome.SUCCEEDED]


async def test_one_route_fails_over_openai_anthropic_gemini_to_azure_with_tools(
    client: httpx.AsyncClient,
) -> None:
    servers = [await FakeProvider().start() for _ in range(4)]
    try:
        openai, anthropic, gemini, azure = servers
        openai.default = lambda _: openai_error(500, "boom", "server_error")
        anthropic.default = lambda _: Reply(
            529, {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
        )
        # a wait longer than the route's max_retry_after_s: fail over at once
        gemini.default = lambda _: gemini_error(
            429, "RESOURCE_EXHAUSTED", "quota", retry_delay="90s"
        )
        azure.queue(
            Reply(body=azure_completion(None, [("call_9", "get_weather", '{"city": "Rome"}')]))
        )
        kinds = [
            ("openai", "gpt-4o-mini"),
            ("anthropic", "claude-haiku-4-5"),
            ("gemini", GEMINI),
            ("azure_openai", "gpt-4o-mini"),
        ]
        body = (
            "[defaults]\nbackoff_base_s = 0.01\nbackoff_cap_s = 0.02\nretries_per_deployment = 0\n"
        )
        for (provider, model), server in zip(kinds, servers, strict=True):
            body += (
                f'[deployments.{provider}]\nprovider = "{provider}"\nmodel = "{model}"\n'
                f'base_url = "{server.url}"\ncredential_env = "KEY"\n'
            )
        names = ", ".join(f'"{p}"' for p, _ in kinds)
        body += f"[routes.default]\ndeployments = [{names}]\n"
        config = parse_routes(
            body, known_providers=("openai", "anthropic", "gemini", "azure_openai")
        )
        req = replace(request(tools=(weather_tool(),)), messages=_tool_transcript())
        outcome = await _router(config, client).complete(req)
        assert isinstance(outcome, CallSucceeded)
        assert outcome.deployment.name == "azure_openai"
        assert [a.outcome for a in outcome.attempts] == [
            Outcome.SERVER_ERROR,
            Outcome.OVERLOADED,
            Outcome.RATE_LIMITED,
            Outcome.SUCCEEDED,
        ]
        assert outcome.completion.tool_calls[0].name == "get_weather"
        # every attempt priced from the catalog: failed ones at zero tokens, the answer in full
        for attempt in outcome.attempts:
            assert attempt.cost is not None
        entry = BOOK.model_entry("azure_openai", "gpt-4o-mini")
        assert entry is not None
        assert outcome.attempts[-1].cost == entry.price.cost(outcome.completion.usage)
        # the same conversation reached each provider in its own wire format
        assert openai.received[0].body["messages"][3]["tool_call_id"] == "call_b"
        results = [b for m in anthropic.received[0].body["messages"] for b in m["content"]]
        assert {b.get("tool_use_id") for b in results if b["type"] == "tool_result"} == {
            "call_a",
            "call_b",
        }
        parts = gemini.received[0].body["contents"][2]["parts"]
        assert [p["functionResponse"]["name"] for p in parts] == ["get_weather", "get_time"]
        assert azure.received[0].body["messages"][2]["tool_calls"][1]["id"] == "call_b"
    finally:
        for server in servers:
            await server.stop()

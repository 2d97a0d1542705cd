"""One tool-calling conversation failing over across five wire formats, billed at catalog price."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from typing import Any

import httpx
import pytest
from genai_prices import Usage as CatalogUsage
from genai_prices import calc_price

from stepline_router.credentials import StaticCredentials
from stepline_router.errors import Outcome
from stepline_router.router import CallSucceeded
from stepline_router.types import FinishReason, Message, Role, ToolCall
from tests.router.bedrock_fakes import (
    KEY_ID,
    REGION,
    SECRET_KEY,
    bedrock_exception,
    converse_output,
    sigv4_guard,
)
from tests.router.cloud_fakes import gemini_error, gemini_response
from tests.router.fakes import (
    FakeProvider,
    Received,
    Reply,
    anthropic_error,
    anthropic_message,
    openai_completion,
    openai_error,
)
from tests.router.responses_fakes import response_body
from tests.router.support import http_router, request, routes, shipped_book, weather_tool

BOOK = shipped_book()
CREDENTIALS = StaticCredentials(
    {
        "OPENAI_API_KEY": "sk-openai",
        "ANTHROPIC_API_KEY": "sk-ant",
        "GEMINI_API_KEY": "AIza-test",
        "AWS_ACCESS_KEY_ID": KEY_ID,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_REGION": REGION,
    }
)
CALL = ToolCall("call_7", "get_weather", '{"city": "Oslo"}')


@dataclass(frozen=True)
class Hop:
    """One deployment of the chain: its wire format, how it fails, how it answers."""

    provider: str
    model: str
    catalog_id: str
    credential: str
    down: Callable[[Received], Reply]
    answer: Reply
    # The tool result of the transcript, as this wire format carries it.
    tool_result: Callable[[Any], Any]


HOPS = (
    Hop(
        "openai",
        "gpt-4o-mini",
        "openai",
        "OPENAI_API_KEY",
        lambda _: openai_error(503, "overloaded", "server_error"),
        Reply(body=openai_completion(None, [(CALL.call_id, CALL.name, CALL.arguments_json)])),
        lambda body: body["messages"][-1],
    ),
    Hop(
        "anthropic",
        "claude-haiku-4-5",
        "anthropic",
        "ANTHROPIC_API_KEY",
        lambda _: anthropic_error(529, "overloaded_error", "Overloaded"),
        Reply(body=anthropic_message("", [(CALL.call_id, CALL.name, {"city": "Oslo"})])),
        lambda body: body["messages"][-1]["content"][0],
    ),
    Hop(
        "gemini",
        "gemini-2.5-flash",
        "google",
        "GEMINI_API_KEY",
        lambda _: gemini_error(503, "UNAVAILABLE", "The model is overloaded."),
        Reply(body=gemini_response(None, [(CALL.name, {"city": "Oslo"})], call_ids=[CALL.call_id])),
        lambda body: body["contents"][-1]["parts"][0],
    ),
    Hop(
        "bedrock",
        "amazon.nova-lite-v1:0",
        "aws",
        "AWS_SECRET_ACCESS_KEY",
        lambda _: bedrock_exception(503, "ServiceUnavailableException", "unavailable"),
        Reply(body=converse_output("", [(CALL.call_id, CALL.name, {"city": "Oslo"})])),
        lambda body: body["messages"][-1]["content"][0],
    ),
    Hop(
        "openai_responses",
        "o4-mini",
        "openai",
        "OPENAI_API_KEY",
        lambda _: openai_error(500, "boom", "server_error"),
        Reply(body=response_body("", [(CALL.call_id, CALL.name, CALL.arguments_json)])),
        lambda body: body["input"][-1],
    ),
)
NATIVE_RESULTS = (
    {"role": "tool", "tool_call_id": "call_0", "content": "rain"},
    {"type": "tool_result", "tool_use_id": "call_0", "content": "rain"},
    {"functionResponse": {"name": "get_weather", "response": {"output": "rain"}}},
    {"toolResult": {"toolUseId": "call_0", "content": [{"text": "rain"}]}},
    {"type": "function_call_output", "call_id": "call_0", "output": "rain"},
)


@pytest.fixture
async def chain() -> AsyncIterator[list[FakeProvider]]:
    """One loopback server per hop; the Bedrock one checks signatures."""
    servers = [await FakeProvider().start() for _ in HOPS]
    for server, hop in zip(servers, HOPS, strict=True):
        if hop.provider == "bedrock":
            server.guard = sigv4_guard(server.url)
    try:
        yield servers
    finally:
        for server in servers:
            await server.stop()


def _always(reply: Reply) -> Callable[[Received], Reply]:
    return lambda _: reply


@pytest.mark.parametrize("winner", range(len(HOPS)), ids=[h.provider for h in HOPS])
async def test_the_conversation_fails_over_across_wire_formats(
    chain: list[FakeProvider], client: httpx.AsyncClient, winner: int
) -> None:
    body = ""
    for index, (server, hop) in enumerate(zip(chain, HOPS, strict=True)):
        server.default = hop.down if index < winner else _always(hop.answer)
        body += (
            f'[deployments.hop{index}]\nprovider = "{hop.provider}"\nmodel = "{hop.model}"\n'
            f'base_url = "{server.url}"\ncredential_env = "{hop.credential}"\n'
        )
    body += f"[routes.default]\ndeployments = {json.dumps([f'hop{i}' for i in range(len(HOPS))])}\n"
    config = routes(body, defaults="retries_per_deployment = 0")
    router = http_router(config, client, CREDENTIALS, BOOK)
    req = replace(
        request(tools=(weather_tool(),)),
        messages=(
            Message(Role.SYSTEM, "be brief"),
            Message(Role.USER, "weather in Rome, then Oslo?"),
            Message(Role.ASSISTANT, "", (ToolCall("call_0", "get_weather", '{"city":"Rome"}'),)),
            Message(Role.TOOL, "rain", tool_call_id="call_0"),
        ),
    )
    outcome = await router.complete(req)
    assert isinstance(outcome, CallSucceeded)
    assert outcome.deployment.name == f"hop{winner}"
    failed = [a.outcome for a in outcome.attempts[:-1]]
    assert failed == [Outcome.OVERLOADED] * winner
    completion = outcome.completion
    assert completion.finish_reason is FinishReason.TOOL_CALLS
    assert [(c.call_id, c.name, json.loads(c.arguments_json)) for c in completion.tool_calls] == [
        (CALL.call_id, CALL.name, {"city": "Oslo"})
    ]
    # Every hop that was tried got the transcript's tool result in its own wire format.
    for server, hop, native in zip(chain[: winner + 1], HOPS, NATIVE_RESULTS, strict=False):
        assert hop.tool_result(server.received[0].body) == native, hop.provider
    hop, usage = HOPS[winner], completion.usage
    catalog = CatalogUsage(
        input_tokens=usage.input,
        output_tokens=usage.output,
        cache_read_tokens=usage.cached_input,
        cache_write_tokens=usage.cache_write_input,
    )
    expected = calc_price(catalog, hop.model, provider_id=hop.catalog_id).total_price
    assert outcome.attempts[-1].cost == expected > 0

"""One tool-calling conversation failing over across five wire formats, billed at catalog price."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import replace

import httpx
import pytest
from genai_prices import Usage as CatalogUsage
from genai_prices import calc_price

from stepline_router.errors import Outcome
from stepline_router.router import CallSucceeded
from stepline_router.types import FinishReason
from tests.router.chain import CALL, CREDENTIALS, HOPS, NATIVE_RESULTS, TRANSCRIPT, start_hops
from tests.router.fakes import FakeProvider, Received, Reply
from tests.router.support import http_router, request, routes, shipped_book, weather_tool

BOOK = shipped_book()


@pytest.fixture
async def chain() -> AsyncIterator[list[FakeProvider]]:
    """One loopback server per hop; the Bedrock one checks signatures."""
    servers = await start_hops(HOPS)
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
    req = replace(request(tools=(weather_tool(),)), messages=TRANSCRIPT)
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

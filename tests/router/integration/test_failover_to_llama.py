"""The issue's "done when": one routes file fails over OpenAI → Anthropic → Gemini → Bedrock →
a real local llama.cpp server for the same tool-calling conversation, and every attempt is
billed at the book's price (the catalog's for the hosted models, the local layer's for the
self-hosted one).

The hosted hops are loopback servers speaking each provider's wire format (Bedrock checking
SigV4), failing in turn; the last hop is SmolLM2-135M on llama.cpp's server, which has no
native tool calling and serves the tools through `tool_mode = "json"`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import date
from decimal import Decimal

import httpx
import pytest
from genai_prices import Usage as CatalogUsage
from genai_prices import calc_price

from stepline.v1 import model_pb2
from stepline_pricebook import PriceBook
from stepline_router.convert import usage_records
from stepline_router.errors import Outcome
from stepline_router.router import CallSucceeded
from stepline_vocab import wire
from tests.llama import MODEL_ALIAS, LlamaServer
from tests.router.chain import CREDENTIALS, HOPS, NATIVE_RESULTS, TRANSCRIPT, start_hops
from tests.router.fakes import FakeProvider
from tests.router.support import http_router, request, routes, weather_tool

# The chain, in its order; each hop fails with an overload.
HOSTED = tuple(h for h in HOPS if h.provider in ("openai", "anthropic", "gemini", "bedrock"))
NATIVE = tuple(r for h, r in zip(HOPS, NATIVE_RESULTS, strict=True) if h in HOSTED)
# The catalog under a local layer that prices only the self-hosted model.
BOOK = PriceBook.parse(
    'version = "t"\ncurrency = "USD"\n[catalog]\npackage = "genai-prices"\n'
    'provider_ids = { gemini = "google", bedrock = "aws" }\n'
    "[[models]]\n"
    f'provider = "openai_compatible"\nmodel = "{MODEL_ALIAS}"\n'
    'input_per_mtok = "0.02"\noutput_per_mtok = "0.04"\n',
    as_of=date(2026, 12, 1),
)


@pytest.fixture
async def chain() -> AsyncIterator[list[FakeProvider]]:
    """One loopback server per hosted hop, each failing."""
    servers = await start_hops(HOSTED)
    for server, hop in zip(servers, HOSTED, strict=True):
        server.default = hop.down
    try:
        yield servers
    finally:
        for server in servers:
            await server.stop()


async def test_one_conversation_fails_over_to_the_local_llama_server_billed_per_attempt(
    chain: list[FakeProvider], llama_server: LlamaServer
) -> None:
    assert [h.provider for h in HOSTED] == ["openai", "anthropic", "gemini", "bedrock"]
    body = ""
    for index, (server, hop) in enumerate(zip(chain, HOSTED, strict=True)):
        body += (
            f'[deployments.hop{index}]\nprovider = "{hop.provider}"\nmodel = "{hop.model}"\n'
            f'base_url = "{server.url}"\ncredential_env = "{hop.credential}"\n'
        )
    body += (
        f'[deployments.llama]\nprovider = "openai_compatible"\nmodel = "{MODEL_ALIAS}"\n'
        f'base_url = "{llama_server.url}"\ntool_mode = "json"\nschema_style = "json_object"\n'
        "capabilities = { tools = false, context_window = 512, max_output_tokens = 96 }\n"
        "timeouts = { connect_s = 2, first_byte_s = 60, total_s = 90, first_token_s = 60 }\n"
    )
    names = [f"hop{i}" for i in range(len(HOSTED))] + ["llama"]
    body += f"[routes.default]\ndeployments = {json.dumps(names)}\n"
    config = routes(body, defaults="retries_per_deployment = 0")
    ask = replace(request(tools=(weather_tool(),)), messages=TRANSCRIPT)
    ask = replace(ask, params=replace(ask.params, temperature=0.0, max_output_tokens=96))
    async with httpx.AsyncClient() as client:
        outcome = await http_router(config, client, CREDENTIALS, BOOK).complete(ask)
    assert isinstance(outcome, CallSucceeded), outcome
    assert outcome.deployment.name == "llama"
    assert [a.outcome for a in outcome.attempts] == [Outcome.OVERLOADED] * len(HOSTED) + [
        Outcome.SUCCEEDED
    ]
    # The real model answered through JSON tool mode: a parsed tool call or a text answer.
    answer = outcome.completion
    assert answer.tool_calls or answer.content.strip()
    for call in answer.tool_calls:
        assert call.name == "get_weather"
        assert isinstance(json.loads(call.arguments_json), dict)
    # Every hosted hop got the transcript's tool result in its own wire format.
    for server, hop, native in zip(chain, HOSTED, NATIVE, strict=True):
        assert hop.tool_result(server.received[0].body) == native, hop.provider
    # Every attempt is a UsageRecorded priced by the book: hosted ones at the catalog's figures
    # for what they billed (an overload bills nothing), the local model at its local price.
    records = usage_records(ask, outcome)
    assert records[-1].outcome == model_pb2.MODEL_ATTEMPT_OUTCOME_SUCCEEDED
    assert all(r.priced and "genai-prices" in r.price_book_version for r in records)
    for record, hop in zip(records, HOSTED, strict=False):
        tokens = CatalogUsage(
            input_tokens=record.usage.input_tokens, output_tokens=record.usage.output_tokens
        )
        catalog = calc_price(tokens, hop.model, provider_id=hop.catalog_id).total_price
        assert wire.amount_of(record.cost) == catalog, hop.provider
    local = records[-1]
    assert not local.usage_estimated
    assert local.usage.input_tokens > 100  # the server's own count of the JSON-mode prompt
    assert wire.amount_of(local.cost) == (
        Decimal("0.02") * local.usage.input_tokens + Decimal("0.04") * local.usage.output_tokens
    ) / Decimal(1_000_000)

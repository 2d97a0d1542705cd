"""The issue's "done when": one routes file fails over across wire formats to a real local
llama.cpp server for the same tool-calling conversation, every attempt billed at the book's
price (the catalog's for hosted models, the local layer's for the self-hosted one).

Each hosted hop (OpenAI, Anthropic, Gemini) is a loopback server speaking its provider's wire
format that fails in turn; the last hop is SmolLM2-135M on llama.cpp, with no native tool
calling (`tool_mode = "json"`).
"""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from datetime import date
from decimal import Decimal
from typing import Any

import httpx
import pytest
from genai_prices import Usage as CatalogUsage
from genai_prices import calc_price

from stepline.v1 import model_pb2
from stepline_pricebook import PriceBook
from stepline_router.app import build_providers
from stepline_router.clock import SystemClock
from stepline_router.convert import usage_records
from stepline_router.credentials import StaticCredentials
from stepline_router.errors import Outcome
from stepline_router.router import CallSucceeded, Router
from stepline_router.routes import parse_routes
from stepline_router.types import Message, Role, ToolCall
from stepline_vocab import wire
from tests.llama import MODEL_ALIAS, LlamaServer
from tests.router.cloud_fakes import gemini_error
from tests.router.fakes import FakeProvider, Received, Reply, anthropic_error, openai_error
from tests.router.support import PROVIDERS, request, weather_tool

# The catalog under a local layer that prices only the self-hosted model.
BOOK = PriceBook.parse(
    'version = "t"\ncurrency = "USD"\n[catalog]\npackage = "genai-prices"\n'
    'provider_ids = { gemini = "google" }\n'
    "[[models]]\n"
    f'provider = "openai_compatible"\nmodel = "{MODEL_ALIAS}"\n'
    'input_per_mtok = "0.02"\noutput_per_mtok = "0.04"\n',
    as_of=date(2026, 12, 1),
)
CREDENTIALS = StaticCredentials(
    {"OPENAI_API_KEY": "sk-openai", "ANTHROPIC_API_KEY": "sk-ant", "GEMINI_API_KEY": "AIza-t"}
)


@dataclass(frozen=True)
class Hop:
    """A hosted deployment of the chain: its wire format, how it fails, what it was sent."""

    provider: str
    model: str
    catalog_id: str
    credential: str
    down: Callable[[Received], Reply]
    outcome: Outcome
    # The transcript's tool result, as this wire format carries it.
    tool_result: Callable[[Any], Any]
    native: Any


HOSTED = (
    Hop(
        "openai",
        "gpt-4o-mini",
        "openai",
        "OPENAI_API_KEY",
        lambda _: openai_error(500, "boom", "server_error"),
        Outcome.SERVER_ERROR,
        lambda body: body["messages"][-1],
        {"role": "tool", "tool_call_id": "call_0", "content": "rain"},
    ),
    Hop(
        "anthropic",
        "claude-haiku-4-5",
        "anthropic",
        "ANTHROPIC_API_KEY",
        lambda _: anthropic_error(529, "overloaded_error", "Overloaded"),
        Outcome.OVERLOADED,
        lambda body: body["messages"][-1]["content"][0],
        {"type": "tool_result", "tool_use_id": "call_0", "content": "rain"},
    ),
    Hop(
        "gemini",
        "gemini-2.5-flash",
        "google",
        "GEMINI_API_KEY",
        lambda _: gemini_error(503, "UNAVAILABLE", "The model is overloaded."),
        Outcome.OVERLOADED,
        lambda body: body["contents"][-1]["parts"][0],
        {"functionResponse": {"name": "get_weather", "response": {"output": "rain"}}},
    ),
)


@pytest.fixture
async def chain() -> AsyncIterator[list[FakeProvider]]:
    """One loopback server per hosted hop."""
    servers = [await FakeProvider().start() for _ in HOSTED]
    try:
        yield servers
    finally:
        for server in servers:
            await server.stop()


async def test_one_conversation_fails_over_to_the_local_llama_server_billed_per_attempt(
    chain: list[FakeProvider], llama_server: LlamaServer
) -> None:
    body = ""
    for index, (server, hop) in enumerate(zip(chain, HOSTED, strict=True)):
        server.default = hop.down
        body += (
            f'[deployments.hop{index}]\nprovider = "{hop.provider}"\nmodel = "{hop.model}"\n'
            f'base_url = "{server.url}"\ncredential_env = "{hop.credential}"\n'
        )
    body += (
        f'[deployments.llama]\nprovider = "openai_compatible"\nmodel = "{MODEL_ALIAS}"\n'
        f'base_url = "{llama_server.url}"\ntool_mode = "json"\nschema_style = "json_object"\n'
        "capabilities = { tools = false, context_window = 512, max_output_tokens = 64 }\n"
        "timeouts = { connect_s = 2, first_byte_s = 60, total_s = 90, first_token_s = 60 }\n"
    )
    names = [f"hop{i}" for i in range(len(HOSTED))] + ["llama"]
    body += f"[routes.default]\ndeployments = {json.dumps(names)}\n"
    config = parse_routes(
        f"[defaults]\nretries_per_deployment = 0\n{body}",
        known_providers=(*PROVIDERS, *(hop.provider for hop in HOSTED)),
    )
    ask = replace(
        request(tools=(weather_tool(),)),
        messages=(
            Message(Role.SYSTEM, "be brief"),
            Message(Role.USER, "weather in Rome, then Oslo?"),
            Message(Role.ASSISTANT, "", (ToolCall("call_0", "get_weather", '{"city":"Rome"}'),)),
            Message(Role.TOOL, "rain", tool_call_id="call_0"),
        ),
    )
    async with httpx.AsyncClient() as client:
        clock = SystemClock()
        router = Router(
            routes=lambda: config,
            prices=lambda: BOOK,
            providers=build_providers(client, clock),
            credentials=CREDENTIALS,
            clock=clock,
            random=random.Random(7).random,
        )
        outcome = await router.complete(replace(ask, params=replace(ask.params, temperature=0.0)))
    assert isinstance(outcome, CallSucceeded), outcome
    assert outcome.deployment.name == "llama"
    assert [a.outcome for a in outcome.attempts] == [
        *(hop.outcome for hop in HOSTED),
        Outcome.SUCCEEDED,
    ]
    # The real model answered through JSON tool mode: a parsed tool call or a text answer.
    answer = outcome.completion
    assert answer.tool_calls or answer.content.strip()
    for call in answer.tool_calls:
        assert call.name == "get_weather"
        assert isinstance(json.loads(call.arguments_json), dict)
    # Every hosted hop got the transcript's tool result in its own wire format.
    for server, hop in zip(chain, HOSTED, strict=True):
        assert hop.tool_result(server.received[0].body) == hop.native, hop.provider
    # Every attempt is a UsageRecorded priced by the book: hosted ones at the catalog's figures
    # (here for the tokens they billed: none), the local model at its local-layer price.
    records = usage_records(ask, outcome)
    assert [r.outcome for r in records][-1] == model_pb2.MODEL_ATTEMPT_OUTCOME_SUCCEEDED
    assert all(r.priced for r in records)
    assert all("genai-prices" in r.price_book_version for r in records)
    for record, hop in zip(records, HOSTED, strict=False):
        catalog = calc_price(
            CatalogUsage(input_tokens=record.usage.input_tokens),
            hop.model,
            provider_id=hop.catalog_id,
        ).total_price
        assert wire.amount_of(record.cost) == catalog
    local = records[-1]
    assert local.usage.input_tokens > 100  # the server's own count of the JSON-mode prompt
    assert wire.amount_of(local.cost) == (
        Decimal("0.02") * local.usage.input_tokens + Decimal("0.04") * local.usage.output_tokens
    ) / Decimal(1_000_000)

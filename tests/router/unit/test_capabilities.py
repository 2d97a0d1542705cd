"""Capability-aware routing: catalog capabilities under routes overrides, skips in the trail."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest

from stepline.v1 import model_pb2
from stepline_pricebook import PriceBook
from stepline_router.clock import ManualClock
from stepline_router.convert import usage_records
from stepline_router.credentials import StaticCredentials
from stepline_router.errors import Outcome
from stepline_router.providers.scripted import ScriptedProvider
from stepline_router.router import CallFailed, CallSucceeded, ErrorKind, Router
from stepline_router.routes import Capabilities, RoutesConfig, RoutesError, resolve_capabilities
from stepline_router.types import Completion, Params, ResponseFormat, Usage
from tests.router.support import BOOK, request, routes, weather_tool

OK = Completion("ok", usage=Usage(100, 10))
CATALOG_BOOK = PriceBook.parse(
    'version = "t"\ncurrency = "USD"\n[catalog]\npackage = "genai-prices"\n',
    as_of=date(2026, 12, 1),
)


def _router(config: RoutesConfig, book: PriceBook = BOOK, **per: list[object]) -> Router:
    scripted = ScriptedProvider(per_deployment=per, default=OK)  # type: ignore[arg-type]
    return Router(
        routes=lambda: config,
        prices=lambda: book,
        providers={"scripted": scripted, "openai": scripted},
        credentials=StaticCredentials({}),
        clock=ManualClock(),
        random=lambda: 0.5,
    )


def _two(first_caps: str, *, first: str = "scripted", model: str = "cheap") -> RoutesConfig:
    return routes(
        f'[deployments.first]\nprovider = "{first}"\nmodel = "{model}"\n{first_caps}\n'
        '[deployments.second]\nprovider = "scripted"\nmodel = "dear"\n'
        '[routes.default]\ndeployments = ["first", "second"]\n'
    )


async def test_a_tool_request_skips_a_deployment_without_tools_and_says_why() -> None:
    config = _two("capabilities = { tools = false }")
    outcome = await _router(config).complete(request(tools=(weather_tool(),)))
    assert isinstance(outcome, CallSucceeded)
    assert outcome.deployment.name == "second"
    skipped, answered = outcome.attempts
    assert (skipped.deployment, skipped.outcome, skipped.sent) == ("first", Outcome.SKIPPED, False)
    assert "does not support tools" in skipped.error
    assert 'tool_mode = "json"' in skipped.error
    assert skipped.cost == Decimal(0)
    assert answered.outcome is Outcome.SUCCEEDED
    # The ledger sees the skip too, at no cost, so attempt numbers have no gaps.
    records = usage_records(request(tools=(weather_tool(),)), outcome)
    assert [r.outcome for r in records] == [
        model_pb2.MODEL_ATTEMPT_OUTCOME_SKIPPED,
        model_pb2.MODEL_ATTEMPT_OUTCOME_SUCCEEDED,
    ]
    assert records[0].cost.amount == "0"


async def test_a_plain_request_still_uses_the_deployment_without_tools() -> None:
    outcome = await _router(_two("capabilities = { tools = false }")).complete(request())
    assert isinstance(outcome, CallSucceeded)
    assert outcome.deployment.name == "first"
    assert [a.outcome for a in outcome.attempts] == [Outcome.SUCCEEDED]


async def test_json_schema_output_skips_a_deployment_that_cannot_constrain() -> None:
    fmt = ResponseFormat("json_schema", {"type": "object"}, "out")
    outcome = await _router(_two("capabilities = { json_schema = false }")).complete(
        request(params=Params(response_format=fmt))
    )
    assert isinstance(outcome, CallSucceeded)
    assert outcome.deployment.name == "second"
    assert outcome.attempts[0].error == "skipped: does not support JSON schema output"


async def test_the_catalog_window_applies_unless_the_routes_file_states_one() -> None:
    # gpt-4 has an 8,192-token window in the catalog; the routes file says nothing.
    config = _two("", first="openai", model="gpt-4")
    resolved = resolve_capabilities(config, CATALOG_BOOK)
    assert resolved.deployments["first"].capabilities.context_window == 8192
    long = request(text="word " * 12_000)
    outcome = await _router(config, CATALOG_BOOK).complete(long)
    assert isinstance(outcome, CallSucceeded)
    assert outcome.deployment.name == "second"
    assert "context window is 8192" in outcome.attempts[0].error
    # A deployment that states its own window (a bigger self-hosted variant) is believed.
    stated = _two("capabilities = { context_window = 64000 }", first="openai", model="gpt-4")
    outcome = await _router(stated, CATALOG_BOOK).complete(long)
    assert isinstance(outcome, CallSucceeded)
    assert outcome.deployment.name == "first"


async def test_too_long_for_every_deployment_is_context_too_long_with_the_skips() -> None:
    small = routes(
        '[deployments.first]\nprovider = "scripted"\nmodel = "cheap"\n'
        "capabilities = { context_window = 100 }\n"
        '[deployments.second]\nprovider = "scripted"\nmodel = "dear"\n'
        "capabilities = { context_window = 200 }\n"
        '[routes.default]\ndeployments = ["first", "second"]\n'
    )
    outcome = await _router(small).complete(request(text="word " * 1000))
    assert isinstance(outcome, CallFailed)
    assert outcome.kind is ErrorKind.CONTEXT_TOO_LONG
    assert [(a.deployment, a.outcome) for a in outcome.attempts] == [
        ("first", Outcome.SKIPPED),
        ("second", Outcome.SKIPPED),
    ]


def test_catalog_features_fill_only_what_the_file_leaves_unsaid() -> None:
    caps = Capabilities(stated=frozenset({"tools"}), tools=False)
    filled = caps.with_catalog(32_000, frozenset({"image-in", "tools", "json-schema"}))
    assert (filled.vision, filled.tools, filled.json_schema, filled.context_window) == (
        True,
        False,
        True,
        32_000,
    )
    assert Capabilities().with_catalog(None, frozenset()) == Capabilities()


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('tool_mode = "xml"', "`tool_mode` must be one of native, json"),
        ("capabilities = { tool = true }", "unknown capabilities ['tool']"),
        ("capabilities = { vision = 1 }", "`vision` must be true or false"),
    ],
)
def test_bad_capability_settings_are_refused(line: str, message: str) -> None:
    with pytest.raises(RoutesError, match=message.replace("[", r"\[").replace("]", r"\]")):
        _two(line)

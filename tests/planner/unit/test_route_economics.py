"""The planner reserves what the router may really spend: route economics from routes.toml."""

from __future__ import annotations

import tomllib
from decimal import Decimal
from pathlib import Path

import pytest

from stepline_planner import outputs as o
from stepline_planner import profiles
from stepline_planner.convert import model_request_to_proto
from stepline_planner.decide import Context
from stepline_planner.state import Reason
from stepline_planner.transcript import estimate_tokens
from stepline_pricebook import ModelPrice, PriceBook
from stepline_routes import parse_routes
from tests.planner.unit.helpers import Driver

CONFIG = Path(__file__).resolve().parents[3] / "deploy" / "config"
TOOLS = {
    name: o.ToolSpec(name, f"{name} tool", '{"type":"object"}')
    for name in ("http_request", "search_documents")
}


def _deployment_prices(route: str, book: PriceBook) -> dict[str, ModelPrice]:
    """The price of every model the shipped router may send `route` to, read independently."""
    shipped = tomllib.loads((CONFIG / "routes.toml").read_text(encoding="utf-8"))
    prices: dict[str, ModelPrice] = {}
    for name in shipped["routes"][route]["deployments"]:
        deployment = shipped["deployments"][name]
        price = book.model_price(deployment["provider"], deployment["model"])
        assert price is not None, f"{name} is unpriced"
        prices[deployment["model"]] = price
    return prices


def test_route_fast_is_reserved_at_its_dearest_fallback() -> None:
    """`fast` may fail over to claude-haiku-4-5: a step must reserve haiku's worst case."""
    book = PriceBook.load()
    shipped = profiles.load(book)
    per_model = _deployment_prices("fast", book)
    # The premise of the bug: the fallback costs several times the first deployment.
    one_call = {model: price.worst_case(1_000, 1_000) for model, price in per_model.items()}
    assert one_call["claude-haiku-4-5"] > 5 * one_call["gpt-4o-mini"]
    d = Driver(Context(shipped, TOOLS))
    d.start(agent="researcher", budget=Decimal("10"))
    call = d.one(o.ModelCallRequested)
    assert call.route == "fast"
    reserved = d.events(o.BudgetReserved)[0].amount
    tokens = estimate_tokens(call.messages, call.tools)
    dearest = max(p.worst_case(tokens, call.max_output_tokens) for p in per_model.values())
    assert reserved >= dearest


def test_budget_between_cheap_and_dear_deployment_does_not_start_a_full_call() -> None:
    """A budget that fits gpt-4o-mini's worst case but not haiku's must not admit the call."""
    book = PriceBook.load()
    shipped = profiles.load(book)
    per_model = _deployment_prices("fast", book)
    mini, haiku = per_model["gpt-4o-mini"], per_model["claude-haiku-4-5"]
    researcher = shipped.agents["researcher"]
    probe = Driver(Context(shipped, TOOLS))
    probe.start(agent="researcher", budget=Decimal("10"))
    first = probe.one(o.ModelCallRequested)
    tokens = estimate_tokens(first.messages, first.tools)
    cheap = mini.worst_case(tokens, researcher.max_output_tokens)
    dear = haiku.worst_case(tokens, researcher.max_output_tokens)
    budget = (cheap + dear) / 2
    d = Driver(Context(shipped, TOOLS))
    d.start(agent="researcher", budget=budget)
    calls = d.of(o.ModelCallRequested)
    # Either the run wraps up with a smaller call or it fails; a full-size call is never sent.
    assert all(c.max_output_tokens < researcher.max_output_tokens for c in calls)
    for reserved in d.events(o.BudgetReserved):
        assert reserved.amount <= budget


ROUTES = """
[deployments.cheap]
provider = "openai"
model = "gpt-4o-mini"
[deployments.mystery]
provider = "openai_compatible"
model = "unpriced-model"
[routes.plain]
deployments = ["cheap"]
[routes.streamed]
deployments = ["cheap"]
stream = true
[routes.open]
deployments = ["cheap", "mystery"]
"""
AGENTS = """
[agents.quiet]
system_prompt = "q"
route = "plain"
[agents.chatty]
system_prompt = "c"
route = "plain"
stream = true
[agents.flowing]
system_prompt = "f"
route = "streamed"
[agents.lost]
system_prompt = "l"
route = "nowhere"
"""


def _profiles(agents: str = AGENTS) -> profiles.Profiles:
    return profiles.parse(agents, PriceBook.load(), parse_routes(ROUTES))


def test_agents_toml_no_longer_types_route_prices() -> None:
    with pytest.raises(profiles.ProfilesError, match="routes file"):
        _profiles(AGENTS + '\n[routes.plain]\nprice_provider = "openai"\n')


def test_an_agent_on_a_route_with_an_unpriced_deployment_is_refused_at_load() -> None:
    with pytest.raises(profiles.ProfilesError, match="mystery"):
        _profiles(AGENTS + '\n[agents.risky]\nsystem_prompt = "r"\nroute = "open"\n')


def test_a_goal_for_an_agent_whose_route_is_not_routed_fails_clearly() -> None:
    d = Driver(Context(_profiles()))
    d.start(agent="lost")
    failed = d.events(o.RunFailed)[0]
    assert failed.reason is Reason.MODEL_FAILED
    assert "'nowhere'" in failed.message


@pytest.mark.parametrize(
    ("agent", "stream"), [("quiet", False), ("chatty", True), ("flowing", True)]
)
def test_the_profile_or_the_route_asks_for_streamed_model_calls(agent: str, stream: bool) -> None:
    d = Driver(Context(_profiles()))
    d.start(agent=agent)
    call = d.one(o.ModelCallRequested)
    assert call.stream is stream
    assert model_request_to_proto(call).stream is stream


def test_stream_must_be_a_boolean() -> None:
    with pytest.raises(profiles.ProfilesError, match="stream"):
        _profiles(AGENTS + '\n[agents.odd]\nsystem_prompt = "o"\nroute = "plain"\nstream = "yes"\n')

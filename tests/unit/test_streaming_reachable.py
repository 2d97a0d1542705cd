"""A route or an agent profile asks for streamed calls; the request reaches a provider as such."""

from __future__ import annotations

import pytest

from stepline_planner import outputs as o
from stepline_planner import profiles
from stepline_planner.convert import model_request_to_proto
from stepline_planner.decide import Context
from stepline_pricebook import PriceBook
from stepline_router.clock import ManualClock
from stepline_router.credentials import StaticCredentials
from stepline_router.handlers import ModelCallHandler, Topics
from stepline_router.providers.scripted import ScriptedProvider
from stepline_router.router import Router
from stepline_router.types import Completion
from stepline_routes import parse_routes
from stepline_runtime.codec import encode
from stepline_runtime.records import InboundRecord
from tests.planner.unit.helpers import Driver

ROUTES = parse_routes(
    """
[deployments.primary]
provider = "scripted"
model = "gpt-4o-mini"
[routes.plain]
deployments = ["primary"]
[routes.streamed]
deployments = ["primary"]
stream = true
"""
)
BOOK = PriceBook.parse(
    """
version = "t"
[[models]]
provider = "scripted"
model = "gpt-4o-mini"
input_per_mtok = "0.15"
output_per_mtok = "0.60"
"""
)
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
"""


@pytest.mark.parametrize(
    ("agent", "stream"), [("quiet", False), ("chatty", True), ("flowing", True)]
)
async def test_the_planner_request_reaches_the_provider_streamed(agent: str, stream: bool) -> None:
    book = BOOK
    d = Driver(Context(profiles.parse(AGENTS, book, ROUTES)))
    d.start(agent=agent)
    request = model_request_to_proto(d.one(o.ModelCallRequested))
    provider = ScriptedProvider(default=Completion("done"))
    clock = ManualClock()
    router = Router(
        routes=lambda: ROUTES,
        prices=lambda: book,
        providers={"scripted": provider},
        credentials=StaticCredentials(),
        clock=clock,
        random=lambda: 0.0,
    )
    handler = ModelCallHandler(router, Topics("results", "usage"), clock, "model-router")
    out = encode("requests", request.run_id, request, event_id="e", source="planner")
    await handler.on_model_call_requested(
        InboundRecord("requests", 0, 0, out.key, out.value, out.headers)
    )
    [call] = provider.calls
    assert call.request.stream is stream

"""Pre-filters (capabilities, price caps) and ordering strategies."""

from __future__ import annotations

from decimal import Decimal

from stepline_router.routing import LatencyEwma, Needs, RateWindow, plan_route
from tests.router.support import BOOK, routes

DEPLOYMENTS = """
[deployments.cheap]
provider = "scripted"
model = "cheap"
capabilities = { tools = false, streaming = true, context_window = 1000, max_output_tokens = 100 }
[deployments.dear]
provider = "scripted"
model = "dear"
weight = 3
capabilities = { tools = true, streaming = false, context_window = 100000, max_output_tokens = 100 }
[deployments.unpriced]
provider = "scripted"
model = "mystery"
"""


def _plan(strategy: str, needs: Needs, extra: str = "", **kw: object) -> list[str]:
    config = routes(
        DEPLOYMENTS
        + f'[routes.r]\nstrategy = "{strategy}"\ndeployments = ["dear", "unpriced", "cheap"]\n'
        + extra
    )
    plan = plan_route(
        config.routes["r"],
        needs,
        price=BOOK.model_price,
        latency=kw.get("latency", {}),  # type: ignore[arg-type]
        random=kw.get("random", lambda: 0.5),  # type: ignore[arg-type]
    )
    return [d.name for d in plan.deployments]


PLAIN = Needs(tools=False, stream=False, input_tokens=100)


def test_priority_keeps_route_order() -> None:
    assert _plan("priority", PLAIN) == ["dear", "unpriced", "cheap"]


def test_tools_never_go_to_a_deployment_without_tools() -> None:
    assert "cheap" not in _plan("priority", Needs(tools=True, stream=False, input_tokens=10))


def test_streaming_and_context_window_filters() -> None:
    assert _plan("priority", Needs(tools=False, stream=True, input_tokens=10)) == [
        "unpriced",
        "cheap",
    ]
    assert _plan("priority", Needs(tools=False, stream=False, input_tokens=5000)) == [
        "dear",
        "unpriced",
    ]


def test_max_cost_skips_dear_and_unpriced_deployments() -> None:
    # cheap worst case: 100 in × 1/M + 100 out × 2/M = 0.0003; dear: 0.003
    needs = Needs(tools=False, stream=False, input_tokens=100, max_cost=Decimal("0.001"))
    assert _plan("priority", needs) == ["cheap"]


def test_lowest_cost_puts_unpriced_last() -> None:
    assert _plan("lowest_cost", PLAIN) == ["cheap", "dear", "unpriced"]


def test_fallback_price_ratio_drops_dearer_fallbacks() -> None:
    assert _plan("lowest_cost", PLAIN, 'max_fallback_price_ratio = "5"\n') == ["cheap"]
    assert _plan("lowest_cost", PLAIN, 'max_fallback_price_ratio = "10"\n') == ["cheap", "dear"]


def test_lowest_latency_uses_the_ewma_and_tries_unmeasured_first() -> None:
    ewma = LatencyEwma(alpha=0.5)
    ewma.observe("dear", 1.0)
    ewma.observe("dear", 0.2)  # 0.6
    ewma.observe("cheap", 0.3)
    assert ewma.snapshot()["dear"] == 0.6
    assert _plan("lowest_latency", PLAIN, latency=ewma.snapshot()) == ["unpriced", "cheap", "dear"]


def test_weighted_order_follows_the_random_source() -> None:
    draws = iter([0.5, 0.9, 0.1])  # dear (w=3): 0.5**(1/3)=0.79, unpriced 0.9, cheap 0.1
    assert _plan("weighted", PLAIN, random=lambda: next(draws)) == ["unpriced", "dear", "cheap"]
    draws = iter([0.5, 0.6, 0.1])
    assert _plan("weighted", PLAIN, random=lambda: next(draws))[0] == "dear"


def test_rate_window_counts_requests_and_tokens_per_minute() -> None:
    window = RateWindow()
    window.record(0, 500)
    assert window.admits(1, 400, rpm=2, tpm=1000)
    window.record(1, 400)
    assert not window.admits(2, 10, rpm=2, tpm=0)
    assert not window.admits(2, 200, rpm=0, tpm=1000)
    assert window.admits(61, 10, rpm=2, tpm=1000)

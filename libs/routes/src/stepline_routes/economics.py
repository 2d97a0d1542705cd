"""What a route may cost and hold, from the router's own routes and the price book.

The planner reserves a model step's worst case before sending it; the router may then send the
call to any deployment of the route (failover, latency or cost ordering). So a route's price is
the component-wise maximum over its deployments (tier by tier, `max_price`) and its context
window the smallest one: a
reservation at this price is never below what the router can spend, which keeps the documented
budget bound `limit + (R·P − 1)·W` true.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import reduce

from stepline_pricebook import ModelPrice, PriceBook, max_price
from stepline_routes.config import Route, RoutesConfig
from stepline_routes.resolve import resolved_deployment

__all__ = ["RouteEconomics", "route_economics", "routes_economics"]


@dataclass(frozen=True, slots=True)
class RouteEconomics:
    """A route as a budget sees it: worst-case price, smallest context window, streaming."""

    name: str
    # None when a deployment of the route is unpriced: no reservation can bound its cost.
    price: ModelPrice | None
    context_window_tokens: int
    stream: bool = False
    unpriced: tuple[str, ...] = ()


def route_economics(route: Route, book: PriceBook) -> RouteEconomics:
    """The worst case of `route` over every deployment the router may send it to."""
    prices: list[ModelPrice] = []
    unpriced: list[str] = []
    for deployment in route.deployments:
        price = book.model_price(deployment.provider, deployment.model)
        if price is None:
            unpriced.append(deployment.name)
        else:
            prices.append(price)
    # The same window the router filters by: the routes file's, else the catalog's.
    window = min(
        resolved_deployment(d, book).capabilities.context_window for d in route.deployments
    )
    worst = None if unpriced or not prices else _dearest(prices)
    return RouteEconomics(route.name, worst, window, route.stream, tuple(unpriced))


def routes_economics(config: RoutesConfig, book: PriceBook) -> Mapping[str, RouteEconomics]:
    """`route_economics` of every route of `config`, by route name."""
    return {name: route_economics(route, book) for name, route in config.routes.items()}


def _dearest(prices: list[ModelPrice]) -> ModelPrice:
    # Each component at its maximum, tier by tier: no deployment's call can cost more.
    return reduce(max_price, prices)

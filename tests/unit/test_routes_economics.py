"""Route economics: the dearest price and the smallest window over a route's deployments."""

from __future__ import annotations

from decimal import Decimal

import pytest

from stepline_pricebook import PriceBook
from stepline_routes import RoutesError, load_routes, parse_routes, routes_economics

BOOK = PriceBook.parse(
    """
version = "t"
[[models]]
provider = "a"
model = "cheap-in"
input_per_mtok = "1"
output_per_mtok = "9"
cached_input_per_mtok = "0.5"
[[models]]
provider = "b"
model = "cheap-out"
input_per_mtok = "3"
output_per_mtok = "4"
"""
)

ROUTES = """
[deployments.x]
provider = "a"
model = "cheap-in"
capabilities = { context_window = 200000 }
[deployments.y]
provider = "b"
model = "cheap-out"
capabilities = { context_window = 32000 }
[deployments.free]
provider = "b"
model = "not-in-the-book"
[routes.both]
deployments = ["x", "y"]
stream = true
[routes.open]
deployments = ["x", "free"]
"""


def test_price_is_the_worst_of_every_component_and_window_the_smallest() -> None:
    both = routes_economics(parse_routes(ROUTES), BOOK)["both"]
    assert both.price is not None
    assert (both.price.input_per_mtok, both.price.output_per_mtok) == (Decimal(3), Decimal(9))
    # The cached price falls back to the input price where a deployment has none.
    assert both.price.cached_input_per_mtok == Decimal(3)
    assert both.context_window_tokens == 32000
    assert both.stream
    # No deployment of the route can cost more than the route's price for any call.
    for model in ("cheap-in", "cheap-out"):
        price = BOOK.model_price("a" if model == "cheap-in" else "b", model)
        assert price is not None
        assert both.price.worst_case(5000, 700) >= price.worst_case(5000, 700)


def test_an_unpriced_deployment_leaves_the_route_without_a_bound() -> None:
    opened = routes_economics(parse_routes(ROUTES), BOOK)["open"]
    assert (opened.price, opened.unpriced) == (None, ("free",))


def test_a_streamed_route_refuses_a_deployment_that_cannot_stream() -> None:
    text = ROUTES.replace(
        "capabilities = { context_window = 32000 }",
        "capabilities = { context_window = 32000, streaming = false }",
    )
    with pytest.raises(RoutesError, match="cannot stream"):
        parse_routes(text)


def test_the_shipped_routes_file_loads_and_every_route_is_priced() -> None:
    shipped = routes_economics(load_routes(), PriceBook.load())
    assert {"default", "fast"} <= set(shipped)
    assert all(e.price is not None for e in shipped.values())

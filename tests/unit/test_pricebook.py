"""The price book prices exactly, refuses floats, and keeps unknown prices unpriced."""

from __future__ import annotations

from decimal import Decimal

import pytest

from stepline_pricebook import ModelPrice, PriceBook, PriceBookError, PriceTier, Tokens, max_price

BOOK = """
version = "v7"
[[models]]
provider = "anthropic"
model = "claude"
input_per_mtok = "3.00"
output_per_mtok = "15.00"
cached_input_per_mtok = "0.30"
cache_write_per_mtok = "3.75"
[[tools]]
name = "sql_query"
per_call = "0.0001"
"""


def test_costs_split_input_into_plain_cached_and_cache_write_tokens() -> None:
    book = PriceBook.parse(BOOK)
    tokens = Tokens(
        input=1_000_000, output=100_000, cached_input=400_000, cache_write_input=100_000
    )
    # 500k plain × 3 + 400k × 0.30 + 100k × 3.75 + 100k out × 15, per million.
    assert book.model_cost("anthropic", "claude", tokens) == Decimal("3.495")
    assert book.version == "v7"
    assert book.currency == "USD"


def test_unknown_models_and_tools_are_unpriced_not_free() -> None:
    book = PriceBook.parse(BOOK)
    assert book.model_cost("openai", "gpt-x", Tokens(input=10)) is None
    assert book.tool_cost("calculator") is None
    assert book.tool_cost("sql_query") == Decimal("0.0001")


def test_worst_case_assumes_no_cache_and_every_output_token() -> None:
    price = PriceBook.parse(BOOK).model_price("anthropic", "claude")
    assert price is not None
    assert price.worst_case(input_tokens=2_000, max_output_tokens=1_000) == Decimal("0.021")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            'version = "1"\n[[models]]\nprovider="p"\nmodel="m"\ninput_per_mtok=0.1\n'
            'output_per_mtok="1"',
            "must be a decimal string",
        ),
        (
            'version = "1"\n[[models]]\nprovider="p"\nmodel="m"\ninput_per_mtok="x"\n'
            'output_per_mtok="1"',
            "is not a decimal number",
        ),
        ('[[models]]\nprovider="p"', "`version` is required"),
        ('version = "1"\n[[tools]]\nname="t"\nper_call="-1"', "non-negative"),
        ("version = ", "not valid TOML"),
    ],
)
def test_malformed_books_are_refused_with_a_clear_reason(text: str, message: str) -> None:
    with pytest.raises(PriceBookError, match=message):
        PriceBook.parse(text)


def test_the_shipped_price_book_loads() -> None:
    book = PriceBook.load()
    assert book.model_price("local", "stepline-local-1") is not None


def test_a_zero_cache_price_is_free_not_the_input_price() -> None:
    # Some providers read cached tokens for free; a 0 price must not fall back to the input one.
    price = ModelPrice(Decimal("1"), Decimal("2"), cached_input_per_mtok=Decimal("0"))
    assert price.cost(Tokens(input=1_000_000, cached_input=1_000_000)) == 0


def test_reasoning_tokens_are_output_unless_priced_apart() -> None:
    plain = ModelPrice(Decimal("1"), Decimal("2"))
    apart = ModelPrice(Decimal("1"), Decimal("2"), reasoning_per_mtok=Decimal("8"))
    tokens = Tokens(output=1_000_000, reasoning=250_000)
    assert plain.cost(tokens) == Decimal("2")
    assert apart.cost(tokens) == Decimal("0.75") * 2 + Decimal("0.25") * 8
    assert apart.worst_case(0, 1_000_000) == Decimal("8")


def test_tiers_bill_the_calls_band_and_the_dearer_merge_keeps_every_band() -> None:
    long = ModelPrice(Decimal("2"), Decimal("4"))
    tiered = ModelPrice(Decimal("1"), Decimal("2"), tiers=(PriceTier(200_000, long),))
    assert tiered.cost(Tokens(input=200_000)) == Decimal("0.2")
    assert tiered.cost(Tokens(input=200_001)) == Decimal("0.400002")
    assert tiered.worst_case(1, 0) == Decimal("0.000002")
    flat = ModelPrice(Decimal("1.5"), Decimal("1"))
    merged = max_price(tiered, flat)
    assert merged.band(0) == ModelPrice(Decimal("1.5"), Decimal("2"))
    assert merged.band(300_000) == ModelPrice(Decimal("2"), Decimal("4"))

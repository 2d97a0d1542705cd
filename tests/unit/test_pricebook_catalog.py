"""The price book's catalog layer prices as `genai-prices` itself does; the local layer wins.

Expected figures are computed through the package's own API (`genai_prices.calc_price`), never
copied by hand, so a catalog upgrade cannot make these tests lie.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time
from decimal import Decimal
from importlib.metadata import version

import pytest
from genai_prices import Usage, calc_price
from genai_prices import types as gp
from genai_prices.data import providers

from stepline_pricebook import (
    ModelEntry,
    PriceBook,
    PriceBookError,
    PriceSource,
    Tokens,
    load_catalog,
)

AS_OF = date(2026, 12, 1)
NOON = datetime.combine(AS_OF, time(12, tzinfo=UTC))

LAYERED = """
version = "neg-1"
currency = "USD"
[catalog]
package = "genai-prices"
provider_ids = { gemini = "google" }
[[models]]
provider = "openai"
model = "gpt-4o-mini"
input_per_mtok = "0.10"
output_per_mtok = "0.40"
[[models]]
provider = "openai_compatible"
model = "qwen3-8b-selfhosted"
input_per_mtok = "0.02"
output_per_mtok = "0.02"
context_window = 32768
capabilities = ["tools"]
"""

# Small, cached and reasoning, and far past every long-context threshold.
SHAPES = (
    Tokens(input=1_200, output=350),
    Tokens(
        input=150_000, output=4_000, cached_input=60_000, cache_write_input=10_000, reasoning=900
    ),
    Tokens(input=2_500_000, output=9_000, cached_input=500_000, cache_write_input=100_000),
)


def _package_cost(provider: str, model: str, tokens: Tokens, at: datetime) -> Decimal:
    usage = Usage(
        input_tokens=tokens.input,
        output_tokens=tokens.output,
        cache_read_tokens=tokens.cached_input,
        cache_write_tokens=tokens.cache_write_input,
        output_reasoning_tokens=tokens.reasoning,
    )
    return calc_price(usage, model, provider_id=provider, genai_request_timestamp=at).total_price


def _layered(text: str = LAYERED, as_of: date = AS_OF) -> PriceBook:
    return PriceBook.parse(text, "<test>", as_of=as_of)


def _comparable(entry: ModelEntry) -> bool:
    # Units Stepline does not meter (per-request fees…) and time-of-day rates are documented
    # departures from the package's figure; every other catalog entry must match it exactly.
    return not any("not metered" in n or "time-of-day" in n for n in entry.notes)


def test_every_comparable_catalog_model_costs_what_the_package_computes() -> None:
    book = _layered()
    catalog = load_catalog(AS_OF)
    sample = [e for e in catalog.entries if _comparable(e)]
    assert len(sample) > 1_500
    mismatches = []
    for entry in sample:
        ours = book.catalog_entry(entry.provider, entry.model)
        assert ours is not None, entry
        for tokens in SHAPES:
            try:
                expected = _package_cost(entry.provider, entry.model, tokens, NOON)
            except LookupError:
                # A few ids are not covered by their own match rules; the book prices them by id.
                assert ours == entry
                break
            if ours.price.cost(tokens) != expected:
                mismatches.append((entry.provider, entry.model, tokens, expected))
    assert mismatches == []


@pytest.mark.parametrize(
    ("provider", "model"),
    [
        ("openai", "gpt-4o"),
        ("openai", "gpt-4o-2024-08-06"),  # a dated snapshot, matched by the catalog's rules
        ("anthropic", "claude-sonnet-4-5"),  # tiered above 200k input, cache writes
        ("google", "gemini-2.5-pro"),  # tiered
        ("mistral", "mistral-large-latest"),
        ("groq", "llama-3.3-70b-versatile"),
    ],
)
def test_named_models_through_the_book_match_the_package(provider: str, model: str) -> None:
    book = _layered()
    for tokens in SHAPES:
        assert book.model_cost(provider, model, tokens) == _package_cost(
            provider, model, tokens, NOON
        )


def test_a_stepline_provider_name_maps_to_the_catalog_id() -> None:
    book = _layered()
    tokens = SHAPES[1]
    assert book.model_cost("gemini", "gemini-2.5-flash", tokens) == _package_cost(
        "google", "gemini-2.5-flash", tokens, NOON
    )


def test_time_of_day_rates_are_never_below_the_package_at_any_hour() -> None:
    book = _layered()
    entries = [e for e in load_catalog(AS_OF).entries if any("time-of-day" in n for n in e.notes)]
    assert entries, "the catalog has off-peak prices (deepseek); this test must see them"
    for entry in entries:
        tokens = SHAPES[1]
        ours = book.model_cost(entry.provider, entry.model, tokens)
        hourly = [
            _package_cost(entry.provider, entry.model, tokens, datetime.combine(AS_OF, time(h)))
            for h in range(24)
        ]
        assert ours is not None
        assert ours >= max(hourly)
        assert ours in hourly  # the day's highest rate, not an invented one


def test_dated_prices_resolve_for_the_books_day() -> None:
    dated = next(
        (p.id, m.id, c.constraint.start_date)
        for p in providers
        for m in p.models
        if isinstance(m.prices, list)
        for c in m.prices
        if isinstance(c.constraint, gp.StartDateConstraint) and c.constraint.start_date > AS_OF
    )
    provider, model, start = dated
    before, after = _layered(as_of=AS_OF), _layered(as_of=start)
    tokens = SHAPES[0]
    assert before.model_cost(provider, model, tokens) == _package_cost(
        provider, model, tokens, NOON
    )
    assert after.model_cost(provider, model, tokens) == _package_cost(
        provider, model, tokens, datetime.combine(start, time(12, tzinfo=UTC))
    )
    assert before.version != after.version


def test_tiered_models_reserve_at_their_dearest_tier_and_bill_at_the_calls_tier() -> None:
    price = _layered().model_price("google", "gemini-2.5-pro")
    assert price is not None
    assert price.tiers, "gemini-2.5-pro has a long-context tier in the catalog"
    top = price.tiers[-1].price
    small = Tokens(input=1_000, output=1_000)
    assert price.cost(small) == (1_000 * price.input_per_mtok + 1_000 * price.output_per_mtok) / (
        10**6
    )
    assert price.worst_case(1_000, 1_000) == (
        1_000 * top.input_per_mtok + 1_000 * top.output_per_mtok
    ) / (10**6)
    assert price.worst_case(1_000, 1_000) > price.cost(small)


def test_the_local_layer_wins_over_the_catalog_for_the_name_and_its_aliases() -> None:
    book = _layered()
    catalog = book.catalog_entry("openai", "gpt-4o-mini")
    assert catalog is not None
    assert catalog.price.input_per_mtok != Decimal("0.10")
    for name in ("gpt-4o-mini", "gpt-4o-mini-2024-07-18"):
        entry = book.model_entry("openai", name)
        assert entry is not None
        assert entry.source is PriceSource.LOCAL
        assert entry.price.input_per_mtok == Decimal("0.10")
        assert entry.context_window == catalog.context_window  # not given locally
    listed = [
        e for e in book.model_entries() if e.model == "gpt-4o-mini" and e.provider == "openai"
    ]
    assert [e.source for e in listed] == [PriceSource.LOCAL]


def test_a_self_hosted_model_is_priced_by_the_local_layer_alone() -> None:
    entry = _layered().model_entry("openai_compatible", "qwen3-8b-selfhosted")
    assert entry is not None
    assert entry.price.output_per_mtok == Decimal("0.02")
    assert entry.context_window == 32768
    assert entry.capabilities == frozenset({"tools"})


@pytest.mark.parametrize(
    ("provider", "model"),
    [
        ("openai", "gpt-no-such-model"),
        ("openai_compatible", "gpt-4o-mini"),  # a self-hosted server is not OpenAI's price
        ("no-such-provider", "gpt-4o"),
    ],
)
def test_unknown_models_stay_unpriced_never_zero(provider: str, model: str) -> None:
    book = _layered()
    assert book.model_entry(provider, model) is None
    assert book.model_price(provider, model) is None
    assert book.model_cost(provider, model, Tokens(input=10, output=10)) is None


def test_the_version_names_the_file_and_the_catalog_and_changes_with_the_file() -> None:
    first = _layered()
    edited = _layered(LAYERED.replace('"0.40"', '"0.41"'))
    commented = _layered(LAYERED + "\n# a comment is an edit too\n")
    assert first.version.startswith("neg-1+local.")
    assert first.version.endswith(load_catalog(AS_OF).version)
    assert f"genai-prices-{version('genai-prices')}" in first.version
    assert len({first.version, edited.version, commented.version}) == 3
    assert _layered().version == first.version  # same file, same day: same version


def test_a_book_without_a_catalog_keeps_its_own_version_and_prices_only_itself() -> None:
    book = PriceBook.parse(LAYERED.replace('[catalog]\npackage = "genai-prices"\n', "[x]\n"))
    assert book.version == "neg-1"
    assert book.model_price("anthropic", "claude-sonnet-4-5") is None
    assert len(book.model_entries()) == 2


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (LAYERED.replace('"genai-prices"', '"litellm"'), "package"),
        (LAYERED.replace('currency = "USD"', 'currency = "EUR"'), "prices in USD"),
        (LAYERED.replace('{ gemini = "google" }', "{ gemini = 1 }"), "provider_ids"),
        (LAYERED.replace("32768", '"32k"'), "context_window"),
    ],
)
def test_a_bad_catalog_section_or_model_metadata_is_refused(text: str, message: str) -> None:
    with pytest.raises(PriceBookError, match=message):
        PriceBook.parse(text)


def test_the_shipped_book_layers_the_catalog_and_lists_hundreds_of_models() -> None:
    book = PriceBook.load()
    assert book.catalog is not None
    assert len(book.model_entries()) >= 200
    local = book.model_entry("local", "stepline-local-1")
    assert local is not None
    assert local.source is PriceSource.LOCAL
    catalog = book.model_entry("anthropic", "claude-haiku-4-5")
    assert catalog is not None
    assert catalog.source is PriceSource.CATALOG


def test_an_embedding_model_is_priced_by_input_other_input_only_models_stay_unpriced() -> None:
    book = _layered()
    expected = calc_price(Usage(input_tokens=1000), "text-embedding-3-small", provider_id="openai")
    cost = book.model_cost("openai", "text-embedding-3-small", Tokens(input=1000))
    assert cost == expected.total_price
    assert cost is not None
    assert cost > 0
    # Input-only but not an embedding model: its output price is unknown, so it is unpriced.
    assert book.model_price("azure", "davinci") is None

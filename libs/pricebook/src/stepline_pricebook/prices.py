"""Token prices and what a model offers: the value types both price-book layers produce.

Prices are exact `Decimal` amounts per one million tokens. A price may change above an input
size (the providers' "long context" tiers): `ModelPrice.tiers` holds those cliffs, where crossing
a threshold applies the tier's prices to *every* token of the call, as the providers bill it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from decimal import Decimal
from enum import StrEnum

from stepline_vocab import Tokens

__all__ = ["ModelEntry", "ModelPrice", "PriceSource", "PriceTier", "Tokens", "max_price"]

_PER_MILLION = Decimal(1_000_000)


@dataclass(frozen=True, slots=True)
class PriceTier:
    """Prices in force for a whole call once its input exceeds `above_input_tokens`."""

    above_input_tokens: int
    price: ModelPrice


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """Prices per one million tokens; cache and reasoning prices default to input and output."""

    input_per_mtok: Decimal
    output_per_mtok: Decimal
    cached_input_per_mtok: Decimal | None = None
    cache_write_per_mtok: Decimal | None = None
    reasoning_per_mtok: Decimal | None = None
    # Ascending thresholds; each tier's price is flat (has no tiers of its own).
    tiers: tuple[PriceTier, ...] = ()

    def band(self, input_tokens: int) -> ModelPrice:
        """The flat prices that apply to a call with `input_tokens` input tokens."""
        applicable = self
        for tier in self.tiers:
            if input_tokens > tier.above_input_tokens:
                applicable = tier.price
        return replace(applicable, tiers=()) if applicable.tiers else applicable

    def bands(self) -> tuple[ModelPrice, ...]:
        """Every flat price set this model can charge: the base one, then each tier's."""
        return (replace(self, tiers=()), *(tier.price for tier in self.tiers))

    def cost(self, tokens: Tokens) -> Decimal:
        """Exact cost of `tokens` at these prices (the tier is chosen by the call's input)."""
        flat = self.band(tokens.input)
        cached = tokens.cached_input
        written = tokens.cache_write_input
        plain = max(0, tokens.input - cached - written)
        reasoning = min(tokens.reasoning, tokens.output)
        total = (
            plain * flat.input_per_mtok
            + cached * _or(flat.cached_input_per_mtok, flat.input_per_mtok)
            + written * _or(flat.cache_write_per_mtok, flat.input_per_mtok)
            + (tokens.output - reasoning) * flat.output_per_mtok
            + reasoning * _or(flat.reasoning_per_mtok, flat.output_per_mtok)
        )
        return total / _PER_MILLION

    def worst_case(self, input_tokens: int, max_output_tokens: int) -> Decimal:
        """Upper bound of a call's cost: no cache discount, every allowed output token used.

        Input counts are estimates before a call, so a tiered model is reserved at its most
        expensive tier, and output at the dearer of its output and reasoning prices.
        """
        return max(
            (
                input_tokens * band.input_per_mtok
                + max_output_tokens
                * max(band.output_per_mtok, _or(band.reasoning_per_mtok, band.output_per_mtok))
            )
            / _PER_MILLION
            for band in self.bands()
        )


def max_price(first: ModelPrice, second: ModelPrice) -> ModelPrice:
    """The element-wise dearer of two price sets, tier by tier: a conservative merge."""
    thresholds = sorted(
        {t.above_input_tokens for t in first.tiers} | {t.above_input_tokens for t in second.tiers}
    )

    def flat_max(a: ModelPrice, b: ModelPrice) -> ModelPrice:
        return ModelPrice(
            input_per_mtok=max(a.input_per_mtok, b.input_per_mtok),
            output_per_mtok=max(a.output_per_mtok, b.output_per_mtok),
            cached_input_per_mtok=_max_optional(
                a.cached_input_per_mtok, b.cached_input_per_mtok, a.input_per_mtok, b.input_per_mtok
            ),
            cache_write_per_mtok=_max_optional(
                a.cache_write_per_mtok, b.cache_write_per_mtok, a.input_per_mtok, b.input_per_mtok
            ),
            reasoning_per_mtok=_max_optional(
                a.reasoning_per_mtok, b.reasoning_per_mtok, a.output_per_mtok, b.output_per_mtok
            ),
        )

    # Just above a threshold both sides are in their band for that input size.
    base = flat_max(first.band(0), second.band(0))
    tiers = tuple(PriceTier(t, flat_max(first.band(t + 1), second.band(t + 1))) for t in thresholds)
    return replace(base, tiers=tiers)


class PriceSource(StrEnum):
    """Which layer a model's price came from."""

    LOCAL = "local"  # deploy/config/pricebook.toml: negotiated prices, self-hosted models
    CATALOG = "catalog"  # the maintained catalog package


@dataclass(frozen=True, slots=True)
class ModelEntry:
    """One priced model: its prices and what is known of its window and capabilities."""

    provider: str
    model: str
    price: ModelPrice
    source: PriceSource
    name: str = ""
    context_window: int | None = None
    # Known features, e.g. "prompt-cache", "image-in", "audio-out", "web-search".
    capabilities: frozenset[str] = field(default_factory=frozenset)
    deprecated: bool = False
    # What the price does not cover (units Stepline does not meter, discounts not applied).
    notes: tuple[str, ...] = ()


def _or(value: Decimal | None, default: Decimal) -> Decimal:
    return default if value is None else value


def _max_optional(
    a: Decimal | None, b: Decimal | None, a_default: Decimal, b_default: Decimal
) -> Decimal | None:
    if a is None and b is None:
        return None
    return max(_or(a, a_default), _or(b, b_default))

"""The maintained model catalog (PyPI `genai-prices`) as Stepline prices, windows and capabilities.

The package's data is pinned with the package (its `UpdatePrices` download is never used), so a
catalog is fully named by the package version plus the date its dated prices were resolved for.

What maps and what does not, by design:
- Token prices map one to one: `input_mtok`, `output_mtok`, `cache_read_mtok` (cached input),
  `cache_write_mtok` (cache writes; the default 5-minute rate — Stepline does not meter the TTL,
  so 1-hour writes are priced at it too) and `output_reasoning_mtok` (reasoning; most models bill
  reasoning as output). Tiered prices (a cliff above an input size) keep their tiers: billing
  applies the tier of the call's actual input, reservations the dearest tier.
- Dated prices (`StartDateConstraint`) are resolved for the book's `as_of` day. Time-of-day prices
  (off-peak discounts) cannot be resolved without the call's time, so the day's highest rate is
  used: never below the real price. Service-tier and batch variants (`price_variants`) are not
  applied: Stepline calls the standard tier.
- Models with no input and output token price (image, audio, per-request only) are not priced:
  they stay unpriced. Other units (web searches, audio seconds, per-request fees…) are not metered
  by Stepline; an entry's `notes` names them.
- The catalog has no tool-calling or JSON-output flags; `capabilities` holds what its prices show
  (prompt cache, image/audio/video in or out, web search). Route deployments declare the rest.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from decimal import Decimal
from importlib.metadata import version as package_version

from genai_prices import types as gp
from genai_prices.data import providers as catalog_providers

from stepline_pricebook.prices import ModelEntry, ModelPrice, PriceSource, PriceTier, max_price

__all__ = ["CATALOG_PACKAGE", "Catalog", "load_catalog"]

CATALOG_PACKAGE = "genai-prices"

# Price keys that become Stepline token prices; every other priced key is noted as not metered.
_MAPPED = frozenset(
    {"input_mtok", "output_mtok", "cache_read_mtok", "cache_write_mtok", "output_reasoning_mtok"}
)
# What a priced unit tells about the model.
_CAPABILITY_OF_KEY = {
    "cache_read_mtok": "prompt-cache",
    "input_image_mtok": "image-in",
    "cache_image_read_mtok": "image-in",
    "input_audio_mtok": "audio-in",
    "input_audio_hours": "audio-in",
    "input_video_mtok": "video-in",
    "output_image_mtok": "image-out",
    "output_audio_mtok": "audio-out",
    "output_video_mtok": "video-out",
    "output_reasoning_mtok": "reasoning",
    "web_searches_kcount": "web-search",
}
_NOT_METERED_KEYS_SHOWN = 4
_LOOKUP_CACHE_SIZE = 4096


# Identity, not value, equality: two catalogs are the same only if they are one object.
@dataclass(frozen=True, slots=True, eq=False)
class Catalog:
    """Every token-priced model of one catalog package version, resolved for one day."""

    package_version: str
    as_of: date
    # The latest dated price change in force on `as_of` (None when the data has none).
    effective: date | None
    entries: tuple[ModelEntry, ...]
    _by_info: Mapping[int, ModelEntry]
    _providers: Mapping[str, gp.Provider]
    # Lookups run per routed call; the catalog's match rules are regexes over ~2,000 models.
    _found: dict[tuple[str, str], ModelEntry | None] = field(default_factory=dict)

    @property
    def version(self) -> str:
        """`genai-prices-<package version>@<effective date>`: the catalog part of a book version."""
        suffix = f"@{self.effective.isoformat()}" if self.effective else ""
        return f"{CATALOG_PACKAGE}-{self.package_version}{suffix}"

    def lookup(self, provider_id: str, model: str) -> ModelEntry | None:
        """The entry for `model` at catalog provider `provider_id`, or None when unpriced.

        Model references are matched by the catalog's own rules (dated snapshots and aliases
        such as `gpt-4o-2024-08-06` find `gpt-4o`); a provider that resells another's models
        (Azure → OpenAI) falls back to that provider's entry, as the catalog specifies.
        """
        key = (provider_id, model)
        if key in self._found:
            return self._found[key]
        provider = self._providers.get(provider_id.lower())
        info = None
        if provider is not None:
            # The catalog's rules first (they are what it prices by); then the primary id,
            # which a few entries' own match rules do not cover (e.g. AWS `regional.` ids).
            info = provider.find_model(model, all_providers=list(self._providers.values()))
            info = info or next((m for m in provider.models if m.id == model), None)
        found = None if info is None else self._by_info.get(id(info))
        if len(self._found) >= _LOOKUP_CACHE_SIZE:
            self._found.clear()
        self._found[key] = found
        return found


@functools.lru_cache(maxsize=4)
def load_catalog(as_of: date) -> Catalog:
    """The installed catalog with dated prices resolved for `as_of` (UTC day); cached."""
    by_info: dict[int, ModelEntry] = {}
    entries: list[ModelEntry] = []
    for provider in catalog_providers:
        for info in provider.models:
            entry = _entry(provider.id, info, as_of)
            if entry is not None:
                by_info[id(info)] = entry
                entries.append(entry)
    return Catalog(
        package_version=package_version(CATALOG_PACKAGE),
        as_of=as_of,
        effective=_effective(catalog_providers, as_of),
        entries=tuple(entries),
        _by_info=by_info,
        _providers={p.id: p for p in catalog_providers},
    )


def _entry(provider_id: str, info: gp.ModelInfo, as_of: date) -> ModelEntry | None:
    notes: list[str] = []
    resolved = [info.get_prices(moment) for moment in _moments(info, as_of)]
    # An embedding model produces no output: its input-only price is whole (output priced 0).
    # Other input-only models stay unpriced: their output has a price the catalog does not say.
    embedding = "embed" in info.id.lower()
    prices = [_token_price(p, input_only=embedding) for p in resolved]
    if not prices or any(p is None for p in prices):
        return None
    price = functools.reduce(max_price, [p for p in prices if p is not None])
    if any(p != prices[0] for p in prices):
        notes.append("time-of-day discounts not applied: priced at the day's highest rate")
    if info.price_variants:
        notes.append("service-tier and batch variants not applied: standard prices")
    keys = {key for p in resolved for key, value in _priced_items(p) if value is not None}
    if "cache_write_1h_mtok" in keys:
        notes.append("1-hour cache writes priced at the default (5-minute) write price")
    unmetered = sorted(keys - _MAPPED - {"cache_write_1h_mtok"})
    if unmetered:
        shown = ", ".join(unmetered[:_NOT_METERED_KEYS_SHOWN])
        more = "…" if len(unmetered) > _NOT_METERED_KEYS_SHOWN else ""
        notes.append(f"not metered by Stepline, not billed: {shown}{more}")
    return ModelEntry(
        provider=provider_id,
        model=info.id,
        price=price,
        source=PriceSource.CATALOG,
        name=info.name or "",
        context_window=info.context_window,
        capabilities=frozenset(_CAPABILITY_OF_KEY[k] for k in keys if k in _CAPABILITY_OF_KEY),
        deprecated=bool(info.deprecated),
        notes=tuple(notes),
    )


def _moments(info: gp.ModelInfo, as_of: date) -> list[datetime]:
    """Instants of `as_of` covering every price the model can have that day."""
    times = {time(0, tzinfo=UTC)}
    if isinstance(info.prices, list):
        for conditional in info.prices:
            constraint = conditional.constraint
            if isinstance(constraint, gp.TimeOfDateConstraint):
                times |= {_utc(constraint.start_time), _utc(constraint.end_time)}
    return [datetime.combine(as_of, t) for t in sorted(times)]


def _utc(value: time) -> time:
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return datetime.combine(date(1970, 1, 1), value).astimezone(UTC).timetz()


def _priced_items(price: gp.ModelPrice) -> Iterable[tuple[str, object]]:
    return ((k, v) for k, v in vars(price).items() if not k.startswith("_"))


def _token_price(price: gp.ModelPrice, *, input_only: bool = False) -> ModelPrice | None:
    values = dict(_priced_items(price))
    prices = {key: values.get(key) for key in _MAPPED}
    if input_only and prices["output_mtok"] is None:
        prices["output_mtok"] = Decimal(0)
    if prices["input_mtok"] is None or prices["output_mtok"] is None:
        return None
    thresholds = sorted(
        {tier.start for v in prices.values() if isinstance(v, gp.TieredPrices) for tier in v.tiers}
    )

    def flat(input_tokens: int) -> ModelPrice:
        def at(key: str) -> Decimal | None:
            return _at(prices[key], input_tokens)

        return ModelPrice(
            input_per_mtok=_required(at("input_mtok")),
            output_per_mtok=_required(at("output_mtok")),
            cached_input_per_mtok=at("cache_read_mtok"),
            cache_write_per_mtok=at("cache_write_mtok"),
            reasoning_per_mtok=at("output_reasoning_mtok"),
        )

    base = flat(0)
    tiers = tuple(PriceTier(t, flat(t + 1)) for t in thresholds)
    return ModelPrice(
        base.input_per_mtok,
        base.output_per_mtok,
        base.cached_input_per_mtok,
        base.cache_write_per_mtok,
        base.reasoning_per_mtok,
        tiers,
    )


def _at(value: object, input_tokens: int) -> Decimal | None:
    """A price key's value for a call with `input_tokens` input, by the catalog's cliff rule."""
    if value is None:
        return None
    if isinstance(value, gp.TieredPrices):
        applicable = value.base
        for tier in value.tiers:  # ascending: the last one crossed wins
            if input_tokens > tier.start:
                applicable = tier.price
        return applicable
    if isinstance(value, Decimal):
        return value
    raise TypeError(f"unexpected catalog price {value!r}")


def _required(value: Decimal | None) -> Decimal:
    if value is None:  # checked by the caller; kept for the type checker
        raise ValueError("missing token price")
    return value


def _effective(providers: Iterable[gp.Provider], as_of: date) -> date | None:
    starts = [
        conditional.constraint.start_date
        for provider in providers
        for info in provider.models
        if isinstance(info.prices, list)
        for conditional in info.prices
        if isinstance(conditional.constraint, gp.StartDateConstraint)
        and conditional.constraint.start_date <= as_of
    ]
    return max(starts, default=None)

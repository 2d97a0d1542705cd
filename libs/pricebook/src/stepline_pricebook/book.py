"""Load a price book: the maintained catalog under a local TOML override layer, exact `Decimal`.

A book file may name a catalog (`[catalog] package = "genai-prices"`): models it does not price
itself are then priced from that catalog, and the file's own `[[models]]` win over the catalog's.
An unknown price is `None` — *unpriced* — never zero: callers record and report it as such.
"""

from __future__ import annotations

import hashlib
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from stepline_pricebook.catalog import CATALOG_PACKAGE, Catalog, load_catalog
from stepline_pricebook.prices import ModelEntry, ModelPrice, PriceSource, Tokens
from stepline_vocab import ConfigurationError

__all__ = ["ModelPrice", "PriceBook", "PriceBookError", "Tokens", "default_path"]

_CATALOG_CURRENCY = "USD"


class PriceBookError(ConfigurationError):
    """The price book file is malformed; the message names the entry and what to fix."""


@dataclass(frozen=True, slots=True)
class PriceBook:
    """One version of all prices: the local layer, over the catalog when the file names one."""

    version: str
    currency: str
    models: dict[tuple[str, str], ModelPrice]
    tools: dict[str, Decimal]
    catalog: Catalog | None = None
    # Stepline provider names → catalog provider ids, for names that differ (gemini → google).
    catalog_provider_ids: Mapping[str, str] = field(default_factory=dict)
    # Window and capabilities the local file states for its models (prices are in `models`).
    local_entries: Mapping[tuple[str, str], ModelEntry] = field(default_factory=dict)

    def model_price(self, provider: str, model: str) -> ModelPrice | None:
        """Prices of `model` at `provider`, or None when unpriced."""
        entry = self.model_entry(provider, model)
        return None if entry is None else entry.price

    def model_entry(self, provider: str, model: str) -> ModelEntry | None:
        """Prices, window and capabilities of `model` at `provider`, or None when unpriced.

        The local layer wins: for the exact name, and for the catalog's canonical name of an
        alias (a negotiated `gpt-4o` price also prices `gpt-4o-2024-08-06`).
        """
        found = self.catalog_entry(provider, model)
        local = self._local(provider, model) or (
            None if found is None else self._local(provider, found.model)
        )
        if local is None:
            return found
        if found is None:
            return local
        return replace(
            local,
            name=local.name or found.name,
            context_window=local.context_window or found.context_window,
            capabilities=local.capabilities or found.capabilities,
        )

    def catalog_entry(self, provider: str, model: str) -> ModelEntry | None:
        """The catalog's own entry for `model` at `provider` (ignoring the local layer)."""
        if self.catalog is None:
            return None
        return self.catalog.lookup(self.catalog_provider_id(provider), model)

    def catalog_provider_id(self, provider: str) -> str:
        """The catalog's id of a Stepline provider name."""
        return self.catalog_provider_ids.get(provider, provider)

    def model_entries(self) -> list[ModelEntry]:
        """Every priced model: the local layer's, then the catalog's it does not override."""
        local = [self.model_entry(p, m) for p, m in self.models]
        listed = [e for e in local if e is not None]
        if self.catalog is None:
            return listed
        overridden = {
            (found.provider, found.model)
            for provider, model in self.models
            if (found := self.catalog_entry(provider, model)) is not None
        }
        listed.extend(e for e in self.catalog.entries if (e.provider, e.model) not in overridden)
        return listed

    def model_cost(self, provider: str, model: str, tokens: Tokens) -> Decimal | None:
        """Cost of a model call, or None when the model is unpriced."""
        price = self.model_price(provider, model)
        return None if price is None else price.cost(tokens)

    def tool_cost(self, tool: str) -> Decimal | None:
        """Price of one call of `tool`, or None when unpriced."""
        return self.tools.get(tool)

    def _local(self, provider: str, model: str) -> ModelEntry | None:
        price = self.models.get((provider, model))
        if price is None:
            return None
        return self.local_entries.get((provider, model)) or ModelEntry(
            provider, model, price, PriceSource.LOCAL
        )

    @classmethod
    def load(cls, path: Path | None = None, *, as_of: date | None = None) -> PriceBook:
        """Read a price book file (default: `default_path()`); see `parse` for `as_of`."""
        source = path or default_path()
        try:
            text = source.read_text(encoding="utf-8")
        except OSError as error:
            raise PriceBookError(f"cannot read price book {source}: {error.strerror}") from error
        return cls.parse(text, origin=str(source), as_of=as_of)

    @classmethod
    def parse(
        cls, text: str, origin: str = "<price book>", *, as_of: date | None = None
    ) -> PriceBook:
        """Parse TOML text; every price is a decimal string so no float ever touches money.

        With a `[catalog]`, the catalog's dated prices are those in force on `as_of` (default:
        today, UTC) and the version becomes `<file version>+local.<digest of the file>+<catalog
        version>`, so any edit of the file or any catalog change gives a new version.
        """
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise PriceBookError(f"{origin}: not valid TOML: {error}") from error
        version = _required(data, "version", origin)
        currency = str(data.get("currency", "USD"))
        models: dict[tuple[str, str], ModelPrice] = {}
        entries: dict[tuple[str, str], ModelEntry] = {}
        for i, entry in enumerate(data.get("models", [])):
            where = f"{origin}: models[{i}]"
            key = (_required(entry, "provider", where), _required(entry, "model", where))
            if key in models:
                raise PriceBookError(f"{where}: {key[0]}/{key[1]} is priced twice")
            models[key] = ModelPrice(
                input_per_mtok=_decimal(entry, "input_per_mtok", where),
                output_per_mtok=_decimal(entry, "output_per_mtok", where),
                cached_input_per_mtok=_optional_decimal(entry, "cached_input_per_mtok", where),
                cache_write_per_mtok=_optional_decimal(entry, "cache_write_per_mtok", where),
                reasoning_per_mtok=_optional_decimal(entry, "reasoning_per_mtok", where),
            )
            entries[key] = ModelEntry(
                provider=key[0],
                model=key[1],
                price=models[key],
                source=PriceSource.LOCAL,
                context_window=_optional_int(entry, "context_window", where),
                capabilities=_capabilities(entry, where),
            )
        tools = {
            _required(entry, "name", f"{origin}: tools[{i}]"): _decimal(
                entry, "per_call", f"{origin}: tools[{i}]"
            )
            for i, entry in enumerate(data.get("tools", []))
        }
        section = data.get("catalog")
        if section is None:
            return cls(version, currency, models, tools, local_entries=entries)
        provider_ids = _catalog_section(section, currency, f"{origin}: [catalog]")
        catalog = load_catalog(as_of or datetime.now(UTC).date())
        digest = hashlib.sha256(text.encode()).hexdigest()[:10]
        return cls(
            f"{version}+local.{digest}+{catalog.version}",
            currency,
            models,
            tools,
            catalog,
            provider_ids,
            entries,
        )


def default_path() -> Path:
    """`STEPLINE_PRICEBOOK`, else `deploy/config/pricebook.toml` of this checkout."""
    configured = os.environ.get("STEPLINE_PRICEBOOK")
    if configured:
        return Path(configured)
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "deploy" / "config" / "pricebook.toml"
        if candidate.is_file():
            return candidate
    raise PriceBookError("no price book found: set STEPLINE_PRICEBOOK to a pricebook.toml")


def _required(entry: dict[str, Any], name: str, where: str) -> str:
    value = entry.get(name)
    if not isinstance(value, str) or not value:
        raise PriceBookError(f"{where}: `{name}` is required (a non-empty string)")
    return value


def _catalog_section(section: Any, currency: str, where: str) -> dict[str, str]:
    if not isinstance(section, dict):
        raise PriceBookError(f"{where}: must be a table")
    package = section.get("package")
    if package != CATALOG_PACKAGE:
        raise PriceBookError(f'{where}: `package` must be "{CATALOG_PACKAGE}", not {package!r}')
    if currency != _CATALOG_CURRENCY:
        raise PriceBookError(
            f"{where}: the catalog prices in {_CATALOG_CURRENCY}; this book is in {currency}"
        )
    ids = section.get("provider_ids", {})
    if not isinstance(ids, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and v for k, v in ids.items()
    ):
        raise PriceBookError(
            f"{where}: `provider_ids` must map provider names to catalog ids, "
            'e.g. gemini = "google"'
        )
    return dict(ids)


def _optional_int(entry: dict[str, Any], name: str, where: str) -> int | None:
    raw = entry.get(name)
    if raw is None:
        return None
    if not isinstance(raw, int) or isinstance(raw, bool) or raw <= 0:
        raise PriceBookError(f"{where}: `{name}` must be a positive whole number of tokens")
    return raw


def _capabilities(entry: dict[str, Any], where: str) -> frozenset[str]:
    raw = entry.get("capabilities", [])
    if not isinstance(raw, list) or not all(isinstance(c, str) and c for c in raw):
        raise PriceBookError(f'{where}: `capabilities` must be a list of names, e.g. ["tools"]')
    return frozenset(raw)


def _decimal(entry: dict[str, Any], name: str, where: str) -> Decimal:
    value = _optional_decimal(entry, name, where)
    if value is None:
        raise PriceBookError(f'{where}: `{name}` is required (a decimal string, e.g. "0.15")')
    return value


def _optional_decimal(entry: dict[str, Any], name: str, where: str) -> Decimal | None:
    raw = entry.get(name)
    if raw is None:
        return None
    if not isinstance(raw, str):
        # Floats would silently round money; insist on strings.
        raise PriceBookError(f'{where}: `{name}` must be a decimal string like "0.15", not {raw!r}')
    try:
        value = Decimal(raw)
    except InvalidOperation as error:
        raise PriceBookError(f"{where}: `{name}` = {raw!r} is not a decimal number") from error
    if value < 0 or not value.is_finite():
        raise PriceBookError(f"{where}: `{name}` must be a finite, non-negative amount")
    return value

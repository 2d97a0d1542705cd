"""Load a price book (TOML) and price token usage and tool calls exactly, in `Decimal`.

An unknown price is `None` — *unpriced* — never zero: callers record and report it as such.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from stepline_vocab import ConfigurationError, Tokens

# `Tokens` is re-exported: the price book prices the shared token counts.
__all__ = ["ModelPrice", "PriceBook", "PriceBookError", "Tokens", "default_path"]

_PER_MILLION = Decimal(1_000_000)


class PriceBookError(ConfigurationError):
    """The price book file is malformed; the message names the entry and what to fix."""


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """Prices per one million tokens; cache prices default to the input price."""

    input_per_mtok: Decimal
    output_per_mtok: Decimal
    cached_input_per_mtok: Decimal | None = None
    cache_write_per_mtok: Decimal | None = None

    def cost(self, tokens: Tokens) -> Decimal:
        """Exact cost of `tokens` at these prices."""
        cached = tokens.cached_input
        written = tokens.cache_write_input
        plain = max(0, tokens.input - cached - written)
        total = (
            plain * self.input_per_mtok
            + cached * (self.cached_input_per_mtok or self.input_per_mtok)
            + written * (self.cache_write_per_mtok or self.input_per_mtok)
            + tokens.output * self.output_per_mtok
        )
        return total / _PER_MILLION

    def worst_case(self, input_tokens: int, max_output_tokens: int) -> Decimal:
        """Upper bound of a call's cost: no cache discount, every allowed output token used."""
        return self.cost(Tokens(input=input_tokens, output=max_output_tokens))


@dataclass(frozen=True, slots=True)
class PriceBook:
    """One version of all prices."""

    version: str
    currency: str
    models: dict[tuple[str, str], ModelPrice]
    tools: dict[str, Decimal]

    def model_price(self, provider: str, model: str) -> ModelPrice | None:
        """Prices of `model` at `provider`, or None when unpriced."""
        return self.models.get((provider, model))

    def model_cost(self, provider: str, model: str, tokens: Tokens) -> Decimal | None:
        """Cost of a model call, or None when the model is unpriced."""
        price = self.model_price(provider, model)
        return None if price is None else price.cost(tokens)

    def tool_cost(self, tool: str) -> Decimal | None:
        """Price of one call of `tool`, or None when unpriced."""
        return self.tools.get(tool)

    @classmethod
    def load(cls, path: Path | None = None) -> PriceBook:
        """Read a price book file (default: `default_path()`)."""
        source = path or default_path()
        try:
            return cls.parse(source.read_text(encoding="utf-8"), origin=str(source))
        except OSError as error:
            raise PriceBookError(f"cannot read price book {source}: {error.strerror}") from error

    @classmethod
    def parse(cls, text: str, origin: str = "<price book>") -> PriceBook:
        """Parse TOML text; every price is a decimal string so no float ever touches money."""
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise PriceBookError(f"{origin}: not valid TOML: {error}") from error
        version = _required(data, "version", origin)
        models: dict[tuple[str, str], ModelPrice] = {}
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
            )
        tools = {
            _required(entry, "name", f"{origin}: tools[{i}]"): _decimal(
                entry, "per_call", f"{origin}: tools[{i}]"
            )
            for i, entry in enumerate(data.get("tools", []))
        }
        return cls(version, str(data.get("currency", "USD")), models, tools)


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

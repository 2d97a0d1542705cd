"""The ledger's core types and pricing: one `LedgerEntry` per usage id, costs in `Decimal`."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import StrEnum

from stepline_pricebook import PriceBook
from stepline_vocab import BadInputError, Tokens

__all__ = ["Kind", "LedgerEntry", "PricedBy", "PricingError", "UsageRecord", "price"]


class Kind(StrEnum):
    """What consumed resources."""

    MODEL_ATTEMPT = "model_attempt"
    TOOL_EXECUTION = "tool_execution"


class PricedBy(StrEnum):
    """Where a ledger row's cost came from."""

    REPORTED = "reported"  # the emitter priced it (router/executor) and billing kept that cost
    PRICE_BOOK = "price_book"  # billing re-priced it from its price book
    UNPRICED = "unpriced"  # nobody knew a price: cost unknown, never zero


class PricingError(BadInputError):
    """A usage record whose cost cannot be trusted (bad amount, other currency)."""


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """One unit of spend (a `UsageRecorded`) as reported by the router or the executor."""

    usage_id: str
    tenant_id: str
    kind: Kind
    occurred_at: datetime
    run_id: str = ""
    step_id: str = ""
    call_id: str = ""
    provider: str = ""
    model: str = ""
    deployment: str = ""
    tool: str = ""
    outcome: str = ""
    tool_error_kind: str = ""
    succeeded: bool = True
    tokens: Tokens = field(default_factory=Tokens)
    reported_cost: Decimal | None = None
    reported_currency: str = ""
    reported_version: str = ""
    latency_us: int = 0
    attempt: int = 1
    route: str = ""
    agent: str = ""
    status_code: int = 0


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """A priced usage record: what the ledger stores, append-only, once per usage id."""

    usage: UsageRecord
    cost: Decimal | None
    currency: str
    price_book_version: str
    priced_by: PricedBy

    @property
    def priced(self) -> bool:
        """A cost is known."""
        return self.cost is not None


def price(usage: UsageRecord, book: PriceBook) -> LedgerEntry:
    """Price `usage`: keep a reported cost, else re-price from `book`, else mark it unpriced."""
    if usage.reported_cost is not None:
        currency = usage.reported_currency or book.currency
        if currency != book.currency:
            # Amounts in different currencies are never summed (common.proto Money).
            raise PricingError(
                f"usage {usage.usage_id} is priced in {currency}, billing accounts in "
                f"{book.currency}"
            )
        if usage.reported_cost < 0 or not usage.reported_cost.is_finite():
            raise PricingError(f"usage {usage.usage_id} has a negative or non-finite cost")
        return LedgerEntry(
            usage,
            usage.reported_cost,
            currency,
            usage.reported_version or book.version,
            PricedBy.REPORTED,
        )
    cost = reprice(usage, book)
    return LedgerEntry(
        usage,
        cost,
        book.currency,
        book.version,
        PricedBy.UNPRICED if cost is None else PricedBy.PRICE_BOOK,
    )


def reprice(usage: UsageRecord, book: PriceBook) -> Decimal | None:
    """The cost `book` gives `usage`, or None when the book has no price for it."""
    if usage.kind is Kind.TOOL_EXECUTION:
        return book.tool_cost(usage.tool)
    tokens = usage.tokens
    return book.model_cost(
        usage.provider,
        usage.model,
        tokens,
    )

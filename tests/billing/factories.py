"""Builders of usage events and billing components for the billing tests."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from google.protobuf.timestamp_pb2 import Timestamp

from stepline.v1 import common_pb2, model_pb2, usage_pb2
from stepline_billing.budgets import BudgetConfig, Limits
from stepline_billing.handlers import OutputTopics, UsageHandler
from stepline_billing.store import LedgerStore
from stepline_pricebook import PriceBook
from stepline_runtime.codec import encode
from stepline_runtime.records import InboundRecord
from stepline_vocab import format_amount

__all__ = ["NOW", "handler", "inbound", "model_usage", "tool_usage"]

NOW = datetime(2026, 11, 20, 12, 30, tzinfo=UTC)


def _stamp(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def model_usage(
    usage_id: str,
    *,
    tenant: str = "acme",
    run: str = "run-1",
    provider: str = "openai",
    model: str = "gpt-4o-mini",
    input_tokens: int = 1000,
    output_tokens: int = 500,
    cost: Decimal | None = None,
    succeeded: bool = True,
    at: datetime = NOW,
) -> usage_pb2.UsageRecorded:
    """A model attempt; `cost` set means the router priced it."""
    message = usage_pb2.UsageRecorded(
        usage_id=usage_id,
        tenant_id=tenant,
        run_id=run,
        step_id=f"{run}:1",
        call_id=f"{run}:1:0",
        kind=usage_pb2.USAGE_KIND_MODEL_ATTEMPT,
        provider=provider,
        model=model,
        deployment=f"{provider}-{model}",
        outcome=model_pb2.MODEL_ATTEMPT_OUTCOME_SUCCEEDED
        if succeeded
        else model_pb2.MODEL_ATTEMPT_OUTCOME_OVERLOADED,
        succeeded=succeeded,
        usage=common_pb2.TokenUsage(input_tokens=input_tokens, output_tokens=output_tokens),
        occurred_at=_stamp(at),
        attempt=1,
    )
    if cost is not None:
        message.priced = True
        message.cost.CopyFrom(common_pb2.Money(currency="USD", amount=format_amount(cost)))
        message.price_book_version = "router-book"
    return message


def tool_usage(
    usage_id: str, *, tenant: str = "acme", run: str = "run-1", tool: str = "sql_query"
) -> usage_pb2.UsageRecorded:
    """A tool execution, priced by billing."""
    return usage_pb2.UsageRecorded(
        usage_id=usage_id,
        tenant_id=tenant,
        run_id=run,
        kind=usage_pb2.USAGE_KIND_TOOL_EXECUTION,
        tool=tool,
        succeeded=True,
        occurred_at=_stamp(NOW),
        attempt=1,
    )


def inbound(message: usage_pb2.UsageRecorded, offset: int = 0) -> InboundRecord:
    """`message` as the record billing would consume from stepline.usage.v1."""
    record = encode(
        "stepline.usage.v1",
        message.tenant_id,
        message,
        event_id=message.usage_id,
        source="test",
        tenant_id=message.tenant_id,
    )
    return InboundRecord(
        "stepline.usage.v1", 0, offset, record.key, record.value, record.headers, 1_700_000_000_000
    )


def handler(
    store: LedgerStore,
    limits: Limits | None = None,
    clock: datetime = NOW,
) -> UsageHandler:
    """A usage handler over `store` with the shared price book and a fixed clock."""
    return UsageHandler(
        store,
        PriceBook.load(),
        BudgetConfig(limits or Limits(daily=Decimal("10"), monthly=Decimal("100"))),
        OutputTopics("rollups", "budgets"),
        lambda: clock,
    )

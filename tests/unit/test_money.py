"""One Money encoding: random amounts through every service's encoder and decoder, exactly.

`common.proto` allows plain decimal digits only (no exponent). Billing used to write `5E-7`
for 5 tokens at $0.10/Mtok; the planner and the router had two more helpers of their own.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stepline.v1 import common_pb2, goals_pb2, model_pb2, tools_pb2, usage_pb2
from stepline_billing.convert import entry_to_proto, usage_from_proto
from stepline_billing.ledger import Kind, LedgerEntry, PricedBy, UsageRecord
from stepline_client.events import money as describe_money
from stepline_executor.handlers import Pricing, announcement
from stepline_executor.model import ToolSpec as ExecutorTool
from stepline_planner.convert import decimal_of, goal_from_proto, goal_to_proto
from stepline_planner.inputs import Goal
from stepline_router.convert import completed_message, request_from_proto, usage_records
from stepline_router.errors import Outcome
from stepline_router.router import Attempt, CallSucceeded
from stepline_router.routes import Deployment
from stepline_router.types import Completion, ModelRequest
from stepline_vocab import MoneyError, format_amount, parse_amount, wire

NOW = datetime(2026, 12, 1, tzinfo=UTC)
PLAIN = re.compile(r"^-?(0|[1-9][0-9]*)(\.[0-9]*[1-9])?$")

# Any exponent, so values like Decimal("5E-7") and Decimal("1.20E+3") come up.
amounts = st.builds(
    lambda digits, exponent: Decimal(digits).scaleb(exponent),
    st.integers(min_value=0, max_value=10**15),
    st.integers(min_value=-18, max_value=6),
)


def _router_usage(amount: Decimal) -> common_pb2.Money:
    attempt = Attempt(1, "d", "openai", "gpt-4o-mini", Outcome.SUCCEEDED, NOW, cost=amount)
    outcome = CallSucceeded(
        Completion("hi"), Deployment("d", "openai", "m"), (attempt,), 0, "v", "USD"
    )
    return usage_records(ModelRequest("c", "t", "r", ()), outcome)[0].cost


def _router_result(amount: Decimal) -> common_pb2.Money:
    attempt = Attempt(1, "d", "openai", "gpt-4o-mini", Outcome.SUCCEEDED, NOW, cost=amount)
    outcome = CallSucceeded(
        Completion("hi"), Deployment("d", "openai", "m"), (attempt,), 0, "v", "USD"
    )
    return completed_message(outcome).cost


def _billing_entry(amount: Decimal) -> common_pb2.Money:
    usage = UsageRecord("u1", "t", Kind.MODEL_ATTEMPT, NOW)
    return entry_to_proto(LedgerEntry(usage, amount, "USD", "v", PricedBy.PRICE_BOOK)).cost


def _executor_registry(amount: Decimal) -> common_pb2.Money:
    tool = ExecutorTool("calc", "adds", {"type": "object"})
    record = announcement("tools", tool, Pricing("v", "USD", lambda _: amount), NOW)
    return tools_pb2.ToolRegistered.FromString(record.value or b"").price_per_call


def _planner_goal(amount: Decimal) -> common_pb2.Money:
    goal = Goal("r", "t", "a", "g", budget=amount, budget_currency="USD")
    return goal_to_proto(goal, NOW).budget


def _shared(amount: Decimal) -> common_pb2.Money:
    encoded = wire.money_to_proto(amount, "USD")
    assert encoded is not None
    return encoded


ENCODERS: dict[str, Callable[[Decimal], common_pb2.Money]] = {
    "stepline_vocab.wire": _shared,
    "router usage_records": _router_usage,
    "router completed_message": _router_result,
    "billing entry_to_proto": _billing_entry,
    "executor announcement": _executor_registry,
    "planner goal_to_proto": _planner_goal,
}


def _billing_reads(money: common_pb2.Money) -> Decimal:
    record = usage_pb2.UsageRecorded(
        usage_id="u", tenant_id="t", kind=usage_pb2.USAGE_KIND_TOOL_EXECUTION, priced=True
    )
    record.cost.CopyFrom(money)
    cost = usage_from_proto(record, 0).reported_cost
    assert cost is not None
    return cost


def _router_reads(money: common_pb2.Money) -> Decimal:
    request = request_from_proto(
        call_id="c",
        tenant_id="t",
        route="r",
        messages=[common_pb2.ChatMessage(role=common_pb2.ChatMessage.ROLE_USER, content="q")],
        tools=[],
        parameters=model_pb2.ModelParameters(),
        deadline=None,
        max_cost=money,
    )
    assert request.max_cost is not None
    return request.max_cost


def _planner_reads(money: common_pb2.Money) -> Decimal:
    goal = goal_from_proto(
        goals_pb2.GoalSubmitted(run_id="r", tenant_id="t", agent="a", goal="g", budget=money)
    )
    assert goal.budget is not None
    return goal.budget


def _client_reads(money: common_pb2.Money) -> Decimal:
    text = describe_money(money)
    assert text.startswith("$")
    return Decimal(text[1:])


DECODERS: dict[str, Callable[[common_pb2.Money], Decimal]] = {
    "stepline_vocab.wire": lambda m: wire.amount_of(m),
    "planner decimal_of": decimal_of,
    "planner goal_from_proto": _planner_reads,
    "router request_from_proto": _router_reads,
    "billing usage_from_proto": _billing_reads,
    "client events.money": _client_reads,
}


@settings(max_examples=300, deadline=None)
@given(amounts)
def test_format_amount_is_plain_exact_and_round_trips(amount: Decimal) -> None:
    text = format_amount(amount)
    assert PLAIN.match(text), text
    assert Decimal(text) == amount
    assert parse_amount(text) == amount


@pytest.mark.parametrize("encoder", sorted(ENCODERS))
@settings(max_examples=60, deadline=None)
@given(amount=amounts)
def test_every_encoder_writes_plain_text_every_decoder_reads_it_back(
    encoder: str, amount: Decimal
) -> None:
    money = ENCODERS[encoder](amount)
    assert money.currency == "USD"
    assert PLAIN.match(money.amount), f"{encoder} wrote {money.amount!r}"
    for name, decode in DECODERS.items():
        assert decode(money) == amount, f"{encoder} -> {name}"


def test_the_billing_bug_five_tokens_at_ten_cents_per_mtok() -> None:
    cost = Decimal(5) * Decimal("0.10") / Decimal(1_000_000)
    assert str(cost) == "5E-7"  # what billing used to write
    assert _billing_entry(cost).amount == "0.0000005"


def test_older_exponent_text_still_reads_and_garbage_is_refused() -> None:
    assert parse_amount("5E-7") == Decimal("0.0000005")
    assert parse_amount("") == 0
    for bad in ("abc", "NaN", "Infinity", "-1"):
        with pytest.raises(MoneyError):
            parse_amount(bad)
    assert parse_amount("-1", negative=True) == Decimal(-1)


def test_negative_amounts_are_plain_too() -> None:
    assert format_amount(Decimal("-1.50")) == "-1.5"
    assert format_amount(Decimal("-0E-7")) == "0"
    assert format_amount(Decimal("1.2E+3")) == "1200"

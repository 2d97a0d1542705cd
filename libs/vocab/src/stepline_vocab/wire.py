"""The vocabulary on the wire: one conversion each way for Money, TokenUsage and ChatMessage,
and times as protobuf Timestamps."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from decimal import Decimal

from google.protobuf.timestamp_pb2 import Timestamp

from stepline.v1 import common_pb2
from stepline_vocab.messages import Message, Role, ToolCall
from stepline_vocab.money import format_amount, parse_amount
from stepline_vocab.tokens import Tokens

__all__ = [
    "ROLES",
    "amount_of",
    "message_from_proto",
    "message_to_proto",
    "money_to_proto",
    "role_from_proto",
    "role_to_proto",
    "timestamp_to_proto",
    "tokens_from_proto",
    "tokens_to_proto",
    "tool_call_from_proto",
    "tool_call_to_proto",
    "tool_calls_from_proto",
]

# Every core role and its proto enum value; a test walks both enums so neither can drift.
ROLES: Mapping[Role, common_pb2.ChatMessage.Role.ValueType] = {
    Role.SYSTEM: common_pb2.ChatMessage.ROLE_SYSTEM,
    Role.USER: common_pb2.ChatMessage.ROLE_USER,
    Role.ASSISTANT: common_pb2.ChatMessage.ROLE_ASSISTANT,
    Role.TOOL: common_pb2.ChatMessage.ROLE_TOOL,
}
_ROLES_BACK: dict[int, Role] = {int(value): role for role, value in ROLES.items()}


def money_to_proto(amount: Decimal | None, currency: str) -> common_pb2.Money | None:
    """Money of `amount` (None stays None: unpriced is not zero)."""
    if amount is None:
        return None
    return common_pb2.Money(currency=currency, amount=format_amount(amount))


def amount_of(money: common_pb2.Money, *, what: str = "amount", negative: bool = False) -> Decimal:
    """The Decimal of a Money's amount ("" is zero); `MoneyError` when it is not a number."""
    return parse_amount(money.amount, what=what, negative=negative)


def tokens_to_proto(tokens: Tokens) -> common_pb2.TokenUsage:
    """TokenUsage of core token counts."""
    return common_pb2.TokenUsage(
        input_tokens=tokens.input,
        output_tokens=tokens.output,
        cached_input_tokens=tokens.cached_input,
        cache_write_input_tokens=tokens.cache_write_input,
        reasoning_tokens=tokens.reasoning,
    )


def tokens_from_proto(usage: common_pb2.TokenUsage) -> Tokens:
    """Core token counts of a TokenUsage."""
    return Tokens(
        input=usage.input_tokens,
        output=usage.output_tokens,
        cached_input=usage.cached_input_tokens,
        cache_write_input=usage.cache_write_input_tokens,
        reasoning=usage.reasoning_tokens,
    )


def role_to_proto(role: Role) -> common_pb2.ChatMessage.Role.ValueType:
    """The proto enum value of `role`."""
    return ROLES[role]


def role_from_proto(value: int) -> Role | None:
    """The core role of a proto enum value; None for ROLE_UNSPECIFIED or an unknown number."""
    return _ROLES_BACK.get(value)


def tool_call_to_proto(call: ToolCall) -> common_pb2.ToolCall:
    """ToolCall proto of a core tool call."""
    return common_pb2.ToolCall(
        call_id=call.call_id, name=call.name, arguments_json=call.arguments_json
    )


def tool_call_from_proto(call: common_pb2.ToolCall) -> ToolCall:
    """Core tool call of a ToolCall proto."""
    return ToolCall(call.call_id, call.name, call.arguments_json)


def message_to_proto(message: Message) -> common_pb2.ChatMessage:
    """ChatMessage proto of a core message."""
    return common_pb2.ChatMessage(
        role=role_to_proto(message.role),
        content=message.content,
        tool_calls=[tool_call_to_proto(c) for c in message.tool_calls],
        tool_call_id=message.tool_call_id,
        name=message.name,
    )


def message_from_proto(message: common_pb2.ChatMessage, role: Role) -> Message:
    """Core message of a ChatMessage; the caller resolves the role (its policy for unknowns)."""
    return Message(
        role,
        message.content,
        tool_calls_from_proto(message.tool_calls),
        message.tool_call_id,
        message.name,
    )


def tool_calls_from_proto(calls: Iterable[common_pb2.ToolCall]) -> tuple[ToolCall, ...]:
    """Core tool calls of repeated ToolCall protos."""
    return tuple(tool_call_from_proto(c) for c in calls)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def timestamp_to_proto(value: datetime) -> Timestamp:
    """A protobuf Timestamp of `value` (a naive one is local time, as `astimezone` reads it).

    What `Timestamp.FromDatetime` stores, by arithmetic on the aware value instead of its time
    tuple and `timegm` on every call; `timedelta` normalises like Timestamp (nanos >= 0).
    """
    if value.tzinfo is None:
        value = value.astimezone(UTC)
    since = value - _EPOCH
    return Timestamp(seconds=since.days * 86_400 + since.seconds, nanos=since.microseconds * 1_000)

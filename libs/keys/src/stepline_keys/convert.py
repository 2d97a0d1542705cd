"""Protobuf <-> core for key events and spend records; protobuf stops here."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import assert_never

from google.protobuf.timestamp_pb2 import Timestamp

from stepline.v1 import common_pb2, keys_pb2
from stepline_keys.access import Scope
from stepline_keys.model import Grant, KeyEvent, KeyIssued, KeyRevoked, KeyUpdated, Limits
from stepline_keys.spend import SpendRecord

__all__ = [
    "ConversionError",
    "event_from_proto",
    "event_to_proto",
    "spend_from_proto",
    "spend_to_proto",
]


class ConversionError(ValueError):
    """A key or spend record that does not describe a valid event."""


def _ts(value: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def _dt(stamp: Timestamp) -> datetime:
    return stamp.ToDatetime(tzinfo=UTC)


def _amount(money: common_pb2.Money) -> Decimal | None:
    if not money.amount:
        return None
    try:
        value = Decimal(money.amount)
    except InvalidOperation as error:
        raise ConversionError(f"amount {money.amount!r} is not a decimal") from error
    if not value.is_finite() or value < 0:
        raise ConversionError(f"amount {money.amount!r} is not a non-negative decimal")
    return value


def _money(amount: Decimal | None, currency: str) -> common_pb2.Money | None:
    return None if amount is None else common_pb2.Money(currency=currency, amount=f"{amount:f}")


def _scopes(names: list[str]) -> frozenset[Scope]:
    try:
        return frozenset(Scope(n) for n in names)
    except ValueError as error:
        raise ConversionError(f"unknown scope in {names}") from error


def _grant_from(grant: keys_pb2.KeyGrant) -> Grant:
    limits = grant.limits
    return Grant(
        scopes=_scopes(list(grant.scopes)),
        agents=frozenset(grant.allowed_agents),
        routes=frozenset(grant.allowed_routes),
        models=frozenset(grant.allowed_models),
        limits=Limits(
            daily_spend=_amount(limits.daily_spend),
            monthly_spend=_amount(limits.monthly_spend),
            rpm=limits.rpm or None,
            tpm=limits.tpm or None,
        ),
        expires_at=_dt(grant.expires_at) if grant.HasField("expires_at") else None,
        label=grant.label,
    )


def _grant_to(grant: Grant, currency: str) -> keys_pb2.KeyGrant:
    limits = grant.limits
    return keys_pb2.KeyGrant(
        scopes=sorted(s.value for s in grant.scopes),
        allowed_agents=sorted(grant.agents),
        allowed_routes=sorted(grant.routes),
        allowed_models=sorted(grant.models),
        limits=keys_pb2.KeyLimits(
            daily_spend=_money(limits.daily_spend, currency),
            monthly_spend=_money(limits.monthly_spend, currency),
            rpm=limits.rpm or 0,
            tpm=limits.tpm or 0,
        ),
        expires_at=_ts(grant.expires_at) if grant.expires_at is not None else None,
        label=grant.label,
    )


def event_from_proto(message: keys_pb2.KeyEvent) -> KeyEvent:
    """The core event; `ConversionError` when it is incomplete."""
    if not message.key_id or not message.HasField("occurred_at"):
        raise ConversionError("a key event needs key_id and occurred_at")
    kind = message.WhichOneof("event")
    change: KeyIssued | KeyUpdated | KeyRevoked
    if kind == "issued":
        issued = message.issued
        if not issued.tenant_id or not issued.secret_hash.startswith("sha256:"):
            raise ConversionError("KeyIssued needs tenant_id and a sha256: secret_hash")
        change = KeyIssued(
            tenant_id=issued.tenant_id,
            secret_hash=issued.secret_hash,
            grant=_grant_from(issued.grant),
            loopback_only=issued.loopback_only,
            rotated_from=issued.rotated_from,
        )
    elif kind == "updated":
        change = KeyUpdated(_grant_from(message.updated.grant))
    elif kind == "revoked":
        change = KeyRevoked(message.revoked.reason)
    else:
        raise ConversionError("a key event needs one of issued, updated, revoked")
    return KeyEvent(message.key_id, message.actor, _dt(message.occurred_at), change)


def event_to_proto(event: KeyEvent, currency: str) -> keys_pb2.KeyEvent:
    """The wire form of an event (spend limits in `currency`)."""
    message = keys_pb2.KeyEvent(
        key_id=event.key_id, actor=event.actor, occurred_at=_ts(event.occurred_at)
    )
    change = event.change
    if isinstance(change, KeyIssued):
        message.issued.CopyFrom(
            keys_pb2.KeyIssued(
                tenant_id=change.tenant_id,
                secret_hash=change.secret_hash,
                grant=_grant_to(change.grant, currency),
                loopback_only=change.loopback_only,
                rotated_from=change.rotated_from,
            )
        )
    elif isinstance(change, KeyUpdated):
        message.updated.CopyFrom(keys_pb2.KeyUpdated(grant=_grant_to(change.grant, currency)))
    elif isinstance(change, KeyRevoked):
        message.revoked.CopyFrom(keys_pb2.KeyRevoked(reason=change.reason))
    else:
        assert_never(change)
    return message


def spend_from_proto(message: keys_pb2.KeySpendRecorded) -> SpendRecord:
    """The core spend record; `ConversionError` when incomplete."""
    if not (message.key_id and message.day and message.instance_id):
        raise ConversionError("a spend record needs key_id, day and instance_id")
    try:
        datetime.strptime(message.day, "%Y-%m-%d")
    except ValueError as error:
        raise ConversionError(f"day {message.day!r} is not YYYY-MM-DD") from error
    return SpendRecord(
        key_id=message.key_id,
        tenant_id=message.tenant_id,
        day=message.day,
        instance_id=message.instance_id,
        settled=_amount(message.settled) or Decimal(0),
    )


def spend_to_proto(record: SpendRecord, currency: str, now: datetime) -> keys_pb2.KeySpendRecorded:
    """The wire form of a spend record."""
    return keys_pb2.KeySpendRecorded(
        key_id=record.key_id,
        tenant_id=record.tenant_id,
        day=record.day,
        instance_id=record.instance_id,
        settled=common_pb2.Money(currency=currency, amount=f"{record.settled:f}"),
        updated_at=_ts(now),
    )

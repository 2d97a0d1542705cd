"""Kafka adapters: the key registry and the spend totals fed from their compacted topics, and
the logs that publish key events and spend records. `InMemoryKeyLog` is the test twin."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Protocol

from aiokafka import AIOKafkaProducer

from stepline.v1 import keys_pb2
from stepline_keys.convert import (
    event_from_proto,
    event_to_proto,
    spend_from_proto,
    spend_to_proto,
)
from stepline_keys.follower import TopicFollower
from stepline_keys.model import KeyEvent
from stepline_keys.quotas import KeyQuotas
from stepline_keys.registry import KeyRegistry
from stepline_keys.spend import SpendRecord
from stepline_runtime.codec import decode, encode
from stepline_runtime.records import InboundRecord
from stepline_runtime.settings import ServiceSettings
from stepline_runtime.topics import Topics

__all__ = [
    "InMemoryKeyLog",
    "KafkaKeyLog",
    "KafkaSpendLog",
    "KeyLog",
    "follow_keys",
    "follow_spend",
]

log = logging.getLogger(__name__)


class KeyLog(Protocol):
    """Where admin actions are recorded."""

    async def publish(self, event: KeyEvent) -> None:
        """Record one admin action durably."""
        ...


class InMemoryKeyLog:
    """The twin of the keys topic: events reach the registries subscribed to it at once."""

    def __init__(self, *registries: KeyRegistry) -> None:
        self.events: list[KeyEvent] = []
        self._registries = list(registries)

    async def publish(self, event: KeyEvent) -> None:
        """Keep `event` and fold it into every registry."""
        self.events.append(event)
        for registry in self._registries:
            registry.apply(event)


def _producer(settings: ServiceSettings, client_id: str) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        enable_idempotence=True, acks="all", **settings.kafka.client_kwargs(client_id)
    )


class KafkaKeyLog:
    """Publishes key events to `stepline.keys.v1` (key = key id), acknowledged by all replicas."""

    def __init__(self, settings: ServiceSettings, *, source: str, currency: str = "USD") -> None:
        self._topic = settings.topic(Topics.KEYS)
        self._source = source
        self._currency = currency
        self._producer = _producer(settings, f"{source}-keys")

    async def __aenter__(self) -> KafkaKeyLog:
        await self._producer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._producer.stop()

    async def publish(self, event: KeyEvent) -> None:
        """Record one admin action durably."""
        out = encode(
            self._topic,
            event.key_id,
            event_to_proto(event, self._currency),
            event_id=f"{event.key_id}/{event.occurred_at.isoformat()}",
            source=self._source,
            time=event.occurred_at,
        )
        await self._producer.send_and_wait(
            out.topic, out.value, key=out.key, headers=list(out.headers)
        )


class KafkaSpendLog:
    """Publishes an instance's running totals to `stepline.keys.spend.v1`."""

    def __init__(
        self,
        settings: ServiceSettings,
        *,
        source: str,
        currency: str,
        clock: Callable[[], datetime],
    ) -> None:
        self._topic = settings.topic(Topics.KEY_SPEND)
        self._source = source
        self._currency = currency
        self._clock = clock
        self._producer = _producer(settings, f"{source}-spend")

    async def start(self) -> None:
        """Connect the producer."""
        await self._producer.start()

    async def stop(self) -> None:
        """Flush and disconnect."""
        await self._producer.stop()

    async def record(self, record: SpendRecord) -> None:
        """Publish `record`; the next total of the same instance supersedes it.

        Returns once the record is queued, not acknowledged: a call does not wait for the
        broker, and a lost record is carried by the next running total of that key and day.
        """
        out = encode(
            self._topic,
            record.record_key,
            spend_to_proto(record, self._currency, self._clock()),
            event_id=f"{record.record_key}/{record.settled:f}",
            source=self._source,
            tenant_id=record.tenant_id,
        )
        delivery = await self._producer.send(
            out.topic, out.value, key=out.key, headers=list(out.headers)
        )
        delivery.add_done_callback(_report_lost_spend)


def _report_lost_spend(delivery: asyncio.Future[object]) -> None:
    if not delivery.cancelled() and delivery.exception() is not None:
        log.warning("spend total not delivered: %s", delivery.exception())


def _apply_key(registry: KeyRegistry) -> Callable[[InboundRecord], None]:
    def apply(record: InboundRecord) -> None:
        if record.value is None:
            registry.forget((record.key or b"").decode())
            return
        registry.apply(event_from_proto(decode(record, [keys_pb2.KeyEvent]).message))

    return apply


def _apply_spend(quotas: KeyQuotas) -> Callable[[InboundRecord], None]:
    def apply(record: InboundRecord) -> None:
        if record.value is None:
            return  # an expired day: nothing to fold
        quotas.observe(spend_from_proto(decode(record, [keys_pb2.KeySpendRecorded]).message))

    return apply


async def follow_keys(
    settings: ServiceSettings, registry: KeyRegistry, *, client_id: str
) -> TopicFollower:
    """Fold `stepline.keys.v1` into `registry` up to its end, then keep following it."""
    follower = TopicFollower(
        settings.kafka,
        settings.topic(Topics.KEYS),
        _apply_key(registry),
        client_id=f"{client_id}-keys",
        dead_letter_topic=settings.topic(Topics.DLQ),
    )
    await follower.start()
    return follower


async def follow_spend(
    settings: ServiceSettings, quotas: KeyQuotas, *, client_id: str
) -> TopicFollower:
    """Fold `stepline.keys.spend.v1` into `quotas` up to its end, then keep following it."""
    follower = TopicFollower(
        settings.kafka,
        settings.topic(Topics.KEY_SPEND),
        _apply_spend(quotas),
        client_id=f"{client_id}-spend",
        dead_letter_topic=settings.topic(Topics.DLQ),
    )
    await follower.start()
    return follower

"""The keys topic folded by a service: bad records go to the DLQ, tombstones forget a key."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from stepline.v1 import dead_letter_pb2, keys_pb2
from stepline_keys import UnauthenticatedError
from stepline_keys.feeds import KafkaKeyLog
from stepline_keys.service import key_services
from stepline_runtime.codec import encode
from stepline_runtime.settings import KafkaSettings, ServiceSettings
from stepline_runtime.topics import CATALOG, Topics, ensure_topics
from tests.kafkatools import read_all
from tests.keys.support import new_key

pytestmark = pytest.mark.kafka


async def test_bad_key_records_are_dead_lettered_and_a_tombstone_forgets_the_key(
    kafka: KafkaSettings, admin: AIOKafkaAdminClient, producer: AIOKafkaProducer
) -> None:
    settings = ServiceSettings(kafka=kafka, topic_namespace=f"k{uuid.uuid4().hex[:10]}")
    await ensure_topics(admin, CATALOG, partitions=2, namespace=settings.topic_namespace)
    topic = settings.topic(Topics.KEYS)
    good = new_key("acme")
    async with KafkaKeyLog(settings, source="test") as log:
        await log.publish(good.event)
    await producer.send_and_wait(topic, b"\xff\x00not a key event", key=b"key_bad")
    # Valid protobuf, but a KeyIssued with a plaintext "hash": refused, never folded.
    forged = keys_pb2.KeyEvent(key_id="key_0123456789abcdef", actor="x")
    forged.occurred_at.FromDatetime(datetime.now(UTC))
    forged.issued.tenant_id = "acme"
    forged.issued.secret_hash = "sk-stl-plaintext"
    out = encode(topic, forged.key_id, forged, event_id="forged", source="test")
    await producer.send_and_wait(topic, out.value, key=out.key, headers=list(out.headers))

    async with key_services(
        settings, client_id="topic-test", clock=lambda: datetime.now(UTC)
    ) as keys:
        assert keys.registry.authenticate(good.secret).tenant_id == "acme"
        assert keys.registry.get("key_0123456789abcdef") is None
        letters = await read_all(kafka, settings.topic(Topics.DLQ), expect=2, timeout_s=30)
        reasons = sorted(
            dead_letter_pb2.DeadLetter.FromString(r.value or b"").reason for r in letters
        )
        assert len(reasons) == 2, reasons
        assert any("sha256" in r for r in reasons), reasons
        # A tombstone (compaction's delete) removes the key from every registry.
        await producer.send_and_wait(topic, None, key=good.key_id.encode())
        for _ in range(100):
            if keys.registry.get(good.key_id) is None:
                break
            await asyncio.sleep(0.1)
        with pytest.raises(UnauthenticatedError):
            keys.registry.authenticate(good.secret)

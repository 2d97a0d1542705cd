"""The planner's tools and budgets tables on the real broker: caught up at start, followed after,
bad records dead-lettered under the planner's consumer name, tombstones forget a key."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from google.protobuf.message import Message

from stepline.v1 import budgets_pb2, dead_letter_pb2
from stepline_planner.tables import TopicTables
from stepline_runtime.codec import encode
from stepline_runtime.settings import KafkaSettings
from tests.kafkatools import create_topics, read_all
from tests.planner.integration.harness import tool

pytestmark = pytest.mark.kafka


async def _publish(producer: AIOKafkaProducer, topic: str, key: str, message: Message) -> None:
    out = encode(topic, key, message, event_id=uuid.uuid4().hex, source="test")
    await producer.send_and_wait(out.topic, out.value, key=out.key, headers=list(out.headers))


async def test_tables_catch_up_follow_and_dead_letter_bad_records(
    kafka: KafkaSettings, admin: AIOKafkaAdminClient, producer: AIOKafkaProducer
) -> None:
    ns = uuid.uuid4().hex[:10]
    tools, budgets, dlq = f"{ns}.tools", f"{ns}.budgets", f"{ns}.dlq"
    await create_topics(admin, tools, budgets, partitions=2, compact=(tools, budgets))
    await create_topics(admin, dlq, partitions=1)
    await _publish(producer, tools, "search", tool("search"))
    await producer.send_and_wait(budgets, b"\xff\x00not a budget", key=b"broken")
    current = budgets_pb2.BudgetState(tenant_id="acme", exhausted=True, version=2)
    await _publish(producer, budgets, "acme", current)
    # A lower version than the one held is ignored: neither applied nor refused.
    stale = budgets_pb2.BudgetState(tenant_id="acme", exhausted=False, version=1)
    await _publish(producer, budgets, "acme", stale)

    tables = TopicTables(
        kafka,
        tools,
        budgets,
        {tools: 2, budgets: 2},
        dead_letter_topic=dlq,
        consumer_name="planner-test-tables",
    )
    await tables.start()
    try:
        # `start` returns only once both topics are read to their end.
        assert set(tables.tools()) == {"search"}
        assert tables.budgets()["acme"].exhausted
        assert "broken" not in tables.budgets()
        [letter] = await read_all(kafka, dlq, expect=1, timeout_s=30)
        parked = dead_letter_pb2.DeadLetter.FromString(letter.value or b"")
        assert parked.consumer == "planner-test-tables", parked
        assert parked.reason, parked

        # Followed after start: a new tool appears, a tombstone removes the budget.
        await _publish(producer, tools, "fetch", tool("fetch"))
        await producer.send_and_wait(budgets, None, key=b"acme")
        for _ in range(100):
            if "fetch" in tables.tools() and "acme" not in tables.budgets():
                break
            await asyncio.sleep(0.1)
        assert set(tables.tools()) == {"search", "fetch"}
        assert "acme" not in tables.budgets()
    finally:
        await tables.stop()

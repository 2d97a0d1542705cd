"""Billing instances as real subprocesses, one consumer group over one PostgreSQL ledger (issue 15).

Three instances consume the usage topic; one SIGKILLs itself after a ledger commit and before
its offset commit (its partitions move, with records already charged), a fourth joins later and
another leaves, so partitions move three times while usage keeps arriving. Afterwards: every
usage id is charged once, the stored rollups equal the ones recomputed from the ledger, the last
rollup and budget state published per id/tenant equal the ledger's, and the group lags by 0.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from stepline.v1 import budgets_pb2, usage_pb2
from stepline_billing.queries import all_entries, reconcile
from stepline_billing.rollups import Granularity
from stepline_billing.spec import SPEC as BILLING
from stepline_billing.sqlstore import PostgresLedgerStore
from stepline_billing.store import LedgerQuery
from stepline_pricebook import PriceBook
from stepline_runtime.codec import encode
from stepline_runtime.groups import describe_group
from stepline_runtime.settings import KafkaSettings, namespaced
from stepline_runtime.topics import CATALOG, Topics, ensure_topics
from tests.billing.factories import model_usage
from tests.kafkatools import read_all

pytestmark = pytest.mark.kafka

PARTITIONS = 6
TENANTS = 12
UNIQUE = 360
KILL_AFTER = 20


def _env(namespace: str, dsn: str, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "STEPLINE_TOPIC_NAMESPACE": namespace,
        "STEPLINE_PARTITIONS": str(PARTITIONS),
        "STEPLINE_BILLING_DSN": dsn,
        "STEPLINE_BILLING_GRPC_ADDRESS": "127.0.0.1:0",
        "STEPLINE_METRICS_PORT": "0",
        "STEPLINE_LOG_FORMAT": "text",
        **extra,
    }


def _start(namespace: str, dsn: str, **extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "stepline_billing"],
        env=_env(namespace, dsn, **extra),
        stderr=subprocess.PIPE,
        text=True,
    )


async def _produce(
    producer: AIOKafkaProducer, topic: str, messages: Sequence[usage_pb2.UsageRecorded]
) -> None:
    for message in messages:
        record = encode(topic, message.tenant_id, message, event_id=message.usage_id, source="t")
        await producer.send(topic, record.value, key=record.key, headers=list(record.headers))
    await producer.flush()


async def _members(admin: AIOKafkaAdminClient, group: str, at_least: int) -> int:
    """Wait until the group is stable with `at_least` members holding partitions."""
    deadline = asyncio.get_running_loop().time() + 60
    while True:
        state, members = await describe_group(admin, group)
        holding = [m for m in members if m.partitions]
        if state == "Stable" and len(holding) >= at_least:
            assert sum(len(m.partitions) for m in members) == PARTITIONS
            return len(holding)
        assert asyncio.get_running_loop().time() < deadline, (state, members)
        await asyncio.sleep(0.3)


async def test_instances_joining_dying_and_leaving_keep_the_shared_ledger_exact(
    kafka: KafkaSettings,
    admin: AIOKafkaAdminClient,
    producer: AIOKafkaProducer,
    postgres_dsn: str,
) -> None:
    namespace = f"t{uuid.uuid4().hex[:10]}"
    wanted = (Topics.USAGE, Topics.USAGE_ROLLUPS, Topics.BUDGETS, Topics.DLQ, Topics.KEYS)
    await ensure_topics(admin, [t for t in CATALOG if t.name in wanted], PARTITIONS, 1, namespace)
    usage_topic = namespaced(Topics.USAGE, namespace)
    group = namespaced(BILLING.name, namespace)
    now = datetime.now(UTC)  # the service's budget periods follow its real clock
    messages = [
        model_usage(
            f"call-{i}/1",
            tenant=f"tenant-{i % TENANTS}",
            run=f"run-{i % 30}",
            output_tokens=50 + i,
            cost=Decimal(i + 1) / Decimal(10**6),
            at=now,
        )
        for i in range(UNIQUE)
    ]
    # Emitters retry: every eighth usage is sent again, later, in another wave.
    waves = [messages[:120], messages[120:240] + messages[:120:8], messages[240:] + messages[::8]]
    sent = sum(len(w) for w in waves)

    # The doomed instance alone first, so the first wave is surely its to handle (and die in).
    doomed = _start(namespace, postgres_dsn, STEPLINE_FAULT_KILL_AFTER_RECORDS=str(KILL_AFTER))
    instances: list[subprocess.Popen[str]] = []
    try:
        assert await _members(admin, group, 1) == 1
        await _produce(producer, usage_topic, waves[0])
        instances += [_start(namespace, postgres_dsn) for _ in range(2)]
        _, doomed_log = await asyncio.to_thread(doomed.communicate, timeout=120)
        assert doomed.returncode == -signal.SIGKILL, doomed_log
        await _produce(producer, usage_topic, waves[1])
        instances.append(_start(namespace, postgres_dsn))
        # Once the survivors and the newcomer share the partitions, one leaves (SIGTERM).
        assert await _members(admin, group, 3) == 3
        await _produce(producer, usage_topic, waves[2])
        leaving = instances.pop(0)
        leaving.send_signal(signal.SIGTERM)
        _, leaving_log = await asyncio.to_thread(leaving.communicate, timeout=60)
        assert leaving.returncode == 0, leaving_log

        deadline = asyncio.get_running_loop().time() + 90
        while True:
            committed = await admin.list_consumer_group_offsets(group)
            if sum(m.offset for m in committed.values()) == sent:
                break
            assert asyncio.get_running_loop().time() < deadline, "offsets were not committed"
            await asyncio.sleep(0.3)
    finally:
        if doomed.poll() is None:
            doomed.kill()
        logs = []
        for process in instances:
            process.send_signal(signal.SIGTERM)
            logs.append((await asyncio.to_thread(process.communicate, timeout=60))[1])
    assert [p.returncode for p in instances] == [0] * len(instances), [log[-3000:] for log in logs]
    # The records the kill left uncommitted were delivered again and recognised.
    assert any("usage already recorded" in log for log in logs)

    book = PriceBook.load()
    store = PostgresLedgerStore(postgres_dsn)
    try:
        rows = {e.usage.usage_id: e for e in all_entries(store, LedgerQuery())}
        assert sorted(rows) == sorted(m.usage_id for m in messages)
        assert reconcile(store, book) == []
        stored = {
            r.key.rollup_id: r
            for t in range(TENANTS)
            for g in Granularity
            for r in store.rollups(f"tenant-{t}", g)
        }
        spent = {
            f"tenant-{t}": sum(
                (e.cost or Decimal(0) for e in rows.values() if e.usage.tenant_id == f"tenant-{t}"),
                Decimal(0),
            )
            for t in range(TENANTS)
        }
    finally:
        store.close()

    # What analysts and the planner read: the newest publication per rollup and per tenant.
    published: dict[str, usage_pb2.UsageRollup] = {}
    for record in await read_all(
        kafka, namespaced(Topics.USAGE_ROLLUPS, namespace), expect=10**6, timeout_s=4
    ):
        rollup = usage_pb2.UsageRollup.FromString(record.value or b"")
        if rollup.calls >= published.get(rollup.rollup_id, rollup).calls:
            published[rollup.rollup_id] = rollup
    assert {k: (r.calls, Decimal(r.cost.amount)) for k, r in published.items()} == {
        k: (r.calls, r.cost) for k, r in stored.items()
    }
    budgets: dict[str, budgets_pb2.BudgetState] = {}
    for record in await read_all(
        kafka, namespaced(Topics.BUDGETS, namespace), expect=10**6, timeout_s=4
    ):
        state = budgets_pb2.BudgetState.FromString(record.value or b"")
        if state.version >= budgets.get(state.tenant_id, state).version:
            budgets[state.tenant_id] = state
    assert {t: (s.version, Decimal(s.monthly.spent.amount)) for t, s in budgets.items()} == {
        t: (UNIQUE // TENANTS, total) for t, total in spent.items()
    }

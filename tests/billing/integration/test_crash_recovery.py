"""Billing as a real subprocess on the real broker, SIGKILLed after a ledger commit but before the
offset commit: after a restart every usage id is charged exactly once, and the published budget
matches the ledger."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from stepline.v1 import budgets_pb2
from stepline_billing.cli import main as cli_main
from stepline_billing.queries import all_entries
from stepline_billing.spec import SPEC as BILLING
from stepline_billing.sqlstore import SqliteLedgerStore
from stepline_billing.store import LedgerQuery
from stepline_runtime.codec import encode
from stepline_runtime.settings import KafkaSettings, namespaced
from stepline_runtime.topics import CATALOG, Topics, ensure_topics
from tests.billing.factories import model_usage
from tests.kafkatools import read_all

pytestmark = pytest.mark.kafka

UNIQUE = 40
KILL_AFTER = 15


def _env(namespace: str, data: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "STEPLINE_TOPIC_NAMESPACE": namespace,
        "STEPLINE_PARTITIONS": "3",
        "STEPLINE_BILLING_DATA_DIR": str(data),
        "STEPLINE_BILLING_GRPC_ADDRESS": "127.0.0.1:0",
        "STEPLINE_LOG_FORMAT": "text",
        **extra,
    }


def _ledger(data: Path) -> list[Decimal | None]:
    store = SqliteLedgerStore(data / "billing.sqlite3")
    try:
        return [e.cost for e in all_entries(store, LedgerQuery())]
    finally:
        store.close()


async def _until(condition: Callable[[], bool], what: str, timeout_s: float = 90) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


async def test_a_kill_between_db_commit_and_offset_commit_charges_once(
    kafka: KafkaSettings, admin: AIOKafkaAdminClient, producer: AIOKafkaProducer, tmp_path: Path
) -> None:
    namespace = f"t{uuid.uuid4().hex[:10]}"
    wanted = (Topics.USAGE, Topics.USAGE_ROLLUPS, Topics.BUDGETS, Topics.DLQ)
    await ensure_topics(admin, [t for t in CATALOG if t.name in wanted], 3, 1, namespace)
    usage_topic = namespaced(Topics.USAGE, namespace)
    # Usage of today: the service's budget periods follow its own (real) clock.
    now = datetime.now(UTC)
    messages = [
        model_usage(f"call-{i}/1", tenant="acme", run=f"run-{i % 4}", output_tokens=100 + i, at=now)
        for i in range(UNIQUE)
    ]
    # Emitters retry too: a tenth of the events is sent twice.
    for message in messages + messages[::10]:
        record = encode(usage_topic, "acme", message, event_id=message.usage_id, source="test")
        await producer.send_and_wait(
            usage_topic, record.value, key=record.key, headers=list(record.headers)
        )

    data = tmp_path / "billing"
    command = [sys.executable, "-m", "stepline_billing"]
    first = subprocess.Popen(  # noqa: ASYNC220 (a child process is the point)
        command,
        env=_env(namespace, data, STEPLINE_FAULT_KILL_AFTER_RECORDS=str(KILL_AFTER)),
        stderr=subprocess.PIPE,
        text=True,
    )
    _, first_log = await asyncio.to_thread(first.communicate, timeout=120)
    assert first.returncode == -signal.SIGKILL, first_log
    # The killed record's ledger commit landed, its ack did not. Billing writes a whole batch's
    # rows in one transaction before handling its records, so more rows may be there already.
    assert KILL_AFTER <= len(_ledger(data)) <= UNIQUE

    second = subprocess.Popen(  # noqa: ASYNC220
        command, env=_env(namespace, data), stderr=subprocess.PIPE, text=True
    )
    try:
        await _until(lambda: len(_ledger(data)) == UNIQUE, "every usage id in the ledger")
        group = namespaced(BILLING.name, namespace)

        async def consumed_everything() -> bool:
            committed = await admin.list_consumer_group_offsets(group)
            done: int = sum(m.offset for m in committed.values())
            return done == UNIQUE + len(messages[::10])

        deadline = asyncio.get_running_loop().time() + 60
        while not await consumed_everything():
            assert asyncio.get_running_loop().time() < deadline, "offsets were not committed"
            await asyncio.sleep(0.2)
    finally:
        second.send_signal(signal.SIGTERM)
        _, second_log = await asyncio.to_thread(second.communicate, timeout=60)
    assert second.returncode == 0, second_log
    # The record whose offset the kill left uncommitted came back and was recognised.
    assert "usage already recorded" in second_log

    costs = _ledger(data)
    assert len(costs) == UNIQUE
    total = sum((c or Decimal(0) for c in costs), Decimal(0))
    states = [
        budgets_pb2.BudgetState.FromString(r.value or b"")
        for r in await read_all(
            kafka, namespaced(Topics.BUDGETS, namespace), expect=10**6, timeout_s=3
        )
    ]
    latest = max(states, key=lambda s: s.version)
    assert (latest.version, Decimal(latest.monthly.spent.amount)) == (UNIQUE, total)
    # Published once per fetched batch, not per record; the tenant's last state is the newest.
    assert len(states) < UNIQUE
    assert states[-1].version == latest.version

    os.environ["STEPLINE_BILLING_DATA_DIR"] = str(data)
    try:
        assert cli_main(["reconcile"]) == 0
    finally:
        del os.environ["STEPLINE_BILLING_DATA_DIR"]

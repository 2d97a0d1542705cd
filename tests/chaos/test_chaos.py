"""Reduced `make chaos`: runs with tools while services are SIGKILLed and restarted.

24 runs of an agent that searches the demo tickets and then calls a non-idempotent webhook are
submitted in waves while a driver SIGKILLs a random service every few seconds and restarts it
(`Supervisor.up` starts the dead one). At the end: every run reached a terminal event, the webhook
receiver never saw one call twice, and billing's ledger holds each usage id of the usage topic
exactly once with the same total cost.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import sqlite3
import uuid
from collections import Counter
from decimal import Decimal
from pathlib import Path

import pytest

from scripts.bad_input import Stack, read_topic
from stepline.v1 import runs_pb2, usage_pb2
from stepline_client import Goal, Stepline
from stepline_runtime.service import discover
from stepline_runtime.settings import KafkaSettings
from stepline_runtime.topics import Topics
from tests.webhooks import WebhookReceiver, configure_webhook_agent

pytestmark = pytest.mark.kafka

RUNS = 24
WAVES = 8
KILLS = 6
KILL_EVERY_S = 4.0
TENANT = "chaos-tenant"
# Every service that consumes with a group (the front door reads without one and serves calls).
VICTIMS = tuple(spec.name for spec in discover() if spec.group is not None)
GOAL = "Search the support tickets for refund problems and post a message about them"


async def _chaos(stack: Stack, stop: asyncio.Event, rng: random.Random) -> list[str]:
    """SIGKILL a random service every few seconds, restart it; returns what was killed."""
    killed: list[str] = []
    # Random order, but every service dies at least once.
    order = rng.sample(VICTIMS, len(VICTIMS)) + rng.sample(VICTIMS, KILLS - len(VICTIMS))
    while len(killed) < KILLS and not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), KILL_EVERY_S)
        if stop.is_set():
            break
        victim = order[len(killed)]
        pid = stack.pids().get(victim)
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            killed.append(victim)
        await asyncio.to_thread(stack.up)
    return killed


def _ledger(path: Path) -> dict[str, Decimal]:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return {
            uid: Decimal(str(cost or 0))
            for uid, cost in db.execute("SELECT usage_id, cost FROM ledger")
        }


def _ledger_by_run(path: Path) -> dict[str, Decimal]:
    with contextlib.closing(sqlite3.connect(path)) as db:
        totals: dict[str, Decimal] = {}
        for run_id, cost in db.execute("SELECT run_id, cost FROM ledger"):
            totals[run_id] = totals.get(run_id, Decimal(0)) + Decimal(str(cost or 0))
        return totals


def _terminal_cost(final: runs_pb2.RunEvent) -> Decimal:
    body = getattr(final, final.WhichOneof("event") or "")
    return Decimal(body.cost.amount or "0")


async def _usage_on_topic(kafka: KafkaSettings, stack: Stack) -> dict[str, Decimal]:
    unique: dict[str, Decimal] = {}
    for _, _, _, value in await read_topic(kafka, stack.topic(Topics.USAGE)):
        usage = usage_pb2.UsageRecorded.FromString(value or b"")
        unique.setdefault(usage.usage_id, Decimal(usage.cost.amount or "0"))
    return unique


async def test_runs_survive_services_killed_and_restarted(
    kafka: KafkaSettings, tmp_path: Path
) -> None:
    rng = random.Random(20261124)
    stack = Stack(tmp_path / "stack", f"t{uuid.uuid4().hex[:10]}")  # never a reused topic
    receiver = WebhookReceiver()
    configure_webhook_agent(
        stack,
        receiver.port,
        tenant=TENANT,
        agent="chaos",
        webhook_timeout_s=5,
        tool_step_deadline_s=30,
    )
    with receiver.serving(), stack.running():
        async with Stepline(stack.settings, source="chaos-test") as client:
            stop = asyncio.Event()
            driver = asyncio.create_task(_chaos(stack, stop, rng))
            run_ids: list[str] = []
            for _ in range(WAVES):
                for _ in range(RUNS // WAVES):
                    run_ids.append(
                        await client.submit(
                            Goal(GOAL, tenant_id=TENANT, agent="chaos", budget=Decimal("0.50"))
                        )
                    )
                await asyncio.sleep(KILL_EVERY_S / 2)  # spread the runs over the kills
            killed = await driver
            stop.set()
            statuses = await asyncio.to_thread(stack.up)
            assert all(s.running for s in statuses), statuses
            finals = await asyncio.gather(*(client.wait(r, timeout_s=150) for r in run_ids))
        endings = Counter(f.WhichOneof("event") for f in finals)
        # Billing catches up on its own: await the ledger reaching every usage id on the topic.
        ledger: dict[str, Decimal] = {}
        usage: dict[str, Decimal] = {}
        for _ in range(120):
            usage = await _usage_on_topic(kafka, stack)
            ledger = _ledger(stack.state_dir / "billing" / "billing.sqlite3")
            if usage and set(ledger) == set(usage):
                break
            await asyncio.sleep(0.5)
    print(
        f"killed: {killed}; endings: {dict(endings)}; webhook calls: {sum(receiver.seen.values())}"
    )
    print(f"usage ids: {len(usage)}; ledger total {sum(ledger.values())}")
    assert len(killed) == KILLS
    assert set(killed) == set(VICTIMS)
    assert len(finals) == RUNS
    assert all(f.WhichOneof("event") for f in finals)
    assert endings["completed"] > 0, endings
    # The side effect ran, and never twice for one call.
    assert receiver.seen, "the webhook was never called"
    assert max(receiver.seen.values()) == 1, receiver.seen.most_common(3)
    assert set(ledger) == set(usage)
    assert sum(ledger.values()) == sum(usage.values())
    # Issue 19: every run's terminal cost is what the ledger charged the run.
    by_run = _ledger_by_run(stack.state_dir / "billing" / "billing.sqlite3")
    wrong = {
        run_id: (_terminal_cost(final), by_run.get(run_id, Decimal(0)))
        for run_id, final in zip(run_ids, finals, strict=True)
        if _terminal_cost(final) != by_run.get(run_id, Decimal(0))
    }
    assert not wrong, wrong

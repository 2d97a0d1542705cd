"""Issue 19 on the real stack: a sent-then-lost non-idempotent call and what the run costs.

Planner, model-router, tool-executor and billing run as subprocesses on the real broker. The
agent searches the demo tickets, then calls a priced, non-idempotent webhook whose receiver holds
the POST past the tool step's deadline. First with the executor alive (its deadline expires
after the POST was sent), then with the executor SIGKILLed while the POST is held and restarted
after the planner gave up on the step. Both times the model is told OUTCOME_UNKNOWN, never a
timeout, the webhook is called once, and the run's terminal cost equals billing's ledger.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import uuid
from decimal import Decimal
from pathlib import Path

import pytest

from scripts.bad_input import ROOT, Stack, read_topic
from stepline.v1 import runs_pb2, tools_pb2
from stepline_client import Goal, Stepline
from stepline_executor.registry_topic import read_registered_names
from stepline_runtime.settings import KafkaSettings
from stepline_runtime.topics import Topics
from tests.webhooks import WebhookReceiver, configure_webhook_agent

pytestmark = pytest.mark.kafka

TENANT = "unknown-tenant"
PRICE = Decimal("0.05")
GOAL = "Search the support tickets for refund problems and post a message about them"
HOLD_S = 6.0  # longer than the tool step deadline below


def _configure(stack: Stack, port: int) -> None:
    configure_webhook_agent(
        stack, port, tenant=TENANT, agent="poster", webhook_timeout_s=30, tool_step_deadline_s=3
    )
    book = stack.state_dir / "pricebook.toml"
    shipped = (ROOT / "deploy" / "config" / "pricebook.toml").read_text(encoding="utf-8")
    book.write_text(f'{shipped}\n[[tools]]\nname = "post_message"\nper_call = "{PRICE}"\n')
    stack.env["STEPLINE_PRICEBOOK"] = str(book)


def _ledger_cost(stack: Stack, run_id: str) -> Decimal:
    path = stack.state_dir / "billing" / "billing.sqlite3"
    with contextlib.closing(sqlite3.connect(path)) as db:
        rows = db.execute("SELECT cost FROM ledger WHERE run_id = ?", (run_id,)).fetchall()
    return sum((Decimal(str(cost or 0)) for (cost,) in rows), Decimal(0))


async def _settled_ledger(stack: Stack, run_id: str, expected: Decimal) -> Decimal:
    """Billing catches up on its own: the run's ledger total once it stops changing."""
    total = Decimal(-1)
    for _ in range(60):
        total = _ledger_cost(stack, run_id)
        if total == expected:
            break
        await asyncio.sleep(0.5)
    return total


async def _events(kafka: KafkaSettings, stack: Stack, run_id: str) -> list[runs_pb2.RunEvent]:
    return [
        runs_pb2.RunEvent.FromString(value or b"")
        for _, _, key, value in await read_topic(kafka, stack.topic(Topics.RUNS))
        if key == run_id.encode()
    ]


async def _tools_known(kafka: KafkaSettings, stack: Stack) -> None:
    """Wait until the webhook is registered, so the planner can offer it to the first run."""
    for _ in range(120):
        with contextlib.suppress(TimeoutError):
            names = await read_registered_names(kafka, stack.topic(Topics.TOOLS), timeout_s=10)
            if "post_message" in names:
                await asyncio.sleep(1.0)  # the planner's table reader follows within moments
                return
        await asyncio.sleep(0.5)
    raise AssertionError("post_message was never registered")


def _cost(final: runs_pb2.RunEvent) -> Decimal:
    body = getattr(final, final.WhichOneof("event") or "")
    return Decimal(body.cost.amount or "0")


async def test_lost_non_idempotent_calls_are_unknown_and_runs_cost_what_the_ledger_says(
    kafka: KafkaSettings, tmp_path: Path
) -> None:
    stack = Stack(tmp_path / "stack", f"t{uuid.uuid4().hex[:10]}")
    receiver = WebhookReceiver(hold_s=HOLD_S)
    _configure(stack, receiver.port)
    with receiver.serving(), stack.running():
        await _tools_known(kafka, stack)
        async with Stepline(stack.settings, source="unknown-outcomes-test") as client:
            # 1. The executor is alive: the POST is sent, then the step's deadline passes.
            alive = await client.submit(Goal(GOAL, tenant_id=TENANT, agent="poster"))
            alive_final = await client.wait(alive, timeout_s=90)

            # 2. The executor dies while the POST is held; it comes back after the planner
            #    gave up on the step, and reports what it knows.
            receiver.arrived.clear()
            killed = await client.submit(Goal(GOAL, tenant_id=TENANT, agent="poster"))
            assert await asyncio.to_thread(receiver.arrived.wait, 60), "no POST arrived"
            pid = stack.pids()["tool-executor"]
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            await asyncio.sleep(4)  # past the 3 s step deadline
            receiver.release.set()
            await asyncio.to_thread(stack.up)
            killed_final = await client.wait(killed, timeout_s=90)

        for run_id, final in ((alive, alive_final), (killed, killed_final)):
            assert final.WhichOneof("event") == "completed", final
            events = await _events(kafka, stack, run_id)
            [step] = [
                e.step_completed
                for e in events
                if e.WhichOneof("event") == "step_completed"
                and e.step_completed.tool == "post_message"
            ]
            assert step.tool_error_kind == tools_pb2.TOOL_CALL_ERROR_KIND_OUTCOME_UNKNOWN, step
            if run_id == killed:
                # The planner gave up first; the restarted executor's late answer was counted.
                # (Other results the crash made the executor send again are ignored, uncounted.)
                late = [
                    e.duplicate_result_ignored
                    for e in events
                    if e.WhichOneof("event") == "duplicate_result_ignored"
                    and e.duplicate_result_ignored.call_id == step.call_id
                ]
                assert [Decimal(d.cost.amount) for d in late] == [PRICE], late
            ledger = await _settled_ledger(stack, run_id, _cost(final))
            # Issue 19 defect 2: the run's cost includes what the unknown call was billed.
            assert _cost(final) == ledger, (run_id, _cost(final), ledger)
            assert ledger > PRICE  # model steps plus the post
    # The side effect reached the receiver once per run, never twice.
    assert len(receiver.keys) == 2
    assert len(set(receiver.keys)) == 2

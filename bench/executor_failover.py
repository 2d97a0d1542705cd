"""Executor failover: from an instance's SIGKILL to its partitions being processed again.

Method: a fresh namespace with 6-partition topics and two tool-executor instances sharing the
group and the outcome changelog. A driver sends calculator calls
at a steady rate (fresh run ids, so every partition gets work) and follows the results. Once
the group is stable and every partition answers, one instance is SIGKILLed. For each
partition, the gap from the kill to its first result produced after it is taken; the killed
instance's partitions have the long gaps, and the longest is the failover time. The time the
survivor spent restoring outcome partitions (its "outcomes restored" log lines after the
kill) is reported beside it. A SIGKILLed member sends no LeaveGroup, so the group notices it
only after the session timeout; rounds run at the default (10 s) and at the broker's floor (6 s).
All processes share the machine's 2 cores.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient

from bench.apps.stack import Namespace, Service, machine
from bench.scaleout import group_state
from stepline.v1 import tools_pb2
from stepline_executor.spec import SPEC as EXECUTOR
from stepline_runtime.settings import KafkaSettings, namespaced
from stepline_runtime.topics import Topics

__all__ = ["main"]

RESULTS = Path(__file__).parent / "results"
PARTITIONS = 6
# Well under what two instances finish on 2 shared cores: a backlog would hide the failover.
RATE_PER_S = 8
SESSIONS_MS = (10_000, 6_000)
ROUNDS = 2


class _Results:
    """When each partition of the result topic got its results (producer wall clock, seconds)."""

    def __init__(self, ns: Namespace) -> None:
        self.ns = ns
        self.times: dict[int, list[float]] = {}
        self.ready = asyncio.Event()

    async def follow(self) -> None:
        consumer = AIOKafkaConsumer(
            self.ns.topic(Topics.TOOL_RESULTS),
            auto_offset_reset="latest",
            enable_auto_commit=False,
            fetch_max_wait_ms=10,
            **self.ns.kafka.client_kwargs("bench-results"),
        )
        await consumer.start()
        try:
            partitions = consumer.assignment()
            while not partitions:
                await asyncio.sleep(0.01)
                partitions = consumer.assignment()
            self.ready.set()
            while True:
                for tp, records in (await consumer.getmany(timeout_ms=50)).items():
                    # When produced, not when fetched: a result the killed instance sent just
                    # before dying must not count as the partition answering again.
                    self.times.setdefault(tp.partition, []).extend(
                        r.timestamp / 1000 for r in records
                    )
        finally:
            await consumer.stop()

    def first_after(self, moment: float) -> dict[int, float | None]:
        """Seconds from `moment` to each partition's first result after it."""
        return {
            p: next((t - moment for t in self.times.get(p, []) if t > moment), None)
            for p in range(PARTITIONS)
        }


async def _drive(ns: Namespace) -> None:
    while True:
        run_id = f"r{uuid.uuid4().hex[:16]}"
        call = tools_pb2.ToolCallRequested(
            run_id=run_id,
            tenant_id="bench",
            step_id=f"{run_id}:1",
            call_id=f"{run_id}:1:0",
            tool="calculator",
            arguments_json='{"expression": "6 * 7"}',
            agent="bench",
        )
        await ns.send(Topics.TOOL_REQUESTS, run_id, call)
        await asyncio.sleep(1 / RATE_PER_S)


async def _stable(ns: Namespace, members: int, timeout_s: float = 120) -> None:
    admin = AIOKafkaAdminClient(**ns.kafka.client_kwargs("bench-admin"))
    await admin.start()
    group, topic = namespaced(EXECUTOR.name, ns.ns), ns.topic(Topics.TOOL_REQUESTS)
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            state, found, assigned = await group_state(admin, group, topic)
            if state == "Stable" and found == members and assigned == PARTITIONS:
                return
            await asyncio.sleep(0.1)
        raise TimeoutError(f"{group} not stable with {members} members")
    finally:
        await admin.close()


def _spawn(ns: Namespace, name: str, session_ms: int) -> Service:
    service = Service(
        name,
        [sys.executable, "-m", EXECUTOR.module],
        {
            **ns.env(),
            "STEPLINE_KAFKA_SESSION_TIMEOUT_MS": str(session_ms),
            "STEPLINE_EXECUTOR_DATA_DIR": str(ns.workdir / name),
            "STEPLINE_LOG_FORMAT": "json",
        },
        ns.workdir / f"{name}.log",
    )
    ns.services.append(service)
    return service


def _restore_s(log: Path, since_wall: float) -> float:
    """Seconds the instance spent restoring outcome partitions after `since_wall`."""
    total = 0.0
    for line in log.read_text(errors="replace").splitlines():
        if "outcomes restored for assigned partitions" not in line:
            continue
        entry = json.loads(line)
        at = time.mktime(time.strptime(entry["time"][:19], "%Y-%m-%dT%H:%M:%S"))
        if at - time.timezone >= since_wall - 1:
            total += float(entry["seconds"])
    return round(total, 3)


async def _round(ns: Namespace, results: _Results, session_ms: int, index: int) -> dict[str, Any]:
    victim = _spawn(ns, f"executor-{session_ms}-{index}-a", session_ms)
    survivor = _spawn(ns, f"executor-{session_ms}-{index}-b", session_ms)
    try:
        await _stable(ns, 2)
        await asyncio.sleep(2)  # every partition answering
        killed = time.time()
        victim.popen.send_signal(signal.SIGKILL)
        await asyncio.to_thread(victim.popen.wait)
        deadline = killed + session_ms / 1000 + 60
        while time.time() < deadline:
            gaps = results.first_after(killed)
            if all(g is not None for g in gaps.values()):
                break
            await asyncio.sleep(0.1)
        gaps = results.first_after(killed)
        missing = [p for p, g in gaps.items() if g is None]
        if missing:
            raise TimeoutError(f"partitions {missing} never answered after the kill")
        await asyncio.sleep(0.5)  # the survivor's log lines of that rebalance
        # Survivors answer within a request gap; moved partitions wait out the session timeout.
        moved = sorted(p for p, g in gaps.items() if g is not None and g > session_ms / 2000)
        return {
            "session_timeout_ms": session_ms,
            "failover_s": round(max(g for g in gaps.values() if g is not None), 2),
            "partitions_moved": moved,
            "first_result_after_kill_s": {p: round(g or 0, 2) for p, g in gaps.items()},
            "survivor_restore_s": _restore_s(survivor.log, killed),
        }
    finally:
        survivor.stop()


async def main() -> None:
    """Measure executor failover, print it, write bench/results/executor_failover.json."""
    kafka = KafkaSettings()
    rounds: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-exfail-") as tmp:
        ns = Namespace(kafka, Path(tmp), PARTITIONS)
        await ns.start()
        results = _Results(ns)
        follower = asyncio.create_task(results.follow())
        await results.ready.wait()
        driver = asyncio.create_task(_drive(ns))
        try:
            for session_ms in SESSIONS_MS:
                for index in range(ROUNDS):
                    found = await _round(ns, results, session_ms, index)
                    print(
                        f"executor failover (session {session_ms / 1000:g} s):"
                        f" {found['failover_s']} s, partitions {found['partitions_moved']},"
                        f" survivor restored outcomes in {found['survivor_restore_s']} s"
                    )
                    rounds.append(found)
        finally:
            for task in (driver, follower):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await ns.stop()
    summary = {
        str(s): round(
            statistics.median(r["failover_s"] for r in rounds if r["session_timeout_ms"] == s), 2
        )
        for s in SESSIONS_MS
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "executor_failover.json").write_text(
        json.dumps(
            {
                "machine": machine(),
                "partitions": PARTITIONS,
                "rate_per_s": RATE_PER_S,
                "median_failover_s_by_session_ms": summary,
                "rounds": rounds,
            },
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    asyncio.run(main())

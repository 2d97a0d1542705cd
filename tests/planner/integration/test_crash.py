"""Exactly-once under SIGKILL: many runs with tool calls while the planner is killed/restarted."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import AsyncIterator, Callable

import pytest

from stepline.v1 import common_pb2, planner_state_pb2, tools_pb2
from stepline_runtime.settings import KafkaSettings
from tests.planner.integration.harness import TERMINAL, System, kinds, tool

pytestmark = pytest.mark.kafka

RUNS = 500
KILLS = 6
SCRIPT = {
    "crash": [
        {"tools": [{"name": "echo", "args": {"n": 1}}, {"name": "echo", "args": {"n": 2}}]},
        {"tools": [{"name": "echo", "args": {"n": 3}}]},
        {"answer": "survived"},
    ]
}


@pytest.fixture
async def system(
    kafka: KafkaSettings, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[System]:
    """Planner + responder in a namespace of their own."""
    system = System(kafka, tmp_path_factory.mktemp("crash"), SCRIPT)
    await system.start(tools=[tool("echo")], budgets=[])
    try:
        yield system
    finally:
        await system.stop()


def event_count(system: System) -> int:
    """Run events committed so far, all runs."""
    return sum(len(events) for events in system.events.values())


async def wait_until(predicate: Callable[[], bool], timeout_s: float = 60) -> None:
    """Poll `predicate` until it holds."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "no progress"
        await asyncio.sleep(0.05)


def progress_after(system: System, seen: int) -> Callable[[], bool]:
    """A predicate: the planner committed more events since `seen`, or everything is done."""
    return lambda: event_count(system) > seen + 20 or finished(system) == RUNS


def finished(system: System) -> int:
    """How many runs have a terminal event."""
    return sum(1 for events in system.events.values() if any(k in TERMINAL for k in kinds(events)))


async def test_runs_survive_sigkill_with_every_step_executed_once(system: System) -> None:
    run_ids = [f"crash-{i:03d}" for i in range(RUNS)]
    for run_id in run_ids:
        await system.submit(run_id, "worker", "crash")
    rng = random.Random(7)
    kills, at = 0, []
    while kills < KILLS and finished(system) < RUNS:
        # Kill only a planner that is making progress, at a random moment while it does.
        await wait_until(progress_after(system, event_count(system)))
        await asyncio.sleep(rng.uniform(0.1, 1.5))
        at.append(finished(system))
        system.kill_planner()
        kills += 1
        system.start_planner()
    print(f"kills at {at} finished runs of {RUNS}")
    for run_id in run_ids:
        await system.terminal(run_id, timeout_s=120)
    assert sum(1 for n in at if n < RUNS) >= 2, f"too few kills mid-way ({at}); raise RUNS"

    for run_id in run_ids:
        events = system.events[run_id]
        assert [e.sequence for e in events] == list(range(1, len(events) + 1)), run_id
        assert [k for k in kinds(events) if k in TERMINAL] == ["completed"], run_id
        done = next(e.completed for e in events if e.WhichOneof("event") == "completed")
        assert done.answer == "survived"

    executed = Counter(line for line in system.executions.read_text().splitlines())
    assert [line for line, n in executed.items() if n > 1] == []
    assert len(executed) == RUNS * 6  # three model steps and three tool steps per run

    requested = Counter(
        tools_pb2.ToolCallRequested.FromString(v or b"").call_id
        for _, v, h in await system.read("stepline.tool.requests.v1")
        if h["ce_type"] == b"stepline.v1.ToolCallRequested"
    )
    assert len(requested) == RUNS * 3
    assert max(requested.values()) == 1

    latest: dict[bytes, bytes | None] = {}
    for key, value, _ in await system.read("stepline.planner.state.v1"):
        latest[key] = value
    for run_id in run_ids:
        state = planner_state_pb2.RunState.FromString(latest[run_id.encode()] or b"")
        answered = [
            m.tool_call_id for m in state.transcript if m.role == common_pb2.ChatMessage.ROLE_TOOL
        ]
        assert len(answered) == len(set(answered)) == 3, run_id
        assert state.steps_taken == 6

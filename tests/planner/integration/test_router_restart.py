"""A model step survives a router restart: the planner asks once more after the downtime."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from stepline.v1 import runs_pb2
from stepline_runtime.settings import KafkaSettings
from tests.planner.integration.harness import System, kinds

pytestmark = pytest.mark.kafka

ROUTES = """
[deployments.local]
provider = "local"
model = "stepline-local-1"
[routes.r]
deployments = ["local"]
"""
STEP_DEADLINE_S = 10  # agent `brief` in the harness (router start-up takes ~2 s)


@pytest.fixture
async def system(
    kafka: KafkaSettings, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[System]:
    """The planner and the real router (no scripted responder) in a namespace of their own."""
    system = System(kafka, tmp_path_factory.mktemp("restart"), {})
    await system.start(tools=[], budgets=[], responder=False)
    system.start_router(ROUTES)
    try:
        yield system
    finally:
        await system.stop()


def _steps(events: list[runs_pb2.RunEvent]) -> list[tuple[str, str]]:
    """(kind, call_id) of the run's step events, in order."""
    out: list[tuple[str, str]] = []
    for event in events:
        kind = event.WhichOneof("event") or ""
        if kind in ("step_started", "step_completed", "duplicate_result_ignored"):
            out.append((kind, getattr(event, kind).call_id))
    return out


async def test_a_model_step_outlives_the_routers_downtime_and_the_run_completes(
    system: System,
) -> None:
    # The router answers (it is up and consuming), then stops for longer than a step's deadline.
    await system.submit("warm-1", "brief", "", goal="warm up")
    warm = await system.terminal("warm-1", timeout_s=90)
    assert kinds(warm)[-1] == "completed", kinds(warm)
    system.stop_router()

    down_at = asyncio.get_running_loop().time()
    await system.submit("down-1", "brief", "", goal="What is the sum of 7 and 5?")
    # The step's deadline fires with the router down: the planner asks again as call :2.
    await system.wait_for(
        "down-1",
        lambda es: ("step_started", "down-1:1:2") in _steps(es),
        "the retried model call",
        timeout_s=STEP_DEADLINE_S + 30,
    )
    assert asyncio.get_running_loop().time() - down_at > STEP_DEADLINE_S
    system.start_router(ROUTES)
    restarted_at = asyncio.get_running_loop().time()

    events = await system.terminal("down-1", timeout_s=90)
    # The retry must be answered within its own deadline, router start-up included.
    print(f"router restart to answer: {asyncio.get_running_loop().time() - restarted_at:.1f}s")
    assert kinds(events)[-1] == "completed", (kinds(events), system.workdir)
    steps = _steps(events)
    assert steps[:3] == [
        ("step_started", "down-1:1:1"),
        ("step_completed", "down-1:1:1"),
        ("step_started", "down-1:1:2"),
    ]
    first = next(e.step_completed for e in events if e.WhichOneof("event") == "step_completed")
    assert first.outcome == runs_pb2.STEP_OUTCOME_TIMED_OUT
    assert ("step_completed", "down-1:1:2") in steps
    # The router, back, also answered the first request (its deadline long gone): that late
    # result is recorded as ignored, never applied.
    late = await system.wait_for(
        "down-1",
        lambda es: ("duplicate_result_ignored", "down-1:1:1") in _steps(es),
        "the stale first result",
        timeout_s=30,
    )
    ignored = next(e for e in late if e.WhichOneof("event") == "duplicate_result_ignored")
    assert ignored.duplicate_result_ignored.reason == runs_pb2.IGNORED_RESULT_REASON_STEP_TIMED_OUT
    answer = next(e.completed.answer for e in events if e.WhichOneof("event") == "completed")
    assert "What is the sum of 7 and 5" in answer

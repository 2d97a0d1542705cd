"""The client library and CLI on a real broker: goals in, run events out, clear errors."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from stepline.v1 import common_pb2, control_pb2, goals_pb2, runs_pb2
from stepline_client import Goal, Stepline
from stepline_client.cli import main
from stepline_client.client import RunTimeoutError
from stepline_client.events import describe
from stepline_runtime.codec import decode, encode
from stepline_runtime.ids import derive_run_id
from stepline_runtime.processor import inbound
from stepline_runtime.settings import KafkaSettings, ServiceSettings
from stepline_runtime.topics import CATALOG, Topics, ensure_topics
from tests.kafkatools import read_all

pytestmark = pytest.mark.kafka


@pytest.fixture
async def settings(
    kafka: KafkaSettings, admin: AIOKafkaAdminClient, unique: Callable[[str], str]
) -> ServiceSettings:
    """Settings in a fresh topic namespace with the catalog created."""
    namespaced = ServiceSettings(kafka=kafka, topic_namespace=unique("client").replace(".", "-"))
    await ensure_topics(admin, CATALOG, partitions=3, namespace=namespaced.topic_namespace)
    return namespaced


def _event(run_id: str, sequence: int, **kind: Any) -> runs_pb2.RunEvent:
    return runs_pb2.RunEvent(
        run_id=run_id, tenant_id="acme", sequence=sequence, event_id=f"{run_id}/{sequence}", **kind
    )


async def test_submit_derives_the_run_id_and_publishes_a_goal(
    settings: ServiceSettings, kafka: KafkaSettings
) -> None:
    async with Stepline(settings) as client:
        goal = Goal("refund order 7", tenant_id="acme", agent="support", idempotency_key="order-7")
        first = await client.submit(goal)
        again = await client.submit(goal)
    assert first == again == derive_run_id("acme", "order-7")
    records = await read_all(kafka, settings.topic(Topics.GOALS), expect=2)
    goals = [decode(inbound(r), [goals_pb2.GoalSubmitted]).message for r in records]
    assert {g.run_id for g in goals} == {first}
    assert {r.key for r in records} == {first.encode()}
    assert goals[0].goal == "refund order 7"
    assert goals[0].idempotency_key == "order-7"


async def test_events_follow_one_run_in_order_and_stop_at_its_end(
    settings: ServiceSettings, producer: AIOKafkaProducer
) -> None:
    topic = settings.topic(Topics.RUNS)
    run = "run-watched"
    events = [
        _event(run, 1, started=runs_pb2.RunStarted(goal="g", route="default")),
        _event("run-other", 1, started=runs_pb2.RunStarted(goal="other")),
        _event(run, 2, step_started=runs_pb2.StepStarted(step_id=f"{run}:1", route="default")),
        _event(run, 2, step_started=runs_pb2.StepStarted(step_id=f"{run}:1")),  # a replay
        _event(
            run,
            3,
            completed=runs_pb2.RunCompleted(
                answer="done", steps=1, cost=common_pb2.Money(currency="USD", amount="0.0012")
            ),
        ),
        _event(run, 4, started=runs_pb2.RunStarted(goal="never read")),
    ]
    for event in events:
        out = encode(topic, event.run_id, event, event_id=event.event_id, source="test")
        await producer.send_and_wait(topic, out.value, key=out.key, headers=list(out.headers))

    async with Stepline(settings) as client:
        seen = [e async for e in client.events(run)]
        final = await client.wait(run, timeout_s=30)

    assert [e.sequence for e in seen] == [1, 2, 3]
    assert final.completed.answer == "done"
    assert describe(seen[-1]) == "completed in 1 steps (0→0 tok, $0.0012)"


async def test_waiting_for_a_run_that_never_ends_times_out(settings: ServiceSettings) -> None:
    async with Stepline(settings) as client:
        with pytest.raises(RunTimeoutError, match="did not finish"):
            await client.wait("run-nobody", timeout_s=2)


async def test_approve_and_cancel_publish_control_commands(
    settings: ServiceSettings, kafka: KafkaSettings
) -> None:
    async with Stepline(settings) as client:
        await client.decide("run-1", "acme", "appr-1", approve=False, reason="not today")
        await client.cancel("run-1", "acme", reason="user left")
    records = await read_all(kafka, settings.topic(Topics.CONTROL), expect=2)
    commands = [decode(inbound(r), [control_pb2.ControlCommand]).message for r in records]
    decided, cancelled = commands
    assert decided.approval_decided.decision == control_pb2.APPROVAL_DECISION_DENIED
    assert decided.approval_decided.reason == "not today"
    assert cancelled.run_cancel_requested.reason == "user left"
    assert not cancelled.run_cancel_requested.keep_children


def test_cli_without_a_broker_says_what_to_do(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("STEPLINE_KAFKA_BOOTSTRAP", "127.0.0.1:1")
    assert (
        main(["submit", "hello", "--tenant", "acme", "--agent", "assistant"], out=io.StringIO())
        == 2
    )
    assert "run `stepline up` or set STEPLINE_KAFKA_BOOTSTRAP" in capsys.readouterr().err


def test_cli_deny_requires_a_reason(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["deny", "run-1", "appr-1", "--tenant", "acme"], out=io.StringIO()) == 2
    assert "deny needs --reason" in capsys.readouterr().err

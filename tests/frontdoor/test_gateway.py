"""The front door's gRPC GatewayService on a real broker: submit, watch, get, cancel, approve;
tenants stay apart. The service runs in process as its lifecycle runs it (HTTP beside it)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from stepline.v1 import common_pb2, control_pb2, gateway_service_pb2, goals_pb2, runs_pb2
from stepline.v1 import gateway_service_pb2_grpc as pb_grpc
from stepline_frontdoor.config import Settings
from stepline_frontdoor.spec import SPEC
from stepline_keys.admin import NewKey
from stepline_keys.feeds import KafkaKeyLog
from stepline_runtime import lifecycle
from stepline_runtime.codec import decode, encode
from stepline_runtime.ids import derive_run_id
from stepline_runtime.processor import inbound
from stepline_runtime.settings import KafkaSettings
from stepline_runtime.topics import CATALOG, Topics, ensure_topics
from tests.kafkatools import read_all
from tests.keys.support import new_key, with_key

pytestmark = pytest.mark.kafka


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def acme_key() -> NewKey:
    """A key of tenant acme with every scope but admin."""
    return new_key("acme")


@pytest.fixture
async def gateway(
    kafka: KafkaSettings,
    admin: AIOKafkaAdminClient,
    unique: Callable[[str], str],
    acme_key: NewKey,
    tmp_path: Path,
) -> AsyncIterator[tuple[pb_grpc.GatewayServiceAsyncStub, Settings]]:
    """The front door served in-process on free ports, in a fresh topic namespace; acme's key
    (from the registry: the key file is empty)."""
    settings = Settings(
        kafka=kafka,
        topic_namespace=unique("gw").replace(".", "-"),
        frontdoor_grpc_address=f"127.0.0.1:{_free_port()}",
        frontdoor_port=0,
        metrics_port=0,
        frontdoor_data_dir=tmp_path,
        frontdoor_keys_file=tmp_path / "keys.toml",
    )
    await ensure_topics(admin, CATALOG, partitions=3, namespace=settings.topic_namespace)
    async with KafkaKeyLog(settings, source="test") as keys:
        await keys.publish(acme_key.event)
    stop = asyncio.Event()
    server = asyncio.create_task(lifecycle.serve(SPEC, settings, stop))
    async with grpc.aio.insecure_channel(
        settings.frontdoor_grpc_address, interceptors=with_key(acme_key.secret)
    ) as channel:
        await asyncio.wait_for(channel.channel_ready(), 30)
        yield pb_grpc.GatewayServiceStub(channel), settings
    stop.set()
    await server


async def _publish_run(producer: AIOKafkaProducer, topic: str, run_id: str) -> None:
    events = [
        runs_pb2.RunEvent(
            run_id=run_id,
            tenant_id="acme",
            sequence=1,
            agent="support",
            started=runs_pb2.RunStarted(goal="refund", session_id="s1"),
        ),
        runs_pb2.RunEvent(
            run_id=run_id,
            tenant_id="acme",
            sequence=2,
            agent="support",
            approval_requested=runs_pb2.ApprovalRequested(
                approval_id="a1", tool="send_reply", arguments_json="{}"
            ),
        ),
        runs_pb2.RunEvent(
            run_id=run_id,
            tenant_id="acme",
            sequence=3,
            agent="support",
            approval_resolved=runs_pb2.ApprovalResolved(
                approval_id="a1", decision=control_pb2.APPROVAL_DECISION_APPROVED
            ),
        ),
        runs_pb2.RunEvent(
            run_id=run_id,
            tenant_id="acme",
            sequence=4,
            agent="support",
            completed=runs_pb2.RunCompleted(
                answer="refunded", steps=3, cost=common_pb2.Money(currency="USD", amount="0.002")
            ),
        ),
    ]
    for event in events:
        out = encode(topic, run_id, event, event_id=f"{run_id}/{event.sequence}", source="test")
        await producer.send_and_wait(topic, out.value, key=out.key, headers=list(out.headers))


async def test_submit_get_and_watch_a_run(
    gateway: tuple[pb_grpc.GatewayServiceAsyncStub, Settings],
    kafka: KafkaSettings,
    producer: AIOKafkaProducer,
) -> None:
    stub, settings = gateway
    submitted = await stub.SubmitGoal(
        gateway_service_pb2.SubmitGoalRequest(
            goal=goals_pb2.GoalSubmitted(
                tenant_id="acme", agent="support", goal="refund", idempotency_key="k-1"
            )
        )
    )
    assert submitted.run_id == derive_run_id("acme", "k-1")
    [goal_record] = await read_all(kafka, settings.topic(Topics.GOALS), expect=1)
    assert decode(inbound(goal_record), [goals_pb2.GoalSubmitted]).message.goal == "refund"

    await _publish_run(producer, settings.topic(Topics.RUNS), submitted.run_id)
    got = await stub.GetRun(
        gateway_service_pb2.GetRunRequest(tenant_id="acme", run_id=submitted.run_id)
    )
    assert got.run.status == runs_pb2.RUN_STATUS_COMPLETED
    assert got.run.answer == "refunded"
    assert got.run.cost.amount == "0.002"
    assert got.run.session_id == "s1"
    assert not got.run.pending_approvals

    watched = [
        r.event.sequence
        async for r in stub.WatchRun(
            gateway_service_pb2.WatchRunRequest(
                tenant_id="acme", run_id=submitted.run_id, after_sequence=2
            )
        )
    ]
    assert watched == [3, 4]


async def test_another_tenant_cannot_see_the_run_and_bad_requests_are_refused(
    gateway: tuple[pb_grpc.GatewayServiceAsyncStub, Settings],
    producer: AIOKafkaProducer,
) -> None:
    stub, settings = gateway
    await _publish_run(producer, settings.topic(Topics.RUNS), "run-private")
    with pytest.raises(grpc.aio.AioRpcError) as foreign:
        await stub.GetRun(
            gateway_service_pb2.GetRunRequest(tenant_id="intruder", run_id="run-private")
        )
    assert foreign.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as absent:
        await stub.GetRun(gateway_service_pb2.GetRunRequest(run_id="run-nowhere"))
    assert absent.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as invalid:
        await stub.SubmitGoal(
            gateway_service_pb2.SubmitGoalRequest(
                goal=goals_pb2.GoalSubmitted(tenant_id="acme", goal="  ")
            )
        )
    assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as undecided:
        await stub.DecideApproval(
            gateway_service_pb2.DecideApprovalRequest(
                tenant_id="acme",
                run_id="run-private",
                decision=control_pb2.ApprovalDecided(approval_id="a1"),
            )
        )
    assert undecided.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_cancel_and_decide_become_control_commands(
    gateway: tuple[pb_grpc.GatewayServiceAsyncStub, Settings],
    kafka: KafkaSettings,
    producer: AIOKafkaProducer,
) -> None:
    stub, settings = gateway
    await _publish_run(producer, settings.topic(Topics.RUNS), "run-9")
    await stub.CancelRun(
        gateway_service_pb2.CancelRunRequest(
            tenant_id="acme",
            run_id="run-9",
            cancel=control_pb2.RunCancelRequested(reason="customer withdrew"),
        )
    )
    await stub.DecideApproval(
        gateway_service_pb2.DecideApprovalRequest(
            tenant_id="acme",
            run_id="run-9",
            decision=control_pb2.ApprovalDecided(
                approval_id="a7",
                decision=control_pb2.APPROVAL_DECISION_APPROVED,
                edited_arguments_json='{"body": "hi"}',
            ),
        )
    )
    records = await read_all(kafka, settings.topic(Topics.CONTROL), expect=2)
    cancel, decided = (decode(inbound(r), [control_pb2.ControlCommand]).message for r in records)
    assert cancel.run_cancel_requested.reason == "customer withdrew"
    assert decided.approval_decided.edited_arguments_json == '{"body": "hi"}'
    assert decided.tenant_id == "acme"

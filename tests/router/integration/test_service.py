"""The router as a real subprocess on the real broker: Kafka in/out, usage per attempt, gRPC."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from grpc_health.v1 import health_pb2, health_pb2_grpc

from stepline.v1 import (
    common_pb2,
    model_pb2,
    router_service_pb2,
    router_service_pb2_grpc,
    usage_pb2,
)
from stepline_keys.feeds import KafkaKeyLog
from stepline_runtime.codec import encode
from stepline_runtime.settings import KafkaSettings, ServiceSettings, namespaced
from stepline_runtime.topics import CATALOG, Topics, ensure_topics
from tests.kafkatools import read_all
from tests.keys.support import new_key, with_key
from tests.router.fakes import closed_port
from tests.router.support import free_port, spawn

pytestmark = pytest.mark.kafka

ROOT = Path(__file__).resolve().parents[3]


def _routes(tmp_path: Path) -> Path:
    path = tmp_path / "routes.toml"
    path.write_text(
        f"""
[deployments.dead]
provider = "openai_compatible"
model = "llama-3"
base_url = "http://127.0.0.1:{closed_port()}/v1"
timeouts = {{ connect_s = 1, first_byte_s = 2, total_s = 3 }}
[deployments.local]
provider = "local"
model = "stepline-local-1"
[routes.default]
deployments = ["dead", "local"]
""",
        encoding="utf-8",
    )
    return path


async def test_router_subprocess_answers_on_kafka_and_grpc(
    kafka: KafkaSettings,
    admin: AIOKafkaAdminClient,
    producer: AIOKafkaProducer,
    tmp_path: Path,
) -> None:
    namespace = f"t{uuid.uuid4().hex[:10]}"
    used = {Topics.MODEL_REQUESTS, Topics.MODEL_RESULTS, Topics.USAGE, Topics.KEYS, Topics.DLQ}
    await ensure_topics(admin, [t for t in CATALOG if t.name in used], 2, 1, namespace)
    key = new_key("acme")
    async with KafkaKeyLog(
        ServiceSettings(kafka=kafka, topic_namespace=namespace), source="test"
    ) as keys:
        await keys.publish(key.event)
    request = model_pb2.ModelCallRequested(
        run_id="run-1",
        tenant_id="acme",
        step_id="run-1:1",
        call_id="run-1:1:1",
        route="default",
        messages=[
            common_pb2.ChatMessage(role=common_pb2.ChatMessage.ROLE_USER, content="hello router")
        ],
    )
    out = encode(
        namespaced(Topics.MODEL_REQUESTS, namespace), "run-1", request, event_id="r1", source="t"
    )
    await producer.send_and_wait(out.topic, out.value, key=out.key, headers=list(out.headers))
    # bad bytes must not stop the partition
    await producer.send_and_wait(out.topic, b"\xff\xfe", key=b"run-1")

    grpc_port = free_port()
    env = {
        **os.environ,
        "STEPLINE_TOPIC_NAMESPACE": namespace,
        "STEPLINE_ROUTES": str(_routes(tmp_path)),
        "STEPLINE_GRPC_HOST": "127.0.0.1",
        "STEPLINE_GRPC_PORT": str(grpc_port),
        "STEPLINE_PARTITIONS": "2",
    }
    log = tmp_path / "router.log"
    process = spawn("stepline_router", env, log)
    try:
        results = await read_all(
            kafka, namespaced(Topics.MODEL_RESULTS, namespace), expect=1, timeout_s=60
        )
        usage = await read_all(kafka, namespaced(Topics.USAGE, namespace), expect=2, timeout_s=30)
        assert len(results) == 1, log.read_text()
        result = model_pb2.ModelCallResult.FromString(results[0].value or b"")
        assert result.WhichOneof("outcome") == "completed"
        assert result.completed.deployment == "local"
        assert "hello router" in result.completed.content
        records = sorted(
            (usage_pb2.UsageRecorded.FromString(r.value or b"") for r in usage),
            key=lambda u: u.attempt,
        )
        assert [u.usage_id for u in records] == ["run-1:1:1/attempt/1", "run-1:1:1/attempt/2"]
        assert records[0].outcome == model_pb2.MODEL_ATTEMPT_OUTCOME_CONNECTION_FAILED
        assert not records[0].priced
        assert records[1].priced
        assert records[1].succeeded
        assert {r.key for r in usage} == {b"acme"}
        letters = await read_all(kafka, namespaced(Topics.DLQ, namespace), expect=1, timeout_s=30)
        assert len(letters) == 1

        async with grpc.aio.insecure_channel(
            f"127.0.0.1:{grpc_port}", interceptors=with_key(key.secret)
        ) as channel:
            # The stubs package declares HealthStub without its methods.
            health: Any = health_pb2_grpc.HealthStub(channel)
            status = await health.Check(
                health_pb2.HealthCheckRequest(service="stepline.v1.ModelRouterService"),
                timeout=10,
                wait_for_ready=True,
            )
            assert status.status == health_pb2.HealthCheckResponse.SERVING
            stub = router_service_pb2_grpc.ModelRouterServiceStub(channel)
            response = await stub.Complete(
                router_service_pb2.CompleteRequest(
                    tenant_id="acme",
                    route="default",
                    request_id="grpc-1",
                    messages=[
                        common_pb2.ChatMessage(
                            role=common_pb2.ChatMessage.ROLE_USER, content="hi over grpc"
                        )
                    ],
                ),
                timeout=20,
            )
            assert response.request_id == "grpc-1"
            assert response.completed.deployment == "local"
            streamed = stub.CompleteStream(
                router_service_pb2.CompleteStreamRequest(
                    request=router_service_pb2.CompleteRequest(
                        tenant_id="acme",
                        route="default",
                        request_id="grpc-2",
                        messages=[
                            common_pb2.ChatMessage(
                                role=common_pb2.ChatMessage.ROLE_USER, content="stream to me"
                            )
                        ],
                    )
                ),
                timeout=20,
            )
            events = [event async for event in streamed]
            assert [e.WhichOneof("event") for e in events][-1] == "done"
            pieces = [e.text for e in events if e.WhichOneof("event") == "text"]
            assert len(pieces) > 1  # word by word, as it is produced
            done = events[-1].done
            assert done.request_id == "grpc-2"
            assert done.completed.deployment == "local"
            assert "".join(pieces) == done.completed.content
            assert [a.outcome for a in done.completed.attempts] == [
                model_pb2.MODEL_ATTEMPT_OUTCOME_CONNECTION_FAILED,
                model_pb2.MODEL_ATTEMPT_OUTCOME_SUCCEEDED,
            ]
            with pytest.raises(grpc.aio.AioRpcError) as invalid:
                await stub.Complete(router_service_pb2.CompleteRequest(route="default"), timeout=5)
            assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        grpc_usage = await read_all(
            kafka, namespaced(Topics.USAGE, namespace), expect=6, timeout_s=30
        )
        ids = {usage_pb2.UsageRecorded.FromString(r.value or b"").usage_id for r in grpc_usage}
        assert {"grpc-1/attempt/1", "grpc-1/attempt/2", "grpc-2/attempt/2"} <= ids
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.to_thread(process.wait, 30)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    assert code == 0, log.read_text()[-3000:]


async def test_shipped_routes_without_keys_fail_loudly_naming_the_missing_keys(
    kafka: KafkaSettings,
    admin: AIOKafkaAdminClient,
    producer: AIOKafkaProducer,
    tmp_path: Path,
) -> None:
    namespace = f"t{uuid.uuid4().hex[:10]}"
    used = {Topics.MODEL_REQUESTS, Topics.MODEL_RESULTS, Topics.USAGE, Topics.DLQ}
    await ensure_topics(admin, [t for t in CATALOG if t.name in used], 1, 1, namespace)
    request = model_pb2.ModelCallRequested(
        run_id="run-2",
        tenant_id="acme",
        step_id="run-2:1",
        call_id="run-2:1:1",
        route="default",
        messages=[common_pb2.ChatMessage(role=common_pb2.ChatMessage.ROLE_USER, content="hi")],
    )
    out = encode(
        namespaced(Topics.MODEL_REQUESTS, namespace), "run-2", request, event_id="r2", source="t"
    )
    await producer.send_and_wait(out.topic, out.value, key=out.key, headers=list(out.headers))
    # The shipped routes file (no STEPLINE_ROUTES) and no key anywhere: a production router.
    unset = ("STEPLINE_ROUTES", "STEPLINE_SECRETS_DIR", "OPENAI_API_KEY", "ANTHROPIC_API_KEY")
    env = {k: v for k, v in os.environ.items() if k not in unset}
    env.update(
        STEPLINE_TOPIC_NAMESPACE=namespace,
        STEPLINE_PARTITIONS="1",
        STEPLINE_GRPC_ENABLED="false",
        STEPLINE_METRICS_PORT="0",
    )
    log = tmp_path / "router.log"
    process = spawn("stepline_router", env, log)
    try:
        results = await read_all(
            kafka, namespaced(Topics.MODEL_RESULTS, namespace), expect=1, timeout_s=60
        )
        assert len(results) == 1, log.read_text()
        failed = model_pb2.ModelCallResult.FromString(results[0].value or b"").failed
        assert failed.kind == model_pb2.MODEL_CALL_ERROR_KIND_NO_ELIGIBLE_DEPLOYMENT
        assert not failed.retryable
        assert "route 'default' has no reachable deployment" in failed.message
        assert "openai-gpt-4o-mini needs OPENAI_API_KEY" in failed.message
        assert "anthropic-haiku needs ANTHROPIC_API_KEY" in failed.message
        assert list(failed.attempts) == []  # never the offline stand-in
        # And the router said so at start, once per unreachable production route.
        text = log.read_text()
        for route in ("default", "fast", "reasoning"):
            assert f'"route": "{route}"' in text, text[-3000:]
        assert "route has no reachable deployment" in text
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(process.wait, 30)
        except subprocess.TimeoutExpired:
            process.kill()
            raise

"""A real broker with SASL/SCRAM and the StandardAuthorizer, and the per-service ACL script.

The broker is started by `python -m stepline_localkafka up --sasl` on free ports with its own
state dir (the shared dev broker on 9092 is left alone); the jars come from the shared cache.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shlex
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import (
    GroupAuthorizationFailedError,
    KafkaConnectionError,
    TopicAuthorizationFailedError,
)
from pydantic import SecretStr

from stepline.v1 import common_pb2, model_pb2
from stepline_localkafka import KafkaSettings as LocalSettings
from stepline_localkafka.security import ScramCredentials
from stepline_runtime.codec import encode
from stepline_runtime.settings import KafkaSettings, namespaced
from stepline_runtime.topics import CATALOG, Topics, ensure_topics

pytestmark = pytest.mark.kafka

ROOT = Path(__file__).resolve().parents[3]
NAMESPACE = f"t{uuid.uuid4().hex[:10]}"


def _shared_lib_dir() -> Path:
    """The jar cache of the shared dev broker, reused so tests do not resolve again."""
    env = {k: v for k, v in os.environ.items() if k != "STEPLINE_KAFKA_PORT"}
    return LocalSettings.resolve(env=env).lib_dir


def _free_ports(count: int) -> list[int]:
    socks = [socket.socket() for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]
    finally:
        for sock in socks:
            sock.close()


async def _first_with_key(
    kafka: KafkaSettings, topic: str, key: bytes, timeout_s: float = 60
) -> bytes | None:
    """The value of the first record of ``topic`` with ``key``, or None after the timeout."""
    consumer = AIOKafkaConsumer(
        topic,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        **kafka.client_kwargs("test-reader"),
    )
    await consumer.start()
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for record in records:
                    if record.key == key:
                        return record.value or b""
    finally:
        await consumer.stop()
    return None


@dataclass(frozen=True)
class Secured:
    """The secured broker under test."""

    bootstrap: str
    credentials: ScramCredentials
    state_dir: Path
    env: dict[str, str]

    def settings(self, user: str, password: str | None = None) -> KafkaSettings:
        """Runtime Kafka settings that log in as ``user`` (with its real password by default)."""
        return KafkaSettings(
            bootstrap=self.bootstrap,
            security_protocol="SASL_PLAINTEXT",
            sasl_mechanism="SCRAM-SHA-512",
            sasl_username=user,
            sasl_password=SecretStr(password or self.credentials.password(user)),
            request_timeout_ms=10_000,
        )


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stepline_localkafka", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def _start_router(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """`python -m stepline_router` with output to ``log``."""
    with log.open("wb") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", "stepline_router"], cwd=ROOT, stdout=sink, stderr=sink, env=env
        )


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    """`up --sasl` on free ports; `down` afterwards."""
    state = tmp_path_factory.mktemp("sasl-kafka")
    port, controller = _free_ports(2)
    env = {k: v for k, v in os.environ.items() if not k.startswith("STEPLINE_KAFKA_")}
    env.update(
        STEPLINE_KAFKA_STATE_DIR=str(state),
        STEPLINE_KAFKA_PORT=str(port),
        STEPLINE_KAFKA_CONTROLLER_PORT=str(controller),
        STEPLINE_KAFKA_LIB_DIR=str(_shared_lib_dir()),
    )
    up = _cli(env, "up", "--sasl")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert "SASL/SCRAM" in up.stderr + up.stdout
        credentials = ScramCredentials.load(state / "sasl" / "credentials.json")
        assert credentials is not None
        status = _cli(env, "status")  # logs in as the admin to check readiness
        assert status.returncode == 0, status.stdout + status.stderr
        yield Secured(f"127.0.0.1:{port}", credentials, state, env)
    finally:
        down = _cli(env, "down")
        assert down.returncode == 0, down.stderr


@pytest.fixture(scope="module")
async def catalog(secured: Secured) -> str:
    """Every catalog topic in this module's namespace, created by the admin principal."""
    admin = AIOKafkaAdminClient(**secured.settings("admin").client_kwargs("test-admin"))
    await admin.start()
    try:
        await ensure_topics(admin, CATALOG, 2, 1, NAMESPACE)
        names = set(await admin.list_topics())
    finally:
        await admin.close()
    assert {namespaced(t.name, NAMESPACE) for t in CATALOG} <= names
    return NAMESPACE


@pytest.fixture(scope="module")
def router_acls(secured: Secured, catalog: str) -> str:
    """scripts/kafka_acls.py applied for the model-router principal; returns its output."""
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "kafka_acls.py"),
            "--bootstrap-server",
            secured.bootstrap,
            "--command-config",
            str(secured.state_dir / "sasl" / "admin.properties"),
            "--namespace",
            catalog,
            "--service",
            "model-router",
        ],
        env=secured.env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.fixture
async def router_producer(secured: Secured) -> AsyncIterator[AIOKafkaProducer]:
    """An idempotent producer logged in as model-router."""
    producer = AIOKafkaProducer(
        enable_idempotence=True,
        acks="all",
        **secured.settings("model-router").client_kwargs("test-router"),
    )
    await producer.start()
    try:
        yield producer
    finally:
        await producer.stop()


async def test_wrong_password_and_unknown_user_are_refused(
    secured: Secured, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="aiokafka")
    for user, password in (("model-router", "not-the-password"), ("mallory", "anything")):
        admin = AIOKafkaAdminClient(**secured.settings(user, password).client_kwargs("test-bad"))
        with pytest.raises(KafkaConnectionError):
            await admin.start()
        await admin.close()
    # aiokafka raises a generic bootstrap error; the reason is the broker's, in its log.
    assert "invalid credentials" in caplog.text
    assert "SaslAuthenticationFailed" in caplog.text


async def test_admin_principal_creates_topics(secured: Secured, catalog: str) -> None:
    # `catalog` created every topic as the admin; a second call is idempotent.
    admin = AIOKafkaAdminClient(**secured.settings("admin").client_kwargs("test-admin"))
    await admin.start()
    try:
        await ensure_topics(admin, CATALOG, 2, 1, catalog)
    finally:
        await admin.close()


async def test_a_principal_without_acls_is_refused(secured: Secured, catalog: str) -> None:
    # No ACL names billing in this module: allow.everyone.if.no.acl.found=false denies all.
    producer = AIOKafkaProducer(**secured.settings("billing").client_kwargs("test-billing"))
    await producer.start()
    try:
        with pytest.raises(TopicAuthorizationFailedError):
            await producer.send_and_wait(namespaced(Topics.USAGE_ROLLUPS, catalog), b"x")
    finally:
        await producer.stop()


async def test_router_produces_and_consumes_its_own_topics(
    secured: Secured, router_acls: str, router_producer: AIOKafkaProducer
) -> None:
    ns = NAMESPACE
    assert f"granted User:model-router: Read/Describe on group {ns}.model-router" in router_acls
    for topic in (Topics.MODEL_RESULTS, Topics.USAGE, Topics.DLQ):
        meta = await router_producer.send_and_wait(namespaced(topic, ns), b"ok", key=b"run-1")
        assert meta.offset >= 0

    requests = namespaced(Topics.MODEL_REQUESTS, ns)
    admin = AIOKafkaProducer(**secured.settings("admin").client_kwargs("test-seed"))
    await admin.start()
    try:
        seeded = await admin.send_and_wait(requests, b"request", key=b"run-1")
    finally:
        await admin.stop()
    consumer = AIOKafkaConsumer(
        group_id=namespaced("model-router", ns),
        enable_auto_commit=False,
        **secured.settings("model-router").client_kwargs("test-router-consumer"),
    )
    await consumer.start()
    try:
        tp = TopicPartition(requests, seeded.partition)
        consumer.assign([tp])
        consumer.seek(tp, seeded.offset)
        record = await consumer.getone(tp)
        assert record.value == b"request"
        await consumer.commit({tp: seeded.offset + 1})
        assert await consumer.committed(tp) == seeded.offset + 1
    finally:
        await consumer.stop()


async def test_router_is_refused_on_topics_and_groups_it_does_not_own(
    secured: Secured, router_acls: str, router_producer: AIOKafkaProducer
) -> None:
    for topic in (Topics.PLANNER_STATE, Topics.GOALS, Topics.MODEL_REQUESTS):
        with pytest.raises(TopicAuthorizationFailedError):
            await router_producer.send_and_wait(namespaced(topic, NAMESPACE), b"forged")

    # Reading its own topic under another service's consumer group is refused too.
    consumer = AIOKafkaConsumer(
        namespaced(Topics.MODEL_REQUESTS, NAMESPACE),
        group_id=namespaced("billing", NAMESPACE),
        **secured.settings("model-router").client_kwargs("test-router-foreign-group"),
    )
    try:
        # Joining the group fails while starting (aiokafka waits for an assignment).
        with pytest.raises(GroupAuthorizationFailedError):
            await consumer.start()
    finally:
        await consumer.stop()


async def test_router_service_runs_as_its_principal(
    secured: Secured, router_acls: str, tmp_path: Path
) -> None:
    exports = _cli(secured.env, "credentials", "model-router")
    assert exports.returncode == 0, exports.stderr
    login = dict(
        shlex.split(line.removeprefix("export "))[0].split("=", 1)
        for line in exports.stdout.splitlines()
    )
    assert login["STEPLINE_KAFKA_SASL_USERNAME"] == "model-router"
    routes = tmp_path / "routes.toml"
    routes.write_text(
        '[deployments.local]\nprovider = "local"\nmodel = "stepline-local-1"\n'
        '[routes.default]\ndeployments = ["local"]\n',
        encoding="utf-8",
    )
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("STEPLINE_KAFKA_")},
        **login,
        "STEPLINE_KAFKA_BOOTSTRAP": secured.bootstrap,
        "STEPLINE_TOPIC_NAMESPACE": NAMESPACE,
        "STEPLINE_ROUTES": str(routes),
        "STEPLINE_GRPC_ENABLED": "false",
        "STEPLINE_PARTITIONS": "2",
        "STEPLINE_METRICS_PORT": "0",
    }
    request = model_pb2.ModelCallRequested(
        run_id="run-sec",
        tenant_id="acme",
        step_id="run-sec:1",
        call_id="run-sec:1:1",
        route="default",
        messages=[common_pb2.ChatMessage(role=common_pb2.ChatMessage.ROLE_USER, content="hi")],
    )
    out = encode(
        namespaced(Topics.MODEL_REQUESTS, NAMESPACE), "run-sec", request, event_id="s1", source="t"
    )
    admin = AIOKafkaProducer(**secured.settings("admin").client_kwargs("test-seed"))
    await admin.start()
    try:
        await admin.send_and_wait(out.topic, out.value, key=out.key, headers=list(out.headers))
    finally:
        await admin.stop()

    log = tmp_path / "router.log"
    process = _start_router(env, log)
    try:
        value = await _first_with_key(
            secured.settings("admin"), namespaced(Topics.MODEL_RESULTS, NAMESPACE), b"run-sec"
        )
        assert value is not None, log.read_text()
        result = model_pb2.ModelCallResult.FromString(value)
        assert result.WhichOneof("outcome") == "completed"
        assert result.completed.deployment == "local"
    finally:
        process.terminate()
        code = await asyncio.to_thread(process.wait, 30)
    assert code == 0, log.read_text()

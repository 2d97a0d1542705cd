"""Shared fixtures: the real broker `make test` starts, admin/producer clients, unique names."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from stepline_runtime import tracing
from stepline_runtime.settings import KafkaSettings

pytest_plugins = ["tests.postgres"]

# Services started by tests must not fight over the fixed Prometheus ports of a developer's stack.
os.environ.setdefault("STEPLINE_METRICS_PORT", "0")
# …nor over the router's HTTP gateway port: 0 binds a free one.
os.environ.setdefault("STEPLINE_HTTP_PORT", "0")
# `make test` runs pytest-xdist workers side by side (the suite mostly waits on the broker and
# on subprocesses): each worker gets a PostgreSQL cluster of its own, next to the configured port.
_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
if _WORKER.startswith("gw") and _WORKER[2:].isdigit():
    _base = int(os.environ.get("STEPLINE_POSTGRES_PORT", "55432"))
    os.environ["STEPLINE_POSTGRES_PORT"] = str(_base + 1 + int(_WORKER[2:]))
    os.environ["STEPLINE_POSTGRES_DIR"] = f"/tmp/stepline-postgres-{_base}-{_WORKER}"


@pytest.fixture(autouse=True)
def _untraced_runtime(monkeypatch: pytest.MonkeyPatch) -> None:
    """Services served in-process configure tracing globally; later tests see it unconfigured."""
    for name in ("_provider", "_tracer", "_configured", "_exporting"):
        monkeypatch.setattr(tracing, name, getattr(tracing, name))


@pytest.fixture(scope="session")
def kafka() -> KafkaSettings:
    """Settings for the broker under test; fails with guidance when none is configured."""
    if not os.environ.get("STEPLINE_KAFKA_BOOTSTRAP"):
        pytest.fail(
            "no broker: run `make test`, or `make kafka-up` and export "
            "STEPLINE_KAFKA_BOOTSTRAP=127.0.0.1:9092"
        )
    return KafkaSettings()


@pytest.fixture
async def admin(kafka: KafkaSettings) -> AsyncIterator[AIOKafkaAdminClient]:
    """An admin client for the test broker."""
    client = AIOKafkaAdminClient(**kafka.client_kwargs("test-admin"))
    await client.start()
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
def unique() -> Callable[[str], str]:
    """Names unique to this test, so tests never see each other's records."""
    suffix = uuid.uuid4().hex[:8]
    return lambda name: f"test.{name}.{suffix}"


@pytest.fixture
async def producer(kafka: KafkaSettings) -> AsyncIterator[AIOKafkaProducer]:
    """An idempotent producer for seeding input topics."""
    client = AIOKafkaProducer(
        enable_idempotence=True, acks="all", **kafka.client_kwargs("test-producer")
    )
    await client.start()
    try:
        yield client
    finally:
        await client.stop()

"""Readiness of a broker: a topic can be created, a message produced and consumed back."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from .errors import KafkaNotReadyError

__all__ = ["READINESS_TOPIC", "is_ready", "probe", "wait_ready"]

READINESS_TOPIC = "_stepline.readiness"
READINESS_GROUP = "_stepline.readiness"
CLIENT_ID = "stepline-localkafka"
_TOPIC_ALREADY_EXISTS = 36
_MAX_ATTEMPT_SECONDS = 20.0


def _servers(bootstrap: str) -> list[tuple[str, int]]:
    """Split ``host:port,host:port`` into pairs."""
    servers: list[tuple[str, int]] = []
    for item in bootstrap.split(","):
        host, _, port = item.strip().rpartition(":")
        if host and port.isdigit():
            servers.append((host.strip("[]"), int(port)))
    if not servers:
        raise KafkaNotReadyError(f"invalid bootstrap servers {bootstrap!r}; expected host:port")
    return servers


async def _tcp_reachable(bootstrap: str, timeout: float) -> bool:  # noqa: ASYNC109
    """True if any bootstrap server accepts a TCP connection (a cheap first check)."""
    for host, port in _servers(bootstrap):
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        except (OSError, TimeoutError):
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True
    return False


async def _create_topic(bootstrap: str, timeout_ms: int, auth: Mapping[str, Any]) -> None:
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, client_id=CLIENT_ID, request_timeout_ms=timeout_ms, **auth
    )
    try:
        await admin.start()
        response = await admin.create_topics(
            [NewTopic(READINESS_TOPIC, num_partitions=1, replication_factor=1)],
            timeout_ms=timeout_ms,
        )
    finally:
        await admin.close()
    for topic_error in response.topic_errors:
        code = int(topic_error[1])
        if code not in (0, _TOPIC_ALREADY_EXISTS):
            detail = topic_error[2] if len(topic_error) > 2 else ""
            raise KafkaNotReadyError(f"creating {READINESS_TOPIC} failed: error {code} {detail}")


async def _produce(
    bootstrap: str, token: bytes, timeout_ms: int, auth: Mapping[str, Any]
) -> tuple[int, int]:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        client_id=CLIENT_ID,
        acks="all",
        request_timeout_ms=timeout_ms,
        **auth,
    )
    try:
        await producer.start()
        metadata = await producer.send_and_wait(READINESS_TOPIC, value=token, key=b"readiness")
    finally:
        await producer.stop()
    return int(metadata.partition), int(metadata.offset)


async def _consume(
    bootstrap: str, token: bytes, partition: int, offset: int, auth: Mapping[str, Any]
) -> None:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        client_id=CLIENT_ID,
        group_id=READINESS_GROUP,
        enable_auto_commit=False,
        **auth,
    )
    try:
        await consumer.start()
        tp = TopicPartition(READINESS_TOPIC, partition)
        consumer.assign([tp])
        consumer.seek(tp, offset)
        while True:
            message = await consumer.getone(tp)
            if message.value == token:
                break
        # Committing goes through the group coordinator, so __consumer_offsets works too.
        await consumer.commit({tp: offset + 1})
    finally:
        await consumer.stop()


async def probe(
    bootstrap: str,
    timeout: float = 20.0,  # noqa: ASYNC109
    *,
    auth: Mapping[str, Any] | None = None,
) -> None:
    """One readiness check; raises KafkaNotReadyError (or a client error) if not ready.

    ``auth`` holds extra aiokafka arguments (SASL login) for a secured broker.
    """
    auth = auth or {}
    if not await _tcp_reachable(bootstrap, min(timeout, 3.0)):
        raise KafkaNotReadyError(f"nothing accepts connections at {bootstrap}")
    token = uuid.uuid4().hex.encode()
    timeout_ms = max(1000, int(timeout * 1000))

    async def check() -> None:
        await _create_topic(bootstrap, timeout_ms, auth)
        partition, offset = await _produce(bootstrap, token, timeout_ms, auth)
        await _consume(bootstrap, token, partition, offset, auth)

    try:
        await asyncio.wait_for(check(), timeout)
    except TimeoutError:
        raise KafkaNotReadyError(
            f"readiness check at {bootstrap} timed out after {timeout:.0f} s"
        ) from None


async def is_ready(
    bootstrap: str,
    timeout: float = 10.0,  # noqa: ASYNC109
    *,
    auth: Mapping[str, Any] | None = None,
) -> bool:
    """True if a single readiness check at ``bootstrap`` passes within ``timeout`` seconds."""
    try:
        await probe(bootstrap, timeout, auth=auth)
    except Exception:
        return False
    return True


async def wait_ready(
    bootstrap: str,
    timeout: float = 90.0,  # noqa: ASYNC109 - a retry deadline, not a wrapper timeout
    *,
    alive: Callable[[], bool] | None = None,
    auth: Mapping[str, Any] | None = None,
) -> None:
    """Retry the readiness check until it passes; KafkaNotReadyError after ``timeout`` s.

    ``alive`` (optional) is polled between attempts; when it returns False the broker
    process has died and waiting stops at once.
    """
    deadline = time.monotonic() + timeout
    last_error = "no attempt made"
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise KafkaNotReadyError(
                f"kafka at {bootstrap} not ready after {timeout:.0f} s (last error: {last_error})"
            )
        if alive is not None and not alive():
            raise KafkaNotReadyError(f"the broker process exited while waiting for {bootstrap}")
        try:
            await probe(bootstrap, min(remaining, _MAX_ATTEMPT_SECONDS), auth=auth)
        except Exception as exc:  # any client error means "not ready yet"
            last_error = f"{type(exc).__name__}: {exc}"
            await asyncio.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
        else:
            return

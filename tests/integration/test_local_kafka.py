"""The local-Kafka tool (python -m stepline_localkafka) against a real broker.

Each test uses its own state dir (tmp_path) and its own ports, so the shared dev broker on
9092 is left alone. The jars come from the shared cache (STEPLINE_KAFKA_LIB_DIR or the
default state dir's lib/), which is resolved once with Maven if missing.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from stepline_localkafka import KafkaSettings, wait_ready

pytestmark = pytest.mark.kafka

LIFECYCLE_PORT = 19192
RUN_PORT = 19196
BUSY_PORT = 19198


def _shared_lib_dir() -> Path:
    """The jar cache of the shared dev broker, reused so tests do not resolve again."""
    env = {k: v for k, v in os.environ.items() if k != "STEPLINE_KAFKA_PORT"}
    return KafkaSettings.resolve(env=env).lib_dir


def _env(state_dir: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STEPLINE_KAFKA_")}
    env.update(
        STEPLINE_KAFKA_STATE_DIR=str(state_dir),
        STEPLINE_KAFKA_PORT=str(port),
        STEPLINE_KAFKA_LIB_DIR=str(_shared_lib_dir()),
    )
    return env


def _cli(env: dict[str, str], *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stepline_localkafka", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _gone(pid: int, wait: float = 10.0) -> bool:
    """True once /proc/<pid> is gone or a zombie waiting for init to reap it."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return True
        if stat.rpartition(")")[2].split()[0] in ("Z", "X"):
            return True
        time.sleep(0.1)
    return False


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


@pytest.fixture
def lifecycle_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    env = _env(tmp_path / "kafka", LIFECYCLE_PORT)
    yield env
    _cli(env, "down")  # never leave a broker behind, whatever failed


async def _produce_consume(bootstrap: str) -> None:
    topic = f"test.localkafka.{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        response = await admin.create_topics([NewTopic(topic, 2, 1)])
        assert [e[1] for e in response.topic_errors] == [0]
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for i in range(5):
            await producer.send_and_wait(topic, f"m{i}".encode(), key=str(i).encode())
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"test-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        values: set[bytes] = set()
        while len(values) < 5:
            message = await consumer.getone()
            values.add(message.value)
        assert values == {f"m{i}".encode() for i in range(5)}
    finally:
        await consumer.stop()


async def test_up_is_idempotent_and_down_stops_the_broker(
    lifecycle_env: dict[str, str], tmp_path: Path
) -> None:
    state_dir = tmp_path / "kafka"
    bootstrap = f"127.0.0.1:{LIFECYCLE_PORT}"

    first = _cli(lifecycle_env, "up")
    assert first.returncode == 0, first.stderr + first.stdout
    assert f"kafka up at {bootstrap}" in first.stdout
    pid = int((state_dir / "kafka.pid").read_text())
    assert str(state_dir / "server.properties") in _cmdline(pid)
    assert (state_dir / "logs" / "server.log").stat().st_size > 0
    cluster_id = (state_dir / "cluster.id").read_text().strip()
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", cluster_id)

    started = time.monotonic()
    second = _cli(lifecycle_env, "up")
    assert second.returncode == 0, second.stderr + second.stdout
    assert f"kafka already up at {bootstrap}" in second.stdout
    assert time.monotonic() - started < 15
    assert int((state_dir / "kafka.pid").read_text()) == pid

    status = _cli(lifecycle_env, "status")
    assert status.returncode == 0, status.stderr + status.stdout
    assert status.stdout.startswith("up ")
    assert f"pid={pid}" in status.stdout

    await wait_ready(bootstrap, 30)
    await _produce_consume(bootstrap)

    down = _cli(lifecycle_env, "down")
    assert down.returncode == 0, down.stderr + down.stdout
    assert "kafka stopped" in down.stdout
    assert _gone(pid)
    assert not (state_dir / "kafka.pid").exists()

    after = _cli(lifecycle_env, "status")
    assert after.returncode == 3, after.stderr + after.stdout
    assert after.stdout.startswith("down ")

    again = _cli(lifecycle_env, "down")
    assert again.returncode == 0
    assert "not running" in again.stdout


def test_run_starts_and_stops_a_broker_and_propagates_the_exit_code(tmp_path: Path) -> None:
    env = _env(tmp_path / "kafka", RUN_PORT)
    bootstrap = f"127.0.0.1:{RUN_PORT}"
    script = (
        "import asyncio, os, sys\n"
        "from stepline_localkafka import is_ready\n"
        f"assert os.environ['STEPLINE_KAFKA_BOOTSTRAP'] == '{bootstrap}'\n"
        "sys.exit(5 if asyncio.run(is_ready(os.environ['STEPLINE_KAFKA_BOOTSTRAP'])) else 1)\n"
    )
    try:
        result = _cli(env, "run", "--", sys.executable, "-c", script)
        assert result.returncode == 5, result.stderr + result.stdout
        match = re.search(r"kafka up at \S+ \(pid (\d+)", result.stderr)
        assert match, result.stderr
        assert _gone(int(match.group(1)))
        assert "kafka stopped" in result.stderr
        assert not (tmp_path / "kafka" / "kafka.pid").exists()
        assert _cli(env, "status").returncode == 3
    finally:
        _cli(env, "down")


def test_up_refuses_a_port_held_by_someone_else(tmp_path: Path) -> None:
    env = _env(tmp_path / "kafka", BUSY_PORT)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", BUSY_PORT))
        holder.listen()
        result = _cli(env, "up")
    assert result.returncode == 2
    assert f"127.0.0.1:{BUSY_PORT} is already in use" in result.stderr
    assert not (tmp_path / "kafka" / "kafka.pid").exists()


def test_down_with_a_stale_pid_file_says_so(tmp_path: Path) -> None:
    state_dir = tmp_path / "kafka"
    state_dir.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (state_dir / "kafka.pid").write_text(f"{dead.pid}\n")
    result = _cli(_env(state_dir, BUSY_PORT), "down")
    assert result.returncode == 0
    assert "not running" in result.stdout
    assert not (state_dir / "kafka.pid").exists()

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
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import OffsetAndMetadata

from stepline_localkafka import KafkaSettings, wait_ready
from stepline_runtime.settings import KafkaSettings as StepSettings
from tests.kafkatools import create_topics

pytestmark = pytest.mark.kafka

LIFECYCLE_PORT = 19192
RUN_PORT = 19196
BUSY_PORT = 19198
MOVED_PORT = 19202  # and 19204 after the move


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


def test_run_starts_its_broker_on_an_empty_log_each_time(tmp_path: Path) -> None:
    # Topics a run leaves behind (every test namespace) must not pile up in the next one's
    # broker: thousands of partitions made a later start outlast its readiness timeout.
    env = _env(tmp_path / "kafka", RUN_PORT)
    script = (
        "import asyncio, os, sys\n"
        "from aiokafka.admin import AIOKafkaAdminClient, NewTopic\n"
        "async def main():\n"
        "    bootstrap = os.environ['STEPLINE_KAFKA_BOOTSTRAP']\n"
        "    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)\n"
        "    await admin.start()\n"
        "    try:\n"
        "        before = set(await admin.list_topics())\n"
        "        await admin.create_topics([NewTopic('left.behind', 4, 1)])\n"
        "        return 7 if 'left.behind' in before else 0\n"
        "    finally:\n"
        "        await admin.close()\n"
        "sys.exit(asyncio.run(main()))\n"
    )
    try:
        for attempt in (1, 2):
            result = _cli(env, "run", "--", sys.executable, "-c", script)
            assert result.returncode == 0, (attempt, result.stderr + result.stdout)
        assert not (tmp_path / "kafka" / "data").exists()  # the persistent broker's log
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


def test_a_new_port_on_existing_storage_is_one_line_saying_what_to_do(tmp_path: Path) -> None:
    env = _env(tmp_path / "kafka", MOVED_PORT)
    try:
        first = _cli(env, "up")
        assert first.returncode == 0, first.stderr + first.stdout
    finally:
        _cli(env, "down")
    moved = {**env, "STEPLINE_KAFKA_PORT": str(MOVED_PORT + 2)}
    cli = _cli(moved, "up")
    stepline = subprocess.run(
        [sys.executable, "-m", "stepline_client.cli", "up"],
        env={**moved, "STEPLINE_STATE_DIR": str(tmp_path / "stepline")},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    for done, prefix in ((cli, "error: "), (stepline, "stepline: ")):
        assert done.returncode == 2, done
        assert "Traceback" not in done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, done.stderr
        assert lines[0].startswith(f"{prefix}the Kafka storage in {tmp_path / 'kafka'} was "), lines
        assert f"formatted for controller port {MOVED_PORT + 1}, not {MOVED_PORT + 3}" in lines[0]
        assert f"STEPLINE_KAFKA_PORT={MOVED_PORT}" in lines[0]  # the way back
        assert f"STEPLINE_KAFKA_CONTROLLER_PORT={MOVED_PORT + 1}" in lines[0]
        assert "STEPLINE_KAFKA_STATE_DIR" in lines[0]
    assert not (tmp_path / "kafka" / "kafka.pid").exists()


async def test_kafka_tools_run_against_the_broker(kafka: StepSettings) -> None:
    topic, group = f"test.tools.{uuid.uuid4().hex[:8]}", f"test-tools-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(**kafka.client_kwargs("test-tools"))
    await admin.start()
    try:
        await create_topics(admin, topic, partitions=2)
    finally:
        await admin.close()
    producer = AIOKafkaProducer(**kafka.client_kwargs("test-tools"))
    await producer.start()
    try:
        for _ in range(3):
            await producer.send_and_wait(topic, b"v", partition=0)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        group_id=group, enable_auto_commit=False, **kafka.client_kwargs("test-tools")
    )
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.commit({tp: OffsetAndMetadata(1, "")})
    finally:
        await consumer.stop()
    env = {k: v for k, v in os.environ.items() if not k.startswith("STEPLINE_KAFKA_")}
    env.update(
        STEPLINE_KAFKA_BOOTSTRAP=kafka.bootstrap, STEPLINE_KAFKA_LIB_DIR=str(_shared_lib_dir())
    )

    listed = _cli(env, "tool")
    assert listed.returncode == 0, listed.stderr
    assert re.search(
        r"kafka-consumer-groups\s+org\.apache\.kafka\.tools\.consumer\.group", listed.stdout
    )

    groups = _cli(env, "tool", "kafka-consumer-groups", "--describe", "--group", group)
    assert groups.returncode == 0, groups.stderr + groups.stdout
    row = next(line.split() for line in groups.stdout.splitlines() if topic in line)
    # GROUP TOPIC PARTITION CURRENT-OFFSET LOG-END-OFFSET LAG ...
    assert row[:6] == [group, topic, "0", "1", "3", "2"], groups.stdout

    topics = _cli(env, "tool", "kafka-topics", "--describe", "--topic", topic)
    assert topics.returncode == 0, topics.stderr + topics.stdout
    assert "PartitionCount: 2" in topics.stdout

    unknown = _cli(env, "tool", "kafka-nothing")
    assert unknown.returncode == 2
    assert "invalid choice" in unknown.stderr

"""The transactional processor as a real subprocess on a real broker: exactly once under SIGKILL."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from stepline.v1 import control_pb2, dead_letter_pb2, goals_pb2
from stepline_runtime.codec import encode
from stepline_runtime.settings import KafkaSettings
from stepline_runtime.topics import CATALOG, Topics, ensure_topics
from tests.kafkatools import create_topics, read_all

pytestmark = pytest.mark.kafka

ROOT = Path(__file__).resolve().parents[2]
TOTAL = 1_200
KEYS = 20


def _goal_record(topic: str, seq: int) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    key = f"k{seq % KEYS:02d}"
    goal = goals_pb2.GoalSubmitted(run_id=key, tenant_id="t", agent="a", goal=str(seq))
    out = encode(topic, key, goal, event_id=f"goal-{seq}", source="test")
    return out.key or b"", out.value or b"", list(out.headers)


@contextmanager
def counter_process(
    names: dict[str, str], log: Path, delay_ms: int = 3
) -> Iterator[subprocess.Popen[bytes]]:
    """Start the counter app; SIGKILL it on exit if still alive."""
    args = [
        sys.executable,
        "-m",
        "tests.integration.apps.counter",
        "--app-id",
        names["app"],
        "--input",
        names["in"],
        "--output",
        names["out"],
        "--changelog",
        names["state"],
        "--delay-ms",
        str(delay_ms),
    ]
    with log.open("ab") as sink:
        process = subprocess.Popen(args, cwd=ROOT, stdout=sink, stderr=sink, env=os.environ.copy())
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@asynccontextmanager
async def committed_counter(kafka: KafkaSettings, topic: str) -> AsyncIterator[list[int]]:
    """Count committed records on `topic` in the background; the list holds one number."""
    count = [0]
    consumer = AIOKafkaConsumer(
        topic,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        isolation_level="read_committed",
        **kafka.client_kwargs("test-progress"),
    )
    await consumer.start()

    async def follow() -> None:
        while True:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                count[0] += len(records)

    task = asyncio.create_task(follow())
    try:
        yield count
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await consumer.stop()


def assignments(log: Path) -> int:
    """How many group assignments a counter process has logged so far."""
    return log.read_text().count('"message": "partitions assigned"')


def at_least(counter: list[int], n: int) -> Callable[[], bool]:
    """A predicate: the counter has reached `n`."""
    return lambda: counter[0] >= n


async def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll `predicate` until true or fail with `what`."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def produce_goals(producer: AIOKafkaProducer, topic: str, sequences: range) -> None:
    """Publish one GoalSubmitted per sequence number, keyed over KEYS keys."""
    for seq in sequences:
        key, value, headers = _goal_record(topic, seq)
        await producer.send(topic, value, key=key, headers=headers)
    await producer.flush()


async def assert_exactly_once(kafka: KafkaSettings, topic: str, total: int) -> None:
    """Every input 0..total-1 appears once in the committed output, and counts run 1..n."""
    committed = await read_all(kafka, topic, expect=total)
    sequences = sorted(int((r.value or b"").split(b":")[0]) for r in committed)
    assert sequences == list(range(total)), "an input was lost or duplicated"
    counts: dict[bytes, list[int]] = defaultdict(list)
    for record in committed:
        counts[record.key or b""].append(int((record.value or b"").split(b":")[1]))
    for key, values in counts.items():
        # State updates were exactly-once too: each key counted 1..n, in order, no repeats.
        assert values == list(range(1, len(values) + 1)), key


@pytest.fixture
async def names(
    admin: AIOKafkaAdminClient, kafka: KafkaSettings, unique: Callable[[str], str]
) -> dict[str, str]:
    """Fresh input/output/changelog topics, plus the catalog's dead-letter topic."""
    topics = {
        "app": unique("counter"),
        "in": unique("in"),
        "out": unique("out"),
        "state": unique("state"),
    }
    await create_topics(
        admin, topics["in"], topics["out"], topics["state"], compact=(topics["state"],)
    )
    await ensure_topics(admin, [t for t in CATALOG if t.name == Topics.DLQ], partitions=3)
    return topics


async def test_every_input_is_reflected_exactly_once_across_sigkills(
    kafka: KafkaSettings, names: dict[str, str], producer: AIOKafkaProducer, tmp_path: Path
) -> None:
    await produce_goals(producer, names["in"], range(TOTAL))

    log = tmp_path / "counter.log"
    kills = 0
    async with committed_counter(kafka, names["out"]) as progress:
        for threshold in (TOTAL // 8, TOTAL // 3, TOTAL // 2, (TOTAL * 3) // 4):
            with counter_process(names, log) as process:
                await wait_for(
                    at_least(progress, threshold),
                    120,
                    f"{threshold} committed outputs (log: {log})",
                )
                assert process.poll() is None, log.read_text()[-3000:]
                process.send_signal(signal.SIGKILL)
                process.wait()
                kills += 1
        with counter_process(names, log) as process:
            await wait_for(at_least(progress, TOTAL), 180, f"all outputs (log: {log})")
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=30) == 0, log.read_text()[-3000:]

    await assert_exactly_once(kafka, names["out"], TOTAL)
    everything = await read_all(
        kafka, names["out"], expect=TOTAL * 2, timeout_s=5, committed_only=False
    )
    assert kills == 4
    # Aborted records exist in the log: the kills really landed inside open transactions.
    assert len(everything) > TOTAL


async def test_a_paused_zombie_instance_is_fenced_and_causes_no_duplicates(
    kafka: KafkaSettings, names: dict[str, str], producer: AIOKafkaProducer, tmp_path: Path
) -> None:
    """Two live instances; one freezes mid-transaction, loses its partitions, then wakes up."""
    first_wave, total = 1_500, 1_800
    a_log, b_log = tmp_path / "a.log", tmp_path / "b.log"
    await produce_goals(producer, names["in"], range(first_wave))
    async with committed_counter(kafka, names["out"]) as progress:
        with (
            counter_process(names, a_log, delay_ms=5) as zombie,
            counter_process(names, b_log, delay_ms=5) as survivor,
        ):
            # Whichever joined second got partitions only in a generation with both members.
            await wait_for(
                lambda: assignments(a_log) >= 1 and assignments(b_log) >= 1, 60, "both to join"
            )
            await wait_for(at_least(progress, progress[0] + 150), 60, "both processing")
            zombie.send_signal(signal.SIGSTOP)
            # The survivor must take the frozen instance's partitions over (after its session
            # times out), fencing its producers and aborting its open transactions.
            await wait_for(at_least(progress, first_wave), 120, "the survivor to finish")
            rejoins = assignments(a_log)
            zombie.send_signal(signal.SIGCONT)
            # Let it rejoin the group (possibly keeping a stale task) before new input arrives.
            await wait_for(lambda: assignments(a_log) > rejoins, 60, "the zombie to rejoin")
            await produce_goals(producer, names["in"], range(first_wave, total))
            await wait_for(at_least(progress, total), 120, "the second wave")
            for process in (zombie, survivor):
                process.send_signal(signal.SIGTERM)
                assert process.wait(timeout=30) == 0
    await assert_exactly_once(kafka, names["out"], total)


async def test_malformed_records_are_dead_lettered_and_processing_continues(
    kafka: KafkaSettings, names: dict[str, str], producer: AIOKafkaProducer, tmp_path: Path
) -> None:
    key, good, headers = _goal_record(names["in"], 1)
    wrong_type = encode(
        names["in"], "k01", control_pb2.ControlCommand(run_id="k01"), event_id="c1", source="test"
    )
    bad = [
        (b"\xff\xfe random bytes \x00", headers),
        (good[:-2], headers),  # truncated protobuf
        (wrong_type.value or b"", list(wrong_type.headers)),
    ]
    offsets = []
    for value, hdrs in bad:
        # One partition for all, so "the next valid message" is really behind the bad ones.
        meta = await producer.send_and_wait(names["in"], value, key=key, headers=hdrs, partition=0)
        offsets.append(meta.offset)
    await producer.send_and_wait(names["in"], good, key=key, headers=headers, partition=0)

    with counter_process(names, tmp_path / "counter.log", delay_ms=0) as process:
        outputs = await read_all(kafka, names["out"], expect=1, timeout_s=90)
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    assert [r.value for r in outputs] == [b"1:1"]

    letters = [
        dead_letter_pb2.DeadLetter.FromString(r.value or b"")
        for r in await read_all(kafka, Topics.DLQ, expect=10_000, timeout_s=5)
    ]
    ours = sorted(
        (x for x in letters if x.source_topic == names["in"]), key=lambda x: x.source_offset
    )
    assert [x.source_offset for x in ours] == offsets
    assert [x.source_partition for x in ours] == [0, 0, 0]
    assert [x.payload for x in ours] == [value for value, _ in bad]
    assert ours[0].cause == dead_letter_pb2.DEAD_LETTER_CAUSE_UNDECODABLE
    assert ours[1].cause == dead_letter_pb2.DEAD_LETTER_CAUSE_UNDECODABLE
    assert ours[2].cause == dead_letter_pb2.DEAD_LETTER_CAUSE_UNEXPECTED_TYPE
    assert all(x.reason and x.consumer == names["app"] for x in ours)

"""Two executor processes share only Kafka: a partition that moves takes its outcomes with it.

Each instance calls its own webhook path, so the receiver tells which one ran a call. The
instance running a held, non-idempotent call is SIGKILLed; the other gets the partition and
answers OUTCOME_UNKNOWN without running it; a completed call asked again is answered from the
changelog; and a lone instance started afresh with no local files at all answers both again.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from stepline.v1 import tools_pb2
from stepline_executor.spec import SPEC
from stepline_runtime.settings import KafkaSettings
from stepline_runtime.topics import CATALOG, Topics, ensure_topics
from tests.executor.fakes import LocalServer, Seen
from tests.executor.service import Service, refund_tools, request_call

pytestmark = pytest.mark.kafka

# The broker's floor: a killed member is noticed after this, then its partitions move.
SESSION_TIMEOUT_MS = 6_000


@pytest.fixture
def instances(tmp_path: Path) -> Iterator[dict[str, Service]]:
    namespace = f"t{uuid.uuid4().hex[:10]}"
    made = {
        name: Service(
            namespace,
            tmp_path / f"tools-{name}.toml",
            tmp_path / f"data-{name}",
            tmp_path / f"exec-{name}.log",
            STEPLINE_KAFKA_SESSION_TIMEOUT_MS=str(SESSION_TIMEOUT_MS),
            STEPLINE_LOG_FORMAT="json",
        )
        for name in ("a", "b")
    }
    try:
        yield made
    finally:
        for service in made.values():
            service.stop()
        for name, service in made.items():
            if service.log.exists():
                sys.stderr.write(f"--- {name}\n{service.log.read_text(errors='replace')[-3000:]}")


def _assignments(service: Service) -> list[set[int]]:
    """Every set of request partitions the instance was assigned, in order."""
    found: list[set[int]] = []
    if not service.log.exists():
        return found
    for line in service.log.read_text(errors="replace").splitlines():
        if "outcomes restored for assigned partitions" in line:
            found.append(set(json.loads(json.loads(line)["partitions"])))
    return found


async def _balanced(a: Service, b: Service, timeout_s: float = 60) -> None:
    """Until each instance's latest assignment is one of the two partitions."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ours, theirs = _assignments(a), _assignments(b)
        if ours and theirs and len(ours[-1]) == len(theirs[-1]) == 1 == len(ours[-1] - theirs[-1]):
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"no balanced assignment: a={_assignments(a)} b={_assignments(b)}")


class _Results:
    """Reads the result topic as it grows: `until(n)` waits for the n-th result."""

    def __init__(self, kafka: KafkaSettings, topic: str) -> None:
        self.consumer = AIOKafkaConsumer(
            topic,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            **kafka.client_kwargs("test-results"),
        )
        self.results: list[tools_pb2.ToolCallResult] = []
        # When each result was produced (record timestamps, seconds).
        self.produced_at: list[float] = []

    async def until(self, count: int, timeout_s: float = 60) -> list[tools_pb2.ToolCallResult]:
        """Until `count` results arrived."""
        await self._read(lambda: len(self.results) >= count, timeout_s)
        assert len(self.results) == count, [r.call_id for r in self.results]
        return self.results

    async def answered(self, calls: set[str], after: int, timeout_s: float = 60) -> None:
        """Until every call of `calls` has a result past the first `after` ones."""
        await self._read(lambda: calls <= {r.call_id for r in self.results[after:]}, timeout_s)
        assert calls <= {r.call_id for r in self.results[after:]}, [r.call_id for r in self.results]

    async def linger(self, seconds: float) -> None:
        """Read whatever comes within `seconds`."""
        await self._read(lambda: False, seconds)

    async def _read(self, done: Callable[[], bool], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not done() and time.monotonic() < deadline:
            for records in (await self.consumer.getmany(timeout_ms=200)).values():
                for record in records:
                    self.results.append(tools_pb2.ToolCallResult.FromString(record.value or b""))
                    self.produced_at.append(record.timestamp / 1000)


async def test_a_killed_instance_s_partition_moves_with_its_outcomes_to_the_other_one(
    kafka: KafkaSettings,
    admin: AIOKafkaAdminClient,
    producer: AIOKafkaProducer,
    instances: dict[str, Service],
) -> None:
    a = instances["a"]
    await ensure_topics(
        admin, [t for t in CATALOG if t.name in SPEC.topics], 2, 1, namespace=a.namespace
    )
    results = _Results(kafka, a.topic(Topics.TOOL_RESULTS))
    await results.consumer.start()
    try:
        failover_s, runner, seen = await _scenario(instances, producer, results)
    finally:
        await results.consumer.stop()
    first, *later = results.results
    assert first.call_id == "rs:1:0"
    assert first.HasField("completed")
    # Offsets are committed every 200 ms: a kill can beat a commit, and the request is then
    # delivered again (at least once). Every answer after the first is from the changelog,
    # except the one that tells the held call's outcome is unknown.
    unknown = [r for r in later if r.call_id == "rs:2:0" and not r.replayed]
    assert len(unknown) == 1
    assert unknown[0].failed.kind == tools_pb2.TOOL_CALL_ERROR_KIND_OUTCOME_UNKNOWN
    assert "not run again" in unknown[0].failed.message
    for answer in later:
        if answer.call_id == "rs:2:0":
            assert answer.failed.kind == tools_pb2.TOOL_CALL_ERROR_KIND_OUTCOME_UNKNOWN
        else:
            assert answer.replayed
            assert answer.completed.output == first.completed.output
    # Asked again after the move, and of a lone new instance with no local files: replayed.
    assert sum(1 for r in later if r.call_id == "rs:1:0") >= 2
    assert sum(1 for r in later if r.call_id == "rs:2:0" and r.replayed) >= 1
    # Each call reached the receiver once, from the instance that first ran it.
    assert seen == [f"/{runner}/refund", f"/{runner}/refund"]
    print(f"\nexecutor failover (SIGKILL -> its partition processed again): {failover_s:.2f} s")
    assert failover_s < SESSION_TIMEOUT_MS / 1000 + 10


async def _scenario(
    instances: dict[str, Service], producer: AIOKafkaProducer, results: _Results
) -> tuple[float, str, list[str]]:
    """Runs the story; (failover seconds, the instance that ran the calls, paths received)."""
    a, b = instances["a"], instances["b"]
    arrived, release = threading.Event(), threading.Event()

    def respond(seen: Seen) -> tuple[int, dict[str, str], bytes]:
        if b"HOLD" in seen.body:
            arrived.set()
            release.wait(60)  # held while the instance running it is killed
        return 200, {"content-type": "application/json"}, b'{"refunded": true}'

    with LocalServer(respond) as receiver:
        for name, service in instances.items():
            refund_tools(
                Path(service.env["STEPLINE_TOOLS_CONFIG"]), receiver.url(f"/{name}/refund")
            )
            service.start()
        await _balanced(a, b)
        # One run, so one partition: a call that completes, then one held at the receiver.
        await request_call(producer, a, "rs:1:0", "issue_refund", '{"order_id": "O-1"}')
        await results.until(1)
        await request_call(producer, a, "rs:2:0", "issue_refund", '{"order_id": "HOLD"}')
        assert await asyncio.to_thread(arrived.wait, 60), "the held call never reached us"
        runner = receiver.seen[-1].path.split("/")[1]
        survivor = b if runner == "a" else a

        killed_at = time.time()
        instances[runner].kill()  # "started" is in the changelog, "completed" never will be
        release.set()
        await results.answered({"rs:2:0"}, after=1)
        failover_s = (
            next(
                at
                for r, at in zip(results.results, results.produced_at, strict=True)
                if r.call_id == "rs:2:0"
            )
            - killed_at
        )

        asked = len(results.results)
        await request_call(producer, survivor, "rs:1:0", "issue_refund", '{"order_id": "O-1"}')
        await results.answered({"rs:1:0"}, after=asked)

        survivor.kill()
        for service in instances.values():
            shutil.rmtree(service.env["STEPLINE_EXECUTOR_DATA_DIR"], ignore_errors=True)
        survivor.start()
        await request_call(producer, survivor, "rs:2:0", "issue_refund", '{"order_id": "HOLD"}')
        await request_call(producer, survivor, "rs:1:0", "issue_refund", '{"order_id": "O-1"}')
        asked = len(results.results)
        await results.answered({"rs:1:0", "rs:2:0"}, after=asked)
        await results.linger(1.0)  # anything more would come now
        return failover_s, runner, [s.path for s in receiver.seen]

"""Bad input against the whole running stack: everything refused ends in the DLQ or a failed run.

Starts planner, model-router, tool-executor and billing as subprocesses (the CLI's Supervisor) in
a fresh topic namespace and state dir, publishes to every input topic random bytes, truncated
protobuf, foreign message types (honest and lying `ce_type`), the largest payload the broker
accepts, empty values and tombstones, plus semantically invalid goals. Then it checks that each
refused record is on the namespaced `stepline.dlq.v1` with its reason and original coordinates
(or, for invalid goals, that the run ended `RunFailed` with the expected reason), that no
consumer group lags, that every service still runs under its first pid, and that a valid goal
submitted after the garbage completes. Prints a summary table; exits 1 when anything failed.

    uv run python scripts/bad_input.py            # needs a broker (STEPLINE_KAFKA_BOOTSTRAP)

Importable: `run_bad_input(state_dir)` returns the `Report`; `Stack` runs the services.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import MessageSizeTooLargeError
from aiokafka.structs import RecordMetadata
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message

from stepline.v1 import (
    budgets_pb2,
    control_pb2,
    dead_letter_pb2,
    goals_pb2,
    model_pb2,
    runs_pb2,
    tools_pb2,
    usage_pb2,
)
from stepline_client import Goal, Stepline
from stepline_client.client import RunTimeoutError
from stepline_client.offline import ROUTES_FILE, choose_routes
from stepline_client.supervisor import ServiceStatus, Supervisor
from stepline_runtime.headers import EventHeaders
from stepline_runtime.service import discover
from stepline_runtime.settings import KafkaSettings, ServiceSettings, namespaced
from stepline_runtime.topics import Topics

__all__ = [
    "Case",
    "Outcome",
    "Report",
    "Stack",
    "build_cases",
    "free_port",
    "main",
    "read_topic",
    "run_bad_input",
]

ROOT = Path(__file__).resolve().parents[1]
# A tenant only allowed `search_documents`: the assistant agent (http_request, delegate) is refused.
RESTRICTED_TENANT = "badinput-restricted"
VALID_TENANT = "badinput-acme"
GARBAGE_TENANT = "badinput-mallory"
# Broker default `message.max.bytes` (1 MiB + 12): the largest record batch it accepts.
BROKER_MAX_BATCH = 1_048_588

# Kafka consumer groups of each service (relative to the namespace) and the topics they read.
GROUPS: Mapping[str, tuple[str, ...]] = {
    spec.group: spec.consumes for spec in discover() if spec.group is not None
}
# What each consumed topic expects: the first type is the one a lying header claims.
EXPECTED: Mapping[str, type[Message]] = {
    Topics.GOALS: goals_pb2.GoalSubmitted,
    Topics.CONTROL: control_pb2.ControlCommand,
    Topics.MODEL_REQUESTS: model_pb2.ModelCallRequested,
    Topics.MODEL_RESULTS: model_pb2.ModelCallResult,
    Topics.TOOL_REQUESTS: tools_pb2.ToolCallRequested,
    Topics.TOOL_RESULTS: tools_pb2.ToolCallResult,
    Topics.USAGE: usage_pb2.UsageRecorded,
    # Compacted tables the planner reads (no consumer group; refused records go to the DLQ).
    Topics.TOOLS: tools_pb2.ToolRegistered,
    Topics.BUDGETS: budgets_pb2.BudgetState,
}
TABLES = (Topics.TOOLS, Topics.BUDGETS)


def free_port() -> int:
    """A TCP port nobody listens on right now (loopback)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Stack:
    """The four services as subprocesses in their own namespace, state dir and gRPC ports."""

    def __init__(
        self,
        state_dir: Path,
        namespace: str,
        *,
        partitions: int = 3,
        scale: Mapping[str, int] | None = None,
    ) -> None:
        self.state_dir = state_dir
        self.namespace = namespace
        self.supervisor = Supervisor(state_dir, scale=scale)
        agents = state_dir / "agents.toml"
        state_dir.mkdir(parents=True, exist_ok=True)
        agents.write_text(
            (ROOT / "deploy" / "config" / "agents.toml").read_text(encoding="utf-8")
            + f'\n[tenants.{RESTRICTED_TENANT}]\nallowed_tools = ["search_documents"]\n',
            encoding="utf-8",
        )
        self.env = {
            **os.environ,
            "STEPLINE_TOPIC_NAMESPACE": namespace,
            "STEPLINE_PARTITIONS": str(partitions),
            "STEPLINE_AGENTS": str(agents),
            "STEPLINE_GRPC_PORT": str(free_port()),
            "STEPLINE_HTTP_PORT": "0",
            "STEPLINE_BILLING_GRPC_ADDRESS": f"127.0.0.1:{free_port()}",
            "STEPLINE_FRONTDOOR_GRPC_ADDRESS": f"127.0.0.1:{free_port()}",
            "STEPLINE_EXECUTOR_DATA_DIR": str(state_dir / "tool-executor"),
            "STEPLINE_BILLING_DATA_DIR": str(state_dir / "billing"),
            "STEPLINE_FRONTDOOR_PORT": "0",
            "STEPLINE_FRONTDOOR_DATA_DIR": str(state_dir / "frontdoor"),
            "PYTHONUNBUFFERED": "1",
        }
        # As `stepline up` does: without a provider key every route is served offline.
        self.env.update(
            choose_routes(self.env, shipped=ROOT / ROUTES_FILE, state_dir=state_dir).env
        )
        self.settings = ServiceSettings(topic_namespace=namespace)

    def topic(self, name: str) -> str:
        """`name` inside this stack's namespace."""
        return namespaced(name, self.namespace)

    def up(self, ready_timeout_s: float = 90) -> list[ServiceStatus]:
        """Start whatever is not running (the Supervisor restarts dead services)."""
        return self.supervisor.up(self.env, ready_timeout_s=ready_timeout_s)

    def down(self) -> None:
        """Stop every service."""
        self.supervisor.down(grace_s=10)

    def pids(self) -> dict[str, int | None]:
        """Current pid of each service instance (None when not running), by instance id."""
        return {s.instance: s.pid if s.running else None for s in self.supervisor.status()}

    def log(self, service: str) -> str:
        """The service's log so far."""
        path = self.state_dir / "logs" / f"{service}.log"
        return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""

    @contextmanager
    def running(self) -> Iterator[Stack]:
        """Start the stack, stop it afterwards whatever happens."""
        try:
            statuses = self.up()
            dead = [s.name for s in statuses if not s.running]
            if dead:
                tails = "\n".join(f"--- {n}\n{self.log(n)[-2000:]}" for n in dead)
                raise RuntimeError(f"services did not start: {dead}\n{tails}")
            yield self
        finally:
            self.down()


@dataclass(frozen=True)
class Finished:
    """A valid run's end: its terminal event (None when not in time) and the tools it ran."""

    run_id: str
    ending: str
    tools: tuple[str, ...]


async def complete_one(stack: Stack, text: str, *, timeout_s: float = 60) -> Finished:
    """Submit a valid goal (assistant agent, searches the demo corpus) and wait for its end."""
    async with Stepline(stack.settings, source="bad-input") as client:
        run_id = await client.submit(
            Goal(text, tenant_id=VALID_TENANT, agent="assistant", budget=Decimal("0.50"))
        )
        try:
            final = await client.wait(run_id, timeout_s=timeout_s)
        except RunTimeoutError:
            return Finished(run_id, "not finished in time", ())
        tools = [
            event.step_completed.tool
            async for event in client.events(run_id, follow=False)
            if event.WhichOneof("event") == "step_completed"
            and event.step_completed.kind == runs_pb2.STEP_KIND_TOOL
            and event.step_completed.outcome == runs_pb2.STEP_OUTCOME_SUCCEEDED
        ]
        return Finished(run_id, final.WhichOneof("event") or "?", tuple(tools))


# --- the cases -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One bad record and what must become of it."""

    name: str
    topic: str  # un-namespaced, from Topics
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    # Acceptable outcomes: "dlq", "run_failed", "processed" (consumed without refusal).
    expect: frozenset[str]
    run_id: str = ""
    failure_reason: str = ""  # RunFailureReason name for run_failed cases
    cause: str = ""  # DeadLetterCause name expected for dlq cases ("" = any)


def _headers(type_name: str, tenant: str = GARBAGE_TENANT) -> tuple[tuple[str, bytes], ...]:
    return EventHeaders(
        event_id=f"bad/{uuid.uuid4().hex}",
        type_name=type_name,
        source="bad-input",
        tenant_id=tenant,
    ).encode()


def _sample(cls: type[Message], run_id: str) -> Message:
    """A well-formed `cls` with every top-level string field filled (run_id where it exists)."""
    message = cls()
    for descriptor in cls.DESCRIPTOR.fields:
        if descriptor.type != FieldDescriptor.TYPE_STRING or descriptor.is_repeated:
            continue
        if descriptor.containing_oneof is not None:
            continue
        if descriptor.name == "run_id":
            setattr(message, descriptor.name, run_id)
        elif descriptor.name == "tenant_id":
            setattr(message, descriptor.name, GARBAGE_TENANT)
        else:
            setattr(message, descriptor.name, f"{descriptor.name}-" + "x" * 40)
    return message


def _undecodable(rng: random.Random, cls: type[Message], size: int) -> bytes:
    """Random bytes that are verifiably not a `cls` (re-rolled in the rare case they parse)."""
    while True:
        data = rng.randbytes(size)
        try:
            cls().ParseFromString(data)
        except (DecodeError, RuntimeError, ValueError):
            return data


def build_cases(seed: int = 8) -> list[Case]:
    """Every bad record for every input topic, deterministic for a seed."""
    rng = random.Random(seed)
    cases: list[Case] = []
    for topic, cls in EXPECTED.items():
        short = topic.removeprefix("stepline.").removesuffix(".v1")
        own = cls.DESCRIPTOR.full_name
        foreign_cls: type[Message] = (
            goals_pb2.GoalSubmitted
            if cls is not goals_pb2.GoalSubmitted
            else usage_pb2.UsageRecorded
        )
        foreign = foreign_cls.DESCRIPTOR.full_name
        refused = frozenset({"dlq"})

        def add(
            kind: str,
            value: bytes | None,
            headers: tuple[tuple[str, bytes], ...],
            expect: frozenset[str] = refused,
            cause: str = "",
            key: bytes | None = None,
            *,
            _short: str = short,
            _topic: str = topic,
        ) -> None:
            run_id = f"run-bad-{_short}-{kind}-{uuid.uuid4().hex[:8]}"
            cases.append(
                Case(
                    name=f"{_short}: {kind}",
                    topic=_topic,
                    key=key if key is not None else run_id.encode(),
                    value=value,
                    headers=headers,
                    expect=expect,
                    run_id=run_id,
                    cause=cause,
                )
            )

        good = _sample(cls, "run-bad-truncated").SerializeToString()
        add("random bytes", _undecodable(rng, cls, 256), _headers(own), cause="UNDECODABLE")
        add("random bytes, no headers", _undecodable(rng, cls, 64), ())
        add("truncated protobuf", good[: len(good) // 2 + 3], _headers(own), cause="UNDECODABLE")
        add(
            f"wrong type {foreign_cls.__name__}",
            _sample(foreign_cls, "run-bad-foreign").SerializeToString(),
            _headers(foreign),
            cause="UNEXPECTED_TYPE",
        )
        # A lying header: the bytes may even parse; the service must refuse or cope, not crash.
        add(
            f"{foreign_cls.__name__} labelled {cls.__name__}",
            _sample(foreign_cls, "run-bad-lying").SerializeToString(),
            _headers(own),
            expect=refused | {"processed", "run_failed"},
        )
        add(
            "wrong content-type",
            b"{}",
            (
                *[h for h in _headers(own) if h[0] != "content-type"],
                ("content-type", b"application/json"),
            ),
            cause="UNEXPECTED_TYPE",
        )
        # Oversized: sized to the broker's limit when published (see `_publish`).
        add("oversized (~1 MB)", b"", _headers(own))
        if topic not in TABLES:
            # On compacted tables an empty value or a tombstone is a legitimate delete.
            add("empty value", b"", _headers(own), cause="INVALID")
            add("tombstone", None, _headers(own), cause="INVALID")
    cases.extend(_invalid_goals())
    return cases


def _invalid_goals() -> list[Case]:
    def goal(name: str, reason: str, **fields: object) -> Case:
        run_id = f"run-badgoal-{uuid.uuid4().hex[:12]}"
        message = goals_pb2.GoalSubmitted(run_id=run_id, **fields)  # type: ignore[arg-type]
        tenant = str(fields.get("tenant_id", ""))
        return Case(
            name=f"goals: {name}",
            topic=Topics.GOALS,
            key=run_id.encode(),
            value=message.SerializeToString(),
            headers=_headers(message.DESCRIPTOR.full_name, tenant),
            expect=frozenset({"run_failed"}),
            run_id=run_id,
            failure_reason=f"RUN_FAILURE_REASON_{reason}",
        )

    base: dict[str, object] = {"tenant_id": GARBAGE_TENANT, "agent": "local", "goal": "hi"}
    return [
        goal("unknown agent", "UNKNOWN_AGENT", **{**base, "agent": "no-such-agent"}),
        goal("empty goal", "INVALID_GOAL", **{**base, "goal": "   "}),
        goal("missing tenant", "INVALID_GOAL", **{**base, "tenant_id": ""}),
        goal("missing agent", "INVALID_GOAL", **{**base, "agent": ""}),
        goal(
            "negative budget",
            "INVALID_GOAL",
            **base,
            budget={"currency": "USD", "amount": "-1.00"},
        ),
        goal("negative max_steps", "INVALID_GOAL", **{**base, "max_steps": -3}),
        goal(
            "tool not allowed for tenant",
            "TOOL_NOT_ALLOWED",
            **{**base, "tenant_id": RESTRICTED_TENANT, "agent": "assistant"},
        ),
    ]


# --- publishing and checking -----------------------------------------------------------------


@dataclass
class Outcome:
    """What became of one case."""

    case: Case
    partition: int
    offset: int
    size: int
    observed: str = "missing"
    detail: str = ""

    @property
    def ok(self) -> bool:
        """The observed outcome is one the case accepts (and the DLQ cause matches)."""
        return self.observed in self.case.expect


@dataclass
class Report:
    """The whole run: per-case outcomes, services, lag and the valid goal after the garbage."""

    outcomes: list[Outcome]
    pids_before: dict[str, int | None]
    pids_after: dict[str, int | None]
    lag: dict[str, int]
    valid_run: str
    valid_result: str
    seconds: float
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Everything passed."""
        return not self.problems

    def table(self) -> str:
        """The summary, as a fixed-width table."""
        rows = [("case", "part/offset", "bytes", "expected", "observed", "detail")]
        for o in self.outcomes:
            rows.append(
                (
                    o.case.name,
                    f"{o.partition}/{o.offset}",
                    str(o.size),
                    "|".join(sorted(o.case.expect)),
                    ("" if o.ok else "FAIL ") + o.observed,
                    o.detail[:70],
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        lines = [
            "  ".join(c.ljust(w) for c, w in zip(r[:5], widths, strict=True)) + "  " + r[5]
            for r in rows
        ]
        lines.insert(1, "-" * (sum(widths) + 12))
        running = ", ".join(
            f"{n} {'same pid' if self.pids_after.get(n) == p else 'RESTARTED/DEAD'}"
            for n, p in self.pids_before.items()
        )
        lines += [
            "",
            f"services: {running}",
            f"consumer lag: {self.lag}",
            f"valid goal after the garbage: {self.valid_run} -> {self.valid_result}",
            f"{len(self.outcomes)} bad records, "
            f"{sum(o.ok for o in self.outcomes)} handled as expected, {self.seconds:.1f} s",
            "PASS" if self.ok else "FAIL:\n  " + "\n  ".join(self.problems),
        ]
        return "\n".join(lines)


async def _publish(kafka: KafkaSettings, stack: Stack, cases: Sequence[Case]) -> list[Outcome]:
    producer = AIOKafkaProducer(
        acks="all", max_request_size=4 * 1024 * 1024, **kafka.client_kwargs("bad-input")
    )
    await producer.start()
    outcomes = []
    try:
        for case in cases:
            if case.name.endswith("oversized (~1 MB)"):
                meta, size = await _largest_accepted(producer, stack.topic(case.topic), case)
            else:
                meta = await producer.send_and_wait(
                    stack.topic(case.topic), case.value, key=case.key, headers=list(case.headers)
                )
                size = len(case.value or b"")
            outcomes.append(Outcome(case, meta.partition, meta.offset, size))
    finally:
        await producer.stop()
    return outcomes


async def _largest_accepted(
    producer: AIOKafkaProducer, topic: str, case: Case
) -> tuple[RecordMetadata, int]:
    """Publish random bytes as large as the broker accepts; returns (metadata, size)."""
    overhead = 61 + 32 + len(case.key or b"") + sum(len(k) + len(v) + 4 for k, v in case.headers)
    size = BROKER_MAX_BATCH - overhead
    rng = random.Random(size)
    while size > 900_000:
        try:
            payload = b"\xff" + rng.randbytes(size - 1)  # 0xff...: an invalid tag, never parses
            meta = await producer.send_and_wait(
                topic, payload, key=case.key, headers=list(case.headers)
            )
            return meta, size
        except MessageSizeTooLargeError:
            size -= 64
    raise RuntimeError(f"the broker refused every payload over 900 kB on {topic}")


async def read_topic(
    kafka: KafkaSettings, topic: str, *, isolation: str = "read_committed"
) -> list[tuple[int, int, bytes | None, bytes | None]]:
    """Every record of `topic` up to its current end: (partition, offset, key, value)."""
    consumer = AIOKafkaConsumer(
        enable_auto_commit=False,
        isolation_level=isolation,
        max_partition_fetch_bytes=8 * 1024 * 1024,
        fetch_max_bytes=16 * 1024 * 1024,
        **kafka.client_kwargs(f"bad-input-reader-{uuid.uuid4().hex[:6]}"),
    )
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        if not partitions:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        if not tps:
            return []
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        out: list[tuple[int, int, bytes | None, bytes | None]] = []
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            for tp, records in (await consumer.getmany(timeout_ms=500)).items():
                out.extend((tp.partition, r.offset, r.key, r.value) for r in records)
        return out
    finally:
        await consumer.stop()


async def _lag(kafka: KafkaSettings, stack: Stack) -> dict[str, int]:
    """Committed records each service's group has not committed yet, summed over partitions.

    Counted in records, not offsets: inputs produced in transactions end with a commit marker
    that takes an offset but is never delivered, so `end offset - committed` would show 1.
    """
    committed = await _committed(kafka, stack)
    lag: dict[str, int] = {}
    for group, topics in GROUPS.items():
        lag[group] = 0
        for topic in topics:
            name = stack.topic(topic)
            for partition, offset, _, _ in await read_topic(kafka, name):
                if offset >= committed.get((name, group, partition), 0):
                    lag[group] += 1
    return lag


async def _committed(kafka: KafkaSettings, stack: Stack) -> dict[tuple[str, str, int], int]:
    """Committed offset per (topic, group, partition) of every service's group."""
    admin = AIOKafkaAdminClient(**kafka.client_kwargs("bad-input-admin"))
    await admin.start()
    try:
        out: dict[tuple[str, str, int], int] = {}
        for group in GROUPS:
            for tp, meta in (await admin.list_consumer_group_offsets(stack.topic(group))).items():
                out[(tp.topic, group, tp.partition)] = meta.offset
        return out
    finally:
        await admin.close()


def _dlq_index(
    records: Sequence[tuple[int, int, bytes | None, bytes | None]],
) -> dict[tuple[str, int, int], dead_letter_pb2.DeadLetter]:
    index = {}
    for _, _, _, value in records:
        letter = dead_letter_pb2.DeadLetter()
        letter.ParseFromString(value or b"")
        index[(letter.source_topic, letter.source_partition, letter.source_offset)] = letter
    return index


def _terminal_runs(
    records: Sequence[tuple[int, int, bytes | None, bytes | None]],
) -> dict[str, runs_pb2.RunEvent]:
    ended = {}
    for _, _, _, value in records:
        event = runs_pb2.RunEvent()
        try:
            event.ParseFromString(value or b"")
        except DecodeError:
            continue
        if event.WhichOneof("event") in ("completed", "failed", "cancelled"):
            ended[event.run_id] = event
    return ended


def _classify(
    outcome: Outcome,
    stack: Stack,
    dlq: Mapping[tuple[str, int, int], dead_letter_pb2.DeadLetter],
    ended: Mapping[str, runs_pb2.RunEvent],
    committed: Mapping[tuple[str, str, int], int],
) -> None:
    case, topic = outcome.case, stack.topic(outcome.case.topic)
    letter = dlq.get((topic, outcome.partition, outcome.offset))
    if letter is not None:
        cause = dead_letter_pb2.DeadLetterCause.Name(letter.cause).removeprefix(
            "DEAD_LETTER_CAUSE_"
        )
        outcome.observed = "dlq"
        outcome.detail = f"{cause}: {letter.reason}"
        if case.cause and cause != case.cause:
            outcome.observed = f"dlq cause {cause}, wanted {case.cause}"
        elif letter.source_key != (case.key or b"") or letter.consumer == "":
            outcome.observed = "dlq without original key/consumer"
        return
    event = ended.get(case.run_id)
    if event is not None and event.WhichOneof("event") == "failed":
        reason = runs_pb2.RunFailureReason.Name(event.failed.reason)
        outcome.observed = "run_failed"
        outcome.detail = f"{reason.removeprefix('RUN_FAILURE_REASON_')}: {event.failed.message}"
        if case.failure_reason and reason != case.failure_reason:
            outcome.observed = f"run_failed {reason}, wanted {case.failure_reason}"
        return
    if event is not None:
        outcome.observed = "processed"
        outcome.detail = f"run ended {event.WhichOneof('event')}"
        return
    if case.topic in TABLES:
        return  # a table reader has no offsets to commit: a refusal shows only in the DLQ
    if any(
        committed.get((topic, group, outcome.partition), -1) > outcome.offset
        for group, topics in GROUPS.items()
        if case.topic in topics
    ):
        outcome.observed = "processed"
        outcome.detail = "consumed and committed without a refusal"


async def _await_all(
    kafka: KafkaSettings, stack: Stack, outcomes: list[Outcome], timeout_s: float
) -> None:
    """Classify every outcome, re-reading until all are accounted for or the time is up."""
    deadline = time.monotonic() + timeout_s
    while True:
        dlq = _dlq_index(await read_topic(kafka, stack.topic(Topics.DLQ)))
        ended = _terminal_runs(await read_topic(kafka, stack.topic(Topics.RUNS)))
        committed = await _committed(kafka, stack)
        for outcome in outcomes:
            outcome.observed, outcome.detail = "missing", ""
            _classify(outcome, stack, dlq, ended, committed)
        if all(o.ok for o in outcomes) or time.monotonic() > deadline:
            return
        await asyncio.sleep(0.5)


async def _await_no_lag(kafka: KafkaSettings, stack: Stack, timeout_s: float) -> dict[str, int]:
    deadline = time.monotonic() + timeout_s
    while True:
        lag = await _lag(kafka, stack)
        if not any(lag.values()) or time.monotonic() > deadline:
            return lag
        await asyncio.sleep(0.5)


async def run_bad_input(
    state_dir: Path, *, namespace: str | None = None, settle_s: float = 60
) -> Report:
    """Start a stack, throw every bad record at it, check, stop it; returns the report."""
    started = time.monotonic()
    kafka = KafkaSettings()
    stack = Stack(state_dir, namespace or f"t{uuid.uuid4().hex[:10]}")
    problems: list[str] = []
    with stack.running():
        # Proves the stack is up end to end (topics exist, groups joined, tools registered).
        warm = await complete_one(stack, "Search the support tickets for refund requests")
        if warm.ending != "completed":
            problems.append(f"warm-up run {warm.run_id} ended {warm.ending}")
        pids_before = stack.pids()
        outcomes = await _publish(kafka, stack, build_cases())
        valid = await complete_one(stack, "Search the support tickets for login problems")
        await _await_all(kafka, stack, outcomes, settle_s)
        lag = await _await_no_lag(kafka, stack, settle_s)
        pids_after = stack.pids()
    for outcome in outcomes:
        if not outcome.ok:
            problems.append(f"{outcome.case.name}: {outcome.observed} {outcome.detail}".strip())
    for name, pid in pids_before.items():
        if pid is None or pids_after.get(name) != pid:
            problems.append(f"{name} died or restarted during the bad input")
    if any(lag.values()):
        problems.append(f"consumer lag left: {lag}")
    result = f"{valid.ending}, tools run: {', '.join(valid.tools) or 'none'}"
    if valid.ending != "completed" or not valid.tools:
        problems.append(f"the valid goal after the garbage: {result}")
    return Report(
        outcomes,
        pids_before,
        pids_after,
        lag,
        valid.run_id,
        result,
        time.monotonic() - started,
        problems,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: run, print the table, exit 0 on PASS."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", type=Path, help="where logs and data go (default: temp)")
    parser.add_argument("--namespace", help="topic namespace (default: random)")
    args = parser.parse_args(argv)
    os.environ.setdefault("STEPLINE_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
    with tempfile.TemporaryDirectory(prefix="stepline-bad-input-") as tmp:
        state = args.state_dir or Path(tmp)
        report = asyncio.run(run_bad_input(state, namespace=args.namespace))
        print(report.table())
        if not report.ok:
            print(f"logs: {state / 'logs'}", file=sys.stderr)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())

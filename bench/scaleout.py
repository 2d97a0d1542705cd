"""Scale-out: 1, 2 and 4 instances of the planner, router, tool executor and billing, 12 partitions.

Method: for each service, a fresh namespace with 12-partition topics and a closed-loop load that
keeps work in flight the whole time. Planner: 200 runs in flight, each 3 steps (model → 1 tool →
model answer) against the instant responder of `bench.steps`; throughput in runs/s and steps/s.
Router: 200 ModelCallRequested in flight on the route `local` (a routes file with only the local
provider); throughput in model calls/s (results seen on the results topic). Tool executor: 200
ToolCallRequested in flight for the built-in `calculator` (a tool of short, fixed cost), each
instance with its own data directory and the outcome changelog shared through Kafka; throughput
in tool calls/s (results seen on the tool results topic). Billing: 400
UsageRecorded in flight over 96 tenants (the usage topic's key) into one PostgreSQL ledger of the
benchmark's own (`tests.postgres.PrivatePostgres`, as several instances need); a usage counts as
done when a BudgetState of its tenant whose version counts it is published, which billing does
only after the ledger commit. Instances are added
one step at a time (1 → 2 → 4). Rebalance time, measured from the moment the extra instance(s)
are spawned (Python start-up included): *assigned* = the consumer group is Stable with N members
and all 12 partitions of the input topic assigned (DescribeGroups, polled every 50 ms);
*resumed* = after that, the group's committed offset has advanced on every partition; *ready* =
every new instance reported itself started (its ready file), the start-up part of *assigned*. The
longest gap between two finished units of work during the rebalance is reported as *stall*.
Throughput is measured over a fixed window once the group has resumed.

All processes (broker, N instances, responder, load driver) share the machine's 2 cores, so
more instances cannot add CPU: the figures show the cost of coordination and rebalancing, not
the parallel speed-up a multi-host deployment would see.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Hashable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment

from bench.apps.stack import Namespace, RunWatcher, Service, machine, tool_registered
from stepline.v1 import budgets_pb2, common_pb2, goals_pb2, model_pb2, tools_pb2
from stepline_billing.spec import SPEC as BILLING
from stepline_executor.spec import SPEC as EXECUTOR
from stepline_planner.spec import SPEC as PLANNER
from stepline_router.spec import SPEC as ROUTER
from stepline_runtime.settings import KafkaSettings, namespaced
from stepline_runtime.topics import Topics
from tests.billing.factories import model_usage
from tests.postgres import PrivatePostgres

__all__ = ["main"]

RESULTS = Path(__file__).parent / "results"
PARTITIONS = 12
INSTANCES = (1, 2, 4)
IN_FLIGHT = 200
WINDOW_S = 8.0
PLANNER_STEPS_PER_RUN = 3
BILLING_IN_FLIGHT = 400
BILLING_TENANTS = 96
# Each service's scale-out plugs in here (BENCHMARKS below): name → its benchmark.
Benchmark = Callable[[KafkaSettings, Path], Awaitable[list[dict[str, Any]]]]


class _Load:
    """A closed loop: `in_flight` units of work outstanding; a new one as each finishes."""

    def __init__(self, submit: Callable[[], Awaitable[None]], in_flight: int) -> None:
        self.submit = submit
        self.in_flight = in_flight
        self.finished: list[float] = []
        self._done: asyncio.Queue[None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def finish(self) -> None:
        """One unit finished (called by the result follower)."""
        self.finished.append(time.perf_counter())
        self._done.put_nowait(None)

    async def start(self) -> None:
        """Put the first `in_flight` units in flight and keep the loop going."""
        for _ in range(self.in_flight):
            await self.submit()
        self._task = asyncio.create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            await self._done.get()
            await self.submit()

    async def stop(self) -> None:
        """Stop submitting."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def wait_finished(self, count: int, timeout_s: float) -> None:
        """Until `count` units finished in total."""
        deadline = time.perf_counter() + timeout_s
        while len(self.finished) < count:
            if time.perf_counter() > deadline:
                raise TimeoutError(f"only {len(self.finished)} of {count} units finished")
            await asyncio.sleep(0.05)

    def rate(self, since: float, until: float) -> float:
        """Units finished per second in [since, until)."""
        return sum(1 for t in self.finished if since <= t < until) / (until - since)

    def longest_gap(self, since: float, until: float) -> float:
        """The longest time without a finished unit in [since, until], in seconds."""
        marks = [since, *(t for t in self.finished if since <= t <= until), until]
        return max(b - a for a, b in itertools.pairwise(marks))


async def group_state(admin: AIOKafkaAdminClient, group: str, topic: str) -> tuple[str, int, int]:
    """(state, members, partitions of `topic` assigned) of a consumer group."""
    response = (await admin.describe_consumer_groups([group]))[0]
    described = response.groups[0]
    state, members = described[2], described[5]
    assigned = 0
    for member in members:
        with contextlib.suppress(Exception):  # an empty or foreign assignment counts as none
            decoded = ConsumerProtocolMemberAssignment.decode(member[-1])
            assigned += sum(len(a[1]) for a in decoded.assignment if a[0] == topic)
    return str(state), len(members), assigned


async def _members(kafka: KafkaSettings, group: str, topic: str) -> int:
    """Members of the settled group (a router instance runs one consumer per worker)."""
    admin = AIOKafkaAdminClient(**kafka.client_kwargs("bench-admin"))
    await admin.start()
    try:
        for _ in range(1_200):
            state, members, assigned = await group_state(admin, group, topic)
            if state == "Stable" and members and assigned == PARTITIONS:
                return members
            await asyncio.sleep(0.05)
        raise TimeoutError(f"{group} did not settle: {state}, {members} members")
    finally:
        await admin.close()


async def _rebalance(
    ns: Namespace,
    load: _Load,
    group: str,
    topic: str,
    members_wanted: int,
    spawned_at: float,
    new: Sequence[Service],
) -> dict[str, float | None]:
    """Seconds from spawning until the new instances are ready (started), the group is
    assigned again and processing resumed."""
    admin = AIOKafkaAdminClient(**ns.kafka.client_kwargs("bench-admin"))
    await admin.start()
    ready_at: float | None = None

    def note_ready() -> None:
        nonlocal ready_at
        if ready_at is None and all(s.ready() for s in new):
            ready_at = time.perf_counter()

    try:
        deadline = spawned_at + 90
        while True:
            note_ready()
            state, members, assigned = await group_state(admin, group, topic)
            if state == "Stable" and members == members_wanted and assigned == PARTITIONS:
                break
            if time.perf_counter() > deadline:
                raise TimeoutError(f"{group}: {state}, {members} members, {assigned} assigned")
            await asyncio.sleep(0.05)
        assigned_at = time.perf_counter()
        baseline = await ns.committed(group, topic)
        while True:
            note_ready()
            now = await ns.committed(group, topic)
            if all(now.get(p, -1) > baseline.get(p, -1) for p in range(PARTITIONS)):
                break
            if time.perf_counter() > deadline:
                raise TimeoutError(f"{group}: partitions without progress after the rebalance")
            await asyncio.sleep(0.05)
        resumed_at = time.perf_counter()
        note_ready()
    finally:
        await admin.close()
    return {
        # Start-up of the new instances (Python, config, connections): part of `assigned`.
        "ready_s": round(ready_at - spawned_at, 2) if ready_at is not None else None,
        "assigned_s": round(assigned_at - spawned_at, 2),
        "resumed_s": round(resumed_at - spawned_at, 2),
        "stall_s": round(load.longest_gap(spawned_at, resumed_at), 2),
    }


async def _scale(
    ns: Namespace,
    load: _Load,
    spawn: Callable[[int], Service],
    group: str,
    topic: str,
    per_unit: int,
) -> list[dict[str, Any]]:
    services = [spawn(1)]
    await load.start()
    await load.wait_finished(2 * IN_FLIGHT, timeout_s=120)  # warm-up
    per_instance = await _members(ns.kafka, group, topic)
    levels: list[dict[str, Any]] = []
    for instances in INSTANCES:
        rebalance: dict[str, float | None] | None = None
        if instances > len(services):
            spawned_at = time.perf_counter()
            new = [spawn(i + 1) for i in range(len(services), instances)]
            services += new
            rebalance = await _rebalance(
                ns, load, group, topic, per_instance * instances, spawned_at, new
            )
        cpu_before = {s.name: s.cpu_s() for s in services}
        start = time.perf_counter()
        await asyncio.sleep(WINDOW_S)
        end = time.perf_counter()
        rate = load.rate(start, end)
        levels.append(
            {
                "instances": instances,
                "group_members": per_instance * instances,
                "units_per_s": round(rate, 1),
                "steps_per_s": round(rate * per_unit, 1),
                "rebalance": rebalance,
                "cpu_percent_of_one_core": {
                    s.name: round(100 * (s.cpu_s() - cpu_before[s.name]) / (end - start), 1)
                    for s in services
                },
                "peak_rss_mib": {s.name: round(s.peak_rss_mb(), 1) for s in services},
            }
        )
        print(
            f"scale-out {group.split('.')[-1]}: {instances} instance(s): {rate:.1f}/s"
            + (
                f", rebalance: ready {rebalance['ready_s']} s, assigned "
                f"{rebalance['assigned_s']} s, resumed {rebalance['resumed_s']} s, "
                f"stall {rebalance['stall_s']} s"
                if rebalance
                else ""
            )
        )
    await load.stop()
    return levels


async def _planner(kafka: KafkaSettings, workdir: Path) -> list[dict[str, Any]]:
    ns = Namespace(kafka, workdir, PARTITIONS)
    await ns.start()
    watcher = RunWatcher(kafka, ns.topic(Topics.RUNS))
    await watcher.start()
    try:
        await (await ns.send(Topics.TOOLS, "bench_echo", tool_registered("bench_echo")))
        ns.spawn(
            "responder", "bench.apps.responder", "--tools", "1",
            "--timings", str(workdir / "timings.json"),
        )  # fmt: skip

        async def submit() -> None:
            run_id = f"r{uuid.uuid4().hex[:16]}"
            goal = goals_pb2.GoalSubmitted(
                run_id=run_id, tenant_id="bench", agent="bench", goal="benchmark goal"
            )
            await ns.send(Topics.GOALS, run_id, goal)

        load = _Load(submit, IN_FLIGHT)
        watcher.on_end = lambda _run_id: load.finish()
        return await _scale(
            ns,
            load,
            lambda i: ns.spawn(f"{PLANNER.name}-{i}", PLANNER.module),
            namespaced(PLANNER.name, ns.ns),
            ns.topic(Topics.MODEL_RESULTS),
            PLANNER_STEPS_PER_RUN,
        )
    finally:
        await watcher.stop()
        await ns.stop()


async def _follow(
    ns: Namespace,
    catalog_topic: str,
    load: _Load,
    ready: asyncio.Event,
    finished: Callable[[bytes], int],
) -> None:
    """Finish in `load` as many units as `finished` counts in each record of `catalog_topic`."""
    consumer = AIOKafkaConsumer(
        ns.topic(catalog_topic),
        auto_offset_reset="latest",
        enable_auto_commit=False,
        fetch_max_wait_ms=10,
        **ns.kafka.client_kwargs("bench-follow"),
    )
    await consumer.start()
    try:
        partitions = consumer.assignment()
        while not partitions:
            await asyncio.sleep(0.01)
            partitions = consumer.assignment()
        await consumer.seek_to_end(*partitions)
        for tp in partitions:
            await consumer.position(tp)
        ready.set()
        while True:
            for records in (await consumer.getmany(timeout_ms=100, max_records=5_000)).values():
                for record in records:
                    for _ in range(finished(record.value or b"")):
                        load.finish()
    finally:
        await consumer.stop()


async def _followed(
    ns: Namespace,
    load: _Load,
    catalog_topic: str,
    finished: Callable[[bytes], int],
    spawn: Callable[[int], Service],
    group: str,
    consumed_topic: str,
) -> list[dict[str, Any]]:
    """`_scale` with a follower counting finished units on `catalog_topic`; stops `ns`."""
    ready = asyncio.Event()
    follower = asyncio.create_task(_follow(ns, catalog_topic, load, ready, finished))
    try:
        await ready.wait()
        return await _scale(ns, load, spawn, group, ns.topic(consumed_topic), 1)
    finally:
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower
        await ns.stop()


def _each_once(identity: Callable[[bytes], Hashable]) -> Callable[[bytes], int]:
    """One unit the first time a record's `identity` is seen: redeliveries are not new work."""
    seen: set[Hashable] = set()

    def finished(value: bytes) -> int:
        unit = identity(value)
        if unit in seen:
            return 0
        seen.add(unit)
        return 1

    return finished


def _model_call(value: bytes) -> Hashable:
    return model_pb2.ModelCallResult.FromString(value).call_id


def _tool_call(value: bytes) -> Hashable:
    return tools_pb2.ToolCallResult.FromString(value).call_id


def _charged() -> Callable[[bytes], int]:
    """The usage records each published budget state charges: its version's advance.

    Billing publishes one state per tenant per fetched batch, so a version may move by more than
    one; a redelivery (or an older state an instance appends around a rebalance) moves nothing.
    """
    versions: dict[str, int] = {}  # a fresh namespace: every tenant starts at 0

    def finished(value: bytes) -> int:
        state = budgets_pb2.BudgetState.FromString(value)
        charged = state.version - versions.get(state.tenant_id, 0)
        if charged <= 0:
            return 0
        versions[state.tenant_id] = state.version
        return charged

    return finished


async def _router(kafka: KafkaSettings, workdir: Path) -> list[dict[str, Any]]:
    ns = Namespace(kafka, workdir, PARTITIONS)
    await ns.start()
    system = common_pb2.ChatMessage(role=common_pb2.ChatMessage.ROLE_SYSTEM, content="Be brief.")
    user = common_pb2.ChatMessage(role=common_pb2.ChatMessage.ROLE_USER, content="Say hello.")

    async def submit() -> None:
        run_id = f"r{uuid.uuid4().hex[:16]}"
        request = model_pb2.ModelCallRequested(
            run_id=run_id,
            tenant_id="bench",
            step_id=f"{run_id}:1",
            call_id=f"{run_id}:1:1",
            route="local",
            messages=[system, user],
            agent="bench",
        )
        request.parameters.max_output_tokens = 64
        await ns.send(Topics.MODEL_REQUESTS, run_id, request)

    return await _followed(
        ns,
        _Load(submit, IN_FLIGHT),
        Topics.MODEL_RESULTS,
        _each_once(_model_call),
        lambda i: ns.spawn(f"{ROUTER.name}-{i}", ROUTER.module),
        namespaced(ROUTER.name, ns.ns),
        Topics.MODEL_REQUESTS,
    )


async def _executor(kafka: KafkaSettings, workdir: Path) -> list[dict[str, Any]]:
    ns = Namespace(kafka, workdir, PARTITIONS)
    await ns.start()

    async def submit() -> None:
        run_id = f"r{uuid.uuid4().hex[:16]}"  # fresh run ids: every partition gets work
        call = tools_pb2.ToolCallRequested(
            run_id=run_id,
            tenant_id="bench",
            step_id=f"{run_id}:1",
            call_id=f"{run_id}:1:0",
            tool="calculator",
            arguments_json='{"expression": "6 * 7"}',
            agent="bench",
        )
        await ns.send(Topics.TOOL_REQUESTS, run_id, call)

    def spawn(i: int) -> Service:
        name = f"{EXECUTOR.name}-{i}"
        # Each instance its own data directory: they share nothing but Kafka.
        return ns.spawn(
            name, EXECUTOR.module, env={"STEPLINE_EXECUTOR_DATA_DIR": str(workdir / name)}
        )

    return await _followed(
        ns,
        _Load(submit, IN_FLIGHT),
        Topics.TOOL_RESULTS,
        _each_once(_tool_call),
        spawn,
        namespaced(EXECUTOR.name, ns.ns),
        Topics.TOOL_REQUESTS,
    )


async def _billing(kafka: KafkaSettings, workdir: Path) -> list[dict[str, Any]]:
    ns = Namespace(kafka, workdir, PARTITIONS)
    postgres = PrivatePostgres(_free_port())
    dsn = await asyncio.to_thread(postgres.start, f"bench_{ns.ns}")
    await ns.start()
    counter = itertools.count()
    now = datetime.now(UTC)  # billing's budget periods follow its real clock

    async def submit() -> None:
        i = next(counter)
        tenant = f"tenant-{i % BILLING_TENANTS}"
        usage = model_usage(f"u{i}", tenant=tenant, run=f"run-{i % 500}", at=now)
        await ns.send(Topics.USAGE, tenant, usage)

    def spawn(i: int) -> Service:
        service = Service(
            f"{BILLING.name}-{i}",
            [sys.executable, "-m", BILLING.module],
            {
                **ns.env(),
                "STEPLINE_BILLING_DSN": dsn,
                "STEPLINE_BILLING_GRPC_ADDRESS": "127.0.0.1:0",
                "STEPLINE_LOG_LEVEL": "WARNING",
            },
            workdir / f"{BILLING.name}-{i}.log",
        )
        ns.services.append(service)
        return service

    try:
        # A usage counts as done when a budget state of its tenant that counts it is out (billing
        # publishes it after the ledger commit).
        return await _followed(
            ns,
            _Load(submit, BILLING_IN_FLIGHT),
            Topics.BUDGETS,
            _charged(),
            spawn,
            namespaced(BILLING.name, ns.ns),
            Topics.USAGE,
        )
    finally:
        await asyncio.to_thread(postgres.stop)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


BENCHMARKS: dict[str, tuple[str, Benchmark]] = {
    "planner": ("runs", _planner),
    "router": ("model calls", _router),
    "tool-executor": ("tool calls", _executor),
    "billing": ("usage records", _billing),
}


async def main(only: Sequence[str] = (), out: Path | None = None) -> None:
    """Run the scale-out benchmarks (all, or `only` those named), print figures, write JSON.

    The JSON goes to `out`, by default bench/results/scaleout.json (which `bench/report.py`
    reads); a partial run is best written elsewhere so the full figures stay whole.
    """
    unknown = set(only) - set(BENCHMARKS)
    if unknown:
        raise ValueError(f"unknown scale-out benchmarks {sorted(unknown)}: {list(BENCHMARKS)}")
    chosen = {name: entry for name, entry in BENCHMARKS.items() if not only or name in only}
    kafka = KafkaSettings()
    levels: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-scaleout-") as tmp:
        for name, (_unit, benchmark) in chosen.items():
            (Path(tmp) / name).mkdir()
            levels[name] = await benchmark(kafka, Path(tmp) / name)
    extra: dict[str, dict[str, Any]] = {
        "planner": {"steps_per_run": PLANNER_STEPS_PER_RUN},
        "router": {"route": "local"},
        "tool-executor": {"tool": "calculator"},
        "billing": {
            "in_flight": BILLING_IN_FLIGHT,
            "tenants": BILLING_TENANTS,
            "ledger": "postgresql",
        },
    }
    result = {
        "benchmark": "scale_out",
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "method": __doc__,
        "machine": machine(),
        "cpu_limit_note": (
            "2 cores shared by the broker, every instance, the responder and the load driver: "
            "adding instances adds coordination, not CPU"
        ),
        "partitions": PARTITIONS,
        "in_flight": IN_FLIGHT,
        "window_s": WINDOW_S,
        **{
            name: {"unit": unit, **extra.get(name, {}), "levels": levels[name]}
            for name, (unit, _) in chosen.items()
        },
    }
    path = out or RESULTS / "scaleout.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {path}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only", action="append", choices=list(BENCHMARKS), default=[], help="repeatable"
    )
    parser.add_argument("--json", type=Path, help="result file (default results/scaleout.json)")
    args = parser.parse_args()
    asyncio.run(main(args.only, args.json))

"""Shared plumbing of the stack benchmarks: a namespace, service processes and their usage."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import psutil
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from google.protobuf.message import Message

from stepline.v1 import common_pb2, goals_pb2, runs_pb2, tools_pb2
from stepline_runtime.codec import encode
from stepline_runtime.settings import KafkaSettings, namespaced
from stepline_runtime.topics import CATALOG, Topics, ensure_topics

__all__ = [
    "ROOT",
    "ClosedLoop",
    "CpuMeter",
    "Namespace",
    "RunWatcher",
    "Service",
    "broker_process",
    "machine",
    "percentile",
    "tool_registered",
]

ROOT = Path(__file__).resolve().parents[2]

AGENTS = """
[planner]
session_busy = "queue"
finished_retention_s = 3600

[agents.bench]
system_prompt = "You are a benchmark agent."
route = "local"
tools = ["bench_echo"]
max_steps = 20
max_parallel_tool_calls = 4
run_deadline_s = 600
model_step_deadline_s = 120
tool_step_deadline_s = 120
max_output_tokens = 100
"""

ROUTES = """
[defaults]
deadline_s = 60

[deployments.local]
provider = "local"
model = "stepline-local-1"
capabilities = { tools = true, streaming = true, context_window = 128000, max_output_tokens = 4096 }
timeouts = { connect_s = 1, first_byte_s = 10, total_s = 10 }

[routes.local]
deployments = ["local"]
"""


def _not_transient(record: logging.LogRecord) -> bool:
    # A fresh partition's leader answers ListOffsets a moment after the admin API shows it;
    # aiokafka retries and logs each try as an error, which says nothing about the benchmark.
    return "NotLeaderForPartitionError" not in record.getMessage()


logging.getLogger("aiokafka.consumer.fetcher").addFilter(_not_transient)


def percentile(samples: Sequence[float], q: float) -> float:
    """Nearest-rank percentile `q` (0..1) of `samples` (0 when empty)."""
    if not samples:
        return 0.0
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def machine() -> dict[str, object]:
    """What the figures were measured on."""
    import platform

    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "note": "broker, services, responder and load driver share the same cores",
    }


def tool_registered(name: str) -> tools_pb2.ToolRegistered:
    """A registry entry for the benchmark's instant tool."""
    return tools_pb2.ToolRegistered(
        definition=common_pb2.ToolDefinition(
            name=name,
            description="instant benchmark tool",
            parameters_json_schema='{"type": "object"}',
            idempotent=True,
        ),
        source="builtin",
    )


def broker_process(port: int = 9092) -> psutil.Process | None:
    """The local process listening on the broker port, when it can be seen."""
    with contextlib.suppress(psutil.Error):
        for conn in psutil.net_connections("tcp"):
            listening = conn.status == psutil.CONN_LISTEN
            if listening and getattr(conn.laddr, "port", None) == port and conn.pid:
                return psutil.Process(conn.pid)
    return None


# prctl(2) option: the signal a child gets when the thread that started it exits.
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child, before exec: end with the benchmark even when it is killed (SIGKILL, ^C in
    the middle of a level), instead of loading the machine as an orphan (Linux only)."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class Service:
    """One service process started by the benchmark, with its CPU time and peak RSS."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.name = name
        self.started_at = time.perf_counter()
        # Written by the service once every part of it started (its readiness), unless the
        # caller names its own.
        self.ready_file = Path(env.get("STEPLINE_READY_FILE") or log.with_suffix(".ready"))
        env = {**env, "STEPLINE_READY_FILE": str(self.ready_file)}
        with log.open("ab") as sink:
            self.popen = subprocess.Popen(
                argv, cwd=ROOT, env=env, stdout=sink, stderr=sink, preexec_fn=_die_with_parent
            )
        self.process = psutil.Process(self.popen.pid)
        self.log = log

    def cpu_s(self) -> float:
        """User + system CPU seconds used so far."""
        times = self.process.cpu_times()
        return float(times.user + times.system)

    def peak_rss_mb(self) -> float:
        """Peak resident set size so far (VmHWM), in MiB."""
        for line in Path(f"/proc/{self.popen.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float(self.process.memory_info().rss) / 2**20

    def ready(self) -> bool:
        """Whether the service reported every part of it started."""
        return self.ready_file.exists()

    def alive(self) -> bool:
        """Whether the process still runs."""
        return self.popen.poll() is None

    def terminate(self) -> None:
        """Send SIGTERM without waiting."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 15) -> None:
        """SIGTERM, then SIGKILL after `timeout`."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


class Namespace:
    """A fresh topic namespace (`b<random>`) with its topics, a producer and service spawning."""

    def __init__(
        self, kafka: KafkaSettings, workdir: Path, partitions: int, agents: str = AGENTS
    ) -> None:
        self.kafka = kafka
        self.agents = agents
        self.ns = f"b{uuid.uuid4().hex[:10]}"
        self.workdir = workdir
        self.partitions = partitions
        self.producer = AIOKafkaProducer(
            enable_idempotence=True,
            acks="all",
            linger_ms=2,
            **kafka.client_kwargs("bench-driver"),
        )
        self.services: list[Service] = []

    def topic(self, catalog_name: str) -> str:
        """A catalog topic inside this namespace."""
        return namespaced(catalog_name, self.ns)

    async def start(self) -> None:
        """Create every catalog topic with `partitions` partitions; start the producer."""
        admin = AIOKafkaAdminClient(**self.kafka.client_kwargs("bench-admin"))
        await admin.start()
        try:
            await ensure_topics(admin, CATALOG, self.partitions, namespace=self.ns)
            # New partitions have no leader for a moment; consumers started then log errors.
            names = [self.topic(t.name) for t in CATALOG]
            for _ in range(100):
                described = await admin.describe_topics(names)
                leaders = [p["leader"] for d in described for p in d["partitions"]]
                if len(leaders) == len(names) * self.partitions and min(leaders) >= 0:
                    break
                await asyncio.sleep(0.05)
        finally:
            await admin.close()
        await self.producer.start()
        (self.workdir / "agents.toml").write_text(self.agents)
        (self.workdir / "routes.toml").write_text(ROUTES)

    async def stop(self) -> None:
        """Stop every service and the producer, then delete the namespace's topics."""
        for service in self.services:
            service.terminate()
        for service in self.services:
            await asyncio.to_thread(service.stop)
        await self.producer.stop()
        admin = AIOKafkaAdminClient(**self.kafka.client_kwargs("bench-admin"))
        await admin.start()
        try:
            existing = set(await admin.list_topics())
            mine = [t for t in existing if t.startswith(f"{self.ns}.")]
            if mine:
                await admin.delete_topics(mine)
        finally:
            await admin.close()

    def env(self) -> dict[str, str]:
        """Environment of the service processes."""
        return {
            **os.environ,
            "STEPLINE_TOPIC_NAMESPACE": self.ns,
            "STEPLINE_PARTITIONS": str(self.partitions),
            "STEPLINE_AGENTS": str(self.workdir / "agents.toml"),
            "STEPLINE_ROUTES": str(self.workdir / "routes.toml"),
            "STEPLINE_METRICS_PORT": "0",
            "STEPLINE_GRPC_ENABLED": "false",
            "STEPLINE_HTTP_ENABLED": "false",
            "STEPLINE_LOG_FORMAT": "text",
            "STEPLINE_LOG_LEVEL": "INFO",
        }

    def spawn(
        self, name: str, module: str, *args: str, env: Mapping[str, str] | None = None
    ) -> Service:
        """Start `python -m module args…` in this namespace, logging to workdir/<name>.log."""
        service = Service(
            name,
            [sys.executable, "-m", module, *args],
            {**self.env(), **(env or {})},
            self.workdir / f"{name}.log",
        )
        self.services.append(service)
        return service

    async def send(self, catalog_name: str, key: str, message: Message) -> asyncio.Future[object]:
        """Queue one record to a catalog topic of this namespace (await the result to ack)."""
        out = encode(self.topic(catalog_name), key, message, event_id=uuid.uuid4().hex, source="b")
        future: asyncio.Future[object] = await self.producer.send(
            out.topic, out.value, key=out.key, headers=list(out.headers)
        )
        return future

    async def committed(self, group: str, topic: str) -> dict[int, int]:
        """The committed offset of every partition of `topic` for consumer `group`."""
        admin = AIOKafkaAdminClient(**self.kafka.client_kwargs("bench-admin"))
        await admin.start()
        try:
            tps = [TopicPartition(topic, p) for p in range(self.partitions)]
            offsets = await admin.list_consumer_group_offsets(group, partitions=tps)
            return {tp.partition: meta.offset for tp, meta in offsets.items()}
        finally:
            await admin.close()


class RunWatcher:
    """Follows a namespace's RunEvents: step durations and the moment each run ended."""

    TERMINAL = frozenset({"completed", "failed", "cancelled"})

    def __init__(self, kafka: KafkaSettings, topic: str) -> None:
        self.kafka = kafka
        self.topic = topic
        self.steps: dict[str, list[runs_pb2.StepCompleted]] = {}
        self.ended: dict[str, tuple[str, float]] = {}
        self.on_end: Callable[[str], None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    async def start(self) -> None:
        """Start following from the current end of the topic."""
        self._task = asyncio.create_task(self._follow())
        await self._ready.wait()

    async def stop(self) -> None:
        """Stop following."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def wait(self, run_ids: Sequence[str], timeout_s: float) -> None:
        """Until every run in `run_ids` ended (raises TimeoutError otherwise)."""
        deadline = time.perf_counter() + timeout_s
        while any(r not in self.ended for r in run_ids):
            if time.perf_counter() > deadline:
                missing = sum(1 for r in run_ids if r not in self.ended)
                raise TimeoutError(f"{missing} of {len(run_ids)} runs did not end in time")
            await asyncio.sleep(0.01)

    async def _follow(self) -> None:
        consumer = AIOKafkaConsumer(
            self.topic,
            auto_offset_reset="latest",
            enable_auto_commit=False,
            isolation_level="read_committed",
            fetch_max_wait_ms=10,
            **self.kafka.client_kwargs("bench-watch"),
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
            self._ready.set()
            while True:
                batch = await consumer.getmany(timeout_ms=100, max_records=5_000)
                now = time.perf_counter()
                for records in batch.values():
                    for record in records:
                        self._on(runs_pb2.RunEvent.FromString(record.value or b""), now)
        finally:
            await consumer.stop()

    def _on(self, event: runs_pb2.RunEvent, now: float) -> None:
        kind = event.WhichOneof("event") or ""
        if kind == "step_completed":
            self.steps.setdefault(event.run_id, []).append(event.step_completed)
        elif kind in self.TERMINAL and event.run_id not in self.ended:
            self.ended[event.run_id] = (kind, now)
            if self.on_end is not None:
                self.on_end(event.run_id)


class ClosedLoop:
    """One concurrency level: `concurrency` runs kept in flight until `total` have ended."""

    def __init__(
        self,
        ns: Namespace,
        watcher: RunWatcher,
        concurrency: int,
        total: int,
        goal: Callable[[str], goals_pb2.GoalSubmitted],
    ) -> None:
        self.ns = ns
        self.watcher = watcher
        self.concurrency = concurrency
        self.total = total
        self.goal = goal
        self.submitted: dict[str, float] = {}
        self.ended: asyncio.Queue[str] = asyncio.Queue()

    async def _submit(self) -> None:
        run_id = f"r{uuid.uuid4().hex[:16]}"
        self.submitted[run_id] = time.perf_counter()
        await self.ns.send(Topics.GOALS, run_id, self.goal(run_id))

    async def run(self, timeout_s: float) -> float:
        """Run the loop; the wall time from the first goal to the last end."""
        self.watcher.on_end = lambda run_id: self.ended.put_nowait(run_id)
        started = time.perf_counter()
        deadline = started + timeout_s
        for _ in range(min(self.concurrency, self.total)):
            await self._submit()
        await self.ns.producer.flush()
        done = 0
        while done < self.total:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                raise TimeoutError(f"{self.total - done} runs still in flight")
            run_id = await asyncio.wait_for(self.ended.get(), remaining)
            if run_id not in self.submitted:
                continue
            done += 1
            if len(self.submitted) < self.total:
                await self._submit()
                if self.ended.empty():
                    await self.ns.producer.flush()
        self.watcher.on_end = None
        return max(self.watcher.ended[r][1] for r in self.submitted) - started


class CpuMeter:
    """CPU seconds of the benchmark's processes (and the local broker) over one level."""

    def __init__(self, services: Sequence[Service], broker: psutil.Process | None) -> None:
        self.services = list(services)
        self.broker = broker
        self._before: dict[str, float] = {}

    def _broker_cpu_s(self) -> float:
        assert self.broker is not None
        times = self.broker.cpu_times()
        return float(times.user + times.system)

    def start(self) -> None:
        """Take the starting snapshot."""
        self._before = {s.name: s.cpu_s() for s in self.services}
        if self.broker is not None:
            self._before["kafka_broker"] = self._broker_cpu_s()

    def usage(self, wall_s: float) -> dict[str, dict[str, float]]:
        """Per process since `start`: CPU seconds, % of one core and peak (or current) RSS."""
        out: dict[str, dict[str, float]] = {}
        for service in self.services:
            cpu = service.cpu_s() - self._before[service.name]
            out[service.name] = {
                "cpu_s": round(cpu, 2),
                "cpu_percent_of_one_core": round(100 * cpu / wall_s, 1),
                "peak_rss_mib": round(service.peak_rss_mb(), 1),
            }
        if self.broker is not None:
            cpu = self._broker_cpu_s() - self._before["kafka_broker"]
            out["kafka_broker"] = {
                "cpu_s": round(cpu, 2),
                "cpu_percent_of_one_core": round(100 * cpu / wall_s, 1),
                "rss_mib": round(self.broker.memory_info().rss / 2**20, 1),
            }
        return out

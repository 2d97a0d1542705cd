"""Planner + scripted responder as real subprocesses on the real broker, in a fresh namespace."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import uuid
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from google.protobuf.message import Message

from stepline.v1 import budgets_pb2, common_pb2, control_pb2, goals_pb2, runs_pb2, tools_pb2
from stepline_planner.spec import SPEC as PLANNER
from stepline_runtime.codec import encode
from stepline_runtime.settings import KafkaSettings, namespaced
from stepline_runtime.topics import CATALOG, ensure_topics

__all__ = ["AGENTS", "PARTITIONS", "TERMINAL", "System"]

ROOT = Path(__file__).resolve().parents[3]
PARTITIONS = 3
TERMINAL = ("completed", "failed", "cancelled")

AGENTS = """
[planner]
session_busy = "queue"
finished_retention_s = 3600

[agents.worker]
system_prompt = "You are a test worker."
route = "r"
tools = ["echo", "pay"]
max_steps = 12
max_parallel_tool_calls = 4
tool_step_deadline_s = 30
approval_timeout_s = 60
max_output_tokens = 1000
wrap_up_max_output_tokens = 100

[agents.hasty]
system_prompt = "You are in a hurry."
route = "r"
tools = ["echo", "pay", "refund"]
tool_step_deadline_s = 1.5
approval_timeout_s = 1

[agents.sprinter]
system_prompt = "You have three seconds."
route = "r"
tools = ["echo"]
run_deadline_s = 3

[agents.brief]
system_prompt = "You answer at once."
route = "r"
tools = []
model_step_deadline_s = 10

[agents.boss]
system_prompt = "You delegate."
route = "r"
tools = ["echo"]
delegates = ["worker"]
"""

# The planner reads the route's price and context window from the router's routes file.
ROUTES = """
[deployments.local]
provider = "local"
model = "stepline-local-1"
capabilities = { context_window = 100000 }

[routes.r]
deployments = ["local"]
"""


class System:
    """One namespace with the planner and the responder running against it."""

    def __init__(self, kafka: KafkaSettings, workdir: Path, script: dict[str, Any]) -> None:
        self.kafka = kafka
        self.ns = f"t{uuid.uuid4().hex[:10]}"
        self.workdir = workdir
        self.script = script
        self.events: dict[str, list[runs_pb2.RunEvent]] = defaultdict(list)
        self.executions = workdir / "executions.log"
        self.planner_log = workdir / "planner.log"
        self.planner: subprocess.Popen[bytes] | None = None
        self.responder: subprocess.Popen[bytes] | None = None
        self.router: subprocess.Popen[bytes] | None = None
        self.producer = AIOKafkaProducer(
            enable_idempotence=True, acks="all", **kafka.client_kwargs("test-planner")
        )
        self._watch: asyncio.Task[None] | None = None

    def topic(self, name: str) -> str:
        """A catalog topic inside this system's namespace."""
        return namespaced(name, self.ns)

    def env(self) -> dict[str, str]:
        """Environment of the subprocesses."""
        return {
            **os.environ,
            "STEPLINE_TOPIC_NAMESPACE": self.ns,
            "STEPLINE_PARTITIONS": str(PARTITIONS),
            "STEPLINE_AGENTS": str(self.workdir / "agents.toml"),
            "STEPLINE_ROUTES": str(self.workdir / "routes.toml"),
            "STEPLINE_TICK_INTERVAL_S": "0.2",
            "STEPLINE_SESSION_TIMEOUT_MS": "6000",
            "STEPLINE_LOG_FORMAT": "text",
        }

    async def start(
        self,
        *,
        tools: list[tools_pb2.ToolRegistered],
        budgets: list[Any],
        responder: bool = True,
    ) -> None:
        """Create topics, publish the registry and budgets, start the processes and a watcher.

        Without the scripted `responder`, model calls wait for a router (`start_router`).
        """
        admin = AIOKafkaAdminClient(**self.kafka.client_kwargs("test-admin"))
        await admin.start()
        try:
            await ensure_topics(admin, CATALOG, PARTITIONS, namespace=self.ns)
        finally:
            await admin.close()
        await self.producer.start()
        for tool in tools:
            await self.publish("stepline.tools.v1", tool.definition.name, tool)
        for budget in budgets:
            await self.publish("stepline.budgets.v1", budget.tenant_id, budget)
        (self.workdir / "agents.toml").write_text(AGENTS)
        (self.workdir / "routes.toml").write_text(ROUTES)
        (self.workdir / "script.json").write_text(json.dumps(self.script))
        self._watch = asyncio.create_task(self._follow())
        self.start_planner()
        if responder:
            self.start_responder()

    def start_responder(self) -> None:
        """Start the scripted responder subprocess (duplicating every result)."""
        with self.workdir.joinpath("responder.log").open("ab") as sink:
            self.responder = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.planner.integration.apps.responder",
                    "--script",
                    str(self.workdir / "script.json"),
                    "--executions",
                    str(self.executions),
                    "--duplicate",
                ],
                cwd=ROOT,
                env=self.env(),
                stdout=sink,
                stderr=sink,
            )

    def start_planner(self) -> None:
        """Start (or restart) the planner subprocess."""
        with self.planner_log.open("ab") as sink:
            self.planner = subprocess.Popen(
                [sys.executable, "-m", "stepline_planner"],
                cwd=ROOT,
                env=self.env(),
                stdout=sink,
                stderr=sink,
            )

    def start_router(self, routes: str) -> None:
        """Start (or restart) the real model router with the routes TOML `routes`."""
        path = self.workdir / "routes.toml"
        path.write_text(routes)
        env = {
            **self.env(),
            "STEPLINE_ROUTES": str(path),
            "STEPLINE_GRPC_ENABLED": "false",
            "STEPLINE_METRICS_PORT": "0",
        }
        with self.workdir.joinpath("router.log").open("ab") as sink:
            self.router = subprocess.Popen(
                [sys.executable, "-m", "stepline_router"],
                cwd=ROOT,
                env=env,
                stdout=sink,
                stderr=sink,
            )

    def stop_router(self) -> None:
        """Stop the router (SIGTERM) and wait until it has exited."""
        assert self.router is not None
        self.router.terminate()
        self.router.wait(timeout=30)

    def kill_planner(self) -> None:
        """SIGKILL the planner: no clean shutdown, an open transaction may be left behind."""
        assert self.planner is not None
        self.planner.send_signal(signal.SIGKILL)
        self.planner.wait()

    async def stop(self) -> None:
        """Stop everything this system started."""
        for process in (self.planner, self.responder, self.router):
            if process is not None and process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        await self.producer.stop()

    async def publish(self, catalog_topic: str, key: str, message: Message) -> None:
        """Produce one record to a catalog topic of this namespace."""
        out = encode(
            self.topic(catalog_topic), key, message, event_id=uuid.uuid4().hex, source="test"
        )
        await self.producer.send_and_wait(
            out.topic, out.value, key=out.key, headers=list(out.headers)
        )

    async def submit(self, run_id: str, agent: str, script: str, **fields: Any) -> None:
        """Publish a goal."""
        goal = goals_pb2.GoalSubmitted(
            run_id=run_id,
            tenant_id=fields.pop("tenant_id", "acme"),
            agent=agent,
            goal=fields.pop("goal", f"goal of {run_id}"),
            metadata={"script": script},
            **fields,
        )
        await self.publish("stepline.goals.v1", run_id, goal)

    async def control(self, run_id: str, **command: Any) -> None:
        """Publish a ControlCommand for a run of tenant acme."""
        message = control_pb2.ControlCommand(run_id=run_id, tenant_id="acme", **command)
        await self.publish("stepline.control.v1", run_id, message)

    async def _follow(self) -> None:
        consumer = AIOKafkaConsumer(
            self.topic("stepline.runs.v1"),
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            isolation_level="read_committed",
            **self.kafka.client_kwargs("test-watch"),
        )
        await consumer.start()
        try:
            while True:
                for records in (await consumer.getmany(timeout_ms=200)).values():
                    for record in records:
                        event = runs_pb2.RunEvent.FromString(record.value or b"")
                        self.events[event.run_id].append(event)
        finally:
            await consumer.stop()

    async def wait_for(
        self,
        run_id: str,
        predicate: Callable[[list[runs_pb2.RunEvent]], bool],
        what: str,
        timeout_s: float = 60,
    ) -> list[runs_pb2.RunEvent]:
        """Wait until the run's events satisfy `predicate`; fail with the logs otherwise."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while not predicate(self.events[run_id]):
            crashed = self.planner is not None and self.planner.poll() is not None
            if asyncio.get_running_loop().time() > deadline or crashed:
                raise AssertionError(
                    f"{run_id}: timed out waiting for {what}; events: "
                    f"{[e.WhichOneof('event') for e in self.events[run_id]]}\n"
                    f"planner log tail:\n{self.planner_log.read_text()[-3000:]}"
                )
            await asyncio.sleep(0.05)
        return list(self.events[run_id])

    async def terminal(self, run_id: str, timeout_s: float = 60) -> list[runs_pb2.RunEvent]:
        """The run's events once it reached a terminal event."""
        return await self.wait_for(
            run_id,
            lambda es: any(e.WhichOneof("event") in TERMINAL for e in es),
            "a terminal event",
            timeout_s,
        )

    async def wait_consumed(self, catalog_topic: str, key: str, timeout_s: float = 30) -> None:
        """Wait until the planner committed every record keyed `key`."""
        topic = self.topic(catalog_topic)
        admin = AIOKafkaAdminClient(**self.kafka.client_kwargs("test-admin"))
        await admin.start()
        try:
            wanted: dict[TopicPartition, int] = {}
            for record in await self._records(topic):
                if record.key == key.encode():
                    tp = TopicPartition(topic, record.partition)
                    wanted[tp] = max(wanted.get(tp, 0), record.offset + 1)
            deadline = asyncio.get_running_loop().time() + timeout_s
            group = namespaced(PLANNER.name, self.ns)
            while True:
                committed = await admin.list_consumer_group_offsets(group, partitions=list(wanted))
                if all(tp in committed and committed[tp].offset >= o for tp, o in wanted.items()):
                    return
                if asyncio.get_running_loop().time() > deadline:
                    raise AssertionError(f"planner did not consume {key} on {topic}: {committed}")
                await asyncio.sleep(0.1)
        finally:
            await admin.close()

    async def read(self, catalog_topic: str) -> list[tuple[bytes, bytes | None, dict[str, bytes]]]:
        """Every committed record of a topic right now: (key, value, headers)."""
        records = await self._records(self.topic(catalog_topic))
        return [(r.key or b"", r.value, dict(r.headers)) for r in records]

    async def _records(self, topic: str) -> list[ConsumerRecord[bytes, bytes]]:
        consumer = AIOKafkaConsumer(
            enable_auto_commit=False,
            isolation_level="read_committed",
            **self.kafka.client_kwargs("test-read"),
        )
        await consumer.start()
        try:
            partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            end = await consumer.end_offsets(partitions)
            found: list[ConsumerRecord[bytes, bytes]] = []
            while any([await consumer.position(tp) < end[tp] for tp in partitions]):
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    found.extend(records)
            return found
        finally:
            await consumer.stop()


def tool(name: str, *, approval: bool = False, idempotent: bool = True) -> tools_pb2.ToolRegistered:
    """A registry entry for a test tool."""
    return tools_pb2.ToolRegistered(
        definition=common_pb2.ToolDefinition(
            name=name,
            description=f"test tool {name}",
            parameters_json_schema='{"type": "object"}',
            requires_approval=approval,
            idempotent=idempotent,
        ),
        source="builtin",
    )


def exhausted(tenant: str) -> budgets_pb2.BudgetState:
    """A tenant whose budget is spent."""
    return budgets_pb2.BudgetState(tenant_id=tenant, exhausted=True, version=1)


def kinds(events: list[runs_pb2.RunEvent]) -> list[str]:
    """The event kinds of a run, in order."""
    return [e.WhichOneof("event") or "" for e in events]

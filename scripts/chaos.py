"""`make chaos`: runs with tools while services, the broker and a provider fail; nothing is lost.

Starts its own Kafka (a single node on free loopback ports, or with `--cluster` three nodes with
replication factor 3 and min ISR 2) so it may restart or kill it, then the four services (the
CLI's Supervisor) in a fresh topic namespace. The agent's model route leads with an
OpenAI-compatible loopback server that answers 503 to 30% of requests (the rest it answers like
the offline `local` provider) and falls back to `local`; its tools are `search_documents` and a
non-idempotent webhook whose receiver counts deliveries per Idempotency-Key. N runs are submitted
in waves while a driver SIGKILLs a random service every few seconds and restarts it, and once,
mid-run, restarts the broker (stop + start on the same state dir) or, with `--cluster`, SIGKILLs
one of the three brokers. At the end it checks that every run reached a terminal state, that no
webhook call arrived twice, that billing's ledger equals the unique usage ids on the usage topic
(ids and total cost), and that no consumer group lags (counted in records). Prints a summary,
writes `bench/results/chaos.json` (or `chaos-cluster.json`), exits 1 on any failure.

With `--instances N` every service that consumes runs N instances (`stepline up --scale`), the
ledger is a PostgreSQL of the run's own (deploy/postgres/pg.sh on a free port) shared by the
billing instances, and each kill hits a random instance.

    uv run python -m scripts.chaos                 # 200 runs, single broker restarted mid-run
    uv run python -m scripts.chaos --cluster       # three brokers, one killed mid-run
    uv run python -m scripts.chaos --instances 3   # three instances of each, PostgreSQL ledger
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import platform
import random
import re
import signal
import socket
import sqlite3
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
from aiokafka.errors import KafkaError
from google.protobuf.message import DecodeError

from scripts.bad_input import GROUPS, ROOT, Stack, _await_no_lag, _committed, read_topic
from stepline.v1 import dead_letter_pb2, runs_pb2, usage_pb2
from stepline_client import Goal, Stepline
from stepline_localkafka import KafkaSettings as LocalKafkaSettings
from stepline_localkafka import LocalKafka
from stepline_localkafka.cluster import LocalCluster
from stepline_router.providers.local import respond
from stepline_router.types import (
    Message,
    ModelRequest,
    Params,
    Role,
    ToolCall,
    ToolChoice,
    ToolSpec,
)
from stepline_runtime.service import discover
from stepline_runtime.settings import KafkaSettings
from stepline_runtime.topics import Topics
from tests.postgres import PrivatePostgres

__all__ = ["ChaosResult", "FlakyProvider", "Receiver", "main", "run_chaos"]

TENANT = "chaos-tenant"
AGENT = "chaos"
# Every service that consumes with a group (the front door reads without one and serves calls).
VICTIMS = tuple(spec.name for spec in discover() if spec.group is not None)
GOAL = "Search the support tickets for refund problems and post a message about them"
TERMINAL = ("completed", "failed", "cancelled")
LIB_DIR = ROOT / ".local" / "kafka" / "lib"  # the dev broker's jars, resolved by `make kafka-up`


# ---------------------------------------------------------------------------- loopback servers


class _Server:
    """A ThreadingHTTPServer on an ephemeral loopback port, served from a daemon thread."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        """The port it listens on."""
        return int(self._httpd.server_address[1])

    @contextlib.contextmanager
    def serving(self) -> Iterator[None]:
        """Serve until the block ends."""
        self._thread.start()
        try:
            yield
        finally:
            self._httpd.shutdown()
            self._httpd.server_close()


def _reply(handler: BaseHTTPRequestHandler, status: int, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


def _model_request(body: dict[str, Any]) -> ModelRequest:
    """The router's request type from a Chat Completions body (for the local answerer)."""
    messages = []
    for m in body.get("messages", []):
        calls = tuple(
            ToolCall(c["id"], c["function"]["name"], c["function"].get("arguments") or "{}")
            for c in m.get("tool_calls") or ()
        )
        messages.append(
            Message(
                Role(m["role"]),
                m.get("content") or "",
                calls,
                m.get("tool_call_id", ""),
            )
        )
    tools = tuple(
        ToolSpec(
            t["function"]["name"], t["function"].get("description", ""), t["function"]["parameters"]
        )
        for t in body.get("tools") or ()
    )
    choice = body.get("tool_choice", "auto")
    params = (
        Params(tool_choice=ToolChoice.REQUIRED, tool_name=choice["function"]["name"])
        if isinstance(choice, dict)
        else Params(tool_choice=ToolChoice(choice))
    )
    return ModelRequest("flaky", "", "chaos", tuple(messages), tools, params)


class FlakyProvider(_Server):
    """An OpenAI-compatible endpoint answering 503 to `fail_rate` of requests, else like `local`."""

    def __init__(self, fail_rate: float, seed: int) -> None:
        self.requests = 0
        self.failed = 0
        rng = random.Random(seed)
        lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with lock:
                    outer.requests += 1
                    fail = rng.random() < fail_rate
                    outer.failed += fail
                if fail:
                    error = {"message": "injected 503 (make chaos)", "type": "server_error"}
                    _reply(self, 503, {"error": error})
                    return
                body = json.loads(raw)
                done = respond(_model_request(body))
                message: dict[str, Any] = {"role": "assistant", "content": done.content or None}
                if done.tool_calls:
                    message["tool_calls"] = [
                        {
                            "id": c.call_id,
                            "type": "function",
                            "function": {"name": c.name, "arguments": c.arguments_json},
                        }
                        for c in done.tool_calls
                    ]
                _reply(
                    self,
                    200,
                    {
                        "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
                        "object": "chat.completion",
                        "model": body.get("model", ""),
                        "choices": [
                            {
                                "index": 0,
                                "message": message,
                                "finish_reason": done.finish_reason.value,
                            }
                        ],
                        "usage": {
                            "prompt_tokens": done.usage.input,
                            "completion_tokens": done.usage.output,
                        },
                    },
                )

            def log_message(self, format: str, *args: Any) -> None:
                return

        super().__init__(Handler)


class Receiver(_Server):
    """The webhook's far end: counts deliveries per Idempotency-Key."""

    def __init__(self) -> None:
        self.seen: Counter[str] = Counter()
        lock = threading.Lock()
        seen = self.seen

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with lock:
                    seen[self.headers.get("Idempotency-Key", "")] += 1
                _reply(self, 200, {"posted": True})

            def log_message(self, format: str, *args: Any) -> None:
                return

        super().__init__(Handler)


# -------------------------------------------------------------------------------- config files


def _configure(stack: Stack, provider_port: int, receiver_port: int) -> None:
    """Tools (with the webhook), routes (flaky first), price book and the `chaos` agent."""
    state = stack.state_dir
    deploy = ROOT / "deploy" / "config"
    tools = (
        (deploy / "tools.toml").read_text(encoding="utf-8").replace('"../', f'"{ROOT / "deploy"}/')
    )
    tools += f"""
[[webhooks]]
name = "post_message"
description = "Post a message to the team channel about the support tickets."
url = "http://127.0.0.1:{receiver_port}/post"
idempotent = false
timeout_s = 5
[webhooks.parameters]
type = "object"
additionalProperties = false
required = ["message"]
[webhooks.parameters.properties.message]
type = "string"
minLength = 1

[tenants.{TENANT}]
tools = ["*"]
http_hosts = []
"""
    (state / "tools.toml").write_text(tools, encoding="utf-8")
    routes = (
        (deploy / "routes.toml").read_text(encoding="utf-8")
        + f"""
[deployments.flaky]
provider = "openai_compatible"
model = "stepline-local-1"
base_url = "http://127.0.0.1:{provider_port}/v1"
timeouts = {{ connect_s = 1, first_byte_s = 10, total_s = 10 }}
[deployments.flaky.capabilities]
tools = true
streaming = true
context_window = 128000
max_output_tokens = 4096

[routes.{AGENT}]
strategy = "priority"
deployments = ["flaky", "local"]
"""
    )
    (state / "routes.toml").write_text(routes, encoding="utf-8")
    prices = (
        (deploy / "pricebook.toml").read_text(encoding="utf-8")
        + """
[[models]]
provider = "openai_compatible"
model = "stepline-local-1"
input_per_mtok = "0.10"
output_per_mtok = "0.40"
cached_input_per_mtok = "0.025"
"""
    )
    (state / "pricebook.toml").write_text(prices, encoding="utf-8")
    agents = state / "agents.toml"
    agents.write_text(
        agents.read_text(encoding="utf-8")
        + f"""
[agents.{AGENT}]
system_prompt = "Search the tickets, then post one message about what you found."
route = "{AGENT}"
tools = ["search_documents", "post_message"]
max_steps = 8
run_deadline_s = 600
model_step_deadline_s = 60
tool_step_deadline_s = 60
""",
        encoding="utf-8",
    )
    stack.env.update(
        STEPLINE_TOOLS_CONFIG=str(state / "tools.toml"),
        STEPLINE_ROUTES=str(state / "routes.toml"),
        STEPLINE_PRICEBOOK=str(state / "pricebook.toml"),
    )


# ------------------------------------------------------------------------------------ brokers


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_block(size: int, rng: random.Random) -> int:
    """The first of `size` consecutive free loopback ports."""
    for _ in range(200):
        base = rng.randrange(20000, 40000)
        if all(_free(base + i) for i in range(size)):
            return base
    raise RuntimeError(f"no {size} consecutive free ports found")


class Brokers:
    """The run's own Kafka: one node it restarts, or three nodes of which it kills one."""

    def __init__(self, state_dir: Path, cluster: bool, rng: random.Random) -> None:
        self.cluster: LocalCluster | None = None
        self.single: LocalKafka | None = None
        base = _free_block(6 if cluster else 2, rng)
        echo = _say
        if cluster:
            self.cluster = LocalCluster(
                state_dir / "kafka-cluster", base_port=base, lib_dir=LIB_DIR, echo=echo
            )
        else:
            settings = LocalKafkaSettings.resolve(
                state_dir=state_dir / "kafka",
                port=base,
                controller_port=base + 1,
                lib_dir=LIB_DIR,
                env={},  # never the developer's STEPLINE_KAFKA_BOOTSTRAP: this broker is ours
            )
            self.single = LocalKafka(settings, echo=echo)

    @property
    def service_bootstrap(self) -> str:
        """What the services get: one address, node 1, which is never killed.

        FastStream's `KafkaBroker` wraps a comma-separated bootstrap string in a list without
        splitting it, so aiokafka sees one host named `127.0.0.1:9192,127.0.0.1:9194,127.0.0.1`
        and the at-least-once services cannot start against a list (see RELIABILITY.md).
        """
        if self.cluster is not None:
            return self.cluster.nodes[0].settings.local_bootstrap
        return self.bootstrap

    @property
    def bootstrap(self) -> str:
        """What clients connect to."""
        if self.cluster is not None:
            return self.cluster.bootstrap
        assert self.single is not None
        return self.single.settings.local_bootstrap

    def up(self) -> None:
        """Start and wait until ready."""
        if self.cluster is not None:
            self.cluster.up(180)
        else:
            assert self.single is not None
            self.single.up(120)

    def down(self) -> None:
        """Stop everything this run started."""
        if self.cluster is not None:
            self.cluster.down()
        elif self.single is not None:
            self.single.down()

    def disrupt(self, rng: random.Random) -> str:
        """The mid-run broker failure; returns what happened."""
        if self.cluster is not None:
            node = rng.choice(self.cluster.nodes[1:])  # node 1 is the services' bootstrap
            pid = node.kill()
            return f"SIGKILLed broker node {node.node_id} (pid {pid}); left down"
        assert self.single is not None
        t0 = time.monotonic()
        self.single.down()
        stopped = time.monotonic() - t0
        self.single.up(120)
        return (
            f"restarted the broker (stop {stopped:.1f} s, down for "
            f"{time.monotonic() - t0:.1f} s in all)"
        )


def _say(message: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {message}", flush=True)


# ------------------------------------------------------------------------------------- the run


@dataclass
class ChaosResult:
    """Figures of one chaos run (written as JSON)."""

    mode: str
    runs: int
    partitions: int
    replication_factor: int
    instances: int = 1
    ledger: str = "sqlite"
    kills: list[str] = field(default_factory=list)
    died_on_their_own: list[str] = field(default_factory=list)
    broker_event: str = ""
    broker_event_at_s: float = 0.0
    endings: dict[str, int] = field(default_factory=dict)
    not_terminal: int = 0
    # Completed, but the model never called a tool (the agent always should here).
    completed_without_tools: int = 0
    failure_reasons: dict[str, int] = field(default_factory=dict)
    webhook_calls: int = 0
    webhook_keys: int = 0
    webhook_repeats: int = 0
    provider_requests: int = 0
    provider_503s: int = 0
    usage_ids: int = 0
    usage_records_on_topic: int = 0
    ledger_rows: int = 0
    ledger_total: str = "0"
    topic_total: str = "0"
    lag: dict[str, int] = field(default_factory=dict)
    # The last generation each consumer group reached (from the broker's log): a few per kill
    # is a rebalance per membership change; hundreds is a rebalance storm (see RELIABILITY.md).
    generations: dict[str, int] = field(default_factory=dict)
    dead_letters: int = 0
    submit_s: float = 0.0
    all_terminal_s: float = 0.0
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Every check passed."""
        return not self.problems


# How long one read of the runs topic to its end may take before it is tried again.
READ_TIMEOUT_S = 60.0


async def _endings(kafka: KafkaSettings, stack: Stack) -> dict[str, runs_pb2.RunEvent]:
    ended: dict[str, runs_pb2.RunEvent] = {}
    for _, _, _, value in await read_topic(kafka, stack.topic(Topics.RUNS)):
        event = runs_pb2.RunEvent()
        with contextlib.suppress(DecodeError):
            event.ParseFromString(value or b"")
        if event.WhichOneof("event") in TERMINAL:
            ended.setdefault(event.run_id, event)
    return ended


async def _tool_runs(kafka: KafkaSettings, stack: Stack) -> set[str]:
    """Runs with at least one succeeded tool step on the runs topic."""
    runs: set[str] = set()
    for _, _, _, value in await read_topic(kafka, stack.topic(Topics.RUNS)):
        event = runs_pb2.RunEvent()
        with contextlib.suppress(DecodeError):
            event.ParseFromString(value or b"")
        if (
            event.WhichOneof("event") == "step_completed"
            and event.step_completed.kind == runs_pb2.STEP_KIND_TOOL
            and event.step_completed.outcome == runs_pb2.STEP_OUTCOME_SUCCEEDED
        ):
            runs.add(event.run_id)
    return runs


# Where a run that never ended can be: its last record on each of these says who holds it.
TRAIL = (
    Topics.RUNS,
    Topics.MODEL_REQUESTS,
    Topics.MODEL_RESULTS,
    Topics.TOOL_REQUESTS,
    Topics.TOOL_RESULTS,
)


async def _stuck(kafka: KafkaSettings, stack: Stack, run_ids: Sequence[str]) -> list[str]:
    """For each run in `run_ids`: its partition and its last committed record on each topic."""
    last: dict[str, dict[str, str]] = {r: {} for r in run_ids}
    partition: dict[str, int] = {}
    committed = await _committed(kafka, stack)
    for topic in TRAIL:
        name = stack.topic(topic)
        for p, offset, key, value in await read_topic(kafka, name):
            run_id = (key or b"").decode(errors="replace")
            if run_id not in last:
                continue
            partition[run_id] = p
            what = ""
            if topic == Topics.RUNS:
                event = runs_pb2.RunEvent()
                with contextlib.suppress(DecodeError):
                    event.ParseFromString(value or b"")
                what = str(event.WhichOneof("event"))
            readers = [group for group, topics in GROUPS.items() if topic in topics]
            done = [g for g in readers if committed.get((name, g, p), 0) > offset]
            consumed = f" consumed by {done or 'nobody yet'}" if readers else ""
            label = topic.removeprefix("stepline.").removesuffix(".v1")
            last[run_id][label] = f"@{offset}{f' {what}' if what else ''}{consumed}"
    return [
        f"{run_id} (partition {partition.get(run_id, '?')}): "
        + "; ".join(f"{t} {v}" for t, v in trail.items())
        for run_id, trail in last.items()
    ]


async def _usage(kafka: KafkaSettings, stack: Stack) -> tuple[dict[str, Decimal], int]:
    unique: dict[str, Decimal] = {}
    records = await read_topic(kafka, stack.topic(Topics.USAGE))
    for _, _, _, value in records:
        usage = usage_pb2.UsageRecorded.FromString(value or b"")
        unique.setdefault(usage.usage_id, Decimal(usage.cost.amount or "0"))
    return unique, len(records)


_STABILIZED = re.compile(r"Stabilized group (\S+) generation (\d+)")


def _generations(state_dir: Path, namespace: str) -> dict[str, int]:
    """The last generation of each of the namespace's consumer groups, from the broker logs."""
    last: dict[str, int] = {}
    for log in sorted(state_dir.glob("kafka*/**/server.log*")):
        for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
            if (found := _STABILIZED.search(line)) and found[1].startswith(f"{namespace}."):
                group = found[1].removeprefix(f"{namespace}.")
                last[group] = max(last.get(group, 0), int(found[2]))
    return dict(sorted(last.items()))


def _ledger(path: Path, dsn: str = "") -> dict[str, Decimal]:
    """Billing's ledger rows: usage id → cost (PostgreSQL when `dsn`, else the SQLite file)."""
    if dsn:
        with psycopg.connect(dsn) as pg:
            try:
                rows = pg.execute("SELECT usage_id, cost FROM ledger").fetchall()
            except psycopg.errors.UndefinedTable:
                return {}
        return {uid: Decimal(str(cost or 0)) for uid, cost in rows}
    if not path.exists():
        return {}
    with contextlib.closing(sqlite3.connect(path)) as db:
        return {
            uid: Decimal(str(cost or 0))
            for uid, cost in db.execute("SELECT usage_id, cost FROM ledger")
        }


class Driver:
    """SIGKILLs a random service every `every_s` and restarts it; one broker failure mid-run.

    With one instance per service each restart is awaited until ready before the next kill;
    with several, the next kill comes `every_s` later whether the restarted one is ready or not
    (its siblings serve meanwhile), so kills keep coming every few seconds.
    """

    def __init__(
        self,
        stack: Stack,
        brokers: Brokers,
        rng: random.Random,
        every_s: float,
        *,
        await_ready: bool = True,
    ) -> None:
        self.stack, self.brokers, self.rng, self.every_s = stack, brokers, rng, every_s
        self.ready_timeout_s = 90.0 if await_ready else 0.0
        self.stop = asyncio.Event()
        self.broker_ok = asyncio.Event()
        self.broker_ok.set()
        self.disrupt_now = asyncio.Event()
        self.kills: list[str] = []
        self.died: list[str] = []
        self.broker_event = ""
        self.broker_event_at = 0.0

    async def _restart_dead(self, expected: str | None) -> None:
        # A service counts as dead only if the supervisor really started a new process for it.
        before = {s.instance: s.pid for s in self.stack.supervisor.status()}
        after = await asyncio.to_thread(self.stack.up, self.ready_timeout_s)
        self.died += [
            s.instance for s in after if s.pid != before.get(s.instance) and s.instance != expected
        ]

    async def run(self, started: float) -> None:
        """Until `stop`: kill, restart, and the broker failure once `disrupt_now` is set."""
        while not self.stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), self.every_s)
            if self.stop.is_set():
                break
            if self.disrupt_now.is_set() and not self.broker_event:
                self.broker_event_at = time.monotonic() - started
                if self.brokers.cluster is None:
                    self.broker_ok.clear()  # the client cannot submit while it is down
                try:
                    self.broker_event = await asyncio.to_thread(self.brokers.disrupt, self.rng)
                finally:
                    # Even when the restart failed: whoever waits for it must go on and see why.
                    self.broker_ok.set()
                _say(self.broker_event)
                await self._restart_dead(None)
                continue
            # A random instance of a random consuming service (one each when not scaled).
            instances = [i for i in self.stack.pids() if i.rstrip("-0123456789") in VICTIMS]
            victim = self.rng.choice(sorted(instances))
            pid = self.stack.pids().get(victim)
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
                self.kills.append(victim)
            await self._restart_dead(victim)


async def _submit_all(
    client: Stepline, driver: Driver, run_ids: Sequence[str], waves: int, gap_s: float
) -> None:
    per_wave = -(-len(run_ids) // waves)
    for wave in range(waves):
        if wave == waves // 2:
            driver.disrupt_now.set()
        for run_id in run_ids[wave * per_wave : (wave + 1) * per_wave]:
            while True:
                await driver.broker_ok.wait()
                try:
                    # A resubmission with the same run id is the same run (keyed, deduped).
                    await client.submit(
                        Goal(GOAL, tenant_id=TENANT, agent=AGENT, budget=Decimal("0.50")),
                        run_id=run_id,
                    )
                    break
                except Exception as error:  # the broker may be restarting: try again
                    _say(f"submit {run_id} failed ({type(error).__name__}); retrying")
                    await asyncio.sleep(1)
        await asyncio.sleep(gap_s)


async def run_chaos(
    state_dir: Path,
    *,
    runs: int,
    cluster: bool,
    partitions: int,
    seed: int,
    kill_every_s: float,
    fail_rate: float,
    run_timeout_s: float,
    instances: int = 1,
) -> ChaosResult:
    """The whole chaos run; returns its figures (problems listed, never raised)."""
    started = time.monotonic()
    rng = random.Random(seed)
    result = ChaosResult(
        mode=("cluster" if cluster else "single")
        + (f", {instances} instances" if instances > 1 else ""),
        runs=runs,
        partitions=partitions,
        replication_factor=3 if cluster else 1,
        instances=instances,
        ledger="postgresql" if instances > 1 else "sqlite",
    )
    brokers = Brokers(state_dir, cluster, rng)
    namespace = f"t{uuid.uuid4().hex[:10]}"
    postgres = PrivatePostgres(_free_block(1, rng)) if instances > 1 else None
    _say(f"starting {'a three-node cluster' if cluster else 'a broker'} in {state_dir}")
    try:
        await asyncio.to_thread(brokers.up)
        os.environ["STEPLINE_KAFKA_BOOTSTRAP"] = brokers.service_bootstrap
        os.environ["STEPLINE_REPLICATION_FACTOR"] = str(result.replication_factor)
        kafka = KafkaSettings(bootstrap=brokers.bootstrap)
        scale = {name: instances for name in VICTIMS}
        stack = Stack(state_dir / "stack", namespace, partitions=partitions, scale=scale)
        if postgres is not None:
            stack.env["STEPLINE_BILLING_DSN"] = await asyncio.to_thread(postgres.start, "chaos")
            _say(f"billing ledger: PostgreSQL {stack.env['STEPLINE_BILLING_DSN']}")
        provider, receiver = FlakyProvider(fail_rate, seed), Receiver()
        _configure(stack, provider.port, receiver.port)
        with provider.serving(), receiver.serving(), stack.running():
            _say(f"stack up in namespace {stack.namespace}; submitting {runs} runs")
            await _drive(stack, brokers, kafka, rng, kill_every_s, run_timeout_s, result, started)
            # Said, because each wait may take minutes when a group cannot catch up.
            _say("runs done; awaiting consumer lag 0 (at most 120 s)")
            result.lag = await _await_no_lag(kafka, stack, 120)
            _say(f"lag {result.lag}; awaiting the ledger = the usage topic (at most 120 s)")
            await _settle_billing(kafka, stack, result)
            result.dead_letters = len(await read_topic(kafka, stack.topic(Topics.DLQ)))
            if result.dead_letters:
                await _show_dead_letters(kafka, stack)
            result.died_on_their_own += [
                f"{n} (at the end)" for n, p in stack.pids().items() if p is None
            ]
        result.provider_requests, result.provider_503s = provider.requests, provider.failed
        result.webhook_calls = sum(receiver.seen.values())
        result.webhook_keys = len(receiver.seen)
        result.webhook_repeats = sum(1 for n in receiver.seen.values() if n > 1)
    finally:
        brokers.down()
        if postgres is not None:
            postgres.stop()
        os.environ.pop("STEPLINE_REPLICATION_FACTOR", None)
    result.generations = _generations(state_dir, namespace)
    result.seconds = round(time.monotonic() - started, 1)
    _judge(result)
    return result


async def _drive(
    stack: Stack,
    brokers: Brokers,
    kafka: KafkaSettings,
    rng: random.Random,
    kill_every_s: float,
    run_timeout_s: float,
    result: ChaosResult,
    started: float,
) -> None:
    run_ids = [f"run-chaos-{uuid.uuid4().hex[:16]}" for _ in range(result.runs)]
    waves = max(2, min(20, result.runs // 10))
    driver = Driver(stack, brokers, rng, kill_every_s, await_ready=result.instances == 1)
    t0 = time.monotonic()
    async with Stepline(stack.settings, source="chaos") as client:
        chaos = asyncio.create_task(driver.run(started))
        try:
            await _submit_all(client, driver, run_ids, waves, gap_s=3.0)
            result.submit_s = round(time.monotonic() - t0, 1)
            _say(f"all {len(run_ids)} runs submitted in {result.submit_s} s")
            # Keep the chaos going until the broker failure happened and the runs are done.
            deadline = time.monotonic() + run_timeout_s
            ended: dict[str, runs_pb2.RunEvent] = {}
            while time.monotonic() < deadline:
                if chaos.done():
                    # The driver never ends on its own: its failure is the run's, said at once.
                    chaos.result()
                    raise RuntimeError("the chaos driver stopped before it was told to")
                await driver.broker_ok.wait()
                try:
                    # Bounded: a read that never reaches the end must not stall the run silently.
                    ended = await asyncio.wait_for(_endings(kafka, stack), READ_TIMEOUT_S)
                except (KafkaError, TimeoutError) as error:  # the broker restarts under us
                    _say(f"reading the runs failed ({type(error).__name__}); retrying")
                    await asyncio.sleep(2)
                    continue
                done = sum(r in ended for r in run_ids)
                if done == len(run_ids) and driver.broker_event:
                    break
                _say(f"{done}/{len(run_ids)} runs terminal; kills so far {len(driver.kills)}")
                await asyncio.sleep(5)
            result.all_terminal_s = round(time.monotonic() - t0, 1)
        finally:
            driver.stop.set()
            await chaos
    statuses = await asyncio.to_thread(stack.up)
    result.died_on_their_own = driver.died
    result.kills = driver.kills
    result.broker_event, result.broker_event_at_s = (
        driver.broker_event,
        round(driver.broker_event_at, 1),
    )
    if not all(s.running for s in statuses):
        result.problems.append(f"services not running after the chaos: {statuses}")
    ended = await _endings(kafka, stack)
    endings: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    for run_id in run_ids:
        event = ended.get(run_id)
        kind = event.WhichOneof("event") if event is not None else None
        if kind is None or event is None:
            result.not_terminal += 1
            continue
        endings[kind] += 1
        if kind == "failed":
            reasons[runs_pb2.RunFailureReason.Name(event.failed.reason)] += 1
    result.endings, result.failure_reasons = dict(endings), dict(reasons)
    if result.not_terminal:
        for line in await _stuck(kafka, stack, [r for r in run_ids if r not in ended]):
            _say(f"not terminal: {line}")
    with_tools = await _tool_runs(kafka, stack)
    result.completed_without_tools = sum(
        1
        for r in run_ids
        if r not in with_tools
        and (e := ended.get(r)) is not None
        and e.WhichOneof("event") == "completed"
    )


async def _settle_billing(kafka: KafkaSettings, stack: Stack, result: ChaosResult) -> None:
    """Await billing's ledger reaching every usage id on the topic, then record both."""
    path = stack.state_dir / "billing" / "billing.sqlite3"
    deadline = time.monotonic() + 120
    while True:
        usage, on_topic = await _usage(kafka, stack)
        ledger = await asyncio.to_thread(_ledger, path, stack.env.get("STEPLINE_BILLING_DSN", ""))
        if (usage and set(ledger) == set(usage)) or time.monotonic() > deadline:
            break
        await asyncio.sleep(1)
    result.usage_ids, result.usage_records_on_topic = len(usage), on_topic
    result.ledger_rows = len(ledger)
    result.ledger_total = str(sum(ledger.values(), Decimal(0)))
    result.topic_total = str(sum(usage.values(), Decimal(0)))
    missing, extra = set(usage) - set(ledger), set(ledger) - set(usage)
    if missing or extra:
        result.problems.append(
            f"ledger differs from the usage topic: {len(missing)} missing, {len(extra)} extra"
        )
    if Decimal(result.ledger_total) != Decimal(result.topic_total):
        result.problems.append(f"ledger total {result.ledger_total} != topic {result.topic_total}")


async def _show_dead_letters(kafka: KafkaSettings, stack: Stack) -> None:
    for _, _, _, value in (await read_topic(kafka, stack.topic(Topics.DLQ)))[:5]:
        letter = dead_letter_pb2.DeadLetter.FromString(value or b"")
        _say(f"dead letter from {letter.source_topic} by {letter.consumer}: {letter.reason}")


def _judge(result: ChaosResult) -> None:
    if result.not_terminal:
        result.problems.append(f"{result.not_terminal} runs never reached a terminal state")
    if result.completed_without_tools:
        result.problems.append(
            f"{result.completed_without_tools} runs completed without running a tool"
        )
    if not result.webhook_calls:
        result.problems.append("the webhook was never called")
    if result.webhook_repeats:
        result.problems.append(f"{result.webhook_repeats} webhook calls arrived more than once")
    if any(result.lag.values()):
        result.problems.append(f"consumer lag left: {result.lag}")
    if not result.broker_event:
        result.problems.append("the broker failure never happened")
    if not result.kills:
        result.problems.append("no service was killed")
    if not result.provider_503s:
        result.problems.append("the flaky provider never failed")


def _summary(result: ChaosResult) -> str:
    kills = Counter(result.kills)
    lines = [
        f"mode: {result.mode} (partitions {result.partitions}, RF {result.replication_factor},"
        f" {result.ledger} ledger)",
        f"runs: {result.runs}; endings {result.endings}; not terminal {result.not_terminal}"
        + (f"; failure reasons {result.failure_reasons}" if result.failure_reasons else "")
        + f"; completed without a tool step {result.completed_without_tools}",
        f"service kills: {len(result.kills)} ({dict(kills)}); "
        f"died on their own: {result.died_on_their_own or 'none'}",
        f"broker: {result.broker_event} at {result.broker_event_at_s} s",
        f"provider: {result.provider_requests} requests, {result.provider_503s} answered 503",
        f"webhook: {result.webhook_calls} calls, {result.webhook_keys} keys, "
        f"{result.webhook_repeats} repeated",
        f"usage: {result.usage_records_on_topic} records on the topic, {result.usage_ids} unique "
        f"ids; ledger {result.ledger_rows} rows, total {result.ledger_total} "
        f"(topic {result.topic_total})",
        f"consumer lag: {result.lag}; dead letters: {result.dead_letters}",
        f"group generations: {result.generations}",
        f"submitted in {result.submit_s} s, all terminal after {result.all_terminal_s} s, "
        f"{result.seconds} s in all",
        "PASS" if result.ok else "FAIL:\n  " + "\n  ".join(result.problems),
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: run, print the summary, write the JSON, exit 0 on PASS."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200, help="runs to submit (default 200)")
    parser.add_argument(
        "--cluster", action="store_true", help="three brokers (RF 3, min ISR 2); kill one"
    )
    parser.add_argument(
        "--instances",
        type=int,
        default=1,
        help="instances of every consuming service (PostgreSQL ledger when > 1)",
    )
    parser.add_argument(
        "--partitions", type=int, help="partitions per topic (default 3, or 2 per instance)"
    )
    parser.add_argument("--seed", type=int, default=8, help="random seed (victims, 503s)")
    parser.add_argument("--kill-every", type=float, default=4.0, help="seconds between kills")
    parser.add_argument("--fail-rate", type=float, default=0.3, help="provider 503 share")
    parser.add_argument("--timeout", type=float, default=600, help="seconds for all runs to end")
    parser.add_argument("--state-dir", type=Path, help="keep logs and data here (default: temp)")
    parser.add_argument("--json", type=Path, help="result file (default bench/results/chaos*.json)")
    args = parser.parse_args(argv)
    if args.partitions is None:
        args.partitions = 3 if args.instances == 1 else 2 * args.instances
    name = "chaos-cluster" if args.cluster else "chaos"
    if args.instances > 1:
        name += "-scaled"
    # aiokafka logs every refused connection while a broker is down: that is the point here.
    logging.getLogger("aiokafka").addHandler(logging.NullHandler())
    logging.getLogger("aiokafka").propagate = False
    with tempfile.TemporaryDirectory(prefix="stepline-chaos-") as tmp:
        state = (args.state_dir or Path(tmp)).resolve()
        result = asyncio.run(
            run_chaos(
                state,
                runs=args.runs,
                cluster=args.cluster,
                instances=args.instances,
                partitions=args.partitions,
                seed=args.seed,
                kill_every_s=args.kill_every,
                fail_rate=args.fail_rate,
                run_timeout_s=args.timeout,
            )
        )
        print(_summary(result))
        if not result.ok:
            print(f"logs: {state / 'stack' / 'logs'}", file=sys.stderr)
    out = args.json or ROOT / "bench" / "results" / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    figures = {
        "benchmark": name,
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "seed": args.seed,
        "kill_every_s": args.kill_every,
        "provider_fail_rate": args.fail_rate,
        **asdict(result),
        "ok": result.ok,
    }
    out.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())

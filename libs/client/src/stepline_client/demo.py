"""`make demo` / `stepline demo`: a customer-support run end to end, live, with its costs.

From a fresh clone: uses the broker at STEPLINE_KAFKA_BOOTSTRAP when one answers (else starts
the local one and stops it afterwards), starts the four services as subprocesses in their own
topic namespace and state dir, and submits a goal to the `support` agent: find the customer in
the CRM database, search prior tickets, propose a resolution, ask approval to send the reply
(the demo approves it) and send it through the `send_reply` webhook tool, which posts to a
receiver the demo runs. The route's primary deployment is a loopback server that answers 503,
so every model step shows the failed attempt and the failover. With OPENAI_API_KEY,
ANTHROPIC_API_KEY or STEPLINE_OPENAI_BASE_URL set, a real model answers after that failover;
otherwise the deterministic offline `local` provider does. With LOCAL_LLM=1 a real local model
(SmolLM2-135M on llama.cpp's server, built once per machine by `make llama-env`) stands in
front of `local`: having no tool calling, it is skipped by the agent's tool-offering steps
(capability routing, in the trail) and answers the closing gateway call. Everything it started
is stopped at the end, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import re
import secrets
import socket
import subprocess
import sys
import threading
import time
import tomllib
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self, TextIO

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.partitioner import murmur2
from google.protobuf.message import Message

from stepline.v1 import model_pb2, runs_pb2, tools_pb2, usage_pb2
from stepline_client.client import Goal, Stepline
from stepline_client.events import describe, describe_attempt, money
from stepline_client.llama import MODEL_ALIAS, LlamaServer, llama_env
from stepline_client.supervisor import SERVICES, Supervisor
from stepline_localkafka import KafkaSettings as LocalKafkaSettings
from stepline_localkafka import LocalKafka, LocalKafkaError, find_repo_root, is_ready
from stepline_pricebook import PriceBook
from stepline_runtime.codec import InvalidRecordError, decode
from stepline_runtime.processor import inbound
from stepline_runtime.settings import KafkaSettings, ServiceSettings
from stepline_runtime.topics import Topics
from stepline_vocab import wire

__all__ = ["DemoResult", "FailingProvider", "ReplyReceiver", "main", "render_toml", "run_demo"]

TENANT = "demo"
AGENT = "support"
NAMESPACE = "demo"
TOOLS = ("crm_find_customer", "search_documents", "send_reply")
GOAL = (
    'Ticket T-1012 from ops@acme.example: "Our order O-5004 has been stuck in processing for '
    'three days and we need it this week. Can you ship what you have or refund us?" Find the '
    "customer in the CRM, search the knowledge base of prior support tickets for similar cases, "
    "propose a resolution and send the reply to the customer."
)
_OUTCOME = "MODEL_ATTEMPT_OUTCOME_"
# `make demo LOCAL_LLM=1`: the local llama.cpp server's deployment and its context window.
LOCAL_LLM_DEPLOYMENT = "local-llm"
LOCAL_LLM_CONTEXT = 2048


@dataclass
class DemoResult:
    """What the demo observed; also written as JSON with `--summary`."""

    run_id: str = ""
    status: str = ""
    answer: str = ""
    failovers: list[str] = field(default_factory=list)
    # Deployments passed over unsent because they cannot serve the request (capability).
    skipped: list[str] = field(default_factory=list)
    replies: list[dict[str, Any]] = field(default_factory=list)
    total_cost: str = ""
    usage_records: int = 0
    real_model: str = ""
    seconds: float = 0.0
    # The closing call through the router's OpenAI-compatible gateway (OpenAI SDK).
    gateway_attempts: int = 0
    gateway_deployment: str = ""


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

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)


class FailingProvider(_Server):
    """An OpenAI-compatible endpoint that is down: every request gets HTTP 503."""

    def __init__(self) -> None:
        self.requests = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                outer.requests += 1
                body = json.dumps(
                    {
                        "error": {
                            "message": "demo primary is unavailable (503 injected by make demo)",
                            "type": "server_error",
                        }
                    }
                ).encode()
                self.send_response(503)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return  # the router's attempt trail says it better

        super().__init__(Handler)


class ReplyReceiver(_Server):
    """The customer-mail system behind the `send_reply` webhook: records each reply it gets."""

    def __init__(self) -> None:
        self.replies: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self.arrived = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                key = self.headers.get("Idempotency-Key", "")
                try:
                    body = json.loads(raw)
                except ValueError:
                    self.send_response(400)
                    self.end_headers()
                    return
                with outer._lock:
                    # A retried delivery with the same key is the same reply: answer it again.
                    known = [r for r in outer.replies if r["idempotency_key"] == key]
                    if not known:
                        reply = {
                            "message_id": f"msg-{len(outer.replies) + 1}",
                            "idempotency_key": key,
                            "ticket_id": body.get("ticket_id"),
                            "body": body.get("body"),
                        }
                        outer.replies.append(reply)
                    message_id = (known[0] if known else outer.replies[-1])["message_id"]
                outer.arrived.set()
                answer = json.dumps(
                    {"status": "sent", "message_id": message_id, "ticket_id": body.get("ticket_id")}
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                return

        super().__init__(Handler)


# -------------------------------------------------------------------------------- config files


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        # JSON string escapes are TOML basic-string escapes (non-ASCII stays literal).
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        inner = ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items())
        return "{ " + inner + " }" if inner else "{}"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def render_toml(data: Mapping[str, Any]) -> str:
    """TOML text for a config mapping (tables, arrays of tables, inline values)."""
    lines = [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in data.items() if not _is_table(v)]
    for key, value in data.items():
        if isinstance(value, list) and _is_table(value):
            for item in value:
                lines += ["", f"[[{_toml_key(key)}]]"]
                lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in item.items()]
        elif isinstance(value, dict):
            nested = bool(value) and all(isinstance(v, dict) for v in value.values())
            sections = value.items() if nested else [("", value)]
            for sub, table in sections:
                name = f"{_toml_key(key)}.{_toml_key(sub)}" if sub else _toml_key(key)
                lines += ["", f"[{name}]"]
                lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines).lstrip("\n") + "\n"


def _is_table(value: Any) -> bool:
    return isinstance(value, dict) or (
        isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)
    )


def _real_deployments(env: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """Deployments of the real models the environment has credentials or a URL for."""
    caps = {"tools": True, "streaming": True, "context_window": 128000, "max_output_tokens": 4096}
    timeouts = {"connect_s": 5, "first_byte_s": 60, "total_s": 120}
    found: dict[str, dict[str, Any]] = {}
    base_url = env.get("STEPLINE_OPENAI_BASE_URL", "")
    if base_url:
        found["compatible"] = {
            "provider": "openai_compatible",
            "model": env.get("STEPLINE_OPENAI_MODEL", "gpt-4o-mini"),
            "base_url": base_url,
            "capabilities": caps,
            "timeouts": timeouts,
        }
        if env.get("OPENAI_API_KEY"):
            found["compatible"]["credential_env"] = "OPENAI_API_KEY"
    elif env.get("OPENAI_API_KEY"):
        found["openai"] = {
            "provider": "openai",
            "model": env.get("STEPLINE_OPENAI_MODEL", "gpt-4o-mini"),
            "base_url": "https://api.openai.com/v1",
            "credential_env": "OPENAI_API_KEY",
            "capabilities": caps,
            "timeouts": timeouts,
        }
    if env.get("ANTHROPIC_API_KEY"):
        found["anthropic"] = {
            "provider": "anthropic",
            "model": env.get("STEPLINE_ANTHROPIC_MODEL", "claude-haiku-4-5"),
            "base_url": "https://api.anthropic.com",
            "credential_env": "ANTHROPIC_API_KEY",
            "capabilities": {**caps, "context_window": 200000},
            "timeouts": timeouts,
        }
    return found


def demo_routes(
    template: Path, failing_port: int, env: Mapping[str, str], local_llm: str = ""
) -> dict[str, Any]:
    """The demo's routes: the failing primary on its real port, then real models, then local.

    `local_llm`: the base URL of the local llama.cpp server (`LOCAL_LLM=1`), put right in
    front of the offline stand-in. SmolLM2-135M has no tool calling, so the deployment says
    `tools = false`: the agent's steps (which offer tools) skip it, shown in the attempt trail,
    and it answers what needs no tools — the closing call through the HTTP gateway.
    """
    data = tomllib.loads(template.read_text(encoding="utf-8"))
    data["deployments"]["demo-primary"]["base_url"] = f"http://127.0.0.1:{failing_port}/v1"
    real = _real_deployments(env)
    if local_llm:
        real[LOCAL_LLM_DEPLOYMENT] = {
            "provider": "openai_compatible",
            "model": MODEL_ALIAS,
            "base_url": local_llm,
            "capabilities": {
                "tools": False,
                "streaming": True,
                "context_window": LOCAL_LLM_CONTEXT,
                "max_output_tokens": 256,
            },
            "timeouts": {"connect_s": 2, "first_byte_s": 60, "total_s": 90, "first_token_s": 60},
        }
    data["deployments"].update(real)
    route = data["routes"]["default"]["deployments"]
    route[1:1] = list(real)
    return data


def demo_prices(book: Path, routes: Mapping[str, Any]) -> dict[str, Any]:
    """The shared price book plus stand-in prices for the demo's otherwise unpriced entries.

    The router skips an unpriced deployment when a call carries a cost cap (every planner call
    does), so the failing primary and an OpenAI-compatible model of unknown price get the
    price of gpt-4o-mini here (from the book: its catalog or its local layer), and the demo's
    tools a per-call price like `sql_query`'s.
    """
    text = book.read_text(encoding="utf-8")
    data = tomllib.loads(text)
    prices = PriceBook.parse(text, str(book))
    stand_in = prices.model_price("openai", "gpt-4o-mini")
    if stand_in is None:
        raise RuntimeError(f"{book}: gpt-4o-mini is unpriced; the demo prices stand-ins like it")
    models = data.setdefault("models", [])
    for deployment in routes["deployments"].values():
        key = (deployment["provider"], deployment["model"])
        if prices.model_price(*key) is None and key not in {
            (m["provider"], m["model"]) for m in models
        }:
            models.append(
                {
                    "provider": key[0],
                    "model": key[1],
                    "input_per_mtok": str(stand_in.input_per_mtok),
                    "output_per_mtok": str(stand_in.output_per_mtok),
                }
            )
    tools = data.setdefault("tools", [])
    named = {t["name"] for t in tools}
    for tool in TOOLS:
        if tool not in named:
            tools.append({"name": tool, "per_call": "0.0001"})
    data["version"] = f"{data['version']}+demo"
    return data


def demo_tools(config: Path, webhook_port: int) -> dict[str, Any]:
    """The repository's tools file with `send_reply` posting to the demo's receiver."""
    data = tomllib.loads(config.read_text(encoding="utf-8"))
    base = config.parent
    # The written copy lives elsewhere: paths relative to the original file become absolute.
    data["search_documents"]["folder"] = str((base / data["search_documents"]["folder"]).resolve())
    sql = data["sql_query"]
    if "init_script" in sql:
        sql["init_script"] = str((base / sql["init_script"]).resolve())
    for hook in data.get("webhooks", []):
        if hook["name"] == "send_reply":
            hook["url"] = f"http://127.0.0.1:{webhook_port}/reply"
    return data


# ------------------------------------------------------------------------------ topic watching


def _partition(key: str, partitions: int) -> int:
    # Kafka's default partitioner (Java clients, aiokafka): murmur2 of the key, positive.
    hashed: int = murmur2(key.encode())
    return (hashed & 0x7FFFFFFF) % partitions


async def _partition_count(settings: ServiceSettings, topic: str, timeout_s: float) -> int:
    """Partitions of `topic`, waiting for a service to create it."""
    admin = AIOKafkaAdminClient(**settings.kafka.client_kwargs("stepline-demo-admin"))
    await admin.start()
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            described = await admin.describe_topics([topic])
            if described and not described[0]["error_code"] and described[0]["partitions"]:
                return len(described[0]["partitions"])
            if time.monotonic() > deadline:
                raise RuntimeError(f"topic {topic} was not created in {timeout_s:g}s")
            await asyncio.sleep(0.3)
    finally:
        await admin.close()


class _KeyWatch:
    """Follows the partition of one key of a topic from a point in time, decoding its records."""

    def __init__(
        self,
        settings: ServiceSettings,
        topic: str,
        key: str,
        types: list[type[Message]],
        on_message: Callable[[Any], None],
        since: datetime,
    ) -> None:
        self._settings, self._topic, self._key = settings, settings.topic(topic), key
        self._types, self._on_message, self._since = types, on_message, since
        self.changed = asyncio.Event()

    async def run(self) -> None:
        """Consume until cancelled."""
        consumer = AIOKafkaConsumer(
            enable_auto_commit=False,
            **self._settings.kafka.client_kwargs("stepline-demo-watch"),
        )
        await consumer.start()
        try:
            partitions = await _partition_count(self._settings, self._topic, 60)
            tp = TopicPartition(self._topic, _partition(self._key, partitions))
            consumer.assign([tp])
            start = int((self._since - timedelta(seconds=5)).timestamp() * 1000)
            found = await consumer.offsets_for_times({tp: start})
            if found.get(tp) is None:
                await consumer.seek_to_end(tp)
            else:
                consumer.seek(tp, found[tp].offset)
            while True:
                batch = await consumer.getmany(tp, timeout_ms=300)
                for record in batch.get(tp, []):
                    try:
                        message = decode(inbound(record), self._types).message
                    except InvalidRecordError:
                        continue
                    self._on_message(message)
                    self.changed.set()
        finally:
            await consumer.stop()


class _Trail:
    """Model results (the router's attempt trail) and usage records of one run."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.attempts: dict[str, list[model_pb2.ModelAttempt]] = {}
        self.usage: dict[str, usage_pb2.UsageRecorded] = {}

    def on_model_result(self, result: model_pb2.ModelCallResult) -> None:
        if result.run_id != self.run_id:
            return
        outcome = result.WhichOneof("outcome")
        attempts = result.completed.attempts if outcome == "completed" else result.failed.attempts
        self.attempts[result.step_id] = list(attempts)

    def on_usage(self, record: usage_pb2.UsageRecorded) -> None:
        if record.run_id == self.run_id:
            self.usage[record.usage_id] = record  # a redelivered record is the same entry


async def _wait_for(
    condition: Callable[[], bool], events: list[asyncio.Event], timeout_s: float
) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        for event in events:
            event.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                asyncio.wait(
                    [asyncio.create_task(e.wait()) for e in events],
                    return_when=asyncio.FIRST_COMPLETED,
                ),
                min(remaining, 0.5),
            )
    return True


async def _registered_tools(settings: ServiceSettings, wanted: set[str], timeout_s: float) -> None:
    """Wait until the executor has announced `wanted` on the tool registry topic."""
    topic = settings.topic(Topics.TOOLS)
    consumer = AIOKafkaConsumer(
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **settings.kafka.client_kwargs("stepline-demo-tools"),
    )
    await consumer.start()
    seen: set[str] = set()
    deadline = time.monotonic() + timeout_s
    try:
        count = await _partition_count(settings, topic, timeout_s)
        partitions = [TopicPartition(topic, p) for p in range(count)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        while not wanted <= seen and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=300)
            for records in batch.values():
                for record in records:
                    with contextlib.suppress(InvalidRecordError):
                        decode(inbound(record), [tools_pb2.ToolRegistered])
                        seen.add((record.key or b"").decode())
    finally:
        await consumer.stop()
    if not wanted <= seen:
        missing = ", ".join(sorted(wanted - seen))
        raise RuntimeError(f"the tool executor did not register {missing} in {timeout_s:g}s")


# ----------------------------------------------------------------------------------- printing


class _Out:
    def __init__(self, stream: TextIO, started: float) -> None:
        self._stream, self._started = stream, started

    def __call__(self, text: str = "", *, stamp: bool = True) -> None:
        prefix = f"[{time.monotonic() - self._started:6.1f}s] " if stamp and text else ""
        for line in text.splitlines() or [""]:
            print(f"{prefix}{line}", file=self._stream, flush=True)
            prefix = " " * len(prefix)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(header)]
    fmt = "  ".join("{:<%d}" % w for w in widths)  # noqa: UP031 (a format template)
    lines = [fmt.format(*header).rstrip(), "  ".join("-" * w for w in widths)]
    return lines + [fmt.format(*r).rstrip() for r in rows]


def _cost(record: usage_pb2.UsageRecorded) -> str:
    return money(record.cost) if record.priced else "unpriced"


def cost_table(records: list[usage_pb2.UsageRecorded], steps: Mapping[str, str]) -> list[str]:
    """One row per usage record (model attempts and tool executions), then totals per model/tool."""
    ordered = sorted(records, key=lambda r: (_step_number(r.step_id), r.call_id, r.attempt))
    rows = []
    totals: dict[str, list[Decimal | int]] = defaultdict(lambda: [Decimal(0), 0, 0, 0])
    for r in ordered:
        model = r.kind == usage_pb2.USAGE_KIND_MODEL_ATTEMPT
        what = f"{r.provider}/{r.model}" if model else r.tool
        outcome = (
            ("ok" if r.succeeded else _outcome_name(r.outcome))
            if model
            else ("ok" if r.succeeded else "failed")
        )
        tokens = f"{r.usage.input_tokens}→{r.usage.output_tokens}" if model else "-"
        rows.append(
            [
                steps.get(r.step_id, _step_label(r.step_id)),
                "model" if model else "tool",
                what,
                r.deployment or "-",
                str(r.attempt),
                outcome,
                tokens,
                _cost(r),
            ]
        )
        total = totals[what]
        total[0] = Decimal(total[0]) + (wire.amount_of(r.cost) if r.priced else Decimal(0))
        total[1] = int(total[1]) + 1
        total[2] = int(total[2]) + (0 if r.priced else 1)
        total[3] = int(total[3]) + r.usage.input_tokens + r.usage.output_tokens
    lines = _table(
        ["step", "kind", "model / tool", "deployment", "try", "outcome", "tokens", "cost"], rows
    )
    summary = [
        [
            what,
            str(t[1]),
            str(t[3]),
            f"${Decimal(t[0]):f}" + (f" (+{t[2]} unpriced)" if t[2] else ""),
        ]
        for what, t in sorted(totals.items())
    ]
    return [*lines, "", *_table(["model / tool", "records", "tokens", "cost"], summary)]


def _outcome_name(outcome: model_pb2.ModelAttemptOutcome.ValueType) -> str:
    return model_pb2.ModelAttemptOutcome.Name(outcome).removeprefix(_OUTCOME).lower()


def _step_number(step_id: str) -> int:
    tail = step_id.rsplit(":", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def _step_label(step_id: str) -> str:
    return step_id.rsplit(":", 1)[-1] or "?"


# ------------------------------------------------------------------------------------ the demo


@contextlib.contextmanager
def _broker(say: _Out) -> Iterator[str]:
    """The bootstrap to use: the configured broker when it answers, else a local one we stop."""
    local = LocalKafka(LocalKafkaSettings.resolve(), echo=lambda m: say(f"kafka: {m}"))
    bootstrap = local.bootstrap  # STEPLINE_KAFKA_BOOTSTRAP, else the local broker's port
    if asyncio.run(is_ready(bootstrap, 10.0)):
        say(f"kafka: using the broker at {bootstrap}")
        yield bootstrap
        return
    if local.settings.external_bootstrap is not None:
        raise RuntimeError(
            f"no broker answers at {bootstrap} — start it, or unset STEPLINE_KAFKA_BOOTSTRAP "
            "to let the demo start a local one"
        )
    say(f"kafka: no broker at {bootstrap}; starting the local one (stopped at the end)")
    started = local.up()
    try:
        yield local.bootstrap
    finally:
        if started:
            say("kafka: stopping the broker the demo started")
            local.down()


def _service_env(
    base: Mapping[str, str],
    bootstrap: str,
    namespace: str,
    state: Path,
    configs: Path,
    gateway: tuple[int, str],
) -> dict[str, str]:
    port, key = gateway
    return {
        **base,
        "STEPLINE_KAFKA_BOOTSTRAP": bootstrap,
        "STEPLINE_TOPIC_NAMESPACE": namespace,
        "STEPLINE_ROUTES": str(configs / "routes.toml"),
        "STEPLINE_TOOLS_CONFIG": str(configs / "tools.toml"),
        "STEPLINE_PRICEBOOK": str(configs / "pricebook.toml"),
        "STEPLINE_EXECUTOR_DATA_DIR": str(state / "tool-executor"),
        "STEPLINE_BILLING_DATA_DIR": str(state / "billing"),
        # The demo talks Kafka only; gRPC fronts on fixed ports would collide with a dev stack.
        "STEPLINE_GRPC_ENABLED": "false",
        "STEPLINE_BILLING_GRPC_ADDRESS": "127.0.0.1:0",
        "STEPLINE_FRONTDOOR_GRPC_ADDRESS": "127.0.0.1:0",
        # The router's HTTP gateway, called at the end with the OpenAI SDK and this run's key.
        "STEPLINE_HTTP_PORT": str(port),
        "STEPLINE_DEV_API_KEY": key,
        "STEPLINE_DEV_TENANT": TENANT,
        "PYTHONUNBUFFERED": "1",
    }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def _call_gateway(say: _Out, result: DemoResult, port: int, key: str) -> None:
    """One call through the router's OpenAI-compatible gateway, with the official OpenAI SDK."""
    try:
        import openai  # the workspace's dev group; an installed client may not have it
    except ImportError:
        say("gateway: the `openai` package is not installed; skipped")
        return
    client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key)
    raw = await client.chat.completions.with_raw_response.create(
        model="default",
        messages=[{"role": "user", "content": "What is the status of ticket T-1012?"}],
    )
    answer = raw.parse()
    result.gateway_attempts = int(raw.headers.get("x-stepline-attempts", "0"))
    result.gateway_deployment = answer.model
    say(stamp=False)
    say("the same router as an OpenAI-compatible API (openai SDK, base_url and key changed):")
    say(
        f"  model=default answered by {answer.model} after {result.gateway_attempts} attempts "
        f"(x-stepline-attempts), cost ${raw.headers.get('x-stepline-cost', '?')}",
        stamp=False,
    )
    say(f"  {(answer.choices[0].message.content or '').splitlines()[0][:100]}", stamp=False)
    say("  try it on `stepline up` (STEPLINE_DEV_API_KEY set for the router):", stamp=False)
    say(
        "  curl -s http://127.0.0.1:8400/v1/chat/completions"
        ' -H "authorization: Bearer $STEPLINE_DEV_API_KEY" -H "content-type: application/json"'
        """ -d '{"model":"default","messages":[{"role":"user","content":"hi"}]}'""",
        stamp=False,
    )


def _console(service_env: dict[str, str], state: Path) -> str:
    """Point the console at a free port with a fresh admin key of the demo tenant; its line."""
    port = _free_port()
    keys = state / "frontdoor" / "keys.toml"
    keys.unlink(missing_ok=True)
    issue = [sys.executable, "-m", "stepline_frontdoor.keyfile", "issue", "--file", str(keys)]
    secret = subprocess.run(
        [*issue, "--tenant", TENANT, "--scope", "admin", "--label", "make demo"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    service_env["STEPLINE_FRONTDOOR_PORT"] = str(port)
    service_env["STEPLINE_FRONTDOOR_DATA_DIR"] = str(state / "frontdoor")
    service_env["STEPLINE_FRONTDOOR_KEYS_FILE"] = str(keys)
    return f"console: http://127.0.0.1:{port}/#/runs (paste the key {secret})"


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _check_alive(supervisor: Supervisor) -> None:
    dead = [s for s in supervisor.status() if not s.running]
    if dead:
        details = "\n".join(f"--- {s.name} ({s.log}):\n{_log_tail(s.log)}" for s in dead)
        raise RuntimeError(f"service(s) stopped: {', '.join(s.name for s in dead)}\n{details}")


async def run_demo(
    *,
    state_dir: Path,
    bootstrap: str,
    namespace: str = NAMESPACE,
    env: Mapping[str, str] | None = None,
    out: TextIO = sys.stdout,
    timeout_s: float = 240.0,
    approve: Callable[[runs_pb2.ApprovalRequested], Awaitable[bool]] | None = None,
) -> DemoResult:
    """Start the services on `bootstrap`, run the support goal live, print answer and costs.

    The broker must be reachable (see `main`, which starts one when needed); the servers and
    services started here are stopped before returning.
    """
    env = dict(os.environ if env is None else env)
    started = time.monotonic()
    say = _Out(out, started)
    result = DemoResult()
    root = find_repo_root()
    configs = state_dir / "config"
    configs.mkdir(parents=True, exist_ok=True)
    settings = ServiceSettings(kafka=KafkaSettings(bootstrap=bootstrap), topic_namespace=namespace)
    supervisor = Supervisor(state_dir)
    leftovers = supervisor.down()
    if leftovers:
        say(f"stopped services left over from an earlier demo: {', '.join(leftovers)}")
    with (
        FailingProvider() as failing,
        ReplyReceiver() as receiver,
        _local_llm(env, root, state_dir, say) as local_llm,
    ):
        routes = demo_routes(root / "deploy/config/demo/routes.toml", failing.port, env, local_llm)
        (configs / "routes.toml").write_text(render_toml(routes))
        tools = demo_tools(root / "deploy/config/tools.toml", receiver.port)
        (configs / "tools.toml").write_text(render_toml(tools))
        prices = demo_prices(root / "deploy/config/pricebook.toml", routes)
        (configs / "pricebook.toml").write_text(render_toml(prices))
        chain = routes["routes"]["default"]["deployments"]
        real = [d for d in chain if d not in ("demo-primary", "local", LOCAL_LLM_DEPLOYMENT)]
        result.real_model = ", ".join(f"{routes['deployments'][d]['model']}" for d in real)
        say(f"route `default`: {' → '.join(chain)}")
        say(f"  demo-primary answers HTTP 503 at 127.0.0.1:{failing.port} (the injected outage)")
        say(
            f"  then {'the real model ' + result.real_model if real else 'the offline `local` '}"
            "provider" + ("" if real else " (deterministic stand-in, not an LLM)")
        )
        if local_llm:
            say(
                f"  {LOCAL_LLM_DEPLOYMENT} ({MODEL_ALIAS}, no tool calling) answers calls without"
                " tools; the agent's steps offer tools, so they skip it"
            )
        say(f"send_reply webhook → receiver at 127.0.0.1:{receiver.port}/reply")
        gateway = (_free_port(), f"sk-demo-{secrets.token_hex(16)}")
        service_env = _service_env(env, bootstrap, namespace, state_dir, configs, gateway)
        console = _console(service_env, state_dir)
        try:
            # Planner last: it reads the tool registry once at start, so the tools must be in.
            first = Supervisor(state_dir, tuple(s for s in SERVICES if s.name != "planner"))
            say(f"starting services (namespace {namespace!r}, logs in {state_dir / 'logs'})")
            await asyncio.to_thread(first.up, service_env)
            _check_alive(first)
            await _registered_tools(settings, set(TOOLS), 60)
            await asyncio.to_thread(supervisor.up, service_env)
            _check_alive(supervisor)
            say("services up: " + ", ".join(s.name for s in supervisor.status()))
            say(console)
            await asyncio.wait_for(
                _drive(settings, supervisor, say, result, receiver, approve), timeout_s
            )
            await asyncio.wait_for(_call_gateway(say, result, *gateway), 60)
        except TimeoutError:
            result.status = "timed out"
            say(f"the run did not finish within {timeout_s:g}s; logs in {state_dir / 'logs'}")
        finally:
            stopped = await asyncio.to_thread(supervisor.down)
            say(f"stopped {', '.join(stopped) or 'nothing'}; the demo's servers stop now")
        result.replies = list(receiver.replies)
    result.seconds = round(time.monotonic() - started, 1)
    return result


@contextlib.contextmanager
def _local_llm(env: Mapping[str, str], root: Path, state: Path, say: _Out) -> Iterator[str]:
    """With LOCAL_LLM=1: the local llama.cpp server running SmolLM2 (its base URL), else ""."""
    if env.get("LOCAL_LLM", "") in ("", "0", "false"):
        yield ""
        return
    say("LOCAL_LLM=1: building/starting llama.cpp with SmolLM2-135M (first time: ~3-5 min)")
    python, model = llama_env(root)
    log = state / "logs" / "llama-server.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with LlamaServer(python, model, _free_port(), log, n_ctx=LOCAL_LLM_CONTEXT) as server:
        say(f"llama.cpp server (SmolLM2-135M-Instruct) at {server.url}, log {log}")
        yield server.url


async def _auto_approve(_: runs_pb2.ApprovalRequested) -> bool:
    return True


async def _drive(
    settings: ServiceSettings,
    supervisor: Supervisor,
    say: _Out,
    result: DemoResult,
    receiver: ReplyReceiver,
    approve: Callable[[runs_pb2.ApprovalRequested], Awaitable[bool]] | None,
) -> None:
    decide = approve or _auto_approve
    submitted_at = datetime.now(UTC)
    async with Stepline(settings, source="stepline-demo") as client:
        goal = Goal(goal=GOAL, tenant_id=TENANT, agent=AGENT, submitted_by="make demo")
        run_id = goal.run_id()
        result.run_id = run_id
        trail = _Trail(run_id)
        watches = [
            _KeyWatch(
                settings,
                Topics.MODEL_RESULTS,
                run_id,
                [model_pb2.ModelCallResult],
                trail.on_model_result,
                submitted_at,
            ),
            _KeyWatch(
                settings,
                Topics.USAGE,
                TENANT,
                [usage_pb2.UsageRecorded],
                trail.on_usage,
                submitted_at,
            ),
        ]
        tasks = [asyncio.create_task(w.run()) for w in watches]
        try:
            await client.submit(goal, run_id=run_id)
            say(f"goal submitted: run {run_id} (tenant {TENANT}, agent {AGENT})")
            say(f"  {GOAL}")
            steps: dict[str, str] = {}
            tool_steps_done = 0
            last_check = time.monotonic()
            async for event in client.events(run_id, since=submitted_at):
                if time.monotonic() - last_check > 2:
                    _check_alive(supervisor)
                    last_check = time.monotonic()
                kind = event.WhichOneof("event")
                if kind in ("budget_reserved", "duplicate_result_ignored", "approval_requested"):
                    pass  # shown below in full, or not worth a line
                elif kind == "step_started" and event.step_started.tool:
                    s = event.step_started
                    call = f"{s.tool}({_short(s.arguments_json)})"
                    say(f"step {_step_label(s.step_id)} started: tool {call}")
                else:
                    say(describe(event))
                if kind == "step_started":
                    steps[event.step_started.step_id] = _step_label(event.step_started.step_id)
                elif kind == "step_completed":
                    c = event.step_completed
                    if c.kind == runs_pb2.STEP_KIND_MODEL:
                        step_id = c.step_id
                        await _wait_for(
                            functools.partial(trail.attempts.__contains__, step_id),
                            [watches[0].changed],
                            5,
                        )
                        attempts = trail.attempts.get(step_id, [])
                        for i, attempt in enumerate(attempts):
                            say(describe_attempt(attempt, i == len(attempts) - 1), stamp=False)
                        for failed in attempts[:-1]:
                            if failed.outcome == model_pb2.MODEL_ATTEMPT_OUTCOME_SKIPPED:
                                result.skipped.append(
                                    f"step {_step_label(step_id)}: {failed.deployment} "
                                    f"{failed.error_message}"
                                )
                                continue
                            result.failovers.append(
                                f"step {_step_label(step_id)}: {failed.deployment} "
                                f"{_outcome_name(failed.outcome)} HTTP {failed.status_code}"
                            )
                    elif c.outcome == runs_pb2.STEP_OUTCOME_SUCCEEDED:
                        tool_steps_done += 1
                elif kind == "approval_requested":
                    a = event.approval_requested
                    _show_proposal(say, a)
                    verdict = await decide(a)
                    await client.decide(
                        run_id,
                        TENANT,
                        a.approval_id,
                        approve=verdict,
                        call_id=a.call_id,
                        reason="by make demo",
                        decided_by="make demo",
                    )
                    say(f"demo {'approved' if verdict else 'denied'} {a.tool} ({a.approval_id})")
                elif kind == "completed":
                    result.status = "completed"
                    result.answer = event.completed.answer
                    result.total_cost = money(event.completed.cost)
                elif kind == "failed":
                    result.status = "failed"
                    result.answer = event.failed.message
                    result.total_cost = money(event.failed.cost)
                elif kind == "cancelled":
                    result.status = "cancelled"
            expected_model = sum(len(a) for a in trail.attempts.values())

            def settled() -> bool:
                kinds = [r.kind for r in trail.usage.values()]
                return (
                    kinds.count(usage_pb2.USAGE_KIND_MODEL_ATTEMPT) >= expected_model
                    and kinds.count(usage_pb2.USAGE_KIND_TOOL_EXECUTION) >= tool_steps_done
                )

            await _wait_for(settled, [watches[1].changed], 10)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    _show_end(say, result, trail, steps, receiver)


def _short(arguments_json: str, limit: int = 90) -> str:
    flat = arguments_json.replace("\\n", " ")
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _show_proposal(say: _Out, approval: runs_pb2.ApprovalRequested) -> None:
    try:
        arguments = json.loads(approval.arguments_json)
    except ValueError:
        arguments = {}
    say(f"approval requested: {approval.tool} wants to send this reply")
    for key, value in arguments.items():
        if key != "body":
            say(f"    {key}: {value}", stamp=False)
    for line in str(arguments.get("body", approval.arguments_json)).splitlines():
        say(f"    │ {line}", stamp=False)


def _show_end(
    say: _Out,
    result: DemoResult,
    trail: _Trail,
    steps: Mapping[str, str],
    receiver: ReplyReceiver,
) -> None:
    records = list(trail.usage.values())
    result.usage_records = len(records)
    say(stamp=False)
    say(f"run {result.run_id}: {result.status or 'unfinished'}", stamp=False)
    say("answer:", stamp=False)
    for line in (result.answer or "(none)").splitlines():
        say(f"  {line}", stamp=False)
    say(stamp=False)
    say(
        f"failover: {len(result.failovers)} failed attempt(s) on the primary, each answered by"
        " the next deployment"
        if result.failovers
        else "failover: none seen",
        stamp=False,
    )
    if result.skipped:
        say(
            f"capability routing: {len(result.skipped)} attempt(s) skipped without being sent"
            f" ({result.skipped[0].split(': ', 1)[1]})",
            stamp=False,
        )
    count = len(receiver.replies)
    say(f"webhook receiver got {count} repl{'y' if count == 1 else 'ies'}", stamp=False)
    for reply in receiver.replies:
        say(f"  {reply['message_id']} on {reply['ticket_id']}", stamp=False)
    say(stamp=False)
    say(f"cost (from {len(records)} usage records on stepline.usage.v1):", stamp=False)
    for line in cost_table(records, steps):
        say(f"  {line}", stamp=False)
    say(f"  run total (RunCompleted): {result.total_cost or '-'}", stamp=False)


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m stepline_client.demo` (and `make demo`)."""
    parser = argparse.ArgumentParser(prog="stepline demo", description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", type=Path, help="default: .local/demo of the checkout")
    parser.add_argument("--namespace", help=f"topic namespace (default {NAMESPACE!r})")
    parser.add_argument("--timeout", type=float, default=240.0, help="seconds for the run")
    parser.add_argument("--summary", type=Path, help="also write the outcome here as JSON")
    args = parser.parse_args(argv)
    state = (args.state_dir or find_repo_root() / ".local" / "demo").resolve()
    namespace = args.namespace or os.environ.get("STEPLINE_TOPIC_NAMESPACE") or NAMESPACE
    say = _Out(sys.stdout, time.monotonic())
    try:
        with _broker(say) as ready:
            result = asyncio.run(
                run_demo(
                    state_dir=state, bootstrap=ready, namespace=namespace, timeout_s=args.timeout
                )
            )
    except KeyboardInterrupt:
        print("interrupted; everything the demo started was stopped", file=sys.stderr)
        return 130
    except (RuntimeError, LocalKafkaError) as error:
        print(f"make demo: {error}", file=sys.stderr)
        return 1
    if args.summary:
        args.summary.write_text(json.dumps(asdict(result), indent=2))
    print(f"\ndemo finished in {result.seconds:.1f}s (services and servers stopped)")
    return 0 if result.status == "completed" else 1


if __name__ == "__main__":
    sys.exit(main())

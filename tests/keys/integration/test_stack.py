"""Keys on a whole `stepline up` stack: the bootstrap key, `stepline keys …`, every method of
every gRPC door refused without a key or for another tenant, and a secret scan at the end.

Tests run in file order on one stack (its own namespace, state dir and ports).
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor

from stepline.v1 import (
    billing_service_pb2,
    common_pb2,
    control_pb2,
    gateway_service_pb2,
    goals_pb2,
    router_service_pb2,
)
from stepline_keys.credentials import KEY_FILE_NAME
from stepline_keys.grpcdoor import call_metadata
from stepline_runtime.settings import KafkaSettings, namespaced
from stepline_runtime.topics import CATALOG

pytestmark = pytest.mark.kafka

ROOT = Path(__file__).resolve().parents[3]
TENANT = "acme"
SECRET = re.compile(r"sk-stl-key_[0-9a-f]{16}_[A-Za-z0-9_-]{43}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Stack:
    """A `stepline up` stack and everything the tests saw (for the secret scan)."""

    env: dict[str, str]
    state: Path
    doors: dict[str, str]
    secrets: set[str] = field(default_factory=set)
    texts: list[str] = field(default_factory=list)

    def run(self, *args: str, key: str | None = None) -> subprocess.CompletedProcess[str]:
        """One CLI command (with `key` as STEPLINE_API_KEY when given); output kept."""
        env = dict(self.env)
        if key:
            env["STEPLINE_API_KEY"] = key
        done = subprocess.run(
            [sys.executable, "-m", "stepline_client.cli", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        self.texts += [done.stdout, done.stderr]
        self.secrets.update(SECRET.findall(done.stdout))
        return done

    def ok(self, *args: str, key: str | None = None) -> str:
        """A CLI command that must succeed; its stdout."""
        done = self.run(*args, key=key)
        assert done.returncode == 0, f"stepline {' '.join(args)}: {done.stdout}{done.stderr}"
        return done.stdout

    @property
    def bootstrap(self) -> str:
        """The bootstrap key `up` stored."""
        return (self.state / KEY_FILE_NAME).read_text().strip()


@pytest.fixture(scope="module")
def stack(kafka: KafkaSettings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """`stepline up` in a fresh namespace; `down` at the end."""
    state = tmp_path_factory.mktemp("keys-stack")
    doors = {
        "router": f"127.0.0.1:{_free_port()}",
        "billing": f"127.0.0.1:{_free_port()}",
        "gateway": f"127.0.0.1:{_free_port()}",
    }
    env = {
        **os.environ,
        "STEPLINE_KAFKA_BOOTSTRAP": kafka.bootstrap,
        "STEPLINE_TOPIC_NAMESPACE": f"t{uuid.uuid4().hex[:10]}",
        "STEPLINE_STATE_DIR": str(state),
        "STEPLINE_PARTITIONS": "2",
        "STEPLINE_METRICS_PORT": "0",
        "STEPLINE_GRPC_PORT": doors["router"].rsplit(":", 1)[1],
        "STEPLINE_BILLING_GRPC_ADDRESS": doors["billing"],
        "STEPLINE_FRONTDOOR_GRPC_ADDRESS": doors["gateway"],
        "STEPLINE_FRONTDOOR_PORT": "0",
        "STEPLINE_FRONTDOOR_DATA_DIR": str(state / "frontdoor"),
        "STEPLINE_EXECUTOR_DATA_DIR": str(state / "tool-executor"),
        "STEPLINE_BILLING_DATA_DIR": str(state / "billing"),
        "STEPLINE_BOOTSTRAP_TENANT": TENANT,
        "PYTHONUNBUFFERED": "1",
    }
    for name in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "STEPLINE_OPENAI_BASE_URL"):
        env.pop(name, None)
    env.pop("STEPLINE_API_KEY", None)
    stack = Stack(env, state, doors)
    try:
        stack.texts.append(stack.ok("up", "--timeout", "120"))
        yield stack
    finally:
        stack.run("down", "--keep-kafka")


def test_up_prints_the_bootstrap_key_once_and_keeps_it_owner_only(stack: Stack) -> None:
    path = stack.state / KEY_FILE_NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stack.bootstrap in stack.texts[0]
    assert "loopback only" in stack.texts[0]
    again = stack.ok("up")
    assert f"api key: {path}" in again
    assert stack.bootstrap not in again
    listed = stack.ok("keys", "list")
    assert re.search(rf"^key_\w+\s+{TENANT}\s+active\s+admin\s", listed, re.M), listed
    assert not SECRET.search(listed)


def test_keys_create_list_rotate_revoke_take_effect_at_billing(stack: Stack) -> None:
    out = stack.ok(
        "keys", "create", "--tenant", TENANT, "--scopes", "usage:read",
        "--daily-limit", "5.00", "--rpm", "60", "--label", "analyst",
    )  # fmt: skip
    key_id = re.search(r"^key (key_\w+) for tenant", out, re.M)
    assert key_id, out
    [secret] = SECRET.findall(out)
    listed = stack.ok("keys", "list", "--tenant", TENANT)
    assert key_id.group(1) in listed
    assert "day 5.00, rpm 60" in listed
    assert secret not in listed
    assert "total:" in _usage(stack, secret).stdout

    rotated = stack.ok("keys", "rotate", key_id.group(1))
    [fresh] = SECRET.findall(rotated)
    assert "total:" in _usage(stack, fresh).stdout
    _until_refused(stack, secret)
    new_id = re.search(r"^key (key_\w+) for tenant", rotated, re.M)
    assert new_id, rotated
    stack.ok("keys", "revoke", new_id.group(1))
    _until_refused(stack, fresh)
    refused = stack.run("keys", "revoke", new_id.group(1))
    assert refused.returncode == 2
    assert "was revoked" in refused.stderr
    # Missing scope: a usage-only key cannot submit goals.
    stack.texts.append(stack.ok("keys", "list", "--all"))


def _usage(stack: Stack, secret: str) -> subprocess.CompletedProcess[str]:
    return stack.run("usage", "--billing", stack.doors["billing"], key=secret)


def _until_refused(stack: Stack, secret: str) -> None:
    deadline = time.monotonic() + 10
    while True:
        done = _usage(stack, secret)
        if done.returncode == 2 and "UNAUTHENTICATED" in done.stderr:
            return
        assert time.monotonic() < deadline, done.stdout + done.stderr
        time.sleep(0.2)


SERVICES: dict[str, ServiceDescriptor] = {
    "gateway": gateway_service_pb2.DESCRIPTOR.services_by_name["GatewayService"],
    "router": router_service_pb2.DESCRIPTOR.services_by_name["ModelRouterService"],
    "billing": billing_service_pb2.DESCRIPTOR.services_by_name["BillingService"],
}


def _request(method: MethodDescriptor, run_id: str) -> Any:
    """A request for `method` that reaches for TENANT's data (its tenant, its run)."""
    outer: Any = message_factory.GetMessageClass(method.input_type)()
    # A streaming call wraps its unary request (CompleteStreamRequest.request).
    wrapped = "request" in outer.DESCRIPTOR.fields_by_name
    request: Any = outer.request if wrapped else outer
    fields = request.DESCRIPTOR.fields_by_name
    if "tenant_id" in fields:
        request.tenant_id = TENANT
    if "run_id" in fields:
        request.run_id = run_id
    if "goal" in fields:
        request.goal.CopyFrom(goals_pb2.GoalSubmitted(tenant_id=TENANT, goal="hi", agent="local"))
    if "messages" in fields:
        request.route = "local"
        request.messages.append(
            common_pb2.ChatMessage(role=common_pb2.ChatMessage.ROLE_USER, content="hi")
        )
    if "decision" in fields:
        request.decision.CopyFrom(
            control_pb2.ApprovalDecided(
                approval_id="a1", decision=control_pb2.APPROVAL_DECISION_APPROVED
            )
        )
    return outer


async def _call(
    address: str,
    service: ServiceDescriptor,
    method: MethodDescriptor,
    request: Any,
    key: str | None,
) -> tuple[grpc.StatusCode, str]:
    path = f"/{service.full_name}/{method.name}"
    response = message_factory.GetMessageClass(method.output_type)
    metadata = call_metadata(key) if key else ()
    async with grpc.aio.insecure_channel(address) as channel:
        try:
            if method.server_streaming:
                stream: Any = channel.unary_stream(
                    path,
                    request_serializer=lambda m: m.SerializeToString(),
                    response_deserializer=response.FromString,
                )(request, metadata=metadata, timeout=20)
                async for _ in stream:
                    pass
            else:
                await channel.unary_unary(
                    path,
                    request_serializer=lambda m: m.SerializeToString(),
                    response_deserializer=response.FromString,
                )(request, metadata=metadata, timeout=20)
        except grpc.aio.AioRpcError as error:
            return error.code(), error.details() or ""
    return grpc.StatusCode.OK, ""


async def test_every_method_of_every_door_needs_a_key_of_the_right_tenant(stack: Stack) -> None:
    submitted = await _call(
        stack.doors["gateway"],
        SERVICES["gateway"],
        SERVICES["gateway"].methods_by_name["SubmitGoal"],
        gateway_service_pb2.SubmitGoalRequest(
            goal=goals_pb2.GoalSubmitted(goal="What is 2+2?", agent="local")
        ),
        stack.bootstrap,
    )
    assert submitted[0] == grpc.StatusCode.OK, submitted
    run_id = await _own_run(stack)
    out = stack.ok("keys", "create", "--tenant", "globex", "--scopes", "admin")
    [intruder] = SECRET.findall(out)
    revoked_out = stack.ok("keys", "create", "--tenant", TENANT, "--scopes", "admin")
    [revoked] = SECRET.findall(revoked_out)
    stack.ok("keys", "revoke", re.findall(r"^key (key_\w+)", revoked_out, re.M)[0])
    await asyncio.sleep(2)

    walked = []
    for door, service in SERVICES.items():
        for method in service.methods:
            request = _request(method, run_id)
            for key, expected in (
                (None, grpc.StatusCode.UNAUTHENTICATED),
                ("sk-stl-key_0000000000000000_" + "A" * 43, grpc.StatusCode.UNAUTHENTICATED),
                (revoked, grpc.StatusCode.UNAUTHENTICATED),
                (intruder, grpc.StatusCode.PERMISSION_DENIED),
            ):
                code, details = await _call(stack.doors[door], service, method, request, key)
                stack.texts.append(details)
                assert code == expected, (door, method.name, key and key[:20], code, details)
            if door == "gateway" and "run_id" in request.DESCRIPTOR.fields_by_name:
                # Naming no tenant: the run itself is what the key may not see. (Billing then
                # answers the key's own tenant's usage of that run id: nothing.)
                request.tenant_id = ""
                code, details = await _call(stack.doors[door], service, method, request, intruder)
                assert code == grpc.StatusCode.PERMISSION_DENIED, (method.name, details)
            walked.append(f"{door}.{method.name}")
    assert len(walked) == sum(len(s.methods) for s in SERVICES.values()) >= 9, walked
    # The answer for another tenant's run equals the answer for no run at all.
    gateway, get = SERVICES["gateway"], SERVICES["gateway"].methods_by_name["GetRun"]
    address = stack.doors["gateway"]
    foreign = await _call(
        address, gateway, get, gateway_service_pb2.GetRunRequest(run_id=run_id), intruder
    )
    nowhere = await _call(
        address, gateway, get, gateway_service_pb2.GetRunRequest(run_id="run-0"), intruder
    )
    assert foreign[0] == nowhere[0] == grpc.StatusCode.PERMISSION_DENIED
    assert foreign[1].replace(run_id, "X") == nowhere[1].replace("run-0", "X")
    # The owner reads it.
    own = await _call(
        address, gateway, get, gateway_service_pb2.GetRunRequest(run_id=run_id), stack.bootstrap
    )
    assert own[0] == grpc.StatusCode.OK


async def _own_run(stack: Stack) -> str:
    """The run id of the goal just submitted, once its first event is on the runs topic."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for record in await _records(stack, "stepline.runs.v1"):
            return (record[0] or b"").decode()
        await asyncio.sleep(0.5)
    raise AssertionError("no run event within 60 s")


async def _records(stack: Stack, name: str) -> list[tuple[bytes | None, bytes, list[Any]]]:
    """Every record of one topic of the stack: key, value, headers."""
    kafka = KafkaSettings(bootstrap=stack.env["STEPLINE_KAFKA_BOOTSTRAP"])
    topic = namespaced(name, stack.env["STEPLINE_TOPIC_NAMESPACE"])
    consumer = AIOKafkaConsumer(**kafka.client_kwargs("keys-scan"))
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        if not parts:
            await consumer._client.force_metadata_update()
            parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in parts]
        if not tps:
            return []
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        found = []
        while [tp for tp in tps if await consumer.position(tp) < end[tp]]:
            for batch in (await consumer.getmany(timeout_ms=500)).values():
                found += [(r.key, r.value or b"", list(r.headers)) for r in batch]
        return found
    finally:
        await consumer.stop()


async def test_no_secret_in_any_topic_log_or_error_text(stack: Stack) -> None:
    secrets = {stack.bootstrap, *stack.secrets}
    assert len(secrets) >= 5
    # The whole secret, and its random part alone (in case a prefix were cut off).
    needles = sorted(secrets | {s.split("_", 2)[2] for s in secrets})
    raw = [n.encode() for n in needles]
    scanned = 0
    for topic in CATALOG:
        for key, value, headers in await _records(stack, topic.name):
            blob = b"".join([key or b"", value, *(k.encode() + (v or b"") for k, v in headers)])
            assert not any(n in blob for n in raw), topic.name
            scanned += 1
    logs = sorted((stack.state / "logs").glob("*.log"))
    assert logs
    for log in logs:
        content = log.read_bytes()
        assert not any(n in content for n in raw), log.name
    # Error texts of the doors and every CLI output but the one that created a secret.
    shown = [t for t in stack.texts if "secret (shown once" in t or "bootstrap API key" in t]
    for text in stack.texts:
        if text not in shown:
            assert not any(n in text for n in needles), text[:200]
    print(f"secret scan: {scanned} records, {len(logs)} logs, {len(stack.texts)} texts")

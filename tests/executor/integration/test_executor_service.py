"""The executor as a real subprocess on the real broker: serving, registry, usage, SIGKILL."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from stepline.v1 import tools_pb2, usage_pb2
from stepline_executor.names import SAFE_NAME
from stepline_executor.registry_topic import read_registered_names
from stepline_runtime.codec import encode
from stepline_runtime.settings import KafkaSettings
from stepline_runtime.topics import CATALOG, Topics, ensure_topics
from tests.executor import everything
from tests.executor.fakes import LocalServer, Seen
from tests.executor.service import ROOT, Service, refund_tools, request_call, results_by_call
from tests.kafkatools import read_all

pytestmark = pytest.mark.kafka


def _config(tmp: Path, webhook_url: str) -> Path:
    extra = '[agents.restricted]\ntools = ["calculator"]\n'
    return refund_tools(tmp / "tools.toml", webhook_url, extra)


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    namespace = f"t{uuid.uuid4().hex[:10]}"
    holder = Service(namespace, tmp_path / "tools.toml", tmp_path / "data", tmp_path / "exec.log")
    try:
        yield holder
    finally:
        holder.stop()
        if holder.log.exists():
            sys.stderr.write(holder.log.read_text(errors="replace")[-4000:])


async def _topics(admin: AIOKafkaAdminClient, namespace: str) -> None:
    wanted = {Topics.TOOL_REQUESTS, Topics.TOOL_RESULTS, Topics.TOOLS, Topics.USAGE, Topics.DLQ}
    await ensure_topics(admin, [t for t in CATALOG if t.name in wanted], 2, 1, namespace)


async def test_executor_serves_calls_publishes_registry_and_usage(
    kafka: KafkaSettings,
    admin: AIOKafkaAdminClient,
    producer: AIOKafkaProducer,
    service: Service,
    tmp_path: Path,
) -> None:
    await _topics(admin, service.namespace)
    with LocalServer() as receiver:
        _config(tmp_path, receiver.url("/refund"))
        await request_call(producer, service, "ra:1:0", "calculator", '{"expression": "6 * 7"}')
        await request_call(producer, service, "ra:1:1", "calculator", '{"expr": 1}')
        await request_call(producer, service, "ra:1:2", "teleport", "{}")
        await request_call(
            producer, service, "ra:1:3", "issue_refund", '{"order_id": "O-1"}', "restricted"
        )
        # As a replay's executed call (the planner marks it): its usage says so.
        await request_call(
            producer, service, "ra:1:4", "issue_refund", '{"order_id": "O-2"}', replay_of="orig"
        )
        service.start()
        results = results_by_call(
            await read_all(kafka, service.topic(Topics.TOOL_RESULTS), expect=5, timeout_s=90)
        )
    assert len(results) == 5
    assert json.loads(results["ra:1:0"].completed.output)["result"] == 42
    failed = {c: r.failed.kind for c, r in results.items() if r.HasField("failed")}
    assert failed == {
        "ra:1:1": tools_pb2.TOOL_CALL_ERROR_KIND_INVALID_ARGUMENTS,
        "ra:1:2": tools_pb2.TOOL_CALL_ERROR_KIND_UNKNOWN_TOOL,
        "ra:1:3": tools_pb2.TOOL_CALL_ERROR_KIND_NOT_ALLOWED,
    }
    assert "expression: Field required" in results["ra:1:1"].failed.message
    assert results["ra:1:4"].HasField("completed")
    assert [s.headers["idempotency-key"] for s in receiver.seen] == ["idem-ra:1:4"]

    registered = {}
    for record in await read_all(kafka, service.topic(Topics.TOOLS), expect=2, timeout_s=30):
        message = tools_pb2.ToolRegistered.FromString(record.value or b"")
        registered[message.definition.name] = message
    assert set(registered) == {"calculator", "issue_refund"}
    schema = json.loads(registered["issue_refund"].definition.parameters_json_schema)
    assert schema["required"] == ["order_id"]
    assert registered["calculator"].price_per_call.amount == "0"

    usage = [
        usage_pb2.UsageRecorded.FromString(r.value or b"")
        for r in await read_all(kafka, service.topic(Topics.USAGE), expect=2, timeout_s=30)
    ]
    by_id = {u.usage_id: u for u in usage}
    assert set(by_id) == {"ra:1:0/exec", "ra:1:4/exec"}  # only executions are billed
    assert by_id["ra:1:0/exec"].kind == usage_pb2.USAGE_KIND_TOOL_EXECUTION
    assert by_id["ra:1:0/exec"].priced
    assert by_id["ra:1:0/exec"].succeeded
    assert not by_id["ra:1:4/exec"].priced  # no price-book entry: unpriced, never free
    assert not by_id["ra:1:4/exec"].HasField("cost")  # unpriced omits cost, as model attempts do
    assert (by_id["ra:1:0/exec"].replay_of, by_id["ra:1:4/exec"].replay_of) == ("", "orig")


async def test_sigkill_between_started_and_completed_never_calls_the_webhook_twice(
    kafka: KafkaSettings,
    admin: AIOKafkaAdminClient,
    producer: AIOKafkaProducer,
    service: Service,
    tmp_path: Path,
) -> None:
    await _topics(admin, service.namespace)
    release = threading.Event()
    arrived = threading.Event()

    def slow(seen: Seen) -> tuple[int, dict[str, str], bytes]:
        arrived.set()
        release.wait(60)  # hold the call open while the executor is killed
        return 200, {"content-type": "application/json"}, b'{"refunded": true}'

    with LocalServer(slow) as receiver:
        _config(tmp_path, receiver.url("/refund"))
        await request_call(producer, service, "rk:1:0", "issue_refund", '{"order_id": "O-9"}')
        service.start()
        assert await asyncio.to_thread(arrived.wait, 90), "the webhook was never called"
        service.kill()  # "started" is recorded, "completed" is not
        release.set()
        service.start()
        records = await read_all(kafka, service.topic(Topics.TOOL_RESULTS), expect=1, timeout_s=90)
        calls = len(receiver.seen)
    results = results_by_call(records)
    assert calls == 1
    assert len(records) == 1  # one result, never a second execution's
    assert list(results) == ["rk:1:0"]
    result = results["rk:1:0"]
    assert result.failed.kind == tools_pb2.TOOL_CALL_ERROR_KIND_OUTCOME_UNKNOWN
    assert "not run again" in result.failed.message


def _priced_book(tmp: Path, tool: str, price: str) -> Path:
    """The shipped price book plus a price for `tool`."""
    book = tmp / "pricebook.toml"
    shipped = (ROOT / "deploy" / "config" / "pricebook.toml").read_text(encoding="utf-8")
    book.write_text(f'{shipped}\n[[tools]]\nname = "{tool}"\nper_call = "{price}"\n')
    return book


async def _request_due(
    producer: AIOKafkaProducer, service: Service, call: str, tool: str, args: str, in_s: float
) -> None:
    run_id = call.split(":")[0]
    message = tools_pb2.ToolCallRequested(
        run_id=run_id,
        tenant_id="acme",
        step_id=call.rsplit(":", 1)[0],
        call_id=call,
        tool=tool,
        arguments_json=args,
        idempotency_key=f"idem-{call}",
    )
    message.deadline.FromDatetime(datetime.now(UTC) + timedelta(seconds=in_s))
    record = encode(
        service.topic(Topics.TOOL_REQUESTS), run_id, message, event_id=call, source="test"
    )
    await producer.send_and_wait(
        record.topic, record.value, key=record.key, headers=list(record.headers)
    )


async def test_a_started_call_that_expires_is_outcome_unknown_and_billed_as_its_result_says(
    kafka: KafkaSettings,
    admin: AIOKafkaAdminClient,
    producer: AIOKafkaProducer,
    service: Service,
    tmp_path: Path,
) -> None:
    # Issue 19 defects 1 and 2: the webhook received the POST, then the deadline passed.
    await _topics(admin, service.namespace)
    service.env["STEPLINE_PRICEBOOK"] = str(_priced_book(tmp_path, "issue_refund", "0.25"))

    def slow(seen: Seen) -> tuple[int, dict[str, str], bytes]:
        time.sleep(4)
        return 200, {"content-type": "application/json"}, b'{"refunded": true}'

    with LocalServer(slow) as receiver:
        _config(tmp_path, receiver.url("/refund"))
        service.start()
        assert await _registered(kafka, service, "issue_refund")
        # Too little time left to start a non-idempotent call: refused, nothing sent.
        await _request_due(producer, service, "rf:1:0", "issue_refund", '{"order_id": "F"}', 0.3)
        # Enough to start, not enough to finish: the POST arrives, then the deadline passes.
        await _request_due(producer, service, "rd:1:0", "issue_refund", '{"order_id": "D"}', 3)
        results = results_by_call(
            await read_all(kafka, service.topic(Topics.TOOL_RESULTS), expect=2, timeout_s=60)
        )
        bodies = [json.loads(s.body)["order_id"] for s in receiver.seen]
    assert bodies == ["D"]
    refused, unknown = results["rf:1:0"], results["rd:1:0"]
    assert refused.failed.kind == tools_pb2.TOOL_CALL_ERROR_KIND_TIMED_OUT
    assert "nothing was sent" in refused.failed.message
    assert refused.failed.retryable
    assert not refused.HasField("cost")
    assert unknown.failed.kind == tools_pb2.TOOL_CALL_ERROR_KIND_OUTCOME_UNKNOWN
    assert "was started at" in unknown.failed.message
    assert not unknown.failed.retryable
    usage = {
        u.usage_id: u
        for u in (
            usage_pb2.UsageRecorded.FromString(r.value or b"")
            for r in await read_all(kafka, service.topic(Topics.USAGE), expect=1, timeout_s=30)
        )
    }
    assert set(usage) == {"rd:1:0/exec"}  # the refused call is not billed
    assert usage["rd:1:0/exec"].cost.amount == unknown.cost.amount == "0.25"


async def _registered(
    kafka: KafkaSettings, service: Service, name: str, present: bool = True
) -> bool:
    """Wait until `name` is (or is no longer) registered on the service's tools topic."""
    topic = service.topic(Topics.TOOLS)
    for _ in range(120):
        with contextlib.suppress(TimeoutError):
            if (name in await read_registered_names(kafka, topic, timeout_s=10)) is present:
                return True
        await asyncio.sleep(0.5)
    return False


async def test_mcp_reference_server_tools_are_registered_safely_and_tombstoned_when_removed(
    kafka: KafkaSettings,
    admin: AIOKafkaAdminClient,
    producer: AIOKafkaProducer,
    service: Service,
    tmp_path: Path,
) -> None:
    await _topics(admin, service.namespace)
    node = shutil.which("node")
    assert node is not None, "node is needed for the MCP reference server"
    config = _config(tmp_path, "http://127.0.0.1:9/unused")
    plain = config.read_text(encoding="utf-8")
    mcp = (
        f'\n[[mcp_servers]]\nname = "everything"\ntransport = "stdio"\ncommand = "{node}"\n'
        f'args = ["{everything.install()}", "stdio"]\n'
    )
    config.write_text(plain.replace('\n[tenants."*"]', f'{mcp}\n[tenants."*"]'), encoding="utf-8")
    service.start()
    assert await _registered(kafka, service, "everything__get-sum")
    await request_call(producer, service, "rm:1:0", "everything__get-sum", '{"a": 7, "b": 5}')
    results = results_by_call(
        await read_all(kafka, service.topic(Topics.TOOL_RESULTS), expect=1, timeout_s=60)
    )
    assert results["rm:1:0"].completed.output == "The sum of 7 and 5 is 12."
    announced = {
        m.definition.name: m
        for m in (
            tools_pb2.ToolRegistered.FromString(r.value)
            for r in await read_all(kafka, service.topic(Topics.TOOLS), expect=3, timeout_s=30)
            if r.value is not None
        )
    }
    assert announced["everything__get-sum"].original_name == "everything.get-sum"
    assert all(SAFE_NAME.fullmatch(name) for name in announced)

    service.stop()
    config.write_text(plain, encoding="utf-8")  # the server is removed from the config
    service.start()
    assert await _registered(kafka, service, "everything__get-sum", present=False)
    remaining = await read_registered_names(kafka, service.topic(Topics.TOOLS))
    assert remaining == {"calculator", "issue_refund"}

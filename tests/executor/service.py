"""An executor service as a real subprocess, and requests/results as the planner sees them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from aiokafka import AIOKafkaProducer

from stepline.v1 import tools_pb2
from stepline_runtime.codec import encode
from stepline_runtime.settings import namespaced
from stepline_runtime.topics import Topics

__all__ = ["ROOT", "Service", "refund_tools", "request_call", "results_by_call"]

ROOT = Path(__file__).resolve().parents[2]


def refund_tools(path: Path, webhook_url: str, extra: str = "") -> Path:
    """Write a tools file at `path`: only the non-idempotent `issue_refund` webhook (+ `extra`)."""
    path.write_text(
        f"""
[search_documents]
enabled = false
[sql_query]
enabled = false
[http_request]
enabled = false

[[webhooks]]
name = "issue_refund"
description = "Refund an order (not idempotent on the receiver side)."
url = "{webhook_url}"
idempotent = false
timeout_s = 60
[webhooks.parameters]
type = "object"
required = ["order_id"]
[webhooks.parameters.properties.order_id]
type = "string"

[tenants."*"]
tools = ["*"]
[agents."*"]
tools = ["*"]
{extra}""",
        encoding="utf-8",
    )
    return path


class Service:
    """Starts/stops `python -m stepline_executor` with a private namespace and data dir."""

    def __init__(
        self,
        namespace: str,
        config: Path,
        data_dir: Path,
        log: Path,
        **env: str,
    ) -> None:
        self.namespace = namespace
        self.env = {
            **os.environ,
            "STEPLINE_TOPIC_NAMESPACE": namespace,
            "STEPLINE_TOOLS_CONFIG": str(config),
            "STEPLINE_EXECUTOR_DATA_DIR": str(data_dir),
            "STEPLINE_PARTITIONS": "2",
            "STEPLINE_LOG_FORMAT": "text",
            **env,
        }
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the process (logging to `log`)."""
        with self.log.open("ab") as sink:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "stepline_executor"],
                cwd=ROOT,
                stdout=sink,
                stderr=sink,
                env=self.env,
            )

    def kill(self) -> None:
        """SIGKILL it and reap it."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        """SIGTERM it; SIGKILL after 20 s."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def topic(self, name: str) -> str:
        """A catalog topic in its namespace."""
        return namespaced(name, self.namespace)


async def request_call(
    producer: AIOKafkaProducer,
    service: Service,
    call: str,
    tool: str,
    args: str,
    agent: str = "",
    replay_of: str = "",
) -> None:
    """Produce a `ToolCallRequested` for `call` (`<run>:<step>:<n>`) as the planner would."""
    run_id = call.split(":")[0]
    message = tools_pb2.ToolCallRequested(
        run_id=run_id,
        tenant_id="acme",
        step_id=call.rsplit(":", 1)[0],
        call_id=call,
        tool=tool,
        arguments_json=args,
        idempotency_key=f"idem-{call}",
        agent=agent,
        replay_of=replay_of,
    )
    record = encode(
        service.topic(Topics.TOOL_REQUESTS), run_id, message, event_id=call, source="test"
    )
    await producer.send_and_wait(
        record.topic, record.value, key=record.key, headers=list(record.headers)
    )


def results_by_call(records: list[object]) -> dict[str, tools_pb2.ToolCallResult]:
    """The last result per call id."""
    out = {}
    for record in records:
        result = tools_pb2.ToolCallResult.FromString(record.value)  # type: ignore[attr-defined]
        out[result.call_id] = result
    return out

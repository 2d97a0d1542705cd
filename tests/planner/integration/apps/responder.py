"""A scripted stand-in for the model-router and tool-executor, run as a real subprocess.

It answers `ModelCallRequested` from a JSON script and `ToolCallRequested` with instant test
tools, at least once (offsets committed after the results are acknowledged), like the real
services. Every request it executes is appended to an executions log (one `kind call_id` line)
so tests can prove no step was executed twice.

Script (JSON): {"<name>": [turn, ...]} where the run's goal metadata `script` picks the name
(`<script>:<agent>` wins if present, so parents and children can differ) and a turn is
`{"tools": [{"name": ..., "args": {...}}], "answer": "...", "usage": [in, out], "cost": "0.01"}`.
The turn index is the number of assistant messages after the last user message. A request that
allows no tools (a wrap-up turn) is answered `wrap-up: <n> tool results`.
Tool arguments steer the test tools: `sleep_s` delays the answer, `drop: true` never answers.
`--duplicate` publishes every result twice, as a redelivering service would.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from google.protobuf.message import Message

from stepline.v1 import common_pb2, model_pb2, tools_pb2
from stepline_runtime.codec import decode, encode
from stepline_runtime.processor import inbound
from stepline_runtime.records import OutboundRecord
from stepline_runtime.settings import KafkaSettings, namespaced
from stepline_runtime.topics import Topics

log = logging.getLogger("responder")


class Responder:
    """Answers requests from a script; appends every execution to a log file."""

    def __init__(
        self,
        script: dict[str, list[dict[str, Any]]],
        executions: Path,
        ns: str,
        publish: Callable[[list[OutboundRecord]], Awaitable[None]],
    ) -> None:
        self.script = script
        self.publish = publish
        self.background: set[asyncio.Task[None]] = set()
        self.executions = executions
        self.model_results = namespaced(Topics.MODEL_RESULTS, ns)
        self.tool_results = namespaced(Topics.TOOL_RESULTS, ns)

    def _record(self, kind: str, call_id: str) -> None:
        with self.executions.open("a") as sink:
            sink.write(f"{kind} {call_id}\n")

    async def on_model(self, req: model_pb2.ModelCallRequested) -> list[OutboundRecord]:
        self._record("model", req.call_id)
        last_user = max(
            (i for i, m in enumerate(req.messages) if m.role == common_pb2.ChatMessage.ROLE_USER),
            default=0,
        )
        later = req.messages[last_user + 1 :]
        turn_index = sum(1 for m in later if m.role == common_pb2.ChatMessage.ROLE_ASSISTANT)
        name = req.metadata.get("script", "")
        turns = self.script.get(f"{name}:{req.agent}", self.script.get(name, []))
        turn = turns[turn_index] if turn_index < len(turns) else {"answer": "done"}
        done = model_pb2.ModelCallCompleted(provider="scripted", model="scripted-1")
        usage = turn.get("usage", [10, 5])
        done.usage.input_tokens, done.usage.output_tokens = int(usage[0]), int(usage[1])
        done.cost.currency, done.cost.amount = "USD", str(turn.get("cost", "0"))
        no_tools = req.parameters.tool_choice.mode == model_pb2.TOOL_CHOICE_MODE_NONE
        if no_tools:
            results = sum(1 for m in req.messages if m.role == common_pb2.ChatMessage.ROLE_TOOL)
            done.content = f"wrap-up: {results} tool results"
            done.finish_reason = model_pb2.FINISH_REASON_STOP
        elif turn.get("tools"):
            for i, tool in enumerate(turn["tools"]):
                done.tool_calls.add(
                    call_id=f"tc{turn_index}_{i}",
                    name=tool["name"],
                    arguments_json=json.dumps(tool.get("args", {}), sort_keys=True),
                )
            done.finish_reason = model_pb2.FINISH_REASON_TOOL_CALLS
        else:
            done.content = turn.get("answer", "done")
            done.finish_reason = model_pb2.FINISH_REASON_STOP
        result = model_pb2.ModelCallResult(
            run_id=req.run_id,
            tenant_id=req.tenant_id,
            step_id=req.step_id,
            call_id=req.call_id,
            completed=done,
        )
        return [
            encode(
                self.model_results,
                req.run_id,
                result,
                event_id=f"result/{req.call_id}",
                source="responder",
                tenant_id=req.tenant_id,
            )
        ]

    async def on_tool(self, req: tools_pb2.ToolCallRequested) -> list[OutboundRecord]:
        self._record("tool", req.call_id)
        args = json.loads(req.arguments_json or "{}")
        if args.get("drop"):
            return []
        if args.get("sleep_s"):
            # Answer later without holding up other requests (and their offsets).
            task = asyncio.create_task(self._later(float(args["sleep_s"]), req, args))
            self.background.add(task)
            task.add_done_callback(self.background.discard)
            return []
        return self._result(req, args)

    async def _later(self, delay: float, req: tools_pb2.ToolCallRequested, args: Any) -> None:
        await asyncio.sleep(delay)
        await self.publish(self._result(req, args))

    def _result(self, req: tools_pb2.ToolCallRequested, args: Any) -> list[OutboundRecord]:
        result = tools_pb2.ToolCallResult(
            run_id=req.run_id,
            tenant_id=req.tenant_id,
            step_id=req.step_id,
            call_id=req.call_id,
            tool=req.tool,
            completed=tools_pb2.ToolCallCompleted(
                output=json.dumps({"tool": req.tool, "args": args}, sort_keys=True),
                content_type="application/json",
            ),
        )
        return [
            encode(
                self.tool_results,
                req.run_id,
                result,
                event_id=f"result/{req.call_id}",
                source="responder",
                tenant_id=req.tenant_id,
            )
        ]


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--script", type=Path, required=True)
    parser.add_argument("--executions", type=Path, required=True)
    parser.add_argument("--duplicate", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO"))
    ns = os.environ.get("STEPLINE_TOPIC_NAMESPACE", "")
    kafka = KafkaSettings()

    async def publish(outputs: list[OutboundRecord]) -> None:
        sends = []
        for out in outputs:
            for _ in range(2 if args.duplicate else 1):
                sends.append(
                    await producer.send(
                        out.topic, out.value, key=out.key, headers=list(out.headers)
                    )
                )
        await asyncio.gather(*sends)

    producer = AIOKafkaProducer(enable_idempotence=True, acks="all", **kafka.client_kwargs("resp"))
    responder = Responder(json.loads(args.script.read_text()), args.executions, ns, publish)
    requests = (namespaced(Topics.MODEL_REQUESTS, ns), namespaced(Topics.TOOL_REQUESTS, ns))
    consumer = AIOKafkaConsumer(
        *requests,
        group_id=namespaced("test-responder", ns),
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        **kafka.client_kwargs("responder"),
    )
    await consumer.start()
    await producer.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    tool_types: list[type[Message]] = [
        tools_pb2.ToolCallRequested,
        tools_pb2.ToolCallsCancelRequested,
    ]
    try:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=200, max_records=200)
            jobs = []
            for records in batch.values():
                for raw in records:
                    record = inbound(raw)
                    if record.topic == requests[0]:
                        model = decode(record, [model_pb2.ModelCallRequested]).message
                        jobs.append(responder.on_model(model))
                    else:
                        message: Message = decode(record, tool_types).message
                        if isinstance(message, tools_pb2.ToolCallRequested):
                            jobs.append(responder.on_tool(message))
            for outputs in await asyncio.gather(*jobs):
                await publish(outputs)
            if batch:
                await consumer.commit()
    finally:
        await consumer.stop()
        await producer.stop()


if __name__ == "__main__":
    asyncio.run(main())

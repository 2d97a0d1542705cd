"""An instant stand-in for the model router and tool executor, run as its own process.

It answers every `ModelCallRequested` and `ToolCallRequested` of a namespace at once, like the
real services do (at least once: offsets committed after the results are acknowledged), and
records how long its own handling took per call (decode → result encoded, Kafka excluded) so the
benchmark can subtract "model and tool time" from a step's latency.

Model turns follow `--tools`: turn `i` (the number of assistant messages after the last user
message) asks for `tools[i]` calls of `--tool`; past the list, or when the request allows no
tools (a wrap-up), it answers with text and the run ends. On SIGTERM it writes the handling
times (`{call_id: microseconds}`) to `--timings` and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import time
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord
from google.protobuf.message import Message

from stepline.v1 import common_pb2, model_pb2, tools_pb2
from stepline_runtime.codec import decode, encode
from stepline_runtime.processor import inbound
from stepline_runtime.records import OutboundRecord
from stepline_runtime.settings import KafkaSettings, namespaced
from stepline_runtime.topics import Topics

__all__ = ["InstantResponder", "main"]

_TOOL_TYPES: list[type[Message]] = [tools_pb2.ToolCallRequested, tools_pb2.ToolCallsCancelRequested]


class InstantResponder:
    """Builds the result of a request at once and remembers how long that took."""

    def __init__(self, namespace: str, tool: str, tools_per_turn: list[int]) -> None:
        self.model_requests = namespaced(Topics.MODEL_REQUESTS, namespace)
        self.tool_requests = namespaced(Topics.TOOL_REQUESTS, namespace)
        self.model_results = namespaced(Topics.MODEL_RESULTS, namespace)
        self.tool_results = namespaced(Topics.TOOL_RESULTS, namespace)
        self.tool = tool
        self.tools_per_turn = tools_per_turn
        self.timings_us: dict[str, float] = {}

    def answer(self, record: ConsumerRecord[bytes, bytes]) -> OutboundRecord | None:
        """The result for one consumed request record (None for anything else)."""
        started = time.perf_counter_ns()
        inbound_record = inbound(record)
        if record.topic == self.model_requests:
            request = decode(inbound_record, [model_pb2.ModelCallRequested]).message
            assert isinstance(request, model_pb2.ModelCallRequested)
            out = self._model(request)
            call_id = request.call_id
        else:
            message = decode(inbound_record, _TOOL_TYPES).message
            if not isinstance(message, tools_pb2.ToolCallRequested):
                return None
            out = self._tool(message)
            call_id = message.call_id
        self.timings_us[call_id] = (time.perf_counter_ns() - started) / 1_000
        return out

    def _model(self, req: model_pb2.ModelCallRequested) -> OutboundRecord:
        user = common_pb2.ChatMessage.ROLE_USER
        last_user = max((i for i, m in enumerate(req.messages) if m.role == user), default=0)
        turn = sum(
            1
            for m in req.messages[last_user + 1 :]
            if m.role == common_pb2.ChatMessage.ROLE_ASSISTANT
        )
        done = model_pb2.ModelCallCompleted(provider="bench", model="instant-1")
        done.usage.input_tokens, done.usage.output_tokens = 20, 5
        done.cost.currency, done.cost.amount = "USD", "0"
        wrap_up = req.parameters.tool_choice.mode == model_pb2.TOOL_CHOICE_MODE_NONE
        calls = 0 if wrap_up or turn >= len(self.tools_per_turn) else self.tools_per_turn[turn]
        if calls:
            for i in range(calls):
                done.tool_calls.add(
                    call_id=f"tc{turn}_{i}", name=self.tool, arguments_json=f'{{"n": {i}}}'
                )
            done.finish_reason = model_pb2.FINISH_REASON_TOOL_CALLS
        else:
            done.content = "done"
            done.finish_reason = model_pb2.FINISH_REASON_STOP
        result = model_pb2.ModelCallResult(
            run_id=req.run_id,
            tenant_id=req.tenant_id,
            step_id=req.step_id,
            call_id=req.call_id,
            completed=done,
        )
        return encode(
            self.model_results,
            req.run_id,
            result,
            event_id=f"result/{req.call_id}",
            source="bench-responder",
            tenant_id=req.tenant_id,
        )

    def _tool(self, req: tools_pb2.ToolCallRequested) -> OutboundRecord:
        result = tools_pb2.ToolCallResult(
            run_id=req.run_id,
            tenant_id=req.tenant_id,
            step_id=req.step_id,
            call_id=req.call_id,
            tool=req.tool,
            completed=tools_pb2.ToolCallCompleted(
                output=req.arguments_json or "{}", content_type="application/json"
            ),
        )
        return encode(
            self.tool_results,
            req.run_id,
            result,
            event_id=f"result/{req.call_id}",
            source="bench-responder",
            tenant_id=req.tenant_id,
        )


async def main() -> None:
    """Answer requests until SIGTERM, then write the handling times."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--tool", default="bench_echo")
    parser.add_argument("--tools", default="1,1,1,2", help="tool calls per model turn")
    parser.add_argument("--timings", type=Path, required=True)
    args = parser.parse_args()
    namespace = os.environ.get("STEPLINE_TOPIC_NAMESPACE", "")
    responder = InstantResponder(namespace, args.tool, [int(n) for n in args.tools.split(",")])
    kafka = KafkaSettings()
    producer = AIOKafkaProducer(
        enable_idempotence=True, acks="all", linger_ms=0, **kafka.client_kwargs("bench-responder")
    )
    consumer = AIOKafkaConsumer(
        responder.model_requests,
        responder.tool_requests,
        group_id=namespaced("bench-responder", namespace),
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        fetch_max_wait_ms=5,
        **kafka.client_kwargs("bench-responder"),
    )
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await producer.start()
    await consumer.start()
    try:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=100, max_records=1_000)
            sends = []
            for records in batch.values():
                for raw in records:
                    out = responder.answer(raw)
                    if out is not None:
                        sends.append(
                            await producer.send(
                                out.topic, out.value, key=out.key, headers=list(out.headers)
                            )
                        )
            await asyncio.gather(*sends)
            if batch:
                await consumer.commit()
    finally:
        await consumer.stop()
        await producer.stop()
        args.timings.write_text(json.dumps(responder.timings_us))


if __name__ == "__main__":
    asyncio.run(main())

"""Inbound port: decode tool requests and cancellations, call the core, encode the results."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import assert_never

from stepline.v1 import common_pb2, tools_pb2, usage_pb2
from stepline_executor.executor import Executor
from stepline_executor.model import CallRequest, Outcome, ToolSpec
from stepline_executor.spec import SPEC
from stepline_executor.wire import KINDS, duration, outcome_to_proto, timestamp
from stepline_runtime.codec import Cause, Decoded, InvalidRecordError, decode, encode
from stepline_runtime.logs import bind
from stepline_runtime.metrics import TOOL_SECONDS
from stepline_runtime.records import InboundRecord, OutboundRecord
from stepline_vocab import wire

__all__ = ["Pricing", "ToolRequests", "announcement", "call_request", "tombstone"]

log = logging.getLogger(__name__)

# `ce_source` of everything the executor writes: its one name.
SOURCE = SPEC.name


class Pricing:
    """Per-call prices from the price book (None = unpriced, never zero)."""

    def __init__(
        self, version: str, currency: str, price_of: Callable[[str], Decimal | None]
    ) -> None:
        self.version = version
        self.currency = currency
        self.price_of = price_of


def call_request(
    message: tools_pb2.ToolCallRequested, sequence: int, partition: int
) -> CallRequest:
    """The core's view of a `ToolCallRequested`; refuses one missing its ids."""
    missing = [n for n in ("run_id", "call_id", "tool") if not getattr(message, n)]
    if missing:
        raise InvalidRecordError(Cause.INVALID, f"ToolCallRequested without {', '.join(missing)}")
    deadline = message.deadline.ToDatetime(tzinfo=UTC) if message.HasField("deadline") else None
    return CallRequest(
        run_id=message.run_id,
        tenant_id=message.tenant_id,
        step_id=message.step_id,
        call_id=message.call_id,
        tool=message.tool,
        arguments_json=message.arguments_json,
        idempotency_key=message.idempotency_key,
        agent=message.agent,
        deadline=deadline,
        sequence=sequence,
        partition=partition,
        metadata=dict(message.metadata),
        replay_of=message.replay_of,
    )


class ToolRequests:
    """Handles `stepline.tool.requests.v1` records for the at-least-once runtime."""

    def __init__(
        self,
        executor: Executor,
        *,
        results_topic: str,
        usage_topic: str,
        pricing: Pricing,
        clock: Callable[[], datetime],
    ) -> None:
        self._executor = executor
        self._results_topic = results_topic
        self._usage_topic = usage_topic
        self._pricing = pricing
        self._clock = clock

    async def __call__(self, record: InboundRecord) -> Sequence[OutboundRecord]:
        """Decode one record and return the records to produce for it."""
        decoded: Decoded[tools_pb2.ToolCallRequested | tools_pb2.ToolCallsCancelRequested] = decode(
            record, [tools_pb2.ToolCallRequested, tools_pb2.ToolCallsCancelRequested]
        )
        message = decoded.message
        if isinstance(message, tools_pb2.ToolCallsCancelRequested):
            self.on_tool_calls_cancel_requested(message, record.offset)
            return []
        if not isinstance(message, tools_pb2.ToolCallRequested):
            assert_never(message)
        request = call_request(message, record.offset, record.partition)
        with bind(run_id=request.run_id, tenant_id=request.tenant_id, call_id=request.call_id):
            outcome = await self._executor.execute(request)
            clean = outcome.error_kind is None and not outcome.replayed
            # A clean call is in the metrics, the trace and the run's events already: at INFO it
            # was the largest share of the executor's own CPU per call.
            log.log(
                logging.DEBUG if clean else logging.INFO,
                "tool call finished",
                extra={
                    "tool": request.tool,
                    "outcome": outcome.error_kind or "COMPLETED",
                    "replayed": outcome.replayed,
                    "duration_s": round(outcome.duration_s, 4),
                },
            )
        if outcome.executed:
            # Only tools that ran: a model naming an unknown tool must not create a label.
            TOOL_SECONDS.labels(request.tool, outcome.error_kind or "COMPLETED").observe(
                outcome.duration_s
            )
        billed = self._billed(request, outcome)
        records = [self._result(request, outcome, billed, decoded.headers.traceparent)]
        if outcome.executed:
            records.append(self._usage(request, outcome))
        return records

    def on_tool_calls_cancel_requested(
        self, message: tools_pb2.ToolCallsCancelRequested, sequence: int
    ) -> int:
        """Stop in-flight calls of the run and refuse its queued ones; count stopped."""
        call_ids = frozenset(message.call_ids) or None
        stopped = self._executor.cancel(
            message.run_id, call_ids, sequence=sequence, reason=message.reason
        )
        log.info(
            "tool calls cancel requested",
            extra={"run_id": message.run_id, "stopped": stopped, "reason": message.reason},
        )
        return stopped

    def _billed(self, request: CallRequest, outcome: Outcome) -> Decimal | None:
        """What the usage record of this call charges (None: no record, or unpriced)."""
        return self._pricing.price_of(request.tool) if outcome.executed else None

    def _result(
        self, request: CallRequest, outcome: Outcome, billed: Decimal | None, traceparent: str
    ) -> OutboundRecord:
        result = tools_pb2.ToolCallResult(
            run_id=request.run_id,
            tenant_id=request.tenant_id,
            step_id=request.step_id,
            call_id=request.call_id,
            tool=request.tool,
            replayed=outcome.replayed,
        )
        branch = outcome_to_proto(outcome)
        if isinstance(branch, tools_pb2.ToolCallCompleted):
            result.completed.CopyFrom(branch)
        else:
            result.failed.CopyFrom(branch)
        result.finished_at.CopyFrom(timestamp(outcome.finished_at or self._clock()))
        cost = wire.money_to_proto(billed, self._pricing.currency)
        if cost is not None:  # the same Money as the usage record's
            result.cost.CopyFrom(cost)
        return encode(
            self._results_topic,
            request.run_id,
            result,
            event_id=f"{request.call_id}/result",
            source=SOURCE,
            tenant_id=request.tenant_id,
            traceparent=traceparent,
        )

    def _usage(self, request: CallRequest, outcome: Outcome) -> OutboundRecord:
        price = self._pricing.price_of(request.tool)
        usage = usage_pb2.UsageRecorded(
            usage_id=f"{request.call_id}/exec",
            tenant_id=request.tenant_id,
            run_id=request.run_id,
            step_id=request.step_id,
            call_id=request.call_id,
            kind=usage_pb2.USAGE_KIND_TOOL_EXECUTION,
            tool=request.tool,
            succeeded=outcome.succeeded,
            priced=price is not None,
            price_book_version=self._pricing.version,
            attempt=1,
            agent=request.agent,
            latency=duration(outcome.duration_s),
            replay_of=request.replay_of,
        )
        if outcome.error_kind is not None:
            usage.tool_error_kind = KINDS[outcome.error_kind]
        cost = wire.money_to_proto(price, self._pricing.currency)
        if cost is not None:
            # Unpriced is `priced = false` and no cost, as a model attempt writes it: never 0.
            usage.cost.CopyFrom(cost)
        usage.occurred_at.CopyFrom(timestamp(outcome.finished_at or self._clock()))
        return encode(
            self._usage_topic,
            request.tenant_id,
            usage,
            event_id=usage.usage_id,
            source=SOURCE,
            tenant_id=request.tenant_id,
        )


def announcement(
    topic: str, spec: ToolSpec, pricing: Pricing, now: datetime, original: str = ""
) -> OutboundRecord:
    """A `ToolRegistered` for the compacted registry topic (key: the tool's public name)."""
    message = tools_pb2.ToolRegistered(
        definition=common_pb2.ToolDefinition(
            name=spec.name,
            description=spec.description,
            parameters_json_schema=json.dumps(spec.parameters, sort_keys=True),
            requires_approval=spec.requires_approval,
            idempotent=spec.idempotent,
        ),
        source=spec.source,
        timeout=duration(spec.timeout_s),
        max_concurrency=spec.max_concurrency,
        max_output_bytes=spec.max_output_bytes,
        original_name=original if original != spec.name else "",
    )
    price = wire.money_to_proto(pricing.price_of(spec.name), pricing.currency)
    if price is not None:
        message.price_per_call.CopyFrom(price)
    message.registered_at.CopyFrom(timestamp(now))
    return encode(topic, spec.name, message, event_id=f"tool/{spec.name}", source=SOURCE)


def tombstone(topic: str, name: str) -> OutboundRecord:
    """Removes `name` from the compacted registry topic."""
    return OutboundRecord(topic=topic, key=name.encode(), value=None)

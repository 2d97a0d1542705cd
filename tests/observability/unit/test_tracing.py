"""Trace context through handlers: inbound `traceparent` → outbound records, new span id."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import pytest

from stepline_runtime import tracing
from stepline_runtime.atleastonce import AtLeastOnce, InMemoryPublisher
from stepline_runtime.codec import Cause, InvalidRecordError
from stepline_runtime.headers import HeaderName
from stepline_runtime.processor import ProcessorConfig, TransactionalProcessor
from stepline_runtime.records import InboundRecord, OutboundRecord
from stepline_runtime.settings import KafkaSettings

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_SPAN}-01"


def _record(traceparent: str = TRACEPARENT, key: bytes = b"run-1") -> InboundRecord:
    headers = ((HeaderName.TRACEPARENT, traceparent.encode()),) if traceparent else ()
    return InboundRecord("in", 0, 7, key, b"v", headers)


def _traceparent(record: OutboundRecord) -> str:
    values = [v.decode() for k, v in record.headers if k == HeaderName.TRACEPARENT]
    assert len(values) == 1, record.headers
    return values[0]


async def copy_inbound(record: InboundRecord) -> Sequence[OutboundRecord]:
    """Like the router: copies the inbound traceparent onto its outputs."""
    inbound = record.header(HeaderName.TRACEPARENT) or ""
    header = ((HeaderName.TRACEPARENT, inbound.encode()),) if inbound else ()
    return [
        OutboundRecord("out", record.key, b"a", header),
        OutboundRecord("usage", b"tenant", b"b"),
    ]


def _assert_child(traceparent: str) -> str:
    version, trace_id, span_id, flags = traceparent.split("-")
    assert (version, trace_id, flags) == ("00", TRACE_ID, "01")
    assert span_id != PARENT_SPAN
    assert len(span_id) == 16
    return span_id


@pytest.mark.usefixtures("traced")
async def test_at_least_once_outputs_continue_the_inbound_trace_with_a_new_span() -> None:
    publisher = InMemoryPublisher()
    await AtLeastOnce("svc", copy_inbound, publisher).process(_record())
    spans = {_assert_child(_traceparent(r)) for r in publisher.records}
    # Both outputs were produced inside one consumer span.
    assert len(spans) == 1


@pytest.mark.usefixtures("traced")
async def test_each_delivery_gets_its_own_span() -> None:
    publisher = InMemoryPublisher()
    processor = AtLeastOnce("svc", copy_inbound, publisher)
    await processor.process(_record())
    await processor.process(_record())
    spans = {_traceparent(r).split("-")[2] for r in publisher.records}
    assert len(spans) == 2


@pytest.mark.usefixtures("traced")
async def test_dead_letters_stay_in_the_trace() -> None:
    async def refuse(record: InboundRecord) -> Sequence[OutboundRecord]:
        raise InvalidRecordError(Cause.INVALID, "no")

    publisher = InMemoryPublisher()
    await AtLeastOnce("svc", refuse, publisher).process(_record())
    assert [r.topic for r in publisher.records] == ["stepline.dlq.v1"]
    _assert_child(_traceparent(publisher.records[0]))


@pytest.mark.usefixtures("traced")
async def test_a_record_of_another_trace_keeps_it() -> None:
    other = "00-11111111111111111111111111111111-2222222222222222-01"

    async def forward(record: InboundRecord) -> Sequence[OutboundRecord]:
        return [OutboundRecord("out", b"k", b"v", ((HeaderName.TRACEPARENT, other.encode()),))]

    publisher = InMemoryPublisher()
    await AtLeastOnce("svc", forward, publisher).process(_record())
    assert _traceparent(publisher.records[0]) == other


@pytest.mark.usefixtures("traced")
async def test_a_record_without_trace_starts_a_new_one() -> None:
    publisher = InMemoryPublisher()
    await AtLeastOnce("svc", copy_inbound, publisher).process(_record(traceparent=""))
    trace_ids = {tracing.trace_id_of(_traceparent(r)) for r in publisher.records}
    assert len(trace_ids) == 1
    assert trace_ids != {TRACE_ID}
    assert trace_ids != {"0" * 32}


async def test_without_configuration_untraced_records_stay_untraced() -> None:
    publisher = InMemoryPublisher()
    await AtLeastOnce("svc", copy_inbound, publisher).process(_record(traceparent=""))
    assert all(not r.headers for r in publisher.records[1:])
    assert all(k != HeaderName.TRACEPARENT for r in publisher.records for k, _ in r.headers)


async def test_without_configuration_traced_records_still_propagate() -> None:
    publisher = InMemoryPublisher()
    await AtLeastOnce("svc", copy_inbound, publisher).process(_record())
    for record in publisher.records:
        _assert_child(_traceparent(record))


class _Echo:
    """A minimal `StatefulHandler`: one output per input, no state."""

    def forget(self, partition: int) -> None:
        """Nothing to forget."""

    async def restore(self, partition: int, records: Sequence[InboundRecord]) -> None:
        """Nothing to restore."""

    async def handle(self, record: InboundRecord) -> Sequence[OutboundRecord]:
        """Echo the record."""
        return [OutboundRecord("out", record.key, record.value)]

    async def tick(self, partition: int, now: datetime) -> Sequence[OutboundRecord]:
        """No timers."""
        return []


def _processor(trace_from_key: bool) -> TransactionalProcessor:
    config = ProcessorConfig("app", ("in",), "state", trace_from_key=trace_from_key)
    return TransactionalProcessor(config, _Echo(), KafkaSettings(), clock=lambda: datetime.now(UTC))


@pytest.mark.usefixtures("traced")
async def test_transactional_processor_outputs_continue_the_inbound_trace() -> None:
    # `_outputs` is the per-record step of a transaction; no broker is needed for it.
    outputs = await _processor(False)._outputs(_record())
    _assert_child(_traceparent(outputs[0]))


@pytest.mark.usefixtures("traced")
async def test_planner_goal_without_trace_joins_the_run_trace_its_timers_use() -> None:
    outputs = await _processor(True)._outputs(_record(traceparent="", key=b"run-42"))
    goal_trace = tracing.trace_id_of(_traceparent(outputs[0]))
    with tracing.keyed_trace("run-42", "timer"):
        timer_trace = tracing.trace_id_of(tracing.current_traceparent())
    with tracing.keyed_trace("run-43", "timer"):
        other_trace = tracing.trace_id_of(tracing.current_traceparent())
    assert goal_trace == timer_trace
    assert other_trace != goal_trace

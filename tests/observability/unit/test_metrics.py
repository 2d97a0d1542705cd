"""The `/metrics` endpoint serves the expected families after records were handled."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from decimal import Decimal

import httpx
from prometheus_client.parser import text_string_to_metric_families

from stepline_runtime import metrics
from stepline_runtime.atleastonce import AtLeastOnce, InMemoryPublisher
from stepline_runtime.codec import Cause, InvalidRecordError
from stepline_runtime.records import InboundRecord, OutboundRecord


def _key(labels: dict[str, str]) -> frozenset[tuple[str, str]]:
    return frozenset(labels.items())


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of the exposition text, by name and label set."""
    return {
        (sample.name, _key(sample.labels)): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def _scrape(port: int) -> str:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"http://127.0.0.1:{port}/metrics")
    response.raise_for_status()
    return response.text


async def test_endpoint_serves_the_families_recorded_by_a_consumer() -> None:
    consumer = f"svc-{uuid.uuid4().hex[:8]}"

    async def handle(record: InboundRecord) -> Sequence[OutboundRecord]:
        if record.value == b"bad":
            raise InvalidRecordError(Cause.INVALID, "bad")
        return [OutboundRecord("out", record.key, record.value)]

    processor = AtLeastOnce(consumer, handle, InMemoryPublisher(), backoff_s=0)
    for offset, value in enumerate([b"ok", b"ok", b"bad"]):
        await processor.process(InboundRecord("stepline.model.requests.v1", 0, offset, b"k", value))
    metrics.watch_circuits(lambda: {"primary": "open", "backup": "closed"})
    metrics.record_cost("acme", "model_attempt", "openai", "gpt-x", "USD", Decimal("0.25"))
    metrics.record_cost("acme", "model_attempt", "openai", "gpt-y", "USD", None)

    port = metrics.serve_metrics(0)
    assert port is not None
    text = await _scrape(port)

    samples = _samples(text)
    where = {"consumer": consumer, "topic": "stepline.model.requests.v1"}
    assert samples[("stepline_records_processed_total", _key(where))] == 3
    invalid = _key({**where, "cause": "INVALID"})
    assert samples[("stepline_records_dead_lettered_total", invalid)] == 1
    assert samples[("stepline_record_handle_seconds_count", _key(where))] == 3
    assert samples[("stepline_circuit_state", _key({"deployment": "primary"}))] == 2
    assert samples[("stepline_circuit_state", _key({"deployment": "backup"}))] == 0
    cost = {"tenant": "acme", "kind": "model_attempt", "provider": "openai", "currency": "USD"}
    assert samples[("stepline_cost_total", _key({**cost, "model": "gpt-x"}))] >= 0.25
    unpriced = {"kind": "model_attempt", "provider": "openai", "model": "gpt-y"}
    assert samples[("stepline_unpriced_usage_total", _key(unpriced))] >= 1
    for family in (
        "stepline_transactions_total counter",
        "stepline_consumer_lag_records gauge",
        "stepline_step_duration_seconds histogram",
        "stepline_provider_attempts_total counter",
        "stepline_provider_attempt_duration_seconds histogram",
        "stepline_model_calls_total counter",
        "stepline_tool_duration_seconds histogram",
        "stepline_runs_finished_total counter",
    ):
        assert f"# TYPE {family}" in text


async def test_a_taken_port_is_reported_not_fatal() -> None:
    port = metrics.serve_metrics(0)
    assert port is not None
    assert metrics.serve_metrics(port) is None
    # The first endpoint still answers.
    assert "stepline_records_processed" in await asyncio.wait_for(_scrape(port), 10)

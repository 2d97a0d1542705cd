"""The floor under every agent step: raw aiokafka produce→consume round trips on this machine.

Measures (1) sequential round-trip latency: produce one record with acks=all, wait until a
read_committed consumer receives it, and (2) pipelined throughput: messages per second for a
burst produced without waiting, consumed by one consumer.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import statistics
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from stepline_runtime.settings import KafkaSettings

__all__ = ["main"]

RESULTS = Path(__file__).parent / "results"
ROUND_TRIPS = 2_000
BURST = 50_000
PAYLOAD = b"x" * 256


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _round_trips(
    producer: AIOKafkaProducer, consumer: AIOKafkaConsumer, topic: str
) -> list[float]:
    latencies = []
    for i in range(ROUND_TRIPS):
        started = time.perf_counter()
        await producer.send_and_wait(topic, PAYLOAD, key=str(i).encode(), partition=0)
        await consumer.getone()
        latencies.append((time.perf_counter() - started) * 1000)
    return latencies


async def _throughput(producer: AIOKafkaProducer, consumer: AIOKafkaConsumer, topic: str) -> float:
    started = time.perf_counter()
    pending = [await producer.send(topic, PAYLOAD, partition=0) for _ in range(BURST)]
    received = 0
    while received < BURST:
        for records in (await consumer.getmany(timeout_ms=1_000, max_records=5_000)).values():
            received += len(records)
    await asyncio.gather(*pending)
    return BURST / (time.perf_counter() - started)


async def main() -> None:
    """Run the raw Kafka benchmark, print figures, write bench/results/raw_kafka.json."""
    kafka = KafkaSettings()
    topic = f"bench.raw.{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(**kafka.client_kwargs("bench-admin"))
    await admin.start()
    await admin.create_topics([NewTopic(topic, 1, 1)])
    producer = AIOKafkaProducer(
        acks="all", enable_idempotence=True, linger_ms=0, **kafka.client_kwargs("bench-producer")
    )
    consumer = AIOKafkaConsumer(
        topic,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=100,
        isolation_level="read_committed",
        **kafka.client_kwargs("bench-consumer"),
    )
    await producer.start()
    await consumer.start()
    try:
        await _round_trips(producer, consumer, topic)  # warm-up: connections, JIT, page cache
        latencies = await _round_trips(producer, consumer, topic)
        rate = await _throughput(producer, consumer, topic)
    finally:
        await consumer.stop()
        await producer.stop()
        await admin.delete_topics([topic])
        await admin.close()
    result: dict[str, Any] = {
        "benchmark": "raw_kafka_round_trip",
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "bootstrap": kafka.bootstrap,
        "payload_bytes": len(PAYLOAD),
        "round_trips": ROUND_TRIPS,
        "round_trip_ms": {
            "p50": round(statistics.median(latencies), 3),
            "p99": round(_percentile(latencies, 0.99), 3),
            "mean": round(statistics.fmean(latencies), 3),
        },
        "burst_messages": BURST,
        "messages_per_second": round(rate),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "raw_kafka.json").write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"raw Kafka round trip (acks=all → read_committed consumer), {ROUND_TRIPS} samples: "
        f"p50 {result['round_trip_ms']['p50']} ms, p99 {result['round_trip_ms']['p99']} ms"
    )
    print(
        f"pipelined throughput, {BURST} records of {len(PAYLOAD)} B: "
        f"{result['messages_per_second']} msg/s"
    )
    print(f"written to {RESULTS / 'raw_kafka.json'}")

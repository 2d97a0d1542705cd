"""`make bench`: run every benchmark against the broker at STEPLINE_KAFKA_BOOTSTRAP."""

from __future__ import annotations

import asyncio

from bench.console import main as console
from bench.executor_failover import main as executor_failover
from bench.gateway import main as gateway
from bench.raw_kafka import main as raw_kafka
from bench.report import main as report
from bench.router import main as router
from bench.scaleout import main as scaleout
from bench.stack import main as stack
from bench.steps import main as steps

if __name__ == "__main__":
    asyncio.run(raw_kafka())
    asyncio.run(router())
    asyncio.run(gateway())
    asyncio.run(steps())  # reads raw_kafka.json for the four-round-trip ratio
    asyncio.run(stack())  # reads raw_kafka.json for the Kafka ceiling
    asyncio.run(scaleout())
    asyncio.run(executor_failover())
    asyncio.run(console())
    report()

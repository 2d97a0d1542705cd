"""`make bench`: run every benchmark against the broker at STEPLINE_KAFKA_BOOTSTRAP."""

from __future__ import annotations

import asyncio

from bench.raw_kafka import main as raw_kafka
from bench.router import main as router

if __name__ == "__main__":
    asyncio.run(raw_kafka())
    asyncio.run(router())

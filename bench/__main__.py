"""`make bench`: run every benchmark against the broker at STEPLINE_KAFKA_BOOTSTRAP."""

from __future__ import annotations

import asyncio

from bench.raw_kafka import main

if __name__ == "__main__":
    asyncio.run(main())

"""A stateful test processor run as a real subprocess by the exactly-once tests.

For every `GoalSubmitted` it increments a per-key counter (state restored from the changelog)
and emits `<goal>:<count>` to the output topic. Exactly-once means: every input appears once
in the committed output, and each key's counts run 1..n without gaps or repeats.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from collections.abc import Sequence
from datetime import datetime

from stepline.v1 import goals_pb2
from stepline_runtime.codec import decode
from stepline_runtime.logs import configure_logging
from stepline_runtime.processor import ProcessorConfig, TransactionalProcessor
from stepline_runtime.records import InboundRecord, OutboundRecord
from stepline_runtime.settings import KafkaSettings


class Counter:
    """Counts inputs per key, per partition."""

    def __init__(self, output: str, changelog: str, delay_s: float) -> None:
        self.output = output
        self.changelog = changelog
        self.delay_s = delay_s
        self.counts: dict[int, dict[bytes, int]] = {}

    def forget(self, partition: int) -> None:
        self.counts.pop(partition, None)

    async def restore(self, partition: int, records: Sequence[InboundRecord]) -> None:
        state = self.counts.setdefault(partition, {})
        for record in records:
            if record.key is not None and record.value is not None:
                state[record.key] = int(record.value)

    async def handle(self, record: InboundRecord) -> Sequence[OutboundRecord]:
        goal = decode(record, [goals_pb2.GoalSubmitted]).message
        if self.delay_s:
            await asyncio.sleep(self.delay_s)  # widen the window in which a kill lands mid-txn
        key = record.key or b""
        count = self.counts.setdefault(record.partition, {}).get(key, 0) + 1
        self.counts[record.partition][key] = count
        return [
            OutboundRecord(self.output, key, f"{goal.goal}:{count}".encode()),
            OutboundRecord(self.changelog, key, str(count).encode()),
        ]

    async def tick(self, partition: int, now: datetime) -> Sequence[OutboundRecord]:
        return []


async def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("app-id", "input", "output", "changelog"):
        parser.add_argument(f"--{name}", required=True)
    parser.add_argument("--delay-ms", type=float, default=0)
    parser.add_argument("--max-batch", type=int, default=100)
    args = parser.parse_args()
    configure_logging("counter", os.environ.get("LOG_LEVEL", "INFO"))
    processor = TransactionalProcessor(
        ProcessorConfig(
            app_id=args.app_id,
            inputs=(args.input,),
            changelog=args.changelog,
            max_batch=args.max_batch,
            session_timeout_ms=6_000,
            tick_interval_s=0.2,
        ),
        Counter(args.output, args.changelog, args.delay_ms / 1000),
        KafkaSettings(),
    )
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, processor.stop)
    await processor.run()


if __name__ == "__main__":
    asyncio.run(main())

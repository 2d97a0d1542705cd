"""An at-least-once echo consumer run as a real subprocess by the batch crash test.

Every input is copied to the output topic under its key (value unchanged) after a short delay,
through `stepline_runtime.keyed` exactly as the services use it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from collections.abc import Sequence

from stepline_runtime.atleastonce import AtLeastOnce, BrokerPublisher, broker_for
from stepline_runtime.keyed import KeyedConsumer
from stepline_runtime.logs import configure_logging
from stepline_runtime.records import InboundRecord, OutboundRecord
from stepline_runtime.settings import KafkaSettings


async def main() -> None:
    """Consume `--input` into `--output` until SIGTERM."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--group", required=True)
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--delay-ms", type=int, default=2)
    parser.add_argument("--hold-key", default="", help="records of this key never finish")
    args = parser.parse_args()
    configure_logging("echo", os.environ.get("LOG_LEVEL", "INFO"))
    delay_s = args.delay_ms / 1000

    async def echo(record: InboundRecord) -> Sequence[OutboundRecord]:
        if args.hold_key and record.key == args.hold_key.encode():
            await asyncio.Event().wait()
        await asyncio.sleep(delay_s)
        return [OutboundRecord(args.output, record.key, record.value)]

    kafka = KafkaSettings()
    broker = broker_for(kafka, "test-echo")
    consumer = KeyedConsumer(
        kafka,
        [args.input],
        group_id=args.group,
        processor=AtLeastOnce(args.group, echo, BrokerPublisher(broker)),
        max_in_flight=50,
    )
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with broker:
        await broker.start()
        await consumer.start()
        stopped = asyncio.ensure_future(stop.wait())
        consuming = asyncio.ensure_future(consumer.wait())
        await asyncio.wait({stopped, consuming}, return_when=asyncio.FIRST_COMPLETED)
        if consuming.done():
            consuming.result()  # a consumer that ended on its own is a bug: show it
        await consumer.stop()


if __name__ == "__main__":
    asyncio.run(main())

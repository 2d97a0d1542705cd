"""Watches the requests topic for cancellations as they are produced.

The at-least-once consumer handles one partition's records in order, so a cancellation queued
behind a running call would arrive only after that call finished. This independent reader
(no consumer group: every executor instance sees every cancellation) stops in-flight calls at
once; the ordered consumer still sees the cancellation later and treats it as a no-op.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer

from stepline.v1 import tools_pb2
from stepline_runtime.codec import InvalidRecordError, decode
from stepline_runtime.processor import inbound
from stepline_runtime.records import InboundRecord
from stepline_runtime.settings import KafkaSettings
from stepline_runtime.topics import assignable_partitions

__all__ = ["CancelWatch"]

log = logging.getLogger(__name__)

_CANCEL_TYPE = tools_pb2.ToolCallsCancelRequested.DESCRIPTOR.full_name


class CancelWatch:
    """Feeds every new `ToolCallsCancelRequested` to `on_cancel(message, offset)`."""

    def __init__(
        self,
        kafka: KafkaSettings,
        topic: str,
        on_cancel: Callable[[tools_pb2.ToolCallsCancelRequested, int], object],
    ) -> None:
        self._kafka = kafka
        self._topic = topic
        self._on_cancel = on_cancel
        self.ready = asyncio.Event()

    async def run(self) -> None:
        """Read from the end of every partition until cancelled."""
        consumer = AIOKafkaConsumer(
            enable_auto_commit=False,
            isolation_level="read_committed",
            **self._kafka.client_kwargs("tool-executor-cancel-watch"),
        )
        await consumer.start()
        try:
            assigned = await assignable_partitions(consumer, self._topic)
            consumer.assign(assigned)
            await consumer.seek_to_end(*assigned)
            for tp in assigned:
                await consumer.position(tp)  # resolve "end" now, not at the first fetch
            self.ready.set()
            while True:
                for records in (await consumer.getmany(timeout_ms=1_000)).values():
                    for raw in records:
                        self._feed(inbound(raw))
        finally:
            await consumer.stop()

    def _feed(self, record: InboundRecord) -> None:
        if record.header("ce_type") != _CANCEL_TYPE:
            return
        try:
            message = decode(record, [tools_pb2.ToolCallsCancelRequested]).message
        except InvalidRecordError:
            return  # the ordered consumer dead-letters it
        self._on_cancel(message, record.offset)

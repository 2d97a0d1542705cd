"""Outbound port: the registry on the compacted `stepline.tools.v1` topic."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime

from aiokafka import AIOKafkaConsumer, TopicPartition

from stepline_executor.handlers import Pricing, announcement, tombstone
from stepline_executor.registry import Registry
from stepline_runtime.atleastonce import Publisher
from stepline_runtime.settings import KafkaSettings
from stepline_runtime.topics import assignable_partitions

__all__ = ["RegistryAnnouncer", "read_registered_names"]

log = logging.getLogger(__name__)


async def read_registered_names(
    kafka: KafkaSettings, topic: str, timeout_s: float = 30
) -> set[str]:
    """Names currently registered on the compacted topic (latest record per key not a tombstone)."""
    consumer = AIOKafkaConsumer(
        enable_auto_commit=False, **kafka.client_kwargs("tool-executor-registry-reader")
    )
    await consumer.start()
    try:
        assigned = await assignable_partitions(consumer, topic)
        consumer.assign(assigned)
        await consumer.seek_to_beginning(*assigned)
        ends = await consumer.end_offsets(assigned)
        latest: dict[bytes, bool] = {}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not await _caught_up(consumer, assigned, ends):
            if loop.time() > deadline:
                raise TimeoutError(f"could not read {topic} to its end")
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for record in records:
                    if record.key is not None:
                        latest[record.key] = record.value is not None
        return {key.decode() for key, alive in latest.items() if alive}
    finally:
        await consumer.stop()


async def _caught_up(
    consumer: AIOKafkaConsumer, assigned: list[TopicPartition], ends: dict[TopicPartition, int]
) -> bool:
    for tp in assigned:
        if await consumer.position(tp) < ends[tp]:
            return False
    return True


class RegistryAnnouncer:
    """Publishes every tool as `ToolRegistered` and tombstones names no longer offered."""

    def __init__(
        self,
        registry: Registry,
        publisher: Publisher,
        topic: str,
        pricing: Pricing,
        clock: Callable[[], datetime],
        previously: set[str],
    ) -> None:
        self._registry = registry
        self._publisher = publisher
        self._topic = topic
        self._pricing = pricing
        self._clock = clock
        self._published: set[str] = set(previously)
        self._version = -1

    async def announce(self) -> None:
        """Publish the current registry if it changed since the last announcement."""
        if self._version == self._registry.version:
            return
        version = self._registry.version
        tools = self._registry.tools()
        names = {tool.spec.name for tool in tools}
        now = self._clock()
        records = [
            announcement(self._topic, tool.spec, self._pricing, now, tool.original)
            for tool in tools
        ]
        records += [tombstone(self._topic, name) for name in sorted(self._published - names)]
        await self._publisher.publish(records)
        log.info("tool registry published", extra={"tools": len(tools)})
        self._published = names
        self._version = version

    async def run(self, interval_s: float = 1.0) -> None:
        """Re-announce whenever the registry changes (e.g. an MCP server (re)connected)."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.announce()
            except Exception:
                log.exception("tool registry publication failed; will retry")

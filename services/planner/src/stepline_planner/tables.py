"""Read-only tables the planner consults: the tool registry and tenant budgets.

Both come from compacted topics (`stepline.tools.v1` keyed by tool name, `stepline.budgets.v1`
keyed by tenant) read from the beginning by a plain consumer into memory; the latest record
per key wins and a tombstone removes the key. `InMemoryTables` is the twin for tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from stepline.v1 import budgets_pb2, tools_pb2
from stepline_planner import convert
from stepline_planner.decide import TenantBudget
from stepline_planner.outputs import ToolSpec
from stepline_runtime.codec import Cause, InvalidRecordError, decode
from stepline_runtime.deadletter import dead_letter
from stepline_runtime.processor import inbound
from stepline_runtime.records import InboundRecord
from stepline_runtime.settings import KafkaSettings

__all__ = ["InMemoryTables", "Tables", "TopicTables"]

log = logging.getLogger(__name__)


class Tables(Protocol):
    """What the planner looks up outside a run's own state."""

    def tools(self) -> Mapping[str, ToolSpec]:
        """Registered tools by name."""

    def budgets(self) -> Mapping[str, TenantBudget]:
        """Tenant budgets by tenant id."""


class InMemoryTables:
    """Tables held in plain dicts (tests, and anyone embedding the core)."""

    def __init__(
        self,
        tools: Mapping[str, ToolSpec] | None = None,
        budgets: Mapping[str, TenantBudget] | None = None,
    ) -> None:
        self.tool_table: dict[str, ToolSpec] = dict(tools or {})
        self.budget_table: dict[str, TenantBudget] = dict(budgets or {})

    def tools(self) -> Mapping[str, ToolSpec]:
        """Registered tools by name."""
        return self.tool_table

    def budgets(self) -> Mapping[str, TenantBudget]:
        """Tenant budgets by tenant id."""
        return self.budget_table


class TopicTables:
    """Follows the tools and budgets topics into memory."""

    def __init__(
        self,
        kafka: KafkaSettings,
        tools_topic: str,
        budgets_topic: str,
        partition_counts: Mapping[str, int],
        *,
        dead_letter_topic: str,
        consumer_name: str,
    ) -> None:
        self._dead_letter_topic = dead_letter_topic
        self._consumer_name = consumer_name
        # Refused table records go to the DLQ like any other input's; a restart re-reads the
        # table and parks them again under the same deterministic event id.
        self._dead_letters = AIOKafkaProducer(
            enable_idempotence=True, acks="all", **kafka.client_kwargs("planner-tables-dlq")
        )
        self._tools_topic = tools_topic
        self._budgets_topic = budgets_topic
        self._counts = dict(partition_counts)
        self._tools: dict[str, ToolSpec] = {}
        self._budgets: dict[str, TenantBudget] = {}
        self._versions: dict[str, int] = {}
        self._consumer = AIOKafkaConsumer(
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            **kafka.client_kwargs("planner-tables"),
        )
        self._task: asyncio.Task[None] | None = None

    def tools(self) -> Mapping[str, ToolSpec]:
        """Registered tools by name."""
        return self._tools

    def budgets(self) -> Mapping[str, TenantBudget]:
        """Tenant budgets by tenant id."""
        return self._budgets

    async def start(self) -> None:
        """Read both topics up to their current end, then keep following in the background."""
        await self._dead_letters.start()
        await self._consumer.start()
        partitions = [
            TopicPartition(topic, p)
            for topic in (self._tools_topic, self._budgets_topic)
            for p in range(self._counts.get(topic, 0))
        ]
        self._consumer.assign(partitions)
        await self._consumer.seek_to_beginning(*partitions)
        end = await self._consumer.end_offsets(partitions)
        while True:
            positions = [await self._consumer.position(tp) for tp in partitions]
            if all(pos >= end[tp] for pos, tp in zip(positions, partitions, strict=True)):
                break
            await self._poll()
        self._task = asyncio.create_task(self._follow())

    async def stop(self) -> None:
        """Stop following."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._consumer.stop()
        await self._dead_letters.stop()

    async def _follow(self) -> None:
        while True:
            try:
                await self._poll()
            except KafkaError:
                # A broker outage must not end the follower: the tables would silently freeze.
                log.warning("table follower: Kafka unavailable; retrying", exc_info=True)
                await asyncio.sleep(1)

    async def _poll(self) -> None:
        batch = await self._consumer.getmany(timeout_ms=500)
        for records in batch.values():
            for raw in records:
                await self._apply(inbound(raw))

    async def _apply(self, record: InboundRecord) -> None:
        topic, value = record.topic, record.value
        name = (record.key or b"").decode()
        try:
            if topic == self._tools_topic:
                if value is None:
                    self._tools.pop(name, None)
                    return
                registered = decode(record, [tools_pb2.ToolRegistered]).message
                spec = convert.tool_spec_from_proto(registered)
                self._tools[spec.name] = spec
            else:
                if value is None:
                    self._budgets.pop(name, None)
                    return
                state = decode(record, [budgets_pb2.BudgetState]).message
                if state.version and state.version < self._versions.get(state.tenant_id, 0):
                    return  # readers ignore a lower version than they hold
                self._versions[state.tenant_id] = state.version
                self._budgets[state.tenant_id] = convert.budget_from_proto(state)
        except (InvalidRecordError, convert.ConversionError) as error:
            cause = error.cause if isinstance(error, InvalidRecordError) else Cause.INVALID
            letter = dead_letter(
                record,
                cause,
                str(error),
                consumer=self._consumer_name,
                now=datetime.now(UTC),
                topic=self._dead_letter_topic,
            )
            await self._dead_letters.send_and_wait(
                letter.topic, letter.value, key=letter.key, headers=list(letter.headers)
            )

"""Read-only tables the planner consults: the tool registry and tenant budgets.

Both come from compacted topics (`stepline.tools.v1` keyed by tool name, `stepline.budgets.v1`
keyed by tenant) read from the beginning into memory by a `CompactedFollower`; the latest record
per key wins and a tombstone removes the key. `InMemoryTables` is the twin for tests.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from stepline.v1 import budgets_pb2, tools_pb2
from stepline_planner import convert
from stepline_planner.decide import TenantBudget
from stepline_planner.outputs import ToolSpec
from stepline_runtime.codec import InvalidRecordError, decode
from stepline_runtime.follow import CompactedFollower
from stepline_runtime.records import InboundRecord
from stepline_runtime.settings import KafkaSettings

__all__ = ["InMemoryTables", "Tables", "TopicTables"]


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
        self._tools_topic = tools_topic
        self._tools: dict[str, ToolSpec] = {}
        self._budgets: dict[str, TenantBudget] = {}
        self._versions: dict[str, int] = {}
        # Refused table records go to the DLQ like any other input's.
        self._follower = CompactedFollower(
            kafka,
            [tools_topic, budgets_topic],
            self._apply,
            client_id="planner-tables",
            consumer_name=consumer_name,
            dead_letter_topic=dead_letter_topic,
            partition_counts=partition_counts,
            refused=(InvalidRecordError, convert.ConversionError),
        )

    def tools(self) -> Mapping[str, ToolSpec]:
        """Registered tools by name."""
        return self._tools

    def budgets(self) -> Mapping[str, TenantBudget]:
        """Tenant budgets by tenant id."""
        return self._budgets

    async def start(self) -> None:
        """Read both topics up to their current end, then keep following in the background."""
        await self._follower.start()

    async def stop(self) -> None:
        """Stop following."""
        await self._follower.stop()

    def _apply(self, record: InboundRecord) -> None:
        name = (record.key or b"").decode()
        if record.topic == self._tools_topic:
            if record.value is None:
                self._tools.pop(name, None)
                return
            registered = decode(record, [tools_pb2.ToolRegistered]).message
            spec = convert.tool_spec_from_proto(registered)
            self._tools[spec.name] = spec
        else:
            if record.value is None:
                self._budgets.pop(name, None)
                return
            state = decode(record, [budgets_pb2.BudgetState]).message
            if state.version and state.version < self._versions.get(state.tenant_id, 0):
                return  # readers ignore a lower version than they hold
            self._versions[state.tenant_id] = state.version
            self._budgets[state.tenant_id] = convert.budget_from_proto(state)

"""The read model's store port: what the projector writes and the HTTP API reads."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from stepline_frontdoor.readmodel import (
    ApprovalRow,
    ApprovalStatus,
    AttemptRow,
    BudgetRow,
    EventRow,
    Projection,
    RollupRow,
    RunFact,
    RunRow,
    RunStatus,
    ToolOutputRow,
)

__all__ = ["Position", "ReadStore", "RunFilter", "RunPage"]


@dataclass(frozen=True, slots=True)
class Position:
    """Where a record sits in Kafka; the store keeps the next offset to read per partition."""

    topic: str
    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class RunFilter:
    """The runs list's filters; `tenant_id` always comes from the caller's key."""

    tenant_id: str
    agent: str = ""
    status: RunStatus | None = None
    since: datetime | None = None
    parent_run_id: str = ""
    limit: int = 50
    cursor: str = ""


@dataclass(frozen=True, slots=True)
class RunPage:
    """One page of runs, newest first; `next_cursor` is empty on the last page."""

    runs: Sequence[RunRow]
    next_cursor: str


class ReadStore(Protocol):
    """Runs, timelines, approvals and attempts, kept in step with the topics' offsets."""

    def positions(self) -> dict[tuple[str, int], int]:
        """The next offset to read for each (topic, partition) already projected."""
        ...

    def apply_run_event(self, fact: RunFact | None, at: Position) -> Projection | None:
        """Fold one run event (None: a record to skip) and advance `at` in one transaction."""
        ...

    def apply_attempt(self, row: AttemptRow | None, at: Position) -> bool:
        """Insert one attempt unless its usage id is known; advance `at`; True when new."""
        ...

    def apply_attempts(self, rows: Sequence[AttemptRow], at: Position) -> bool:
        """Insert attempts whose usage ids are new; advance `at`; True when any was new."""
        ...

    def apply_budget(self, row: BudgetRow | None, at: Position) -> bool:
        """Keep the tenant's newest budget state (by version); advance `at`; True when newer."""
        ...

    def budget(self, tenant_id: str) -> BudgetRow | None:
        """The tenant's latest budget state, if billing published one."""
        ...

    def apply_rollup(self, row: RollupRow | None, at: Position) -> bool:
        """Keep the fullest state of one billing rollup; advance `at`; True when it grew."""
        ...

    def rollups(self, tenant_id: str | None, granularity: str, since: datetime) -> list[RollupRow]:
        """Billing's rollups of one tenant (None: all) and width from `since`, oldest first."""
        ...

    def apply_tool_output(self, row: ToolOutputRow | None, at: Position) -> bool:
        """Keep one tool call's first reported output; advance `at`; True when new."""
        ...

    def tool_outputs(self, tenant_id: str, run_id: str) -> list[ToolOutputRow]:
        """What each tool call of the run returned."""
        ...

    def list_runs(self, query: RunFilter) -> RunPage:
        """A page of the tenant's runs matching `query`."""
        ...

    def run(self, tenant_id: str, run_id: str) -> RunRow | None:
        """The run, or None when it does not exist or belongs to another tenant."""
        ...

    def replays(self, tenant_id: str, run_id: str) -> list[RunRow]:
        """The tenant's replays and forks of `run_id`, newest first."""
        ...

    def events(self, tenant_id: str, run_id: str, after: int = 0) -> list[EventRow]:
        """The run's timeline after sequence `after`."""
        ...

    def attempts(self, tenant_id: str, run_id: str) -> list[AttemptRow]:
        """Every model attempt and tool execution of the run."""
        ...

    def approvals(
        self, tenant_id: str, *, run_id: str = "", status: ApprovalStatus | None = None
    ) -> list[ApprovalRow]:
        """Approvals of the tenant (of one run when `run_id`), oldest first."""
        ...

    def attempts_since(self, tenant_id: str | None, since: datetime) -> list[AttemptRow]:
        """Attempts since `since`, of one tenant or (None) of all tenants."""
        ...

    def close(self) -> None:
        """Release the connection."""
        ...

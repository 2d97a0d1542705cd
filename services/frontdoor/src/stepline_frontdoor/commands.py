"""Outbound port for what people ask of runs: submit a goal, cancel, decide an approval."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from stepline_client.client import Goal, Stepline

__all__ = ["Cancel", "Commands", "Decision", "KafkaCommands", "RecordingCommands"]


@dataclass(frozen=True, slots=True)
class Cancel:
    """A request to cancel a run (and its children unless `keep_children`)."""

    run_id: str
    tenant_id: str
    reason: str
    requested_by: str
    keep_children: bool = False


@dataclass(frozen=True, slots=True)
class Decision:
    """An approver's answer to one approval."""

    run_id: str
    tenant_id: str
    approval_id: str
    call_id: str
    approve: bool
    reason: str
    decided_by: str
    edited_arguments_json: str = ""


class Commands(Protocol):
    """Publishes goals and control commands; the planner is the one that acts on them."""

    async def submit(self, goal: Goal) -> str:
        """Publish `GoalSubmitted`; returns the run id."""
        ...

    async def cancel(self, cancel: Cancel) -> None:
        """Publish `RunCancelRequested`."""
        ...

    async def decide(self, decision: Decision) -> None:
        """Publish `ApprovalDecided`."""
        ...


class KafkaCommands:
    """`Commands` over the Stepline client (an idempotent producer started by the caller)."""

    def __init__(self, client: Stepline) -> None:
        self._client = client

    async def submit(self, goal: Goal) -> str:
        """Publish `GoalSubmitted`; returns the run id."""
        return await self._client.submit(goal)

    async def cancel(self, cancel: Cancel) -> None:
        """Publish `RunCancelRequested`."""
        await self._client.cancel(
            cancel.run_id,
            cancel.tenant_id,
            reason=cancel.reason,
            requested_by=cancel.requested_by,
            keep_children=cancel.keep_children,
        )

    async def decide(self, decision: Decision) -> None:
        """Publish `ApprovalDecided`."""
        await self._client.decide(
            decision.run_id,
            decision.tenant_id,
            decision.approval_id,
            approve=decision.approve,
            reason=decision.reason,
            edited_arguments_json=decision.edited_arguments_json,
            decided_by=decision.decided_by,
            call_id=decision.call_id,
        )


@dataclass
class RecordingCommands:
    """In-memory twin: remembers what would have been published."""

    goals: list[Goal] = field(default_factory=list)
    cancels: list[Cancel] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)

    async def submit(self, goal: Goal) -> str:
        """Remember the goal; the run id is the one Kafka would get."""
        self.goals.append(goal)
        return goal.run_id()

    async def cancel(self, cancel: Cancel) -> None:
        """Remember the cancel request."""
        self.cancels.append(cancel)

    async def decide(self, decision: Decision) -> None:
        """Remember the decision."""
        self.decisions.append(decision)

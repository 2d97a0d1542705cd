"""What the core reacts to: goals, results, human commands, session/child notices, ticks."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import TypeAlias

from stepline_planner.replay import Replay
from stepline_planner.state import Decision, Message, Status, ToolCall, Usage

__all__ = [
    "ApprovalDecided",
    "CancelRequested",
    "ChildEnded",
    "Goal",
    "GoalReceived",
    "Input",
    "ModelCompleted",
    "ModelFailed",
    "SessionGranted",
    "SessionRejected",
    "Tick",
    "ToolCompleted",
    "ToolFailed",
]


@dataclass(frozen=True, slots=True)
class Goal:
    """A request to run an agent (GoalSubmitted)."""

    run_id: str
    tenant_id: str
    agent: str
    goal: str
    session_id: str = ""
    budget: Decimal | None = None
    budget_currency: str = ""
    deadline: datetime | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    idempotency_key: str = ""
    parent_run_id: str = ""
    submitted_by: str = ""
    max_steps: int = 0
    replay: Replay | None = None


@dataclass(frozen=True, slots=True)
class GoalReceived:
    """A goal arrived for this run id."""

    goal: Goal


@dataclass(frozen=True, slots=True)
class ModelCompleted:
    """The router answered a model step."""

    step_id: str
    call_id: str
    content: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    finish_reason: str = "STOP"
    usage: Usage = field(default_factory=Usage)
    cost: Decimal = Decimal(0)
    provider: str = ""
    model: str = ""
    deployment: str = ""


@dataclass(frozen=True, slots=True)
class ModelFailed:
    """The router could not answer a model step."""

    step_id: str
    call_id: str
    kind: str
    message: str = ""
    usage: Usage = field(default_factory=Usage)
    cost: Decimal = Decimal(0)
    # Provider attempts the router made; 0 when it gave up before trying.
    attempts: int = 0


@dataclass(frozen=True, slots=True)
class ToolCompleted:
    """The executor ran a tool step."""

    step_id: str
    call_id: str
    output: str
    truncated: bool = False
    # What the executor billed for the call (its UsageRecorded), 0 when nothing or unpriced.
    cost: Decimal = Decimal(0)


@dataclass(frozen=True, slots=True)
class ToolFailed:
    """A tool step produced no output."""

    step_id: str
    call_id: str
    kind: str
    message: str = ""
    # What the executor billed: a call that started is billed whatever its outcome.
    cost: Decimal = Decimal(0)


@dataclass(frozen=True, slots=True)
class ApprovalDecided:
    """A human decided on a tool call that required approval."""

    tenant_id: str
    approval_id: str
    call_id: str
    decision: Decision
    reason: str = ""
    edited_arguments_json: str = ""
    decided_by: str = ""


@dataclass(frozen=True, slots=True)
class CancelRequested:
    """Someone asked to stop the run."""

    tenant_id: str
    reason: str = ""
    requested_by: str = ""
    keep_children: bool = False


@dataclass(frozen=True, slots=True)
class SessionGranted:
    """The session owner handed this run the session's memory."""

    memory: tuple[Message, ...] = ()


@dataclass(frozen=True, slots=True)
class SessionRejected:
    """The session is busy and rejects new goals."""

    reason: str


@dataclass(frozen=True, slots=True)
class ChildEnded:
    """A child run of this run ended."""

    child_run_id: str
    status: Status
    answer: str = ""
    message: str = ""
    usage: Usage = field(default_factory=Usage)
    cost: Decimal = Decimal(0)


@dataclass(frozen=True, slots=True)
class Tick:
    """Time passed: fire the timers that are due."""


Input: TypeAlias = (
    GoalReceived
    | ModelCompleted
    | ModelFailed
    | ToolCompleted
    | ToolFailed
    | ApprovalDecided
    | CancelRequested
    | SessionGranted
    | SessionRejected
    | ChildEnded
    | Tick
)

"""What the core asks for: requests to other services, run events, internal notices."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TypeAlias

from stepline_planner.inputs import Goal
from stepline_planner.replay import Replay, Served
from stepline_planner.state import (
    Decision,
    IgnoredReason,
    Message,
    Outcome,
    Reason,
    Status,
    StepKind,
    ToolCall,
    Usage,
)

__all__ = [
    "ApprovalRequested",
    "ApprovalResolved",
    "BudgetReserved",
    "ChildEndedSent",
    "ChildGoalSubmitted",
    "ChildRunStarted",
    "DuplicateResultIgnored",
    "EventBody",
    "GoalForwarded",
    "ModelCallRequested",
    "Output",
    "RunCancelSent",
    "RunCancelled",
    "RunCompleted",
    "RunEvent",
    "RunFailed",
    "RunQueued",
    "RunStarted",
    "SessionTurnEnded",
    "SessionTurnGranted",
    "SessionTurnRejected",
    "SessionTurnRequested",
    "StepCompleted",
    "StepStarted",
    "ToolCallRequested",
    "ToolCallsCancelRequested",
    "ToolSpec",
    "WrapUpStarted",
]


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A tool definition offered to a model (from the executor's registry, or built in)."""

    name: str
    description: str = ""
    parameters_json_schema: str = "{}"
    requires_approval: bool = False
    idempotent: bool = False
    # Where the executor's tool comes from ("builtin", "webhook", "mcp:<server>"); replays run
    # only built-in idempotent tools for real unless a tool is allowed explicitly.
    source: str = ""


# --- run events (stepline.runs.v1) ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RunQueued:
    """The run waits before starting."""

    reason: str


@dataclass(frozen=True, slots=True)
class RunStarted:
    """The goal was accepted and the profile resolved."""

    goal: str
    session_id: str
    budget: Decimal | None
    deadline: datetime | None
    parent_run_id: str
    submitted_by: str
    route: str
    max_steps: int
    metadata: Mapping[str, str] = field(default_factory=dict)
    replay: Replay | None = None


@dataclass(frozen=True, slots=True)
class StepStarted:
    """A model or tool call was requested (or is awaiting approval)."""

    step_id: str
    call_id: str
    kind: StepKind
    deadline: datetime
    route: str = ""
    tool: str = ""
    arguments_json: str = ""


@dataclass(frozen=True, slots=True)
class StepCompleted:
    """A step ended."""

    step_id: str
    call_id: str
    kind: StepKind
    outcome: Outcome
    duration: timedelta
    route: str = ""
    provider: str = ""
    model: str = ""
    deployment: str = ""
    finish_reason: str = ""
    requested_tools: tuple[str, ...] = ()
    tool: str = ""
    tool_error_kind: str = ""
    output_truncated: bool = False
    usage: Usage = field(default_factory=Usage)
    cost: Decimal = Decimal(0)
    error_message: str = ""
    # Tool steps: the text the model was given; model steps: the answer and its tool calls.
    output: str = ""
    content: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    model_tool_call_id: str = ""
    # Replays: where a tool step's result came from, and the recorded call that served it.
    served: Served = Served.LIVE
    recorded_call_id: str = ""


@dataclass(frozen=True, slots=True)
class ApprovalRequested:
    """The run waits for a human decision on a tool call."""

    approval_id: str
    step_id: str
    call_id: str
    tool: str
    arguments_json: str
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class ApprovalResolved:
    """An approval was decided or auto-denied."""

    approval_id: str
    step_id: str
    call_id: str
    decision: Decision
    reason: str = ""
    decided_by: str = ""
    timed_out: bool = False
    arguments_edited: bool = False


@dataclass(frozen=True, slots=True)
class DuplicateResultIgnored:
    """A result for a step that is not pending was recorded and not applied."""

    step_id: str
    call_id: str
    reason: IgnoredReason
    kind: StepKind
    # A late tool result's billed cost, counted into the run (its output is not used).
    cost: Decimal = Decimal(0)


@dataclass(frozen=True, slots=True)
class BudgetReserved:
    """Money was set aside for a model step."""

    step_id: str
    amount: Decimal
    reserved_total: Decimal


@dataclass(frozen=True, slots=True)
class ChildRunStarted:
    """This run submitted a sub-agent run."""

    child_run_id: str
    agent: str
    goal: str
    step_id: str


@dataclass(frozen=True, slots=True)
class WrapUpStarted:
    """A limit was hit; a final no-tools turn follows."""

    limit: Reason
    message: str


@dataclass(frozen=True, slots=True)
class RunCompleted:
    """Terminal: answered."""

    answer: str
    usage: Usage
    cost: Decimal
    steps: int
    duration: timedelta
    limit_reached: Reason = Reason.UNSPECIFIED


@dataclass(frozen=True, slots=True)
class RunFailed:
    """Terminal: no answer."""

    reason: Reason
    message: str
    usage: Usage
    cost: Decimal
    steps: int
    duration: timedelta
    step_id: str = ""


@dataclass(frozen=True, slots=True)
class RunCancelled:
    """Terminal: cancelled."""

    reason: str
    requested_by: str
    by_parent: bool
    usage: Usage
    cost: Decimal
    steps: int
    duration: timedelta


EventBody: TypeAlias = (
    RunQueued
    | RunStarted
    | StepStarted
    | StepCompleted
    | ApprovalRequested
    | ApprovalResolved
    | DuplicateResultIgnored
    | BudgetReserved
    | ChildRunStarted
    | WrapUpStarted
    | RunCompleted
    | RunFailed
    | RunCancelled
)


@dataclass(frozen=True, slots=True)
class RunEvent:
    """One entry of a run's history; `sequence` is gap-free per run."""

    run_id: str
    tenant_id: str
    agent: str
    sequence: int
    occurred_at: datetime
    currency: str
    body: EventBody

    @property
    def event_id(self) -> str:
        """The deterministic id consumers dedupe on: `<run_id>/<sequence>`."""
        return f"{self.run_id}/{self.sequence}"


# --- requests to other services -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ModelCallRequested:
    """Ask the router for one model answer."""

    run_id: str
    tenant_id: str
    agent: str
    step_id: str
    call_id: str
    route: str
    messages: tuple[Message, ...]
    tools: tuple[ToolSpec, ...]
    tools_allowed: bool
    max_output_tokens: int
    deadline: datetime
    max_cost: Decimal | None
    currency: str
    metadata: Mapping[str, str]
    requested_at: datetime
    # Use the provider's streaming API (the agent profile or the route asks for it).
    stream: bool = False
    # The original run id when this run is a replay or fork (marks its usage records).
    replay_of: str = ""


@dataclass(frozen=True, slots=True)
class ToolCallRequested:
    """Ask the executor to run one tool call."""

    run_id: str
    tenant_id: str
    agent: str
    step_id: str
    call_id: str
    tool: str
    arguments_json: str
    idempotency_key: str
    deadline: datetime
    metadata: Mapping[str, str]
    requested_at: datetime
    # The original run id when this run is a replay or fork (marks the tool's usage records).
    replay_of: str = ""


@dataclass(frozen=True, slots=True)
class ToolCallsCancelRequested:
    """Ask the executor to stop in-flight calls of a run."""

    run_id: str
    tenant_id: str
    call_ids: tuple[str, ...]
    reason: str
    requested_at: datetime


# --- planner to planner (through Kafka, to the partition owning the key) -----------------------


@dataclass(frozen=True, slots=True)
class GoalForwarded:
    """Re-publish a goal under its derived run id (idempotent submission)."""

    goal: Goal


@dataclass(frozen=True, slots=True)
class ChildGoalSubmitted:
    """Start a child run."""

    goal: Goal


@dataclass(frozen=True, slots=True)
class RunCancelSent:
    """Cancel another run (a child)."""

    run_id: str
    tenant_id: str
    reason: str
    requested_by: str


@dataclass(frozen=True, slots=True)
class ChildEndedSent:
    """Tell a parent run how this child ended."""

    parent_run_id: str
    child_run_id: str
    tenant_id: str
    status: Status
    answer: str
    message: str
    usage: Usage
    cost: Decimal
    currency: str


@dataclass(frozen=True, slots=True)
class SessionTurnRequested:
    """A run asks the session owner for its turn."""

    tenant_id: str
    session_id: str
    run_id: str


@dataclass(frozen=True, slots=True)
class SessionTurnEnded:
    """A run gives its session back, with the updated memory when it completed."""

    tenant_id: str
    session_id: str
    run_id: str
    memory_updated: bool
    memory: tuple[Message, ...] = ()


@dataclass(frozen=True, slots=True)
class SessionTurnGranted:
    """The session owner hands a run the memory."""

    tenant_id: str
    session_id: str
    run_id: str
    memory: tuple[Message, ...]


@dataclass(frozen=True, slots=True)
class SessionTurnRejected:
    """The session owner refuses a run (session busy, policy reject)."""

    tenant_id: str
    session_id: str
    run_id: str
    reason: str


Output: TypeAlias = (
    RunEvent
    | ModelCallRequested
    | ToolCallRequested
    | ToolCallsCancelRequested
    | GoalForwarded
    | ChildGoalSubmitted
    | RunCancelSent
    | ChildEndedSent
    | SessionTurnRequested
    | SessionTurnEnded
    | SessionTurnGranted
    | SessionTurnRejected
)

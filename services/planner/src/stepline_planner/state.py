"""The planner's own state types: runs, steps, transcripts and sessions (no protobuf here).

Transcript turns (`Message`, `ToolCall`, `Role`) and token counts are the shared vocabulary of
`stepline_vocab`, re-exported here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import TYPE_CHECKING

from stepline_vocab import Message, Role, Tokens, ToolCall

if TYPE_CHECKING:  # replay imports this module
    from stepline_planner.replay import Replay

__all__ = [
    "Decision",
    "IgnoredReason",
    "Message",
    "Outcome",
    "PendingStep",
    "Reason",
    "Role",
    "Run",
    "Session",
    "Status",
    "StepKind",
    "ToolCall",
    "Usage",
    "call_id_of",
]


class Status(StrEnum):
    """Lifecycle of a run; mirrors `RunStatus`."""

    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    AWAITING_APPROVAL = "AWAITING_APPROVAL"
    WRAPPING_UP = "WRAPPING_UP"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        """Whether the run has ended."""
        return self in (Status.COMPLETED, Status.FAILED, Status.CANCELLED)


class Reason(StrEnum):
    """Why a run failed or which limit started a wrap-up; mirrors `RunFailureReason`."""

    UNSPECIFIED = "UNSPECIFIED"
    BUDGET_EXCEEDED = "BUDGET_EXCEEDED"
    MAX_STEPS = "MAX_STEPS"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    INVALID_GOAL = "INVALID_GOAL"
    UNKNOWN_AGENT = "UNKNOWN_AGENT"
    TOOL_NOT_ALLOWED = "TOOL_NOT_ALLOWED"
    MODEL_FAILED = "MODEL_FAILED"
    INTERNAL = "INTERNAL"
    PARENT_ENDED = "PARENT_ENDED"
    REPLAY_DIVERGED = "REPLAY_DIVERGED"


class StepKind(StrEnum):
    """A step is one model call or one tool call."""

    MODEL = "MODEL"
    TOOL = "TOOL"


class Outcome(StrEnum):
    """How a step ended; mirrors `StepOutcome`."""

    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    TIMED_OUT = "TIMED_OUT"
    CANCELLED = "CANCELLED"
    DENIED = "DENIED"


class IgnoredReason(StrEnum):
    """Why a result was not applied; mirrors `IgnoredResultReason`."""

    ALREADY_COMPLETED = "ALREADY_COMPLETED"
    STEP_TIMED_OUT = "STEP_TIMED_OUT"
    RUN_FINISHED = "RUN_FINISHED"
    UNKNOWN_STEP = "UNKNOWN_STEP"
    CALL_MISMATCH = "CALL_MISMATCH"


class Decision(StrEnum):
    """A human's verdict on a tool call."""

    APPROVED = "APPROVED"
    DENIED = "DENIED"


# Token counts of a run are the shared ones (`stepline_vocab.Tokens`), named `Usage` here.
Usage = Tokens


def call_id_of(step_id: str, attempt: int) -> str:
    """The call id of a step's `attempt`-th request (1-based): deterministic, so retries dedupe."""
    return f"{step_id}:{attempt}"


@dataclass(frozen=True, slots=True)
class PendingStep:
    """A step that was requested (or awaits approval) and has no result yet."""

    step_id: str
    call_id: str
    kind: StepKind
    deadline: datetime
    started_at: datetime
    tool: str = ""
    arguments_json: str = ""
    model_tool_call_id: str = ""
    awaiting_approval: bool = False
    approval_id: str = ""
    approval_deadline: datetime | None = None
    idempotency_key: str = ""
    reserved: Decimal = Decimal(0)

    @property
    def attempt(self) -> int:
        """Which request of this step is pending (the `n` of `call_id = step_id:n`)."""
        suffix = self.call_id.removeprefix(f"{self.step_id}:")
        return int(suffix) if suffix.isdigit() and suffix != self.call_id else 1


@dataclass(frozen=True, slots=True)
class Run:
    """The durable state of one run."""

    run_id: str
    tenant_id: str
    agent: str
    status: Status
    goal: str
    currency: str
    started_at: datetime
    updated_at: datetime
    session_id: str = ""
    transcript: tuple[Message, ...] = ()
    pending: tuple[PendingStep, ...] = ()
    queued_tool_calls: tuple[ToolCall, ...] = ()
    step_ordinal: int = 0
    route: str = ""
    max_steps: int = 0
    budget: Decimal | None = None
    deadline: datetime | None = None
    usage: Usage = field(default_factory=Usage)
    cost: Decimal = Decimal(0)
    parent_run_id: str = ""
    child_run_ids: tuple[str, ...] = ()
    metadata: Mapping[str, str] = field(default_factory=dict)
    idempotency_key: str = ""
    submitted_by: str = ""
    finished_at: datetime | None = None
    last_event_sequence: int = 0
    answer: str = ""
    failure_reason: Reason = Reason.UNSPECIFIED
    failure_message: str = ""
    wrap_up_limit: Reason = Reason.UNSPECIFIED
    steps_taken: int = 0
    # Calls given up on that may still be billed: tool calls (deadline, run ended) and model
    # requests a retry superseded; `deadline` is when the planner stops waiting for their
    # result. A result settles one: its cost is counted.
    unsettled: tuple[PendingStep, ...] = ()
    # The run has ended but its terminal event waits for `unsettled` (so its cost is the ledger's).
    end_held: bool = False
    # Details of the ending that the terminal event needs and the state has nowhere else.
    failed_step_id: str = ""
    cancelled_by: str = ""
    # A replay or fork of a recorded run, and which recorded calls served a step already.
    replay: Replay | None = None
    replay_used: tuple[int, ...] = ()

    @property
    def reserved(self) -> Decimal:
        """Money set aside by pending steps and by calls whose billed cost is not yet known."""
        return sum((p.reserved for p in (*self.pending, *self.unsettled)), Decimal(0))

    def step(self, step_id: str) -> PendingStep | None:
        """The pending step `step_id`, if any."""
        return next((p for p in self.pending if p.step_id == step_id), None)


@dataclass(frozen=True, slots=True)
class Session:
    """One session: shared conversation memory and which run holds it."""

    tenant_id: str
    session_id: str
    updated_at: datetime
    active_run_id: str = ""
    queued_run_ids: tuple[str, ...] = ()
    memory: tuple[Message, ...] = ()

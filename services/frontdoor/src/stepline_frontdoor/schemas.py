"""The HTTP API's wire types (pydantic): request bodies, responses, and their conversions.

These models are the single source of the OpenAPI components (`openapi.py`), so the document
and what the handlers return cannot disagree.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from stepline_frontdoor.readmodel import (
    ApprovalRow,
    AttemptRow,
    BudgetRow,
    EventRow,
    RollupRow,
    RunRow,
    ToolOutputRow,
)
from stepline_frontdoor.reports import AgentSpend, ProviderHealth
from stepline_keys import Key
from stepline_keys.manage import status_of
from stepline_keys.secret import PREFIX

__all__ = [
    "AgentCost",
    "Approval",
    "ApprovalList",
    "Attempt",
    "Budget",
    "CancelBody",
    "DecisionBody",
    "DiffCall",
    "DiffCalls",
    "DiffDelta",
    "DiffFacts",
    "DiffStep",
    "DifferentArguments",
    "Error",
    "ErrorBody",
    "Event",
    "KeyInfo",
    "KeyList",
    "Me",
    "NewKey",
    "NewKeyBody",
    "Provider",
    "ProviderList",
    "RevokeKeyBody",
    "Run",
    "RunDetail",
    "RunDiff",
    "RunPage",
    "Spend",
    "SpendList",
    "SubmitBody",
    "Submitted",
    "ToolOutput",
]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class SubmitBody(_Body):
    """A goal for an agent; the tenant is the key's."""

    goal: str = Field(min_length=1, max_length=20_000)
    agent: str = Field(default="support", min_length=1, max_length=200)
    session_id: str = Field(default="", max_length=200)
    budget: Decimal | None = Field(default=None, ge=0, description="Spend limit of the run.")
    currency: str = Field(default="USD", min_length=3, max_length=3)
    idempotency_key: str = Field(default="", max_length=200)
    metadata: dict[str, str] = Field(default_factory=dict)


class CancelBody(_Body):
    """Why the run is cancelled."""

    reason: str = Field(default="", max_length=2_000)
    keep_children: bool = False


class DecisionBody(_Body):
    """Approve or deny; an approval may replace the tool call's arguments."""

    decision: Literal["approve", "deny"]
    reason: str = Field(default="", max_length=2_000)
    edited_arguments: dict[str, Any] | None = Field(
        default=None, description="Replacement arguments (approve only)."
    )


class Submitted(BaseModel):
    """The run a goal became."""

    run_id: str


class Run(BaseModel):
    """One run of the read model."""

    run_id: str
    tenant_id: str
    agent: str
    status: str
    goal: str
    session_id: str
    parent_run_id: str
    submitted_by: str
    route: str
    started_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    duration_ms: float | None
    steps: int
    cost: Decimal
    currency: str
    input_tokens: int
    output_tokens: int
    answer: str
    failure_reason: str
    failure_message: str
    pending_approvals: int
    last_sequence: int

    @classmethod
    def of(cls, r: RunRow) -> Run:
        """From a read-model row."""
        duration = (r.finished_at - r.started_at).total_seconds() * 1000 if r.finished_at else None
        return cls(
            run_id=r.run_id, tenant_id=r.tenant_id, agent=r.agent, status=r.status.value,
            goal=r.goal, session_id=r.session_id, parent_run_id=r.parent_run_id,
            submitted_by=r.submitted_by, route=r.route, started_at=r.started_at,
            updated_at=r.updated_at, finished_at=r.finished_at, duration_ms=duration,
            steps=r.steps, cost=r.cost, currency=r.currency, input_tokens=r.input_tokens,
            output_tokens=r.output_tokens, answer=r.answer, failure_reason=r.failure_reason,
            failure_message=r.failure_message, pending_approvals=r.pending_approvals,
            last_sequence=r.last_sequence,
        )  # fmt: skip


class RunPage(BaseModel):
    """A page of runs, newest first; pass `next_cursor` as `cursor` for the next page."""

    runs: list[Run]
    next_cursor: str


class Event(BaseModel):
    """One entry of a run's timeline; `body` is the RunEvent's detail as proto JSON."""

    sequence: int
    kind: str
    occurred_at: datetime
    body: dict[str, Any]

    @classmethod
    def of(cls, e: EventRow) -> Event:
        """From a read-model row."""
        return cls(sequence=e.sequence, kind=e.kind.value, occurred_at=e.occurred_at, body=e.body)


class Attempt(BaseModel):
    """One model attempt (deployment, outcome, latency, tokens, cost) or tool execution."""

    usage_id: str
    step_id: str
    call_id: str
    kind: str
    route: str
    provider: str
    model: str
    deployment: str
    tool: str
    outcome: str
    succeeded: bool
    status_code: int
    attempt: int
    input_tokens: int
    output_tokens: int
    cost: Decimal
    currency: str
    priced: bool
    latency_ms: float
    occurred_at: datetime

    @classmethod
    def of(cls, a: AttemptRow) -> Attempt:
        """From a read-model row."""
        return cls(
            usage_id=a.usage_id, step_id=a.step_id, call_id=a.call_id, kind=a.kind,
            route=a.route, provider=a.provider, model=a.model, deployment=a.deployment,
            tool=a.tool, outcome=a.outcome, succeeded=a.succeeded, status_code=a.status_code,
            attempt=a.attempt, input_tokens=a.input_tokens, output_tokens=a.output_tokens,
            cost=a.cost, currency=a.currency, priced=a.priced, latency_ms=a.latency_ms,
            occurred_at=a.occurred_at,
        )  # fmt: skip


class Approval(BaseModel):
    """A tool call that needs (or needed) a human decision."""

    run_id: str
    approval_id: str
    agent: str
    step_id: str
    call_id: str
    tool: str
    arguments_json: str
    requested_at: datetime
    expires_at: datetime | None
    status: str
    reason: str
    decided_by: str
    timed_out: bool
    arguments_edited: bool
    resolved_at: datetime | None

    @classmethod
    def of(cls, a: ApprovalRow) -> Approval:
        """From a read-model row."""
        return cls(
            run_id=a.run_id, approval_id=a.approval_id, agent=a.agent, step_id=a.step_id,
            call_id=a.call_id, tool=a.tool, arguments_json=a.arguments_json,
            requested_at=a.requested_at, expires_at=a.expires_at, status=a.status.value,
            reason=a.reason, decided_by=a.decided_by, timed_out=a.timed_out,
            arguments_edited=a.arguments_edited, resolved_at=a.resolved_at,
        )  # fmt: skip


class ApprovalList(BaseModel):
    """Approvals, oldest first."""

    approvals: list[Approval]


class ToolOutput(BaseModel):
    """What one tool call returned, or why it failed."""

    call_id: str
    step_id: str
    tool: str
    output: str
    error: str
    truncated: bool
    finished_at: datetime

    @classmethod
    def of(cls, o: ToolOutputRow) -> ToolOutput:
        """From a read-model row."""
        return cls(
            call_id=o.call_id, step_id=o.step_id, tool=o.tool, output=o.output, error=o.error,
            truncated=o.truncated, finished_at=o.finished_at,
        )  # fmt: skip


class RunDetail(BaseModel):
    """A run with its timeline, attempts, tool outputs, approvals and child runs."""

    run: Run
    events: list[Event]
    attempts: list[Attempt]
    tool_outputs: list[ToolOutput]
    approvals: list[Approval]
    children: list[Run]
    replay_of: str = Field(description="The original run when this run is a replay or fork.")
    replays: list[Run] = Field(description="Replays and forks of this run, newest first.")


class Spend(BaseModel):
    """Billing's rollup of one window, tenant and model deployment or tool."""

    window_start: datetime
    tenant_id: str
    kind: Literal["model", "tool"]
    provider: str
    model: str
    tool: str
    cost: Decimal = Field(description="Priced calls only; unpriced ones are counted apart.")
    currency: str
    calls: int
    failures: int
    unpriced_calls: int
    input_tokens: int
    output_tokens: int

    @classmethod
    def of(cls, r: RollupRow) -> Spend:
        """From billing's rollup as the read model keeps it."""
        return cls(
            window_start=r.window_start, tenant_id=r.tenant_id,
            kind="model" if r.kind == "model" else "tool", provider=r.provider, model=r.model,
            tool=r.tool, cost=r.cost, currency=r.currency, calls=r.calls, failures=r.failures,
            unpriced_calls=r.unpriced_calls, input_tokens=r.input_tokens,
            output_tokens=r.output_tokens,
        )  # fmt: skip


class AgentCost(BaseModel):
    """Spend of one agent in one window, summed from the usage records."""

    window_start: datetime
    tenant_id: str
    agent: str
    cost: Decimal
    currency: str
    calls: int
    failures: int
    input_tokens: int
    output_tokens: int

    @classmethod
    def of(cls, s: AgentSpend) -> AgentCost:
        """From a report line."""
        return cls(
            window_start=s.window_start, tenant_id=s.tenant_id, agent=s.agent, cost=s.cost,
            currency=s.currency, calls=s.calls, failures=s.failures,
            input_tokens=s.input_tokens, output_tokens=s.output_tokens,
        )  # fmt: skip


class Budget(BaseModel):
    """The tenant's budget as billing last published it; a null limit is unlimited."""

    daily_limit: Decimal | None
    daily_spent: Decimal
    monthly_limit: Decimal | None
    monthly_spent: Decimal
    currency: str
    exhausted: bool
    updated_at: datetime

    @classmethod
    def of(cls, b: BudgetRow) -> Budget:
        """From a read-model row."""
        return cls(
            daily_limit=b.daily_limit, daily_spent=b.daily_spent, monthly_limit=b.monthly_limit,
            monthly_spent=b.monthly_spent, currency=b.currency, exhausted=b.exhausted,
            updated_at=b.updated_at,
        )  # fmt: skip


class SpendList(BaseModel):
    """Spend, oldest window first, and the tenant's budget state.

    `lines` are billing's rollups (per tenant, model and tool: the ledger's own figures);
    `agents` sums the same usage records per agent, a dimension billing does not keep.
    """

    granularity: str
    lines: list[Spend]
    agents: list[AgentCost]
    budget: Budget | None


class Provider(BaseModel):
    """One deployment's health over the window."""

    deployment: str
    provider: str
    model: str
    attempts: int
    per_minute: float
    error_rate: float
    errors_by_outcome: dict[str, int]
    latency_p50_ms: float
    latency_p99_ms: float
    circuit: str
    last_outcome: str
    last_at: datetime

    @classmethod
    def of(cls, p: ProviderHealth) -> Provider:
        """From a report line."""
        return cls(
            deployment=p.deployment, provider=p.provider, model=p.model, attempts=p.attempts,
            per_minute=p.per_minute, error_rate=p.error_rate,
            errors_by_outcome=p.errors_by_outcome, latency_p50_ms=p.latency_p50_ms,
            latency_p99_ms=p.latency_p99_ms, circuit=p.circuit.value,
            last_outcome=p.last_outcome, last_at=p.last_at,
        )  # fmt: skip


class ProviderList(BaseModel):
    """Deployments seen in the window."""

    window_minutes: float
    providers: list[Provider]


class Me(BaseModel):
    """Who the key is."""

    key_id: str
    tenant_id: str
    label: str
    scopes: list[str]


class NewKeyBody(_Body):
    """A key to issue; its tenant is the admin key's unless the caller may act for others."""

    tenant: str = Field(default="", max_length=200, description="Empty: the admin key's tenant.")
    scopes: list[str] = Field(min_length=1, max_length=10)
    label: str = Field(default="", max_length=200)
    agents: list[str] = Field(default_factory=list, description="Only these agents (empty: any).")
    expires_in_days: float | None = Field(default=None, gt=0, le=3650)


class RevokeKeyBody(_Body):
    """Why the key is revoked."""

    reason: str = Field(default="", max_length=2_000)


class KeyInfo(BaseModel):
    """A key without its secret: id (the secret's public prefix), tenant, grant and history."""

    key_id: str
    prefix: str = Field(description="How the key's secret begins (the rest is never shown).")
    tenant_id: str
    label: str
    scopes: list[str]
    agents: list[str]
    status: Literal["active", "revoked", "expired"]
    issued_at: datetime
    issued_by: str
    expires_at: datetime | None
    revoked_at: datetime | None
    revoked_by: str
    last_used_at: datetime | None = Field(
        description="Last accepted by this front door since it started (null: not seen)."
    )

    @classmethod
    def of(cls, key: Key, now: datetime, last_used_at: datetime | None) -> KeyInfo:
        """From the registry's state of a key (its hash stays behind)."""
        g = key.grant
        return cls(
            key_id=key.key_id, prefix=f"{PREFIX}{key.key_id}_", tenant_id=key.tenant_id,
            label=g.label, scopes=sorted(s.value for s in g.scopes), agents=sorted(g.agents),
            status=status_of(key, now).value, issued_at=key.issued_at, issued_by=key.issued_by,
            expires_at=g.expires_at, revoked_at=key.revoked_at, revoked_by=key.revoked_by,
            last_used_at=last_used_at,
        )  # fmt: skip


class KeyList(BaseModel):
    """Keys the admin key may manage, by tenant then id."""

    keys: list[KeyInfo]


class NewKey(BaseModel):
    """A key just issued: its secret is in this answer and never again."""

    key: KeyInfo
    secret: str


class Error(BaseModel):
    """What went wrong."""

    code: str
    message: str


class ErrorBody(BaseModel):
    """Every error response."""

    error: Error


class DiffFacts(BaseModel):
    """One side of a comparison: what the run ended with."""

    run_id: str
    outcome: str
    answer: str
    steps: int
    tokens_in: int
    tokens_out: int
    cost: str
    latency_s: float
    route: str
    replay_of: str


class DiffStep(BaseModel):
    """One step ordinal, each run's step at it as a line ("" when that run has none)."""

    step: int | str
    a: str
    b: str


class DiffCall(BaseModel):
    """A tool call by name and canonical arguments."""

    tool: str
    arguments: str


class DifferentArguments(BaseModel):
    """The same tool called by both runs with other arguments."""

    tool: str
    a: str
    b: str


class DiffCalls(BaseModel):
    """Tool calls of B against A: the same, other arguments, only in B (new), only in A."""

    same: list[DiffCall]
    different_arguments: list[DifferentArguments]
    new: list[DiffCall]
    missing: list[DiffCall]


class DiffDelta(BaseModel):
    """B minus A."""

    cost: str
    latency_s: float
    tokens_in: int
    tokens_out: int


class RunDiff(BaseModel):
    """Two runs compared (`stepline runs diff A B --json` gives the same report)."""

    a: DiffFacts
    b: DiffFacts
    steps: list[DiffStep]
    tool_calls: DiffCalls
    served_from_record: int = Field(description="B's tool calls answered from A's record.")
    same_answer: bool
    delta: DiffDelta

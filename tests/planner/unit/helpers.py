"""Builders shared by the planner's unit tests: profiles, a context, and a tiny driver."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

from stepline_planner import outputs as o
from stepline_planner.decide import Context, TenantBudget, decide
from stepline_planner.inputs import Goal, GoalReceived, Input
from stepline_planner.profiles import AgentProfile, Profiles, Route
from stepline_planner.state import Run
from stepline_pricebook import ModelPrice

T = TypeVar("T")

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
PRICE = ModelPrice(Decimal("1.00"), Decimal("2.00"))  # per 1M tokens: easy arithmetic

TOOLS = {
    "echo": o.ToolSpec("echo", "Echo the arguments", '{"type":"object"}'),
    "search": o.ToolSpec("search", "Search", '{"type":"object"}', idempotent=True),
    "pay": o.ToolSpec("pay", "Pay someone", '{"type":"object"}', requires_approval=True),
}


def profile(**changes: Any) -> AgentProfile:
    """The test agent `a`, with overrides."""
    base = AgentProfile(
        name="a",
        system_prompt="You are a test agent.",
        route="r",
        tools=("echo", "search", "pay"),
        max_steps=10,
        max_parallel_tool_calls=4,
        run_deadline_s=600,
        model_step_deadline_s=60,
        tool_step_deadline_s=30,
        approval_timeout_s=100,
        max_output_tokens=1000,
        wrap_up_max_output_tokens=100,
    )
    return replace(base, **changes)


def context(
    *agents: AgentProfile,
    budgets: dict[str, TenantBudget] | None = None,
    **policy: Any,
) -> Context:
    """A context with the given agents (default: `a`) on route `r`."""
    chosen = agents or (profile(),)
    profiles = Profiles(
        agents={a.name: a for a in chosen},
        routes={"r": Route("r", PRICE, 100_000)},
        currency="USD",
        **policy,
    )
    return Context(profiles, TOOLS, budgets or {}, {"echo": Decimal("0.001")})


def goal(**changes: Any) -> Goal:
    """A valid goal for agent `a`."""
    return replace(Goal(run_id="r1", tenant_id="t1", agent="a", goal="do the thing"), **changes)


class Driver:
    """Feeds inputs through `decide`, keeping state and the outputs of the last step."""

    def __init__(self, ctx: Context | None = None) -> None:
        self.ctx = ctx or context()
        self.run: Run | None = None
        self.now = T0
        self.out: list[o.Output] = []
        self.history: list[o.Output] = []

    def feed(self, event: Input, *, after_s: float = 0) -> list[o.Output]:
        self.now += timedelta(seconds=after_s)
        self.run, self.out = decide(self.run, event, self.now, self.ctx)
        self.history.extend(self.out)
        return self.out

    def start(self, **goal_changes: Any) -> list[o.Output]:
        return self.feed(GoalReceived(goal(**goal_changes)))

    @property
    def state(self) -> Run:
        assert self.run is not None
        return self.run

    def events(self, kind: type[T] | None = None) -> list[Any]:
        bodies = [x.body for x in self.out if isinstance(x, o.RunEvent)]
        return [b for b in bodies if kind is None or isinstance(b, kind)]

    def history_events(self, kind: type[T]) -> list[T]:
        bodies = [x.body for x in self.history if isinstance(x, o.RunEvent)]
        return [b for b in bodies if isinstance(b, kind)]

    def of(self, kind: type[T]) -> list[T]:
        return [x for x in self.out if isinstance(x, kind)]

    def one(self, kind: type[T]) -> T:
        found = self.of(kind)
        assert len(found) == 1, f"expected one {kind.__name__}, got {self.out}"
        return found[0]


def sequences(outputs: Sequence[o.Output]) -> list[int]:
    """Sequence numbers of the run events among `outputs`."""
    return [x.sequence for x in outputs if isinstance(x, o.RunEvent)]

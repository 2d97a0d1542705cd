"""The read model on PostgreSQL runs the same statements as on SQLite and ends in the same rows."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal

import pytest

from stepline.v1 import budgets_pb2, common_pb2, model_pb2, tools_pb2
from stepline_frontdoor.convert import budget_row, refused_attempts, run_event, tool_output_row
from stepline_frontdoor.readmodel import ApprovalStatus, RunRow, RunStatus
from stepline_frontdoor.sqlstore import PostgresReadStore, SqliteReadStore
from stepline_frontdoor.store import Position, ReadStore, RunFilter
from tests.frontdoor.factories import T0, RunScript, model_attempt, usage_rollup
from tests.frontdoor.feeding import feed


@pytest.fixture
def postgres(postgres_dsn: str) -> Iterator[PostgresReadStore]:
    store = PostgresReadStore(postgres_dsn)
    try:
        yield store
    finally:
        store.close()


def _load(store: ReadStore) -> None:
    events = []
    for i in range(30):
        script = RunScript(f"r{i:02}", start=T0 + timedelta(minutes=i)).started().model_step(1)
        script.approval(f"r{i:02}:9:1/approval")
        if i % 2:
            script.resolved(f"r{i:02}:9:1/approval", approve=i % 3 == 0, reason="x").completed()
        events += script.events
    events += RunScript("g1", tenant_id="globex").started().events
    events += RunScript("replay-1").started(replay_of="r00").model_step(1).completed().events
    events += RunScript("replay-g", tenant_id="globex").started(replay_of="r00").events
    usage = [model_attempt(f"r{i:02}", 1, attempt=2) for i in range(30)]
    # Billing's rollups, a late smaller state among them: the fullest one is kept.
    rollups = [
        usage_rollup(calls=2, cost="0.001"),
        usage_rollup(calls=1, cost="0.0005"),
        usage_rollup(tool="crm", cost="0.01"),
        usage_rollup("globex", hourly=False),
    ]
    # Every record twice: a redelivery folds nothing twice.
    feed(store, events + events, usage + usage, rollups + rollups)
    result = model_pb2.ModelCallResult(
        run_id="r01", tenant_id="acme", step_id="r01:1", call_id="r01:1:1",
        completed=model_pb2.ModelCallCompleted(attempts=[model_pb2.ModelAttempt(
            attempt=1, deployment="primary", outcome=model_pb2.MODEL_ATTEMPT_OUTCOME_CIRCUIT_OPEN,
        )]),
    )  # fmt: skip
    store.apply_attempts(refused_attempts(result, T0), Position("model", 0, 0))
    output = tools_pb2.ToolCallResult(
        run_id="r01", tenant_id="acme", step_id="r01:2", call_id="r01:2:1", tool="crm",
        completed=tools_pb2.ToolCallCompleted(output="{}"),
    )  # fmt: skip
    store.apply_tool_output(tool_output_row(output, T0), Position("tools", 0, 0))
    for offset, version in enumerate((2, 1)):  # a late older state never wins
        state = budgets_pb2.BudgetState(
            tenant_id="acme", version=version,
            monthly=budgets_pb2.BudgetPeriod(spent=common_pb2.Money(amount=f"0.{version}")),
        )  # fmt: skip
        store.apply_budget(budget_row(state, T0), Position("budgets", 0, offset))


def _everything(store: ReadStore) -> object:
    runs: list[RunRow] = []
    cursor = ""
    while True:
        page = store.list_runs(RunFilter("acme", limit=7, cursor=cursor))
        runs += page.runs
        if not (cursor := page.next_cursor):
            break
    return (
        runs,
        [store.events("acme", r.run_id) for r in runs],
        [store.attempts("acme", r.run_id) for r in runs],
        [store.tool_outputs("acme", r.run_id) for r in runs],
        [store.replays("acme", r.run_id) for r in runs],
        store.approvals("acme"),
        store.list_runs(RunFilter("acme", status=RunStatus.COMPLETED, limit=100)).runs,
        store.approvals("acme", status=ApprovalStatus.PENDING),
        store.attempts_since(None, T0),
        store.budget("acme"),
        store.rollups(None, "hour", T0),
        store.rollups(None, "day", T0.replace(hour=0)),
        store.positions(),
    )


def test_postgres_and_sqlite_end_in_the_same_rows(postgres: PostgresReadStore) -> None:
    sqlite = SqliteReadStore(":memory:")
    _load(sqlite)
    _load(postgres)
    assert _everything(postgres) == _everything(sqlite)
    assert len(postgres.list_runs(RunFilter("acme", limit=100)).runs) == 31
    # Replays of a run: its tenant's only; the timeline rebuilds the recorded events.
    assert [r.run_id for r in postgres.replays("acme", "r00")] == ["replay-1"]
    replay = RunScript("replay-1").started(replay_of="r00").model_step(1).completed().events
    assert [run_event(e, "support") for e in postgres.events("acme", "replay-1")] == replay
    assert postgres.run("acme", "g1") is None
    budget = postgres.budget("acme")
    assert budget is not None
    assert (budget.version, budget.monthly_spent, budget.daily_limit) == (2, Decimal("0.2"), None)
    hourly = postgres.rollups("acme", "hour", T0)
    assert [(r.kind, r.calls, r.cost) for r in hourly] == [
        ("model", 2, Decimal("0.001")),
        ("tool", 1, Decimal("0.01")),
    ]
    assert [r.tenant_id for r in postgres.rollups(None, "day", T0.replace(hour=0))] == ["globex"]

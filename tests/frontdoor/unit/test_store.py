"""The SQLite read store: idempotent folding, positions, filters, pagination, tenants apart."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from stepline.v1 import model_pb2, tools_pb2
from stepline_frontdoor.convert import (
    MAX_OUTPUT_CHARS,
    refused_attempts,
    run_fact,
    tool_output_row,
)
from stepline_frontdoor.readmodel import ApprovalStatus, RunStatus
from stepline_frontdoor.sqlstore import SqliteReadStore
from stepline_frontdoor.store import Position, RunFilter
from tests.frontdoor.factories import T0, RunScript, model_attempt
from tests.frontdoor.feeding import feed


def _snapshot(store: SqliteReadStore, tenant: str = "acme") -> object:
    runs = store.list_runs(RunFilter(tenant, limit=1000)).runs
    return (
        runs,
        [store.events(tenant, r.run_id) for r in runs],
        [store.attempts(tenant, r.run_id) for r in runs],
        store.approvals(tenant),
    )


def test_refolding_the_same_records_changes_nothing(tmp_path: Path) -> None:
    script = RunScript("r1").started().model_step(1).approval("a1").resolved("a1", approve=True)
    usage = [model_attempt("r1", 1, attempt=1), model_attempt("r1", 1, attempt=2)]
    store = SqliteReadStore(tmp_path / "rm.sqlite3")
    feed(store, script.completed().events, usage)
    first = _snapshot(store)
    # A redelivery (the same offsets again) and a rebuild overlap are both no-ops.
    for offset, event in enumerate(script.events):
        assert store.apply_run_event(run_fact(event, T0), Position("runs", 0, offset)) is None
    assert _snapshot(store) == first
    assert store.positions() == {("runs", 0): len(script.events), ("usage", 0): 2}
    assert [a.attempt for a in store.attempts("acme", "r1")] == [1, 2]
    [approval] = store.approvals("acme")
    assert approval.status is ApprovalStatus.APPROVED


def test_a_deleted_store_rebuilt_from_the_records_is_identical(tmp_path: Path) -> None:
    scripts = [RunScript(f"r{i}").started().model_step(1).completed() for i in range(5)]
    records = [e for s in scripts for e in s.events]
    one = SqliteReadStore(tmp_path / "one.sqlite3")
    feed(one, records, [model_attempt("r1", 1)])
    two = SqliteReadStore(tmp_path / "two.sqlite3")
    feed(two, records, [model_attempt("r1", 1)])
    assert _snapshot(one) == _snapshot(two)


def test_runs_page_newest_first_with_filters_and_a_cursor() -> None:
    store = SqliteReadStore(":memory:")
    events = []
    for i in range(120):
        script = RunScript(f"r{i:03}", agent="support" if i % 2 else "sales",
                           start=T0 + timedelta(minutes=i)).started()  # fmt: skip
        if i % 3 == 0:
            script.completed()
        events += script.events
    events += RunScript("other", tenant_id="globex").started().events
    feed(store, events)

    seen, cursor = [], ""
    while True:
        page = store.list_runs(RunFilter("acme", limit=50, cursor=cursor))
        seen += [r.run_id for r in page.runs]
        if not page.next_cursor:
            break
        cursor = page.next_cursor
    assert seen == [f"r{i:03}" for i in reversed(range(120))]

    done = store.list_runs(RunFilter("acme", status=RunStatus.COMPLETED, limit=1000)).runs
    assert {r.run_id for r in done} == {f"r{i:03}" for i in range(0, 120, 3)}
    sales = store.list_runs(RunFilter("acme", agent="sales", limit=1000)).runs
    assert len(sales) == 60
    recent = store.list_runs(RunFilter("acme", since=T0 + timedelta(minutes=100), limit=1000))
    assert len(recent.runs) == 20
    with pytest.raises(ValueError, match="cursor"):
        store.list_runs(RunFilter("acme", cursor="not-a-cursor"))


def test_another_tenants_run_is_not_there() -> None:
    store = SqliteReadStore(":memory:")
    feed(store, RunScript("r1", tenant_id="globex").started().approval("a1").events,
         [model_attempt("r1", 1, tenant_id="globex")])  # fmt: skip
    assert store.run("acme", "r1") is None
    assert store.events("acme", "r1") == []
    assert store.attempts("acme", "r1") == []
    assert store.approvals("acme") == []
    assert store.run("globex", "r1") is not None


def test_a_terminal_event_closes_pending_approvals() -> None:
    store = SqliteReadStore(":memory:")
    feed(store, RunScript("r1").started().approval("a1").failed().events)
    [approval] = store.approvals("acme")
    assert approval.status is ApprovalStatus.CLOSED
    assert store.approvals("acme", status=ApprovalStatus.PENDING) == []


def test_tool_outputs_keep_the_first_report_and_cap_their_size() -> None:
    store = SqliteReadStore(":memory:")
    first = tools_pb2.ToolCallResult(
        run_id="r1", tenant_id="acme", step_id="r1:2", call_id="r1:2:1", tool="crm",
        completed=tools_pb2.ToolCallCompleted(output='{"rows": 2}'),
    )  # fmt: skip
    replayed = tools_pb2.ToolCallResult()
    replayed.CopyFrom(first)
    replayed.replayed = True
    replayed.completed.output = "something else"
    huge = tools_pb2.ToolCallResult(
        run_id="r1", tenant_id="acme", step_id="r1:3", call_id="r1:3:1", tool="dump",
        completed=tools_pb2.ToolCallCompleted(output="x" * (MAX_OUTPUT_CHARS + 10)),
    )  # fmt: skip
    failed = tools_pb2.ToolCallResult(
        run_id="r1", tenant_id="acme", step_id="r1:4", call_id="r1:4:1", tool="pay",
        failed=tools_pb2.ToolCallFailed(
            kind=tools_pb2.TOOL_CALL_ERROR_KIND_TIMED_OUT, message="no answer in 30s"
        ),
    )  # fmt: skip
    for offset, result in enumerate([first, replayed, huge, failed]):
        store.apply_tool_output(tool_output_row(result, T0), Position("results", 0, offset))
    outputs = {o.call_id: o for o in store.tool_outputs("acme", "r1")}
    assert outputs["r1:2:1"].output == '{"rows": 2}'
    assert outputs["r1:3:1"].truncated
    assert len(outputs["r1:3:1"].output) < MAX_OUTPUT_CHARS + 20
    assert outputs["r1:4:1"].error == "timed_out: no answer in 30s"
    assert store.tool_outputs("globex", "r1") == []


def test_attempts_a_circuit_breaker_refused_come_from_the_model_result() -> None:
    store = SqliteReadStore(":memory:")
    result = model_pb2.ModelCallResult(
        run_id="r1", tenant_id="acme", step_id="r1:1", call_id="r1:1:1",
        completed=model_pb2.ModelCallCompleted(attempts=[
            model_pb2.ModelAttempt(attempt=1, deployment="primary",
                                   outcome=model_pb2.MODEL_ATTEMPT_OUTCOME_CIRCUIT_OPEN),
            model_pb2.ModelAttempt(attempt=2, deployment="local",
                                   outcome=model_pb2.MODEL_ATTEMPT_OUTCOME_SUCCEEDED),
        ]),
    )  # fmt: skip
    refused = refused_attempts(result, T0)
    assert [(a.deployment, a.outcome, a.attempt) for a in refused] == [
        ("primary", "circuit_open", 1)
    ]
    assert store.apply_attempts(refused, Position("results", 0, 0))
    assert not store.apply_attempts(refused, Position("results", 0, 0))  # redelivered
    # The router records the refusal too: whichever arrives first is kept, the other is the same.
    circuit_open = model_pb2.MODEL_ATTEMPT_OUTCOME_CIRCUIT_OPEN
    feed(store, usage=[model_attempt("r1", 1, attempt=1, deployment="primary",
                                     outcome=circuit_open, cost="0"),
                       model_attempt("r1", 1, attempt=2)])  # fmt: skip
    assert [(a.attempt, a.outcome) for a in store.attempts("acme", "r1")] == [
        (1, "circuit_open"),
        (2, "succeeded"),
    ]

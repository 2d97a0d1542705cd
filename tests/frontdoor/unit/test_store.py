"""The SQLite read store: idempotent folding, positions, filters, pagination, tenants apart."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from stepline_frontdoor.convert import run_fact
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

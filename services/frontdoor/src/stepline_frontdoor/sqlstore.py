"""`ReadStore` over SQL: one schema and one set of statements for SQLite and PostgreSQL.

Times are integer microseconds since the epoch (UTC), money is exact decimal text, booleans are
0/1 integers, timeline bodies are JSON text — so the same DDL and statements run on both
engines; only the placeholder differs. Each record's rows and its partition's next offset are
written in one transaction: the projection resumes exactly where it stopped, and an empty
database is rebuilt from the beginning of the topics.
"""

from __future__ import annotations

import base64
import json
import sqlite3
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol

import psycopg

from stepline_frontdoor.readmodel import (
    ApprovalRow,
    ApprovalStatus,
    AttemptRow,
    BudgetRow,
    EventKind,
    EventRow,
    Projection,
    RollupRow,
    RunFact,
    RunRow,
    RunStatus,
    ToolOutputRow,
    project,
)
from stepline_frontdoor.store import Position, RunFilter, RunPage

__all__ = ["PostgresReadStore", "SqliteReadStore"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS runs (
        run_id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, agent TEXT NOT NULL,
        status TEXT NOT NULL, last_sequence BIGINT NOT NULL, started_at_us BIGINT NOT NULL,
        updated_at_us BIGINT NOT NULL, finished_at_us BIGINT NULL, goal TEXT NOT NULL,
        session_id TEXT NOT NULL, parent_run_id TEXT NOT NULL, submitted_by TEXT NOT NULL,
        route TEXT NOT NULL, steps INTEGER NOT NULL, cost TEXT NOT NULL, currency TEXT NOT NULL,
        input_tokens BIGINT NOT NULL, output_tokens BIGINT NOT NULL, answer TEXT NOT NULL,
        failure_reason TEXT NOT NULL, failure_message TEXT NOT NULL,
        pending_approvals INTEGER NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS runs_by_tenant ON runs (tenant_id, started_at_us, run_id)",
    "CREATE INDEX IF NOT EXISTS runs_by_parent ON runs (parent_run_id)",
    # Replays and forks of a run (its Run page lists them); a table of its own, so a read
    # model built before replays existed gains it without a migration.
    """CREATE TABLE IF NOT EXISTS replays (
        run_id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, original_run_id TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS replays_of ON replays (tenant_id, original_run_id)",
    """CREATE TABLE IF NOT EXISTS run_events (
        run_id TEXT NOT NULL, sequence BIGINT NOT NULL, tenant_id TEXT NOT NULL,
        kind TEXT NOT NULL, occurred_at_us BIGINT NOT NULL, body TEXT NOT NULL,
        PRIMARY KEY (run_id, sequence))""",
    """CREATE TABLE IF NOT EXISTS approvals (
        run_id TEXT NOT NULL, approval_id TEXT NOT NULL, tenant_id TEXT NOT NULL,
        agent TEXT NOT NULL, step_id TEXT NOT NULL, call_id TEXT NOT NULL, tool TEXT NOT NULL,
        arguments_json TEXT NOT NULL, requested_at_us BIGINT NOT NULL,
        expires_at_us BIGINT NULL, status TEXT NOT NULL, reason TEXT NOT NULL,
        decided_by TEXT NOT NULL, timed_out INTEGER NOT NULL, arguments_edited INTEGER NOT NULL,
        resolved_at_us BIGINT NULL, PRIMARY KEY (run_id, approval_id))""",
    "CREATE INDEX IF NOT EXISTS approvals_by_tenant ON approvals (tenant_id, status)",
    """CREATE TABLE IF NOT EXISTS attempts (
        usage_id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, run_id TEXT NOT NULL,
        step_id TEXT NOT NULL, call_id TEXT NOT NULL, kind TEXT NOT NULL, agent TEXT NOT NULL,
        route TEXT NOT NULL, provider TEXT NOT NULL, model TEXT NOT NULL,
        deployment TEXT NOT NULL, tool TEXT NOT NULL, outcome TEXT NOT NULL,
        succeeded INTEGER NOT NULL, status_code INTEGER NOT NULL, attempt INTEGER NOT NULL,
        input_tokens BIGINT NOT NULL, output_tokens BIGINT NOT NULL, cost TEXT NOT NULL,
        currency TEXT NOT NULL, priced INTEGER NOT NULL, latency_ms DOUBLE PRECISION NOT NULL,
        occurred_at_us BIGINT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS attempts_by_run ON attempts (run_id)",
    "CREATE INDEX IF NOT EXISTS attempts_by_time ON attempts (occurred_at_us)",
    """CREATE TABLE IF NOT EXISTS tool_outputs (
        call_id TEXT PRIMARY KEY, run_id TEXT NOT NULL, tenant_id TEXT NOT NULL,
        step_id TEXT NOT NULL, tool TEXT NOT NULL, output TEXT NOT NULL, error TEXT NOT NULL,
        truncated INTEGER NOT NULL, finished_at_us BIGINT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS tool_outputs_by_run ON tool_outputs (run_id)",
    """CREATE TABLE IF NOT EXISTS budgets (
        tenant_id TEXT PRIMARY KEY, daily_limit TEXT NULL, daily_spent TEXT NOT NULL,
        monthly_limit TEXT NULL, monthly_spent TEXT NOT NULL, currency TEXT NOT NULL,
        exhausted INTEGER NOT NULL, version BIGINT NOT NULL, updated_at_us BIGINT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS rollups (
        rollup_id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, granularity TEXT NOT NULL,
        window_start_us BIGINT NOT NULL, kind TEXT NOT NULL, provider TEXT NOT NULL,
        model TEXT NOT NULL, tool TEXT NOT NULL, cost TEXT NOT NULL, currency TEXT NOT NULL,
        calls BIGINT NOT NULL, failures BIGINT NOT NULL, unpriced_calls BIGINT NOT NULL,
        input_tokens BIGINT NOT NULL, output_tokens BIGINT NOT NULL,
        computed_at_us BIGINT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS rollups_by_window ON rollups (granularity, window_start_us)",
    """CREATE TABLE IF NOT EXISTS positions (
        topic TEXT NOT NULL, kafka_partition INTEGER NOT NULL, next_offset BIGINT NOT NULL,
        PRIMARY KEY (topic, kafka_partition))""",
]

_RUN_COLUMNS = (
    "run_id, tenant_id, agent, status, last_sequence, started_at_us, updated_at_us, "
    "finished_at_us, goal, session_id, parent_run_id, submitted_by, route, steps, cost, "
    "currency, input_tokens, output_tokens, answer, failure_reason, failure_message, "
    "pending_approvals"
)
_APPROVAL_COLUMNS = (
    "run_id, approval_id, tenant_id, agent, step_id, call_id, tool, arguments_json, "
    "requested_at_us, expires_at_us, status, reason, decided_by, timed_out, arguments_edited, "
    "resolved_at_us"
)
_ATTEMPT_COLUMNS = (
    "usage_id, tenant_id, run_id, step_id, call_id, kind, agent, route, provider, model, "
    "deployment, tool, outcome, succeeded, status_code, attempt, input_tokens, output_tokens, "
    "cost, currency, priced, latency_ms, occurred_at_us"
)


def _us(moment: datetime) -> int:
    delta = moment.astimezone(UTC) - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _time(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


def _maybe_us(moment: datetime | None) -> int | None:
    return None if moment is None else _us(moment)


def _maybe_time(us: int | None) -> datetime | None:
    return None if us is None else _time(us)


def _maybe_money(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def _maybe_decimal(value: str | None) -> Decimal | None:
    return None if value is None else Decimal(value)


def _marks(columns: str) -> str:
    return ", ".join("?" for _ in columns.split(","))


def _upsert(table: str, columns: str, key: str) -> str:
    keys = {k.strip() for k in key.split(",")}
    updates = ", ".join(
        f"{c} = excluded.{c}" for c in (c.strip() for c in columns.split(",")) if c not in keys
    )
    return (
        f"INSERT INTO {table} ({columns}) VALUES ({_marks(columns)}) "
        f"ON CONFLICT ({key}) DO UPDATE SET {updates}"
    )


_UPSERT_RUN = _upsert("runs", _RUN_COLUMNS, "run_id")
_UPSERT_APPROVAL = _upsert("approvals", _APPROVAL_COLUMNS, "run_id, approval_id")
_INSERT_EVENT = (
    "INSERT INTO run_events (run_id, sequence, tenant_id, kind, occurred_at_us, body) "
    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (run_id, sequence) DO NOTHING"
)
_INSERT_ATTEMPT = (
    f"INSERT INTO attempts ({_ATTEMPT_COLUMNS}) VALUES ({_marks(_ATTEMPT_COLUMNS)}) "
    "ON CONFLICT (usage_id) DO NOTHING"
)
_INSERT_REPLAY = (
    "INSERT INTO replays (run_id, tenant_id, original_run_id) VALUES (?, ?, ?) "
    "ON CONFLICT (run_id) DO NOTHING"
)
_PENDING_OF = f"SELECT {_APPROVAL_COLUMNS} FROM approvals WHERE run_id = ? AND approval_id = ?"
_CLOSE_PENDING = (
    "UPDATE approvals SET status = ?, resolved_at_us = ? WHERE run_id = ? AND status = ?"
)
_OUTPUT_COLUMNS = (
    "call_id, run_id, tenant_id, step_id, tool, output, error, truncated, finished_at_us"
)
# A replayed result (the executor re-emits a recorded outcome) is the same call: first wins.
_INSERT_OUTPUT = (
    f"INSERT INTO tool_outputs ({_OUTPUT_COLUMNS}) VALUES ({_marks(_OUTPUT_COLUMNS)}) "
    "ON CONFLICT (call_id) DO NOTHING"
)
_BUDGET_COLUMNS = (
    "tenant_id, daily_limit, daily_spent, monthly_limit, monthly_spent, currency, exhausted, "
    "version, updated_at_us"
)
# Billing re-publishes as spend arrives; an older version read late never wins.
_UPSERT_BUDGET = (
    _upsert("budgets", _BUDGET_COLUMNS, "tenant_id") + " WHERE budgets.version <= excluded.version"
)
_ROLLUP_COLUMNS = (
    "rollup_id, tenant_id, granularity, window_start_us, kind, provider, model, tool, cost, "
    "currency, calls, failures, unpriced_calls, input_tokens, output_tokens, computed_at_us"
)
# Billing re-publishes a rollup as each usage record lands: a window only grows, so the state
# with the most calls is the newest, and an older one read late (or replayed) never wins.
_UPSERT_ROLLUP = (
    _upsert("rollups", _ROLLUP_COLUMNS, "rollup_id") + " WHERE rollups.calls < excluded.calls"
)
_ADVANCE = (
    "INSERT INTO positions (topic, kafka_partition, next_offset) VALUES (?, ?, ?) "
    "ON CONFLICT (topic, kafka_partition) DO UPDATE SET next_offset = excluded.next_offset"
)


def _run_values(r: RunRow) -> tuple[Any, ...]:
    return (
        r.run_id, r.tenant_id, r.agent, r.status.value, r.last_sequence, _us(r.started_at),
        _us(r.updated_at), _maybe_us(r.finished_at), r.goal, r.session_id, r.parent_run_id,
        r.submitted_by, r.route, r.steps, str(r.cost), r.currency, r.input_tokens,
        r.output_tokens, r.answer, r.failure_reason, r.failure_message, r.pending_approvals,
    )  # fmt: skip


def _run_row(v: Sequence[Any]) -> RunRow:
    return RunRow(
        run_id=v[0], tenant_id=v[1], agent=v[2], status=RunStatus(v[3]), last_sequence=v[4],
        started_at=_time(v[5]), updated_at=_time(v[6]), finished_at=_maybe_time(v[7]),
        goal=v[8], session_id=v[9], parent_run_id=v[10], submitted_by=v[11], route=v[12],
        steps=v[13], cost=Decimal(v[14]), currency=v[15], input_tokens=v[16],
        output_tokens=v[17], answer=v[18], failure_reason=v[19], failure_message=v[20],
        pending_approvals=v[21],
    )  # fmt: skip


def _approval_values(a: ApprovalRow) -> tuple[Any, ...]:
    return (
        a.run_id, a.approval_id, a.tenant_id, a.agent, a.step_id, a.call_id, a.tool,
        a.arguments_json, _us(a.requested_at), _maybe_us(a.expires_at), a.status.value,
        a.reason, a.decided_by, int(a.timed_out), int(a.arguments_edited),
        _maybe_us(a.resolved_at),
    )  # fmt: skip


def _approval_row(v: Sequence[Any]) -> ApprovalRow:
    return ApprovalRow(
        run_id=v[0], tenant_id=v[2], agent=v[3], approval_id=v[1], step_id=v[4], call_id=v[5],
        tool=v[6], arguments_json=v[7], requested_at=_time(v[8]), expires_at=_maybe_time(v[9]),
        status=ApprovalStatus(v[10]), reason=v[11], decided_by=v[12], timed_out=bool(v[13]),
        arguments_edited=bool(v[14]), resolved_at=_maybe_time(v[15]),
    )  # fmt: skip


def _attempt_values(a: AttemptRow) -> tuple[Any, ...]:
    return (
        a.usage_id, a.tenant_id, a.run_id, a.step_id, a.call_id, a.kind, a.agent, a.route,
        a.provider, a.model, a.deployment, a.tool, a.outcome, int(a.succeeded), a.status_code,
        a.attempt, a.input_tokens, a.output_tokens, str(a.cost), a.currency, int(a.priced),
        a.latency_ms, _us(a.occurred_at),
    )  # fmt: skip


def _attempt_row(v: Sequence[Any]) -> AttemptRow:
    return AttemptRow(
        usage_id=v[0], tenant_id=v[1], run_id=v[2], step_id=v[3], call_id=v[4], kind=v[5],
        agent=v[6], route=v[7], provider=v[8], model=v[9], deployment=v[10], tool=v[11],
        outcome=v[12], succeeded=bool(v[13]), status_code=v[14], attempt=v[15],
        input_tokens=v[16], output_tokens=v[17], cost=Decimal(v[18]), currency=v[19],
        priced=bool(v[20]), latency_ms=float(v[21]), occurred_at=_time(v[22]),
    )  # fmt: skip


def _rollup_row(v: Sequence[Any]) -> RollupRow:
    return RollupRow(
        rollup_id=v[0], tenant_id=v[1], granularity=v[2], window_start=_time(v[3]), kind=v[4],
        provider=v[5], model=v[6], tool=v[7], cost=Decimal(v[8]), currency=v[9],
        calls=int(v[10]), failures=int(v[11]), unpriced_calls=int(v[12]),
        input_tokens=int(v[13]), output_tokens=int(v[14]), computed_at=_time(v[15]),
    )  # fmt: skip


def _cursor(run: RunRow) -> str:
    raw = f"{_us(run.started_at)}|{run.run_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _uncursor(cursor: str) -> tuple[int, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        started, run_id = raw.split("|", 1)
        return int(started), run_id
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError("cursor is not one this API returned") from error


class _Connection(Protocol):
    """What the shared code needs from a DB-API connection (sqlite3 or psycopg)."""

    def execute(self, sql: str, params: Sequence[Any] = ...) -> Any:
        """Run one statement."""

    def close(self) -> None:
        """Close the connection."""


class _SqlReadStore(ABC):
    """The statements both engines share; subclasses open the connection and transactions."""

    _placeholder = "?"

    def __init__(self, conn: _Connection) -> None:
        self._lock = threading.Lock()
        self._conn = conn
        with self._transaction() as c:
            for statement in _SCHEMA:
                c.execute(statement)

    @abstractmethod
    def _transaction(self) -> AbstractContextManager[_Connection]:
        """A write transaction: committed on exit, rolled back on error."""

    def _sql(self, text: str) -> str:
        return text if self._placeholder == "?" else text.replace("?", self._placeholder)

    def _all(self, text: str, params: Sequence[Any] = ()) -> list[Sequence[Any]]:
        with self._lock:
            rows: list[Sequence[Any]] = self._conn.execute(self._sql(text), params).fetchall()
        return rows

    @contextmanager
    def _writing(self) -> Iterator[_Connection]:
        with self._lock, self._transaction() as conn:
            yield conn

    def close(self) -> None:
        """Release the connection."""
        self._conn.close()

    def positions(self) -> dict[tuple[str, int], int]:
        """The next offset to read for each (topic, partition) already projected."""
        rows = self._all("SELECT topic, kafka_partition, next_offset FROM positions")
        return {(r[0], int(r[1])): int(r[2]) for r in rows}

    def _advance(self, conn: _Connection, at: Position) -> None:
        conn.execute(self._sql(_ADVANCE), (at.topic, at.partition, at.offset + 1))

    def apply_run_event(self, fact: RunFact | None, at: Position) -> Projection | None:
        """Fold one run event (None: a record to skip) and advance `at` in one transaction."""
        with self._writing() as conn:
            result = None if fact is None else self._fold(conn, fact)
            self._advance(conn, at)
        return result

    def _fold(self, conn: _Connection, fact: RunFact) -> Projection | None:
        q = self._sql
        found = conn.execute(
            q(f"SELECT {_RUN_COLUMNS} FROM runs WHERE run_id = ?"), (fact.run_id,)
        ).fetchone()
        run = _run_row(found) if found else None
        if run is not None and run.tenant_id != fact.tenant_id:
            return None  # a run id reused by another tenant is not folded into this run
        pending = None
        if fact.kind is EventKind.APPROVAL_RESOLVED:
            row = conn.execute(
                q(_PENDING_OF),
                (fact.run_id, fact.approval_id),
            ).fetchone()
            pending = _approval_row(row) if row else None
        projection = project(run, fact, pending)
        if projection.run is None:
            return None
        conn.execute(q(_UPSERT_RUN), _run_values(projection.run))
        if fact.replay_of:
            conn.execute(q(_INSERT_REPLAY), (fact.run_id, fact.tenant_id, fact.replay_of))
        if projection.event is not None:
            e = projection.event
            conn.execute(
                q(_INSERT_EVENT),
                (e.run_id, e.sequence, e.tenant_id, e.kind.value, _us(e.occurred_at),
                 json.dumps(e.body, sort_keys=True)),
            )  # fmt: skip
        for approval in (projection.approval, projection.resolved):
            if approval is not None:
                conn.execute(q(_UPSERT_APPROVAL), _approval_values(approval))
        if projection.close_pending:
            conn.execute(
                q(_CLOSE_PENDING),
                (ApprovalStatus.CLOSED.value, _us(fact.occurred_at), fact.run_id,
                 ApprovalStatus.PENDING.value),
            )  # fmt: skip
        return projection

    def apply_attempt(self, row: AttemptRow | None, at: Position) -> bool:
        """Insert one attempt unless its usage id is known; advance `at`; True when new."""
        return self.apply_attempts([] if row is None else [row], at)

    def apply_attempts(self, rows: Sequence[AttemptRow], at: Position) -> bool:
        """Insert attempts whose usage ids are new; advance `at`; True when any was new."""
        with self._writing() as conn:
            inserted = False
            for row in rows:
                done = conn.execute(self._sql(_INSERT_ATTEMPT), _attempt_values(row))
                inserted = bool(done.rowcount) or inserted
            self._advance(conn, at)
        return inserted

    def apply_budget(self, row: BudgetRow | None, at: Position) -> bool:
        """Keep the tenant's newest budget state (by version); advance `at`; True when newer."""
        with self._writing() as conn:
            changed = False
            if row is not None:
                values = (
                    row.tenant_id, _maybe_money(row.daily_limit), str(row.daily_spent),
                    _maybe_money(row.monthly_limit), str(row.monthly_spent), row.currency,
                    int(row.exhausted), row.version, _us(row.updated_at),
                )  # fmt: skip
                changed = bool(conn.execute(self._sql(_UPSERT_BUDGET), values).rowcount)
            self._advance(conn, at)
        return changed

    def budget(self, tenant_id: str) -> BudgetRow | None:
        """The tenant's latest budget state, if billing published one."""
        rows = self._all(f"SELECT {_BUDGET_COLUMNS} FROM budgets WHERE tenant_id = ?", (tenant_id,))
        if not rows:
            return None
        v = rows[0]
        return BudgetRow(
            tenant_id=v[0], daily_limit=_maybe_decimal(v[1]), daily_spent=Decimal(v[2]),
            monthly_limit=_maybe_decimal(v[3]), monthly_spent=Decimal(v[4]), currency=v[5],
            exhausted=bool(v[6]), version=int(v[7]), updated_at=_time(v[8]),
        )  # fmt: skip

    def apply_rollup(self, row: RollupRow | None, at: Position) -> bool:
        """Keep the fullest state of one billing rollup; advance `at`; True when it grew."""
        with self._writing() as conn:
            changed = False
            if row is not None:
                values = (
                    row.rollup_id, row.tenant_id, row.granularity, _us(row.window_start),
                    row.kind, row.provider, row.model, row.tool, str(row.cost), row.currency,
                    row.calls, row.failures, row.unpriced_calls, row.input_tokens,
                    row.output_tokens, _us(row.computed_at),
                )  # fmt: skip
                changed = bool(conn.execute(self._sql(_UPSERT_ROLLUP), values).rowcount)
            self._advance(conn, at)
        return changed

    def rollups(self, tenant_id: str | None, granularity: str, since: datetime) -> list[RollupRow]:
        """Billing's rollups of one tenant (None: all) and width from `since`, oldest first."""
        where, params = ["granularity = ?", "window_start_us >= ?"], [granularity, _us(since)]
        if tenant_id is not None:
            where.append("tenant_id = ?")
            params.append(tenant_id)
        rows = self._all(
            f"SELECT {_ROLLUP_COLUMNS} FROM rollups WHERE {' AND '.join(where)} "
            "ORDER BY window_start_us, rollup_id",
            params,
        )
        return [_rollup_row(v) for v in rows]

    def apply_tool_output(self, row: ToolOutputRow | None, at: Position) -> bool:
        """Keep one tool call's first reported output; advance `at`; True when new."""
        with self._writing() as conn:
            inserted = False
            if row is not None:
                values = (
                    row.call_id, row.run_id, row.tenant_id, row.step_id, row.tool, row.output,
                    row.error, int(row.truncated), _us(row.finished_at),
                )  # fmt: skip
                inserted = bool(conn.execute(self._sql(_INSERT_OUTPUT), values).rowcount)
            self._advance(conn, at)
        return inserted

    def tool_outputs(self, tenant_id: str, run_id: str) -> list[ToolOutputRow]:
        """What each tool call of the run returned."""
        rows = self._all(
            f"SELECT {_OUTPUT_COLUMNS} FROM tool_outputs WHERE run_id = ? AND tenant_id = ? "
            "ORDER BY finished_at_us, call_id",
            (run_id, tenant_id),
        )
        return [
            ToolOutputRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], bool(r[7]), _time(r[8]))
            for r in rows
        ]

    def list_runs(self, query: RunFilter) -> RunPage:
        """A page of the tenant's runs matching `query`, newest first."""
        where, params = ["tenant_id = ?"], [query.tenant_id]
        if query.agent:
            where.append("agent = ?")
            params.append(query.agent)
        if query.status is not None:
            where.append("status = ?")
            params.append(query.status.value)
        if query.since is not None:
            where.append("started_at_us >= ?")
            params.append(_us(query.since))  # type: ignore[arg-type]
        if query.parent_run_id:
            where.append("parent_run_id = ?")
            params.append(query.parent_run_id)
        if query.cursor:
            started, run_id = _uncursor(query.cursor)
            where.append("(started_at_us < ? OR (started_at_us = ? AND run_id < ?))")
            params.extend([started, started, run_id])  # type: ignore[list-item]
        rows = self._all(
            f"SELECT {_RUN_COLUMNS} FROM runs WHERE {' AND '.join(where)} "
            f"ORDER BY started_at_us DESC, run_id DESC LIMIT {int(query.limit) + 1}",
            params,
        )
        runs = [_run_row(r) for r in rows]
        more = len(runs) > query.limit
        runs = runs[: query.limit]
        return RunPage(runs, _cursor(runs[-1]) if more and runs else "")

    def run(self, tenant_id: str, run_id: str) -> RunRow | None:
        """The run, or None when it does not exist or belongs to another tenant."""
        rows = self._all(
            f"SELECT {_RUN_COLUMNS} FROM runs WHERE run_id = ? AND tenant_id = ?",
            (run_id, tenant_id),
        )
        return _run_row(rows[0]) if rows else None

    def replays(self, tenant_id: str, run_id: str) -> list[RunRow]:
        """The tenant's replays and forks of `run_id`, newest first."""
        columns = ", ".join(f"runs.{c.strip()}" for c in _RUN_COLUMNS.split(","))
        rows = self._all(
            f"SELECT {columns} FROM replays JOIN runs ON runs.run_id = replays.run_id "
            "WHERE replays.tenant_id = ? AND replays.original_run_id = ? "
            "AND runs.tenant_id = ? ORDER BY runs.started_at_us DESC",
            (tenant_id, run_id, tenant_id),
        )
        return [_run_row(r) for r in rows]

    def events(self, tenant_id: str, run_id: str, after: int = 0) -> list[EventRow]:
        """The run's timeline after sequence `after`."""
        rows = self._all(
            "SELECT run_id, tenant_id, sequence, kind, occurred_at_us, body FROM run_events "
            "WHERE run_id = ? AND tenant_id = ? AND sequence > ? ORDER BY sequence",
            (run_id, tenant_id, after),
        )
        return [
            EventRow(r[0], r[1], int(r[2]), EventKind(r[3]), _time(r[4]), json.loads(r[5]))
            for r in rows
        ]

    def attempts(self, tenant_id: str, run_id: str) -> list[AttemptRow]:
        """Every model attempt and tool execution of the run."""
        rows = self._all(
            f"SELECT {_ATTEMPT_COLUMNS} FROM attempts WHERE run_id = ? AND tenant_id = ? "
            # A call's attempts in their order (a refused one has no time of its own).
            "ORDER BY call_id, attempt, occurred_at_us",
            (run_id, tenant_id),
        )
        return [_attempt_row(r) for r in rows]

    def approvals(
        self, tenant_id: str, *, run_id: str = "", status: ApprovalStatus | None = None
    ) -> list[ApprovalRow]:
        """Approvals of the tenant (of one run when `run_id`), oldest first."""
        where, params = ["tenant_id = ?"], [tenant_id]
        if run_id:
            where.append("run_id = ?")
            params.append(run_id)
        if status is not None:
            where.append("status = ?")
            params.append(status.value)
        rows = self._all(
            f"SELECT {_APPROVAL_COLUMNS} FROM approvals WHERE {' AND '.join(where)} "
            "ORDER BY requested_at_us, approval_id",
            params,
        )
        return [_approval_row(r) for r in rows]

    def attempts_since(self, tenant_id: str | None, since: datetime) -> list[AttemptRow]:
        """Attempts since `since`, of one tenant or (None) of all tenants."""
        where, params = ["occurred_at_us >= ?"], [_us(since)]
        if tenant_id is not None:
            where.append("tenant_id = ?")
            params.append(tenant_id)  # type: ignore[arg-type]
        rows = self._all(
            f"SELECT {_ATTEMPT_COLUMNS} FROM attempts WHERE {' AND '.join(where)} "
            "ORDER BY occurred_at_us",
            params,
        )
        return [_attempt_row(r) for r in rows]


class SqliteReadStore(_SqlReadStore):
    """The read model in one SQLite file (`:memory:` for tests); the default."""

    def __init__(self, path: Path | str) -> None:
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        super().__init__(conn)

    @contextmanager
    def _transaction(self) -> Iterator[_Connection]:
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")


class PostgresReadStore(_SqlReadStore):
    """The read model in PostgreSQL (production, shared by replicas behind one load balancer)."""

    _placeholder = "%s"

    def __init__(self, dsn: str) -> None:
        super().__init__(psycopg.connect(dsn, autocommit=True))

    @contextmanager
    def _transaction(self) -> Iterator[_Connection]:
        conn = self._conn
        assert isinstance(conn, psycopg.Connection)
        with conn.transaction():
            yield conn

"""`LedgerStore` over SQL: the shared statements, and the SQLite and PostgreSQL adapters.

Money is stored exactly (TEXT in SQLite, NUMERIC in PostgreSQL) and summed in `Decimal`, never
as floats. Times are integer microseconds since the epoch (UTC). The ledger row, its rollups and
its run totals change in one transaction, so the rollups always agree with the ledger.
"""

from __future__ import annotations

import sqlite3
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol

import psycopg

from stepline_billing.ledger import Kind, LedgerEntry, PricedBy, UsageRecord
from stepline_billing.rollups import Granularity, Rollup, RollupKey, keys_for
from stepline_billing.store import Cursor, LedgerQuery, Recorded, RunTotals, Spend
from stepline_vocab import Tokens, format_amount

__all__ = ["PostgresLedgerStore", "SqliteLedgerStore"]

_LEDGER_COLUMNS = (
    "usage_id, tenant_id, run_id, step_id, call_id, kind, provider, model, deployment, tool, "
    "outcome, tool_error_kind, succeeded, input_tokens, output_tokens, cached_input_tokens, "
    "cache_write_input_tokens, reasoning_tokens, cost, currency, price_book_version, priced_by, "
    "reported_cost, latency_us, occurred_at_us, attempt, route, agent, status_code"
)
_ROLLUP_COLUMNS = (
    "rollup_id, tenant_id, granularity, window_start_us, kind, provider, model, tool, "
    "input_tokens, output_tokens, cached_input_tokens, cache_write_input_tokens, "
    "reasoning_tokens, cost, calls, failures, unpriced_calls"
)


def _schema(money: str, boolean: str) -> list[str]:
    return [
        f"""CREATE TABLE IF NOT EXISTS ledger (
            usage_id TEXT PRIMARY KEY,
            tenant_id TEXT NOT NULL, run_id TEXT NOT NULL, step_id TEXT NOT NULL,
            call_id TEXT NOT NULL, kind TEXT NOT NULL, provider TEXT NOT NULL,
            model TEXT NOT NULL, deployment TEXT NOT NULL, tool TEXT NOT NULL,
            outcome TEXT NOT NULL, tool_error_kind TEXT NOT NULL, succeeded {boolean} NOT NULL,
            input_tokens BIGINT NOT NULL, output_tokens BIGINT NOT NULL,
            cached_input_tokens BIGINT NOT NULL, cache_write_input_tokens BIGINT NOT NULL,
            reasoning_tokens BIGINT NOT NULL,
            cost {money} NULL, currency TEXT NOT NULL, price_book_version TEXT NOT NULL,
            priced_by TEXT NOT NULL, reported_cost {money} NULL,
            latency_us BIGINT NOT NULL, occurred_at_us BIGINT NOT NULL, attempt INTEGER NOT NULL,
            route TEXT NOT NULL, agent TEXT NOT NULL, status_code INTEGER NOT NULL)""",
        "CREATE INDEX IF NOT EXISTS ledger_by_tenant "
        "ON ledger (tenant_id, occurred_at_us, usage_id)",
        "CREATE INDEX IF NOT EXISTS ledger_by_run ON ledger (run_id)",
        f"""CREATE TABLE IF NOT EXISTS rollups (
            rollup_id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, granularity TEXT NOT NULL,
            window_start_us BIGINT NOT NULL, kind TEXT NOT NULL, provider TEXT NOT NULL,
            model TEXT NOT NULL, tool TEXT NOT NULL, input_tokens BIGINT NOT NULL,
            output_tokens BIGINT NOT NULL, cached_input_tokens BIGINT NOT NULL,
            cache_write_input_tokens BIGINT NOT NULL, reasoning_tokens BIGINT NOT NULL,
            cost {money} NOT NULL, calls BIGINT NOT NULL, failures BIGINT NOT NULL,
            unpriced_calls BIGINT NOT NULL)""",
        "CREATE INDEX IF NOT EXISTS rollups_by_tenant "
        "ON rollups (tenant_id, granularity, window_start_us)",
        f"""CREATE TABLE IF NOT EXISTS runs (
            tenant_id TEXT NOT NULL, run_id TEXT NOT NULL, spent {money} NOT NULL,
            recorded_calls BIGINT NOT NULL, unpriced_calls BIGINT NOT NULL,
            PRIMARY KEY (tenant_id, run_id))""",
    ]


def _us(moment: datetime) -> int:
    delta = moment.astimezone(UTC) - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _time(us: int) -> datetime:
    return datetime.fromtimestamp(us // 1_000_000, UTC).replace(microsecond=us % 1_000_000)


def _money(value: Any) -> Decimal | None:
    return None if value is None else Decimal(str(value))


@dataclass(slots=True)
class _BatchTotals:
    """Rollups and run totals changed so far in one `record_many` transaction, by key."""

    rollups: dict[RollupKey, Rollup] = field(default_factory=dict)
    runs: dict[tuple[str, str], RunTotals] = field(default_factory=dict)


class _Connection(Protocol):
    """What the shared code needs from a DB-API connection (sqlite3 or psycopg)."""

    def execute(self, sql: str, params: Sequence[Any] = ...) -> Any:
        """Run one statement."""

    def close(self) -> None:
        """Close the connection."""


class _SqlLedgerStore(ABC):
    """The statements both adapters share; subclasses open the connection and transactions."""

    _placeholder = "?"

    def __init__(self, conn: _Connection) -> None:
        self._lock = threading.Lock()
        self._conn = conn

    @abstractmethod
    def _transaction(self, tenants: Sequence[str]) -> AbstractContextManager[_Connection]:
        """A write transaction on these tenants' rows (sorted): committed on exit, rolled back
        on error."""

    @contextmanager
    def _reader(self) -> Iterator[_Connection]:
        with self._lock:
            yield self._conn

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()

    def _money_param(self, value: Decimal | None) -> Any:
        return None if value is None else format_amount(value)

    def _bool_param(self, value: bool) -> Any:
        return value

    def _sql(self, text: str) -> str:
        return text if self._placeholder == "?" else text.replace("?", self._placeholder)

    def _run(self, conn: _Connection, text: str, params: Sequence[Any] = ()) -> Any:
        return conn.execute(self._sql(text), params)

    # -- LedgerStore ---------------------------------------------------------------------------
    def record(self, entry: LedgerEntry) -> Recorded:
        """Insert `entry` unless its usage id exists; update rollups and run totals; commit."""
        [recorded] = self.record_many([entry])
        return recorded

    def record_many(self, entries: Sequence[LedgerEntry]) -> list[Recorded]:
        """`record` for each entry in order, all in one transaction (one commit, one fsync)."""
        if not entries:
            return []
        with self._lock, self._transaction(sorted({e.usage.tenant_id for e in entries})) as conn:
            totals = _BatchTotals()
            recorded = [self._record_in(conn, entry, totals) for entry in entries]
            # Each rollup and run the batch changed is written once, at its final totals.
            for rollup in totals.rollups.values():
                self._put_rollup(conn, rollup)
            for run in totals.runs.values():
                self._put_run(conn, run)
            return recorded

    def _record_in(self, conn: _Connection, entry: LedgerEntry, totals: _BatchTotals) -> Recorded:
        usage = entry.usage
        values = self._ledger_row(entry)
        inserted = (
            self._run(
                conn,
                f"INSERT INTO ledger ({_LEDGER_COLUMNS}) VALUES "
                f"({', '.join('?' * len(values))}) ON CONFLICT (usage_id) DO NOTHING",
                values,
            ).rowcount
            == 1
        )
        if not inserted:
            # Report the totals the stored row counts towards (it may differ in content).
            entry = self._entry(
                self._run(
                    conn,
                    f"SELECT {_LEDGER_COLUMNS} FROM ledger WHERE usage_id = ?",
                    (usage.usage_id,),
                ).fetchone()
            )
        rollups = []
        for key in keys_for(entry):
            current = totals.rollups.get(key) or self._rollup(conn, key) or Rollup(key)
            if inserted:
                current = totals.rollups[key] = current.add(entry)
            rollups.append(current)
        run = self._update_run(conn, entry, inserted, totals) if usage.run_id else None
        return Recorded(inserted, tuple(rollups), run)

    def spent(self, tenant_id: str, start: datetime, end: datetime) -> Spend:
        """Spend of `tenant_id` from its daily rollups in [start, end)."""
        with self._reader() as conn:
            rows = self._run(
                conn,
                "SELECT cost, unpriced_calls FROM rollups WHERE tenant_id = ? AND granularity = ?"
                " AND window_start_us >= ? AND window_start_us < ?",
                (tenant_id, Granularity.DAILY.value, _us(start), _us(end)),
            ).fetchall()
        return Spend(
            sum((Decimal(str(cost)) for cost, _ in rows), Decimal(0)),
            sum(int(unpriced) for _, unpriced in rows),
        )

    def version(self, tenant_id: str) -> int:
        """Number of ledger rows of `tenant_id`.

        Read as the sum of its daily rollups' calls: every new row counts once in exactly one
        daily rollup, in the row's own transaction, and a tenant has far fewer daily rollups
        (days × dimensions) than ledger rows, which a COUNT would scan on every budget state.
        """
        with self._reader() as conn:
            row = self._run(
                conn,
                "SELECT COALESCE(SUM(calls), 0) FROM rollups "
                "WHERE tenant_id = ? AND granularity = ?",
                (tenant_id, Granularity.DAILY.value),
            ).fetchone()
        return int(row[0])

    def run_totals(self, tenant_id: str, run_id: str) -> RunTotals | None:
        """Recorded spend of one run."""
        with self._reader() as conn:
            return self._run_row(conn, tenant_id, run_id)

    def entries(
        self, query: LedgerQuery, limit: int, after: Cursor | None = None
    ) -> list[LedgerEntry]:
        """Up to `limit` matching entries, oldest first, after `after`."""
        where: list[str] = ["1 = 1"]
        params: list[Any] = []
        for column, value in (("tenant_id", query.tenant_id), ("run_id", query.run_id)):
            if value:
                where.append(f"{column} = ?")
                params.append(value)
        if query.kind is not None:
            where.append("kind = ?")
            params.append(query.kind.value)
        if query.start is not None:
            where.append("occurred_at_us >= ?")
            params.append(_us(query.start))
        if query.end is not None:
            where.append("occurred_at_us < ?")
            params.append(_us(query.end))
        if after is not None:
            # Keyset paging: stable under concurrent appends, no OFFSET scans.
            where.append("(occurred_at_us > ? OR (occurred_at_us = ? AND usage_id > ?))")
            params.extend([_us(after.occurred_at), _us(after.occurred_at), after.usage_id])
        with self._reader() as conn:
            rows = self._run(
                conn,
                f"SELECT {_LEDGER_COLUMNS} FROM ledger WHERE {' AND '.join(where)} "
                "ORDER BY occurred_at_us, usage_id LIMIT ?",
                (*params, limit),
            ).fetchall()
        return [self._entry(row) for row in rows]

    def rollups(
        self,
        tenant_id: str,
        granularity: Granularity,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> list[Rollup]:
        """Stored rollups of a tenant whose window starts in [start, end)."""
        where = ["tenant_id = ?", "granularity = ?"]
        params: list[Any] = [tenant_id, granularity.value]
        if start is not None:
            where.append("window_start_us >= ?")
            params.append(_us(start))
        if end is not None:
            where.append("window_start_us < ?")
            params.append(_us(end))
        with self._reader() as conn:
            rows = self._run(
                conn,
                f"SELECT {_ROLLUP_COLUMNS} FROM rollups WHERE {' AND '.join(where)} "
                "ORDER BY window_start_us, rollup_id",
                params,
            ).fetchall()
        return [self._rollup_from(row) for row in rows]

    def tenants(self) -> list[str]:
        """Every tenant with ledger rows."""
        with self._reader() as conn:
            rows = self._run(
                conn, "SELECT DISTINCT tenant_id FROM ledger ORDER BY tenant_id"
            ).fetchall()
        return [str(row[0]) for row in rows]

    # -- rows ----------------------------------------------------------------------------------
    def _ledger_row(self, entry: LedgerEntry) -> tuple[Any, ...]:
        u = entry.usage
        t = u.tokens
        return (
            u.usage_id, u.tenant_id, u.run_id, u.step_id, u.call_id, u.kind.value, u.provider,
            u.model, u.deployment, u.tool, u.outcome, u.tool_error_kind,
            self._bool_param(u.succeeded), t.input, t.output, t.cached_input,
            t.cache_write_input, t.reasoning, self._money_param(entry.cost), entry.currency,
            entry.price_book_version, entry.priced_by.value,
            self._money_param(u.reported_cost), u.latency_us, _us(u.occurred_at), u.attempt,
            u.route, u.agent, u.status_code,
        )  # fmt: skip

    def _entry(self, row: Sequence[Any]) -> LedgerEntry:
        (
            usage_id, tenant_id, run_id, step_id, call_id, kind, provider, model, deployment,
            tool, outcome, tool_error_kind, succeeded, input_tokens, output_tokens, cached,
            cache_write, reasoning, cost, currency, version, priced_by, reported_cost,
            latency_us, occurred_at_us, attempt, route, agent, status_code,
        ) = row  # fmt: skip
        usage = UsageRecord(
            usage_id=usage_id,
            tenant_id=tenant_id,
            kind=Kind(kind),
            occurred_at=_time(int(occurred_at_us)),
            run_id=run_id,
            step_id=step_id,
            call_id=call_id,
            provider=provider,
            model=model,
            deployment=deployment,
            tool=tool,
            outcome=outcome,
            tool_error_kind=tool_error_kind,
            succeeded=bool(succeeded),
            tokens=Tokens(
                int(input_tokens),
                int(output_tokens),
                int(cached),
                int(cache_write),
                int(reasoning),
            ),
            reported_cost=_money(reported_cost),
            reported_currency=currency if reported_cost is not None else "",
            reported_version=version if reported_cost is not None else "",
            latency_us=int(latency_us),
            attempt=int(attempt),
            route=route,
            agent=agent,
            status_code=int(status_code),
        )
        return LedgerEntry(usage, _money(cost), currency, version, PricedBy(priced_by))

    def _rollup(self, conn: _Connection, key: RollupKey) -> Rollup | None:
        row = self._run(
            conn, f"SELECT {_ROLLUP_COLUMNS} FROM rollups WHERE rollup_id = ?", (key.rollup_id,)
        ).fetchone()
        return None if row is None else self._rollup_from(row)

    def _rollup_from(self, row: Sequence[Any]) -> Rollup:
        (
            _, tenant_id, granularity, start_us, kind, provider, model, tool, input_tokens,
            output_tokens, cached, cache_write, reasoning, cost, calls, failures, unpriced,
        ) = row  # fmt: skip
        key = RollupKey(
            tenant_id, Granularity(granularity), _time(int(start_us)), Kind(kind), provider,
            model, tool,
        )  # fmt: skip
        tokens = Tokens(
            int(input_tokens), int(output_tokens), int(cached), int(cache_write), int(reasoning)
        )
        return Rollup(key, tokens, Decimal(str(cost)), int(calls), int(failures), int(unpriced))

    def _put_rollup(self, conn: _Connection, rollup: Rollup) -> None:
        k, t = rollup.key, rollup.tokens
        values = (
            k.rollup_id, k.tenant_id, k.granularity.value, _us(k.window_start), k.kind.value,
            k.provider, k.model, k.tool, t.input, t.output, t.cached_input, t.cache_write_input,
            t.reasoning, self._money_param(rollup.cost), rollup.calls, rollup.failures,
            rollup.unpriced_calls,
        )  # fmt: skip
        updates = ", ".join(
            f"{c} = excluded.{c}" for c in _ROLLUP_COLUMNS.replace(" ", "").split(",")[1:]
        )
        self._run(
            conn,
            f"INSERT INTO rollups ({_ROLLUP_COLUMNS}) VALUES ({', '.join('?' * len(values))}) "
            f"ON CONFLICT (rollup_id) DO UPDATE SET {updates}",
            values,
        )

    def _run_row(self, conn: _Connection, tenant_id: str, run_id: str) -> RunTotals | None:
        row = self._run(
            conn,
            "SELECT spent, recorded_calls, unpriced_calls FROM runs "
            "WHERE tenant_id = ? AND run_id = ?",
            (tenant_id, run_id),
        ).fetchone()
        if row is None:
            return None
        return RunTotals(tenant_id, run_id, Decimal(str(row[0])), int(row[1]), int(row[2]))

    def _update_run(
        self, conn: _Connection, entry: LedgerEntry, inserted: bool, totals: _BatchTotals
    ) -> RunTotals:
        usage = entry.usage
        key = (usage.tenant_id, usage.run_id)
        old = (
            totals.runs.get(key)
            or self._run_row(conn, usage.tenant_id, usage.run_id)
            or RunTotals(usage.tenant_id, usage.run_id, Decimal(0), 0, 0)
        )
        if not inserted:
            return old
        new = totals.runs[key] = RunTotals(
            usage.tenant_id,
            usage.run_id,
            old.spent + (entry.cost or Decimal(0)),
            old.recorded_calls + 1,
            old.unpriced_calls + (0 if entry.priced else 1),
        )
        return new

    def _put_run(self, conn: _Connection, new: RunTotals) -> None:
        self._run(
            conn,
            "INSERT INTO runs (tenant_id, run_id, spent, recorded_calls, unpriced_calls) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (tenant_id, run_id) DO UPDATE SET "
            "spent = excluded.spent, recorded_calls = excluded.recorded_calls, "
            "unpriced_calls = excluded.unpriced_calls",
            (
                new.tenant_id,
                new.run_id,
                self._money_param(new.spent),
                new.recorded_calls,
                new.unpriced_calls,
            ),
        )


class SqliteLedgerStore(_SqlLedgerStore):
    """The default store: one SQLite file (WAL, synchronous=FULL so a commit survives a crash)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Autocommit mode; transactions are explicit (BEGIN IMMEDIATE takes the write lock up
        # front, so read-modify-write of rollups cannot interleave with another writer).
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        for statement in _schema("TEXT", "INTEGER"):
            conn.execute(statement)
        super().__init__(conn)

    def _bool_param(self, value: bool) -> Any:
        return int(value)

    @contextmanager
    def _transaction(self, tenants: Sequence[str]) -> Iterator[_Connection]:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")


class PostgresLedgerStore(_SqlLedgerStore):
    """The store for shared deployments: PostgreSQL through psycopg 3."""

    _placeholder = "%s"

    def __init__(self, dsn: str) -> None:
        self._pg = psycopg.connect(dsn, autocommit=True)
        with self._pg.transaction():
            # Serialise concurrent schema creation by several instances.
            self._pg.execute("SELECT pg_advisory_xact_lock(7410001)")
            for statement in _schema("NUMERIC", "BOOLEAN"):
                self._pg.execute(statement)
        super().__init__(self._pg)

    def _money_param(self, value: Decimal | None) -> Any:
        return value

    @contextmanager
    def _transaction(self, tenants: Sequence[str]) -> Iterator[_Connection]:
        with self._pg.transaction():
            # One writer per tenant at a time, even while a rebalance moves the tenant between
            # instances: the rollup read-modify-write below must not interleave. Locks are
            # taken in sorted order so two instances' batches cannot deadlock.
            for tenant_id in tenants:
                self._pg.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (tenant_id,))
            yield self._pg

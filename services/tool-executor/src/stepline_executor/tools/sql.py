"""`sql_query` and saved queries: read-only, parameterized SELECTs on SQLite with limits.

`sql_query` lets the model write the SELECT; a saved query (`[[sql_queries]]` in tools.toml) is a
named SELECT written by an operator, offered as its own tool whose arguments are the query's
named `:parameters`, for models that should not (or cannot) write SQL.

Three independent locks keep it read-only: the database is opened with `mode=ro`, the
connection runs with `PRAGMA query_only`, and an authorizer denies every action that is not a
read (writes, DDL, ATTACH, PRAGMA, transactions). Parameters are bound, never interpolated.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sqlite3
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from stepline_executor.model import CallContext, ToolError, ToolOutput, ToolSpec
from stepline_executor.tools.base import ModelArguments, SchemaArguments

__all__ = ["SavedQuery", "SqlArguments", "SqlQuery", "build_database", "placeholders"]

_ALLOWED_ACTIONS = {
    sqlite3.SQLITE_SELECT,
    sqlite3.SQLITE_READ,
    sqlite3.SQLITE_FUNCTION,
    sqlite3.SQLITE_RECURSIVE,  # WITH RECURSIVE; runaway recursion is stopped by the time limit
}
# Functions that could reach outside the query's data or slow everything down.
_DENIED_FUNCTIONS = {"load_extension", "readfile", "writefile", "edit", "fts3_tokenizer"}
_PROGRESS_EVERY = 1_000
_NAMED = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")

Scalar = str | int | float | bool | None


class SqlArguments(BaseModel):
    """Arguments of `sql_query`."""

    model_config = ConfigDict(extra="forbid")

    query: str = Field(
        min_length=1,
        max_length=4_000,
        description="One read-only SQL SELECT statement (SQLite dialect). Put values in ? "
        "placeholders and pass them in `params`; never paste values into the SQL text.",
    )
    params: list[Scalar] = Field(
        default_factory=list, max_length=50, description="Values for the ? placeholders, in order."
    )
    max_rows: int = Field(default=50, ge=1, le=500, description="Most rows to return.")


def build_database(script: Path, database: Path) -> None:
    """Create `database` from the SQL `script` when it does not exist yet (atomic rename)."""
    if database.exists():
        return
    database.parent.mkdir(parents=True, exist_ok=True)
    # One partial file per process: instances starting together each build their own copy,
    # and the last atomic rename wins (the copies are equal).
    partial = database.with_suffix(f"{database.suffix}.{os.getpid()}.building")
    partial.unlink(missing_ok=True)
    with sqlite3.connect(partial) as connection:
        connection.executescript(script.read_text(encoding="utf-8"))
    connection.close()
    partial.replace(database)


def _authorizer(action: int, arg1: str | None, arg2: str | None, *_: str | None) -> int:
    if action not in _ALLOWED_ACTIONS:
        return sqlite3.SQLITE_DENY
    if action == sqlite3.SQLITE_FUNCTION and (arg2 or "").lower() in _DENIED_FUNCTIONS:
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK


@dataclass(frozen=True)
class SqlQuery:
    """The `sql_query` tool over one SQLite database file."""

    spec: ToolSpec
    database: Path
    arguments: ModelArguments[SqlArguments]
    row_limit: int = 500

    @classmethod
    def build(
        cls, database: Path, *, description_suffix: str = "", row_limit: int = 500, **limits: Any
    ) -> SqlQuery:
        """Describe the tool; the schema summary helps the model write correct SQL."""
        arguments = ModelArguments(SqlArguments)
        spec = ToolSpec(
            name="sql_query",
            description="Run one read-only SQL SELECT against the CRM database and get rows as "
            "JSON. Writes are refused." + (f" {description_suffix}" if description_suffix else ""),
            parameters=arguments.schema,
            idempotent=True,
            **limits,
        )
        return cls(spec, database, arguments, row_limit)

    def parse(self, arguments: dict[str, Any]) -> SqlArguments:
        """Validated arguments."""
        return self.arguments.parse(arguments)

    async def run(self, parsed: SqlArguments, context: CallContext) -> ToolOutput:
        """Run the query in a worker thread, interrupted at the timeout or on cancellation."""
        limit = min(parsed.max_rows, self.row_limit)
        return await _read(self.database, parsed.query, parsed.params, limit, context.timeout_s)


def placeholders(sql: str) -> list[str]:
    """Names of the `:name` placeholders of `sql`, in order of first use."""
    without_strings = re.sub(r"'(?:[^']|'')*'", "''", sql)
    return list(dict.fromkeys(_NAMED.findall(without_strings)))


@dataclass(frozen=True)
class SavedQuery:
    """A named, parameterized, read-only SELECT offered as its own tool."""

    spec: ToolSpec
    database: Path
    sql: str
    arguments: SchemaArguments
    row_limit: int = 50

    @classmethod
    def build(
        cls,
        name: str,
        description: str,
        sql: str,
        parameters: Mapping[str, Any],
        database: Path,
        *,
        row_limit: int = 50,
        **limits: Any,
    ) -> SavedQuery:
        """Check that the SQL's `:placeholders` are exactly the schema's properties."""
        properties = parameters.get("properties", {})
        names = set(properties) if isinstance(properties, dict) else set()
        used = set(placeholders(sql))
        if used != names:
            raise ValueError(
                f"saved query {name!r}: placeholders {sorted(used)} do not match the "
                f"parameters {sorted(names)}"
            )
        arguments = SchemaArguments(parameters)
        spec = ToolSpec(
            name=name,
            description=description,
            parameters=arguments.schema,
            idempotent=True,
            **limits,
        )
        return cls(spec, database, sql, arguments, row_limit)

    def parse(self, arguments: dict[str, Any]) -> dict[str, Any]:
        """Arguments valid against the declared schema."""
        return self.arguments.parse(arguments)

    async def run(self, parsed: dict[str, Any], context: CallContext) -> ToolOutput:
        """Run the saved SELECT with the arguments bound to its placeholders."""
        # Optional parameters the model left out are bound as NULL, never interpolated.
        bound = {name: parsed.get(name) for name in placeholders(self.sql)}
        return await _read(self.database, self.sql, bound, self.row_limit, context.timeout_s)


async def _read(
    database: Path,
    sql: str,
    params: Sequence[Scalar] | Mapping[str, Any],
    limit: int,
    timeout_s: float,
) -> ToolOutput:
    """Run one read-only query in a worker thread, interrupted at the timeout or on cancel."""
    stop = threading.Event()
    deadline = time.monotonic() + timeout_s
    try:
        return await asyncio.to_thread(_query, database, sql, params, limit, stop, deadline)
    finally:
        # Whatever ended the wait (cancel, timeout), make the thread's query give up too.
        stop.set()


def _query(
    database: Path,
    sql: str,
    params: Sequence[Scalar] | Mapping[str, Any],
    limit: int,
    stop: threading.Event,
    deadline: float,
) -> ToolOutput:
    uri = f"{database.resolve().as_uri()}?mode=ro"
    try:
        connection = sqlite3.connect(uri, uri=True, check_same_thread=False)
    except sqlite3.Error as error:
        raise ToolError(f"the database is not available: {error}") from None
    try:
        connection.execute("PRAGMA query_only = ON")
        connection.set_authorizer(_authorizer)
        connection.set_progress_handler(
            lambda: int(stop.is_set() or time.monotonic() > deadline), _PROGRESS_EVERY
        )
        try:
            cursor = connection.execute(sql, params)
            rows = cursor.fetchmany(limit + 1)
        except sqlite3.OperationalError as error:
            if "interrupted" in str(error):
                raise ToolError("the query took too long and was stopped") from None
            raise ToolError(f"SQL error: {error}") from None
        except (sqlite3.DatabaseError, sqlite3.ProgrammingError, ValueError) as error:
            raise ToolError(f"SQL error: {error}") from None
        if cursor.description is None:
            raise ToolError("only SELECT statements that return rows are allowed")
        columns = [c[0] for c in cursor.description]
        truncated = len(rows) > limit
        body = {
            "columns": columns,
            "rows": [list(_json_value(v) for v in row) for row in rows[:limit]],
            "row_count": min(len(rows), limit),
            "truncated": truncated,
        }
        return ToolOutput(json.dumps(body, ensure_ascii=False))
    finally:
        connection.close()


def _json_value(value: Any) -> Any:
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    return value

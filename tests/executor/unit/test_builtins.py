"""Built-in tools: calculator, search_documents, sql_query (injection and write attempts)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from stepline_executor.model import ArgumentsError, CallContext, ToolError
from stepline_executor.tools.calculator import Calculator, evaluate
from stepline_executor.tools.search import SearchDocuments
from stepline_executor.tools.sql import SqlQuery, build_database

ROOT = Path(__file__).resolve().parents[3]
CTX = CallContext(tenant_id="acme", run_id="r", call_id="r:1:0", idempotency_key="k", timeout_s=5)


@pytest.mark.parametrize(
    ("expression", "value"),
    [
        ("(12.5 * 3 + 4) / 2", 20.75),
        ("2 ** 10 - 1", 1023),
        ("-7 // 2", -4),
        ("sqrt(16) + abs(-2)", 6.0),
    ],
)
def test_calculator_computes(expression: str, value: float) -> None:
    assert evaluate(expression) == value


@pytest.mark.parametrize(
    ("expression", "problem"),
    [
        ("__import__('os').system('id')", "unsupported syntax"),
        ("(1).__class__", "unsupported syntax"),
        ("open('/etc/passwd')", "unsupported syntax"),
        ("9 ** 9 ** 9", "exponent"),
        ("1 / 0", "division by zero"),
        ("1 +", "not a valid expression"),
        ("'a' * 3", "unsupported syntax"),
    ],
)
def test_calculator_refuses_anything_but_arithmetic(expression: str, problem: str) -> None:
    with pytest.raises(ToolError, match=problem):
        evaluate(expression)


async def test_calculator_tool_output_and_schema() -> None:
    tool = Calculator.build()
    assert tool.spec.parameters["required"] == ["expression"]
    output = await tool.run(tool.parse({"expression": "6*7"}), CTX)
    assert json.loads(output.text)["result"] == 42
    with pytest.raises(ArgumentsError, match="expression: Field required"):
        tool.parse({"expr": "1"})


async def test_search_ranks_the_relevant_ticket_first_with_snippet_and_source() -> None:
    tool = SearchDocuments.build(ROOT / "deploy" / "demo" / "support-tickets")
    output = json.loads((await tool.run(tool.parse({"query": "charged twice renewal"}), CTX)).text)
    best = output["results"][0]
    assert best["source_id"] == "T-1005.md"
    assert "charged twice" in best["snippet"]
    none = json.loads((await tool.run(tool.parse({"query": "zzzqqq"}), CTX)).text)
    assert none["results"] == []
    with pytest.raises(ArgumentsError, match="top_k"):
        tool.parse({"query": "x", "top_k": 0})


@pytest.fixture
def crm(tmp_path: Path) -> SqlQuery:
    database = tmp_path / "crm.sqlite"
    build_database(ROOT / "deploy" / "demo" / "crm.sql", database)
    return SqlQuery.build(database, timeout_s=5)


async def _rows(tool: SqlQuery, **args: object) -> dict[str, object]:
    return json.loads((await tool.run(tool.parse(dict(args)), CTX)).text)  # type: ignore[no-any-return]


async def test_sql_parameterized_select_with_row_limit(crm: SqlQuery) -> None:
    body = await _rows(
        crm, query="SELECT id, name FROM customers WHERE plan = ?", params=["Business"]
    )
    assert body["rows"] == [[1, "Acme Corp"], [4, "Umbrella"]]
    limited = await _rows(crm, query="SELECT id FROM orders ORDER BY id", max_rows=3)
    assert limited["row_count"] == 3
    assert limited["truncated"] is True


async def test_sql_injection_through_params_is_just_data(crm: SqlQuery) -> None:
    body = await _rows(
        crm, query="SELECT id FROM customers WHERE name = ?", params=["x' OR '1'='1"]
    )
    assert body["rows"] == []


@pytest.mark.parametrize(
    "query",
    [
        "DELETE FROM customers",
        "UPDATE customers SET plan = 'Enterprise'",
        "INSERT INTO customers VALUES (9, 'x', 'x', 'Starter', 'US', '2026')",
        "DROP TABLE customers",
        "CREATE TABLE evil (x)",
        "ATTACH DATABASE '/tmp/evil.db' AS evil",
        "PRAGMA query_only = OFF",
        "PRAGMA writable_schema = ON",
        "SELECT 1; DELETE FROM customers",
        "SELECT load_extension('/tmp/evil')",
        "BEGIN IMMEDIATE",
        "VACUUM",
    ],
)
async def test_sql_write_and_escape_attempts_are_refused(crm: SqlQuery, query: str) -> None:
    with pytest.raises(ToolError):
        await crm.run(crm.parse({"query": query}), CTX)
    with sqlite3.connect(crm.database) as check:
        assert check.execute("SELECT count(*) FROM customers").fetchone() == (5,)


async def test_sql_runaway_query_is_stopped_at_the_time_limit(crm: SqlQuery) -> None:
    endless = (
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT count(*) FROM n"
    )
    short = CallContext("acme", "r", "c", "k", timeout_s=0.2)
    with pytest.raises(ToolError, match="took too long"):
        await crm.run(crm.parse({"query": endless}), short)


def test_sql_schema_violation_is_reported() -> None:
    tool = SqlQuery.build(Path("/nonexistent.sqlite"))
    with pytest.raises(ArgumentsError, match=r"params\.0"):
        tool.parse({"query": "SELECT ?", "params": [{"nested": 1}]})

"""Saved queries: named, parameterized, read-only SELECTs declared in tools.toml."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stepline_executor.app import build_toolbox
from stepline_executor.config import Settings, ToolsConfig
from stepline_executor.model import ArgumentsError, CallContext, ToolError
from stepline_executor.tools.sql import SavedQuery, build_database, placeholders

ROOT = Path(__file__).resolve().parents[3]
CTX = CallContext(tenant_id="acme", run_id="r", call_id="r:1:0", idempotency_key="k", timeout_s=5)
EMAIL = {
    "type": "object",
    "additionalProperties": False,
    "required": ["email"],
    "properties": {"email": {"type": "string", "minLength": 3}},
}
SQL = "SELECT id, name FROM customers WHERE lower(email) = lower(:email) AND name != ':not_me'"


@pytest.fixture
def database(tmp_path: Path) -> Path:
    path = tmp_path / "crm.sqlite"
    build_database(ROOT / "deploy" / "demo" / "crm.sql", path)
    return path


def test_placeholders_ignore_string_literals_and_casts() -> None:
    assert placeholders(SQL) == ["email"]
    assert placeholders("SELECT :a, :b, :a, 'x:c', '1'::text") == ["a", "b"]


async def test_a_saved_query_binds_its_arguments(database: Path) -> None:
    tool = SavedQuery.build("find", "Find a customer.", SQL, EMAIL, database, timeout_s=5)
    assert tool.spec.parameters["required"] == ["email"]
    found = json.loads((await tool.run(tool.parse({"email": "OPS@acme.example"}), CTX)).text)
    assert found["rows"] == [[1, "Acme Corp"]]
    # An injection attempt is just a value that matches nobody.
    nobody = await tool.run(tool.parse({"email": "x' OR '1'='1"}), CTX)
    assert json.loads(nobody.text)["rows"] == []
    with pytest.raises(ArgumentsError, match="'sql' was unexpected"):
        tool.parse({"email": "ops@acme.example", "sql": "DROP TABLE customers"})


def test_placeholders_must_match_the_parameters(database: Path) -> None:
    with pytest.raises(ValueError, match=r"placeholders \['email', 'plan'\]"):
        SavedQuery.build("bad", "d", f"{SQL} AND plan = :plan", EMAIL, database)


async def test_a_saved_query_stays_read_only(database: Path) -> None:
    params = {"type": "object", "properties": {"email": {"type": "string"}}}
    tool = SavedQuery.build(
        "wipe", "d", "DELETE FROM customers WHERE email = :email", params, database
    )
    with pytest.raises(ToolError, match="SQL error"):
        await tool.run({"email": "ops@acme.example"}, CTX)
    assert len(await _count(database)) == 5


async def _count(database: Path) -> list[object]:
    params = {"type": "object", "properties": {}}
    tool = SavedQuery.build("all", "d", "SELECT id FROM customers", params, database)
    return list(json.loads((await tool.run({}, CTX)).text)["rows"])


async def test_the_shipped_tools_file_offers_crm_find_customer(tmp_path: Path) -> None:
    config = ToolsConfig.load(ROOT / "deploy" / "config" / "tools.toml")
    toolbox = build_toolbox(config, Settings(executor_data_dir=tmp_path))
    try:
        tool = toolbox.registry.get("crm_find_customer")
        assert tool is not None
        output = json.loads((await tool.run(tool.parse({"email": "ops@acme.example"}), CTX)).text)
        assert {row[5] for row in output["rows"]} == {"T-1012", "T-1005"}
        assert toolbox.access.refusal("demo", "support", "crm_find_customer") is None
        assert toolbox.access.refusal("someone", "support", "crm_find_customer") is None
    finally:
        await toolbox.close()

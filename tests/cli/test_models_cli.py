"""`stepline models` as a real subprocess: the catalog's priced models and a route's reach."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

from genai_prices import Usage, calc_price

ROOT = Path(__file__).resolve().parents[2]
SHIPPED_BOOK = ROOT / "deploy" / "config" / "pricebook.toml"

ROUTES = """
[deployments.gpt]
provider = "openai"
model = "gpt-4o-mini"
capabilities = { tools = true, streaming = true, context_window = 64000 }

[deployments.selfhosted]
provider = "openai_compatible"
model = "my-finetune-7b"
base_url = "http://127.0.0.1:8000/v1"
tool_mode = "json"
capabilities = { tools = false, context_window = 8192 }

[deployments.local]
provider = "local"
model = "stepline-local-1"

[deployments.old]
provider = "openai"
model = "gpt-4"

[routes.mixed]
deployments = ["gpt", "selfhosted", "local"]

[routes.legacy]
deployments = ["old"]
"""


def _stepline(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stepline_client.cli", "models", *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _json(*args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    done = _stepline(*args, "--json", env=env)
    assert done.returncode == 0, done.stderr
    document: dict[str, Any] = json.loads(done.stdout)
    return document


def _per_mtok(provider: str, model: str, **usage: int) -> Decimal:
    """The package's own price of one million tokens of one kind."""
    return calc_price(Usage(**usage), model, provider_id=provider).total_price


def test_models_lists_at_least_200_priced_models_at_the_packages_prices() -> None:
    document = _json()
    models = document["models"]
    assert document["priced"] == len(models) >= 200
    assert "genai-prices-" in document["price_book_version"]
    assert all(m["input_per_mtok"] and m["output_per_mtok"] for m in models)
    by_key = {(m["provider"], m["model"]): m for m in models}
    for provider, model in [("openai", "gpt-4o-mini"), ("anthropic", "claude-haiku-4-5")]:
        row = by_key[(provider, model)]
        assert row["source"] == "catalog"
        assert Decimal(row["input_per_mtok"]) == _per_mtok(provider, model, input_tokens=10**6)
        assert Decimal(row["output_per_mtok"]) == _per_mtok(provider, model, output_tokens=10**6)
        assert row["context_window"]
    assert by_key[("local", "stepline-local-1")]["source"] == "local"


def test_the_table_has_a_line_per_model_and_filters_by_provider() -> None:
    done = _stepline()
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("price book ")
    assert lines[1].split()[:4] == ["PROVIDER", "MODEL", "INPUT", "OUTPUT"]
    assert len([line for line in lines if line.endswith(("catalog", "local"))]) >= 200
    anthropic = _stepline("--provider", "anthropic").stdout.splitlines()[2:]
    assert anthropic
    assert all(line.startswith(("anthropic", "+")) for line in anthropic)


def test_a_route_shows_each_deployment_priced_or_unpriced(tmp_path: Path) -> None:
    routes = tmp_path / "routes.toml"
    routes.write_text(ROUTES)
    document = _json("--route", "mixed", "--routes", str(routes))
    rows = {r["deployment"]: r for r in document["models"]}
    assert list(rows) == ["gpt", "selfhosted", "local"]
    assert rows["gpt"]["priced"] is True
    assert rows["gpt"]["context_window"] == 64000  # the deployment's own limit wins
    assert {"tools", "streaming", "prompt-cache"} <= set(rows["gpt"]["capabilities"])
    assert "vision" not in rows["gpt"]["capabilities"]  # only where the routes file says so
    assert rows["selfhosted"]["priced"] is False
    assert rows["selfhosted"]["source"] == "unpriced"
    # Tools through constrained JSON output (tool_mode = "json"), as the router routes them.
    assert {"tools", "tools-via-json", "json-schema"} <= set(rows["selfhosted"]["capabilities"])
    # A window the routes file leaves unsaid is the catalog's, as the router filters by it.
    (legacy,) = _json("--route", "legacy", "--routes", str(routes))["models"]
    assert legacy["context_window"] == 8192
    assert "input_per_mtok" not in rows["selfhosted"]
    assert document["priced"] == 2

    table = _stepline("--route", "mixed", "--routes", str(routes))
    assert table.returncode == 0, table.stderr
    selfhosted = next(line for line in table.stdout.splitlines() if line.startswith("selfhosted "))
    assert "unpriced" in selfhosted
    assert "selfhosted: not in the catalog nor in pricebook.toml" in table.stdout


def test_an_unknown_route_is_a_usage_error_naming_the_routes(tmp_path: Path) -> None:
    routes = tmp_path / "routes.toml"
    routes.write_text(ROUTES)
    done = _stepline("--route", "nope", "--routes", str(routes))
    assert done.returncode == 2
    assert "no route 'nope'" in done.stderr
    assert "mixed" in done.stderr


def test_the_override_file_prices_first_and_changes_the_version(tmp_path: Path) -> None:
    book = tmp_path / "pricebook.toml"
    book.write_text(
        SHIPPED_BOOK.read_text()
        + '\n[[models]]\nprovider = "openai"\nmodel = "gpt-4o-mini"\n'
        + 'input_per_mtok = "0.01"\noutput_per_mtok = "0.02"\n'
    )
    shipped = _json()
    negotiated = _json(env={"STEPLINE_PRICEBOOK": str(book)})
    assert negotiated["price_book_version"] != shipped["price_book_version"]
    rows = [
        m for m in negotiated["models"] if (m["provider"], m["model"]) == ("openai", "gpt-4o-mini")
    ]
    assert [(r["source"], r["input_per_mtok"]) for r in rows] == [("local", "0.01")]
    assert len(negotiated["models"]) == len(shipped["models"])

"""`make demo` end to end: the demo driver as a real subprocess, in its own namespace and dir."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
import uuid
from pathlib import Path

import pytest

from stepline_client.demo import demo_prices, demo_routes, demo_tools, render_toml
from stepline_frontdoor.sqlstore import SqliteReadStore
from stepline_routes import parse_routes
from stepline_runtime.settings import KafkaSettings

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "deploy" / "config"


def test_generated_config_files_read_back_as_written() -> None:
    tools = demo_tools(CONFIG / "tools.toml", 4242)
    assert tomllib.loads(render_toml(tools)) == tools
    hook = next(h for h in tools["webhooks"] if h["name"] == "send_reply")
    assert hook["url"] == "http://127.0.0.1:4242/reply"
    assert Path(tools["search_documents"]["folder"]).is_dir()

    offline = demo_routes(CONFIG / "demo" / "routes.toml", 4343, {})
    assert offline["routes"]["default"]["deployments"] == ["demo-primary", "local"]
    assert offline["deployments"]["demo-primary"]["base_url"] == "http://127.0.0.1:4343/v1"
    real = demo_routes(
        CONFIG / "demo" / "routes.toml",
        4343,
        {"STEPLINE_OPENAI_BASE_URL": "http://127.0.0.1:11434/v1", "ANTHROPIC_API_KEY": "x"},
    )
    # The outage first, then the real models, the offline stand-in last.
    assert real["routes"]["default"]["deployments"] == [
        "demo-primary",
        "compatible",
        "anthropic",
        "local",
    ]
    assert tomllib.loads(render_toml(real)) == real

    prices = demo_prices(CONFIG / "pricebook.toml", real)
    priced = {(m["provider"], m["model"]) for m in prices["models"]}
    assert ("openai_compatible", "demo-primary-unavailable") in priced
    assert {"crm_find_customer", "send_reply"} <= {t["name"] for t in prices["tools"]}
    assert tomllib.loads(render_toml(prices)) == prices


def test_local_llm_stands_in_front_of_the_offline_model_without_tools() -> None:
    with_llm = demo_routes(CONFIG / "demo" / "routes.toml", 4343, {}, "http://127.0.0.1:5555/v1")
    assert with_llm["routes"]["default"]["deployments"] == ["demo-primary", "local-llm", "local"]
    llm = with_llm["deployments"]["local-llm"]
    assert (llm["provider"], llm["base_url"]) == ("openai_compatible", "http://127.0.0.1:5555/v1")
    # No tool calling: the agent's steps (which offer tools) skip it, plain calls reach it.
    assert llm["capabilities"]["tools"] is False
    config = parse_routes(render_toml(with_llm), known_providers=("openai_compatible", "local"))
    assert not config.deployments["local-llm"].serves_tools()


@pytest.mark.timeout(150)
def test_make_demo_completes_with_a_failover_one_reply_and_a_cost_table(
    kafka: KafkaSettings, tmp_path: Path
) -> None:
    summary = tmp_path / "summary.json"
    env = {
        **os.environ,
        "STEPLINE_KAFKA_BOOTSTRAP": kafka.bootstrap,
        "STEPLINE_PARTITIONS": "2",
    }
    # A real model must not answer in a test: only the offline provider behind the outage.
    for key in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "STEPLINE_OPENAI_BASE_URL"):
        env.pop(key, None)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "stepline_client.demo",
            "--state-dir",
            str(tmp_path / "state"),
            "--namespace",
            f"t{uuid.uuid4().hex[:10]}",
            "--timeout",
            "90",
            "--summary",
            str(summary),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=140,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    result = json.loads(summary.read_text())
    assert result["status"] == "completed", output
    # Every model step first hit the failing primary (HTTP 503) and was answered after failover.
    assert result["failovers"], output
    assert all("demo-primary overloaded HTTP 503" in f for f in result["failovers"])
    assert "→ failed over" in output
    # Exactly one reply reached the webhook receiver, on the ticket of the goal.
    assert len(result["replies"]) == 1, output
    reply = result["replies"][0]
    assert reply["ticket_id"] == "T-1012"
    assert reply["body"].startswith("Hello Acme Corp,")
    # The cost table: one usage record per attempt and tool execution, and the run's total.
    assert result["usage_records"] >= 2 * len(result["failovers"]) + 3
    assert result["total_cost"].startswith("$")
    assert "cost (from" in output
    assert "send_reply" in output
    assert "run total (RunCompleted): $" in output
    # It ends with the same router as an OpenAI-compatible API, the failover in its headers.
    assert result["gateway_deployment"] == "local", output
    assert result["gateway_attempts"] >= 2, output
    assert "curl -s http://127.0.0.1:8400/v1/chat/completions" in output
    # The console was up with a key of the demo tenant, and its read model has the demo's run.
    assert re.search(r"console: http://127\.0\.0\.1:\d+/#/runs \(paste the key sk-\S+\)", output)
    [model] = (tmp_path / "state" / "frontdoor").glob("runs-*.sqlite3")
    store = SqliteReadStore(model)
    assert store.run("demo", result["run_id"]) is not None, output
    store.close()
    # Everything the demo started was stopped.
    pids = list((tmp_path / "state" / "run").glob("*.pid"))
    assert pids == []

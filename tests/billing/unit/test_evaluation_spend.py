"""Evaluation spend (replays and forks, told apart by their run ids) reported apart."""

from __future__ import annotations

import io
from decimal import Decimal
from pathlib import Path

import pytest

from stepline_billing.cli import main as cli_main
from stepline_billing.queries import evaluation_split
from stepline_billing.sqlstore import SqliteLedgerStore
from tests.billing.factories import handler, inbound, model_usage


async def test_replay_spend_is_reported_apart_from_production(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STEPLINE_BILLING_DATA_DIR", str(tmp_path))
    store = SqliteLedgerStore(tmp_path / "billing.sqlite3")
    billing = handler(store)
    await billing.on_usage_recorded(inbound(model_usage("p", cost=Decimal("0.10"))))
    replayed = model_usage("r1", run="replay-abc", cost=Decimal("0.25"))
    replayed.replay_of = "run-1"
    await billing.on_usage_recorded(inbound(replayed))
    child = model_usage("r2", run="replay-abc:3:1", cost=Decimal("0.05"))
    await billing.on_usage_recorded(inbound(child))
    await billing.on_usage_recorded(inbound(model_usage("f", run="fork-x", cost=Decimal("0.01"))))
    split = evaluation_split(store, "acme")
    store.close()
    assert (split.production, split.evaluation) == (Decimal("0.10"), Decimal("0.31"))
    assert (split.evaluation_runs, split.evaluation_calls) == (2, 3)

    out = io.StringIO()
    assert cli_main(["usage", "--tenant", "acme"], out) == 0
    assert (
        "production 0.1, evaluation (replays and forks) 0.31 in 2 run(s), 3 call(s)"
        in out.getvalue()
    )

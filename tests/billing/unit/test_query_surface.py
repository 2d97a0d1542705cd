"""gRPC BillingService, the CLI tables/CSV/reconcile, and the JSON-lines decoding of `tail`."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import grpc
import pytest

from stepline.v1 import billing_service_pb2, billing_service_pb2_grpc
from stepline_billing.budgets import BudgetConfig, Limits
from stepline_billing.cli import main as cli_main
from stepline_billing.grpc_service import BillingServicer
from stepline_billing.rollups import Granularity
from stepline_billing.sqlstore import SqliteLedgerStore
from stepline_billing.store import InMemoryLedgerStore
from stepline_keys import Scope
from stepline_keys.grpcdoor import RequireKey
from stepline_runtime.jsonlines import record_json
from tests.billing.factories import NOW, handler, inbound, model_usage, tool_usage
from tests.keys.support import grant, new_key, registry_with, with_key


@pytest.fixture
async def stub() -> AsyncIterator[billing_service_pb2_grpc.BillingServiceAsyncStub]:
    store = InMemoryLedgerStore()
    billing = handler(store)
    for i in range(25):
        await billing.on_usage_recorded(inbound(model_usage(f"m{i}", run=f"r{i % 2}")))
    await billing.on_usage_recorded(inbound(model_usage("u", provider="x", model="nope")))
    replayed = model_usage("e", run="replay-abc", cost=Decimal("0.25"))
    replayed.replay_of = "r0"
    await billing.on_usage_recorded(inbound(replayed))
    key = new_key("acme", grant(Scope.USAGE_READ))
    registry = registry_with(key)
    server = grpc.aio.server(interceptors=[RequireKey(registry)])
    billing_service_pb2_grpc.add_BillingServiceServicer_to_server(
        BillingServicer(
            store, BudgetConfig(Limits(daily=Decimal("1"))), "USD", lambda: NOW, registry
        ),
        server,
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(
        f"127.0.0.1:{port}", interceptors=with_key(key.secret)
    ) as channel:
        yield billing_service_pb2_grpc.BillingServiceStub(channel)
    await server.stop(None)


async def test_grpc_usage_budget_and_ledger_paging(
    stub: billing_service_pb2_grpc.BillingServiceAsyncStub,
) -> None:
    usage = await stub.GetUsage(billing_service_pb2.GetUsageRequest(tenant_id="acme"))
    assert (usage.total_calls, usage.total_unpriced_calls) == (27, 1)
    # Evaluation spend (the replay) apart from production, as `stepline-billing usage` shows it.
    total, production = Decimal(usage.total_cost.amount), Decimal(usage.production_cost.amount)
    assert Decimal(usage.evaluation_cost.amount) == Decimal("0.25")
    assert production + Decimal("0.25") == total
    assert (usage.evaluation_runs, usage.evaluation_calls) == (1, 1)
    assert usage.production_cost.currency == "USD"
    run = await stub.GetUsage(billing_service_pb2.GetUsageRequest(tenant_id="acme", run_id="r0"))
    assert run.total_calls == 13
    budget = await stub.GetBudget(billing_service_pb2.GetBudgetRequest(tenant_id="acme"))
    assert budget.budget.daily.spent.amount == usage.total_cost.amount
    assert budget.budget.daily.limit.amount == "1"
    seen: list[str] = []
    token = ""
    while True:
        page = await stub.ListLedger(
            billing_service_pb2.ListLedgerRequest(tenant_id="acme", page_size=10, page_token=token)
        )
        seen.extend(r.usage_id for r in page.records)
        if not (token := page.next_page_token):
            break
    assert sorted(seen) == sorted([f"m{i}" for i in range(25)] + ["u", "e"])
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.ListLedger(
            billing_service_pb2.ListLedgerRequest(tenant_id="acme", page_token="x")
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # The key's tenant is the only one it reads; an empty tenant_id means the key's.
    with pytest.raises(grpc.aio.AioRpcError) as foreign:
        await stub.GetUsage(billing_service_pb2.GetUsageRequest(tenant_id="globex"))
    assert foreign.value.code() == grpc.StatusCode.PERMISSION_DENIED
    own = await stub.GetUsage(billing_service_pb2.GetUsageRequest())
    assert own.total_calls == usage.total_calls


async def test_cli_tables_csv_and_reconcile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STEPLINE_BILLING_DATA_DIR", str(tmp_path))
    store = SqliteLedgerStore(tmp_path / "billing.sqlite3")
    billing = handler(store)
    await billing.on_usage_recorded(inbound(model_usage("a", cost=Decimal("0.25"))))
    await billing.on_usage_recorded(inbound(tool_usage("b")))
    await billing.on_usage_recorded(inbound(model_usage("c", provider="x", model="nope")))
    store.close()

    out = io.StringIO()
    assert cli_main(["usage", "--tenant", "acme"], out) == 0
    text = out.getvalue()
    assert "TOTAL" in text
    assert "0.2501" in text
    assert "1 call(s) had no price" in text

    out = io.StringIO()
    assert cli_main(["ledger", "--tenant", "acme", "--csv", str(tmp_path / "l.csv")], out) == 0
    with (tmp_path / "l.csv").open(encoding="utf-8") as handle:
        rows = {r["usage_id"]: r for r in csv.DictReader(handle)}
    assert (rows["a"]["cost"], rows["c"]["cost"]) == ("0.25", "UNPRICED")
    assert rows["c"]["priced_by"] == "unpriced"

    assert cli_main(["reconcile"], io.StringIO()) == 0
    # Tamper with a stored rollup: reconciliation must see the drift and fail.
    store = SqliteLedgerStore(tmp_path / "billing.sqlite3")
    [entry] = [e for e in store.rollups("acme", Granularity.DAILY) if e.key.tool == "sql_query"]
    store._run(
        store._conn, "UPDATE rollups SET cost = '9' WHERE rollup_id = ?", (entry.key.rollup_id,)
    )
    store.close()
    out = io.StringIO()
    assert cli_main(["reconcile"], out) == 1
    assert "drift: 1 difference(s)" in out.getvalue()


def test_tail_lines_decode_by_type_header() -> None:
    record = inbound(model_usage("j1"))
    line = record_json("topic", 0, 5, record.key, record.value, record.headers)
    assert json.loads(json.dumps(line))["value"]["usage_id"] == "j1"
    assert line["type"] == "stepline.v1.UsageRecorded"
    bad = record_json("topic", 0, 6, b"k", b"\xff\xff", record.headers)
    assert "error" in bad
    assert bad["value_hex"] == "ffff"

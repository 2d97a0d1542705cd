"""The HTTP API over an in-memory read model, recorded commands and fixed keys."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import jsonschema
import pytest
from starlette.testclient import TestClient

from stepline_frontdoor.app import RegistryOrFile
from stepline_frontdoor.commands import RecordingCommands
from stepline_frontdoor.http_api import Api, build_app
from stepline_frontdoor.keyfile import StaticAuthenticator
from stepline_frontdoor.keyuse import LastUse
from stepline_frontdoor.live import RunFeed
from stepline_frontdoor.openapi import COMMITTED, document, render
from stepline_frontdoor.sqlstore import SqliteReadStore
from stepline_keys import KeyRegistry, Principal, Scope
from stepline_keys.feeds import InMemoryKeyLog
from stepline_keys.manage import KeyAdmin
from tests.frontdoor.factories import T0, RunScript, model_attempt, usage_rollup
from tests.frontdoor.feeding import feed

READER = "sk-acme-reader"
APPROVER = "sk-acme-approver"
GLOBEX = "sk-globex-admin"

KEYS = StaticAuthenticator.of(
    [
        (READER, Principal("k1", "acme", frozenset({Scope.RUNS_READ}), label="reader")),
        (
            APPROVER,
            Principal(
                "k2",
                "acme",
                frozenset({Scope.RUNS_READ, Scope.APPROVALS_DECIDE, Scope.GOALS_SUBMIT,
                           Scope.USAGE_READ}),
                agents=frozenset({"support"}),
                label="alice",
            ),
        ),
        (GLOBEX, Principal("k3", "globex", frozenset({Scope.ADMIN}), label="root")),
    ]
)  # fmt: skip


class Console:
    """A test client with the recorded commands behind it."""

    def __init__(self) -> None:
        self.store = SqliteReadStore(":memory:")
        self.commands = RecordingCommands()
        clock = lambda: T0 + timedelta(minutes=1)  # noqa: E731
        self.registry = KeyRegistry(clock)
        self.key_log = InMemoryKeyLog()
        keys = LastUse(RegistryOrFile(self.registry, KEYS), clock)
        api = Api(
            self.store,
            self.commands,
            keys,
            RunFeed(),
            keys=KeyAdmin(self.registry, self.key_log, clock),
            last_used=keys.last_used,
            clock=clock,
        )
        self.client = TestClient(build_app(api, document, lambda: True))

    def get(self, path: str, key: str | None = READER, **params: Any) -> Any:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return self.client.get(path, headers=headers, params=params)

    def post(self, path: str, body: dict[str, Any], key: str = APPROVER) -> Any:
        return self.client.post(path, headers={"Authorization": f"Bearer {key}"}, json=body)


@pytest.fixture
def console() -> Iterator[Console]:
    c = Console()
    feed(
        c.store,
        RunScript("r1").started().model_step(1).approval("r1:9:1/approval").events
        + RunScript("r2", agent="sales").started().completed(answer="42").events
        + RunScript("g1", tenant_id="globex").started().approval("ga").events,
        [model_attempt("r1", 1), model_attempt("g1", 1, tenant_id="globex")],
        [
            usage_rollup(calls=1, cost="0.0005"),
            usage_rollup(tool="send_reply", cost="0.01"),
            usage_rollup(hourly=False, calls=1, cost="0.0005"),
            usage_rollup("globex", cost="9"),
        ],
    )
    with c.client:
        yield c


def _schema(name: str) -> dict[str, Any]:
    doc = document()
    return {"$ref": f"#/components/schemas/{name}", "components": doc["components"]}


def test_keys_are_required_and_scopes_are_enforced(console: Console) -> None:
    missing = console.get("/api/runs", key=None)
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "unauthenticated"
    assert missing.headers["www-authenticate"] == "Bearer"
    assert console.get("/api/runs", key="sk-wrong").status_code == 401
    denied = console.post(
        "/api/runs/r1/approvals/r1:9:1%2Fapproval", {"decision": "approve"}, key=READER
    )
    assert denied.status_code == 403
    assert "approvals:decide" in denied.json()["error"]["message"]
    assert console.get("/api/costs").status_code == 403


def test_another_tenants_run_looks_exactly_like_a_missing_one(console: Console) -> None:
    foreign = console.get("/api/runs/g1")
    missing = console.get("/api/runs/nope")
    assert foreign.status_code == missing.status_code == 404
    assert foreign.json()["error"]["message"].replace("g1", "X") == missing.json()["error"][
        "message"
    ].replace("nope", "X")
    assert console.get("/api/runs/g1/events").status_code == 404
    assert console.post("/api/runs/g1/approvals/ga", {"decision": "approve"}).status_code == 404
    assert console.post("/api/runs/g1/cancel", {}).status_code == 404
    assert console.get("/api/runs", tenant="globex").status_code == 403
    assert [r["run_id"] for r in console.get("/api/runs").json()["runs"]] == ["r2", "r1"]
    assert [a["run_id"] for a in console.get("/api/approvals").json()["approvals"]] == ["r1"]
    # Even an admin key of globex reads globex only.
    assert [r["run_id"] for r in console.get("/api/runs", key=GLOBEX).json()["runs"]] == ["g1"]


def test_list_filters_and_answers_match_the_openapi_document(console: Console) -> None:
    page = console.get("/api/runs", status="completed").json()
    jsonschema.validate(page, _schema("RunPage"))
    assert [(r["run_id"], r["answer"]) for r in page["runs"]] == [("r2", "42")]
    assert [r["run_id"] for r in console.get("/api/runs", agent="support").json()["runs"]] == ["r1"]
    bad = console.get("/api/runs", status="sleeping")
    assert bad.status_code == 400
    assert bad.json()["error"]["code"] == "invalid_argument"
    assert console.get("/api/runs", since="yesterday").status_code == 400
    assert console.get("/api/runs", limit="0").status_code == 400

    detail = console.get("/api/runs/r1").json()
    jsonschema.validate(detail, _schema("RunDetail"))
    assert detail["run"]["status"] == "awaiting_approval"
    assert [e["kind"] for e in detail["events"]] == [
        "started", "step_started", "step_completed", "approval_requested",
    ]  # fmt: skip
    [attempt] = detail["attempts"]
    assert (attempt["deployment"], attempt["outcome"], attempt["latency_ms"]) == (
        "local", "succeeded", 120.0,
    )  # fmt: skip
    assert detail["approvals"][0]["tool"] == "send_reply"

    costs = console.get("/api/costs", key=APPROVER, since=T0.isoformat()).json()
    jsonschema.validate(costs, _schema("SpendList"))
    # Billing's hourly rollups of acme only (globex's stay hidden), and agents from the usage.
    lines = costs["lines"]
    assert [(s["tenant_id"], s["kind"], s["model"], s["tool"], s["cost"]) for s in lines] == [
        ("acme", "model", "stepline-local-1", "", "0.0005"),
        ("acme", "tool", "", "send_reply", "0.01"),
    ]  # fmt: skip
    assert [(a["agent"], a["cost"], a["calls"]) for a in costs["agents"]] == [
        ("support", "0.0005", 1)
    ]
    daily = console.get("/api/costs", key=APPROVER, granularity="day", since=T0.isoformat())
    assert [s["cost"] for s in daily.json()["lines"]] == ["0.0005"]
    health = console.get("/api/providers", key=APPROVER).json()
    jsonschema.validate(health, _schema("ProviderList"))
    assert [p["deployment"] for p in health["providers"]] == ["local"]


def test_submit_takes_the_tenant_and_submitter_from_the_key(console: Console) -> None:
    done = console.post("/api/runs", {"goal": "refund order 7", "idempotency_key": "o-7"})
    assert done.status_code == 202
    [goal] = console.commands.goals
    assert (goal.tenant_id, goal.agent, goal.submitted_by) == ("acme", "support", "alice")
    assert done.json()["run_id"] == goal.run_id()
    assert console.post("/api/runs", {"goal": "x", "agent": "sales"}).status_code == 403
    assert console.post("/api/runs", {"goal": ""}).status_code == 400
    assert console.post("/api/runs", {"goal": "x", "tenant_id": "globex"}).status_code == 400


def test_approve_with_edited_arguments_and_deny_with_a_reason(console: Console) -> None:
    edited = {"to": "bob@example.com", "body": "Refund sent."}
    done = console.post(
        "/api/runs/r1/approvals/r1:9:1%2Fapproval",
        {"decision": "approve", "edited_arguments": edited},
    )
    assert done.status_code == 202
    [decision] = console.commands.decisions
    assert decision.approve
    assert decision.decided_by == "alice"
    assert json.loads(decision.edited_arguments_json) == edited
    assert decision.call_id == "r1:9:1"

    deny_edit = console.post(
        "/api/runs/r1/approvals/r1:9:1%2Fapproval", {"decision": "deny", "edited_arguments": edited}
    )
    assert deny_edit.status_code == 400
    assert console.post("/api/runs/r1/approvals/zz", {"decision": "deny"}).status_code == 404

    feed(console.store, RunScript("r1").started().model_step(1).approval("r1:9:1/approval")
         .resolved("r1:9:1/approval", approve=False, reason="wrong customer").events)  # fmt: skip
    again = console.post(
        "/api/runs/r1/approvals/r1:9:1%2Fapproval", {"decision": "deny", "reason": "late"}
    )
    assert again.status_code == 409


def test_cancel_a_live_run_but_not_a_finished_one(console: Console) -> None:
    assert console.post("/api/runs/r1/cancel", {"reason": "enough"}).status_code == 202
    [cancel] = console.commands.cancels
    assert (cancel.run_id, cancel.reason, cancel.requested_by) == ("r1", "enough", "alice")
    assert console.post("/api/runs/r2/cancel", {}).status_code == 409


def test_events_stream_replays_the_timeline_and_ends_with_the_run(console: Console) -> None:
    with console.client.stream(
        "GET", "/api/runs/r2/events", headers={"Authorization": f"Bearer {READER}"}
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        text = "".join(response.iter_text())
    frames = [f for f in text.split("\n\n") if f.startswith("id:")]
    assert [f.split("\n")[0] for f in frames] == ["id: 1", "id: 2"]
    assert json.loads(frames[1].split("data: ", 1)[1])["kind"] == "completed"
    assert text.rstrip().endswith("event: end\ndata: {}")
    with console.client.stream(
        "GET", "/api/runs/r2/events?after=1", headers={"Authorization": f"Bearer {READER}"}
    ) as response:
        assert "id: 1\n" not in "".join(response.iter_text())


def test_the_committed_openapi_document_is_current() -> None:
    assert COMMITTED.read_text() == render(), "run `make openapi` and commit openapi.json"
    paths = document()["paths"]
    assert set(paths) >= {"/api/runs", "/api/runs/{run_id}", "/api/runs/{run_id}/events"}
    jsonschema.Draft202012Validator.check_schema(_schema("RunDetail"))


def test_pages_and_unknown_api_paths(console: Console) -> None:
    page = console.client.get("/")
    assert page.status_code == 200
    assert "<title>" in page.text
    assert console.get("/api/nothing").status_code == 404
    assert console.client.get("/openapi.json").json()["openapi"] == "3.1.0"


def test_an_admin_key_lists_creates_and_revokes_keys_of_its_tenant(console: Console) -> None:
    assert console.get("/api/keys", key=APPROVER).status_code == 403  # no admin scope
    assert console.get("/api/keys", key=GLOBEX).json() == {"keys": []}
    created = console.post("/api/keys", {"scopes": ["runs:read"], "label": "ci"}, key=GLOBEX)
    assert created.status_code == 201, created.text
    body = created.json()
    jsonschema.validate(body, _schema("NewKey"))
    secret, key = body["secret"], body["key"]
    assert secret.startswith(key["prefix"])
    assert key["prefix"] == f"sk-stl-{key['key_id']}_"
    assert (key["tenant_id"], key["scopes"], key["status"], key["issued_by"]) == (
        "globex", ["runs:read"], "active", "root",
    )  # fmt: skip
    assert [e.key_id for e in console.key_log.events] == [key["key_id"]]

    # The new key works at once, reads its tenant, and its use is noted.
    assert [r["run_id"] for r in console.get("/api/runs", key=secret).json()["runs"]] == ["g1"]
    listed = console.get("/api/keys", key=GLOBEX).json()["keys"]
    jsonschema.validate({"keys": listed}, _schema("KeyList"))
    assert [k["key_id"] for k in listed] == [key["key_id"]]
    assert listed[0]["last_used_at"] is not None
    assert secret not in json.dumps(listed)  # never shown again

    # Another tenant's admin neither sees nor revokes it; its own admin revokes it.
    assert console.post(f"/api/keys/{key['key_id']}/revoke", {}, key=APPROVER).status_code == 403
    revoked = console.post(f"/api/keys/{key['key_id']}/revoke", {"reason": "leaked"}, key=GLOBEX)
    assert revoked.status_code == 200
    assert revoked.json()["status"] == "revoked"
    assert console.get("/api/runs", key=secret).status_code == 401
    again = console.post(f"/api/keys/{key['key_id']}/revoke", {}, key=GLOBEX)
    assert again.status_code == 409
    assert console.get("/api/keys", key=GLOBEX).json() == {"keys": []}
    assert len(console.get("/api/keys", key=GLOBEX, all="true").json()["keys"]) == 1


def test_key_requests_are_checked(console: Console) -> None:
    bad_scope = console.post("/api/keys", {"scopes": ["root"]}, key=GLOBEX)
    assert bad_scope.status_code == 400
    assert "root" in bad_scope.json()["error"]["message"]
    assert console.post("/api/keys", {"scopes": []}, key=GLOBEX).status_code == 400
    other = console.post("/api/keys", {"scopes": ["runs:read"], "tenant": "acme"}, key=GLOBEX)
    assert other.status_code == 403
    assert console.post("/api/keys/key_0000000000000000/revoke", {}, key=GLOBEX).status_code == 404
    assert console.key_log.events == []

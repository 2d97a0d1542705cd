"""Inbound HTTP port: the JSON API, Server-Sent Events and the console's static pages.

Every `/api` call authenticates a bearer key; the tenant is the key's, never the request's. A
run of another tenant is answered exactly like a run that does not exist (404).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from stepline_client.client import Goal
from stepline_client.diff import compare
from stepline_client.record import RecordedRun
from stepline_frontdoor.commands import Cancel, Commands, Decision
from stepline_frontdoor.convert import run_event
from stepline_frontdoor.live import RunFeed
from stepline_frontdoor.readmodel import ApprovalStatus, EventKind, RunStatus
from stepline_frontdoor.reports import Granularity, agent_spend, provider_health, window_start
from stepline_frontdoor.schemas import (
    AgentCost,
    Approval,
    ApprovalList,
    Attempt,
    Budget,
    CancelBody,
    DecisionBody,
    Error,
    ErrorBody,
    Event,
    KeyInfo,
    KeyList,
    Me,
    NewKey,
    NewKeyBody,
    Provider,
    ProviderList,
    RevokeKeyBody,
    Run,
    RunDetail,
    RunDiff,
    RunPage,
    Spend,
    SpendList,
    SubmitBody,
    Submitted,
    ToolOutput,
)
from stepline_frontdoor.store import ReadStore, RunFilter
from stepline_keys import (
    Authenticator,
    AuthError,
    Grant,
    PermissionDeniedError,
    Principal,
    Scope,
    UnauthenticatedError,
)
from stepline_keys.access import is_loopback_host, require_origin
from stepline_keys.manage import KeyAdmin, KeyAdminError, RevokedKeyError, parse_scopes

__all__ = [
    "ENDPOINTS",
    "STATIC",
    "Api",
    "ApiError",
    "Endpoint",
    "LastUsed",
    "Param",
    "build_app",
]

STATIC = Path(__file__).parent / "static"

B = TypeVar("B", bound=BaseModel)
Handler = Callable[[Request, Principal], Awaitable[Response]]
# When a key id was last accepted (None: not seen), for the Keys page.
LastUsed = Callable[[str], datetime | None]

_TERMINAL = {RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED}


class ApiError(Exception):
    """An error with its HTTP status and machine-readable code."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Param:
    """A query parameter, as the OpenAPI document lists it."""

    name: str
    description: str
    schema: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One API operation: route, scope, and what the OpenAPI document says of it."""

    method: str
    path: str
    operation_id: str
    summary: str
    scope: Scope
    handler: str  # name of the `Api` method
    status: int = 200
    response: type[BaseModel] | None = None
    body: type[BaseModel] | None = None
    params: tuple[Param, ...] = ()
    stream: bool = False
    # The last path parameter may hold "/" (approval ids are "<call_id>/approval").
    slashes_in_last: bool = False

    @property
    def route_path(self) -> str:
        """The path as Starlette routes it."""
        if not self.slashes_in_last:
            return self.path
        head, _, last = self.path.rpartition("/")
        return f"{head}/{last[:-1]}:path}}"


def _string(description: str, name: str, **extra: Any) -> Param:
    return Param(name, description, {"type": "string", **extra})


ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("GET", "/api/me", "getMe", "The key's tenant and scopes", Scope.RUNS_READ,
             "me", response=Me),
    Endpoint("GET", "/api/runs", "listRuns", "Runs of the key's tenant, newest first",
             Scope.RUNS_READ, "list_runs", response=RunPage, params=(
                 _string("Must be the key's tenant when given", "tenant"),
                 _string("Agent profile name", "agent"),
                 _string("Run status", "status", enum=[s.value for s in RunStatus]),
                 _string("Started at or after (ISO 8601)", "since", format="date-time"),
                 _string("Runs started by this parent run", "parent"),
                 Param("limit", "Page size (1–1000, default 50)",
                       {"type": "integer", "minimum": 1, "maximum": 1000}),
                 _string("`next_cursor` of the previous page", "cursor"),
             )),
    Endpoint("POST", "/api/runs", "submitGoal", "Submit a goal (publishes GoalSubmitted)",
             Scope.GOALS_SUBMIT, "submit", status=202, response=Submitted, body=SubmitBody),
    Endpoint("GET", "/api/runs/{run_id}", "getRun",
             "A run with its timeline, attempts, approvals and child runs", Scope.RUNS_READ,
             "get_run", response=RunDetail),
    Endpoint("GET", "/api/runs/{run_id}/diff/{other_run_id}", "compareRuns",
             "Two runs of the key's tenant compared (typically an original and its replay): "
             "steps side by side, tool calls, answers, tokens, cost, latency, outcome",
             Scope.RUNS_READ, "compare", response=RunDiff),
    Endpoint("GET", "/api/runs/{run_id}/events", "watchRun",
             "The run's timeline as Server-Sent Events (`run-event`), live until it ends",
             Scope.RUNS_READ, "watch_run", stream=True, params=(
                 Param("after", "Only events after this sequence (or Last-Event-ID)",
                       {"type": "integer", "minimum": 0}),
             )),
    Endpoint("POST", "/api/runs/{run_id}/cancel", "cancelRun",
             "Cancel a run (publishes RunCancelRequested)", Scope.GOALS_SUBMIT, "cancel",
             status=202, body=CancelBody),
    Endpoint("GET", "/api/approvals", "listApprovals", "Approvals of the key's tenant",
             Scope.RUNS_READ, "list_approvals", response=ApprovalList, params=(
                 _string("Approval status (default pending)", "status",
                         enum=[s.value for s in ApprovalStatus]),
             )),
    Endpoint("POST", "/api/runs/{run_id}/approvals/{approval_id}", "decideApproval",
             "Approve (optionally with edited arguments) or deny a pending tool call",
             Scope.APPROVALS_DECIDE, "decide", status=202, body=DecisionBody,
             slashes_in_last=True),
    Endpoint("GET", "/api/costs", "getCosts",
             "Spend per window, model and tool (billing's rollups) and agent, and the budget",
             Scope.USAGE_READ, "costs", response=SpendList, params=(
                 _string("Window width", "granularity", enum=[g.value for g in Granularity]),
                 _string("From (ISO 8601; default: 7 days ago)", "since", format="date-time"),
             )),
    Endpoint("GET", "/api/providers", "getProviders",
             "Per deployment: attempt rate, errors by outcome, latency, circuit state",
             Scope.USAGE_READ, "providers", response=ProviderList, params=(
                 Param("minutes", "Window (1–1440, default 15)",
                       {"type": "integer", "minimum": 1, "maximum": 1440}),
             )),
    Endpoint("GET", "/api/keys", "listKeys",
             "API keys the admin key may manage (its tenant's), never their secrets",
             Scope.ADMIN, "list_keys", response=KeyList, params=(
                 Param("all", "Revoked and expired keys too", {"type": "boolean"}),
             )),
    Endpoint("POST", "/api/keys", "createKey",
             "Issue a key (publishes KeyIssued); the secret is in this answer only",
             Scope.ADMIN, "create_key", status=201, response=NewKey, body=NewKeyBody),
    Endpoint("POST", "/api/keys/{key_id}/revoke", "revokeKey",
             "Revoke a key (publishes KeyRevoked); every door refuses it within seconds",
             Scope.ADMIN, "revoke_key", response=KeyInfo, body=RevokeKeyBody),
)  # fmt: skip


def _json(model: BaseModel, status: int = 200) -> Response:
    return Response(model.model_dump_json(), status_code=status, media_type="application/json")


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    body = ErrorBody(error=Error(code=code, message=message))
    return Response(
        body.model_dump_json(), status_code=status, media_type="application/json", headers=headers
    )


def _parse_time(raw: str | None, name: str) -> datetime | None:
    if not raw:
        return None
    try:
        moment = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError as error:
        raise ApiError(400, "invalid_argument", f"`{name}` is not an ISO 8601 time") from error
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _parse_int(raw: str | None, name: str, default: int, low: int, high: int) -> int:
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as error:
        raise ApiError(400, "invalid_argument", f"`{name}` must be an integer") from error
    if not low <= value <= high:
        raise ApiError(400, "invalid_argument", f"`{name}` must be within {low}–{high}")
    return value


async def _body(request: Request, model: type[B]) -> B:
    raw = await request.body()
    try:
        return model.model_validate_json(raw or b"{}")
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in error.errors()
        )
        raise ApiError(400, "invalid_argument", problems) from error


class Api:
    """The API's handlers over the read model, the command port and the key authenticator."""

    def __init__(
        self,
        store: ReadStore,
        commands: Commands,
        authenticator: Authenticator,
        feed: RunFeed,
        *,
        keys: KeyAdmin,
        last_used: LastUsed = lambda _: None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        heartbeat_s: float = 15.0,
    ) -> None:
        self._keys = keys
        self._last_used = last_used
        self._store = store
        self._commands = commands
        self._auth = authenticator
        self._feed = feed
        self._clock = clock
        self._heartbeat_s = heartbeat_s

    def authenticate(self, request: Request, scope: Scope) -> Principal:
        """The caller's principal, holding `scope`; raises `AuthError`."""
        header = request.headers.get("authorization", "")
        secret = header[7:].strip() if header[:7].lower() == "bearer " else None
        peer = request.client.host if request.client else None
        principal = require_origin(self._auth.authenticate(secret), loopback=is_loopback_host(peer))
        if not principal.has(scope):
            raise PermissionDeniedError(f"this key lacks the `{scope.value}` scope")
        return principal

    def route(self, endpoint: Endpoint) -> Callable[[Request], Awaitable[Response]]:
        """The Starlette endpoint of `endpoint`: authenticate, call, map errors."""
        handler: Handler = getattr(self, endpoint.handler)

        async def call(request: Request) -> Response:
            try:
                principal = self.authenticate(request, endpoint.scope)
                return await handler(request, principal)
            except UnauthenticatedError as error:
                return _error(401, "unauthenticated", str(error), {"WWW-Authenticate": "Bearer"})
            except PermissionDeniedError as error:
                return _error(403, "permission_denied", str(error))
            except AuthError as error:
                return _error(403, "permission_denied", str(error))
            except ApiError as error:
                return _error(error.status, error.code, error.message)

        return call

    def _run_or_404(self, principal: Principal, run_id: str) -> Run:
        row = self._store.run(principal.tenant_id, run_id)
        if row is None:
            raise ApiError(404, "not_found", f"no run {run_id}")
        return Run.of(row)

    # -- handlers --------------------------------------------------------------------------
    async def me(self, request: Request, principal: Principal) -> Response:
        """The key's tenant and scopes."""
        scopes = sorted(s.value for s in principal.scopes)
        return _json(Me(key_id=principal.key_id, tenant_id=principal.tenant_id,
                        label=principal.label, scopes=scopes))  # fmt: skip

    async def list_runs(self, request: Request, principal: Principal) -> Response:
        """Runs of the key's tenant, filtered and paginated."""
        q = request.query_params
        tenant = q.get("tenant") or principal.tenant_id
        if tenant != principal.tenant_id:
            raise ApiError(403, "permission_denied", "a key reads its own tenant's runs only")
        status = q.get("status") or None
        if status is not None and status not in RunStatus._value2member_map_:
            raise ApiError(400, "invalid_argument", f"unknown status {status!r}")
        query = RunFilter(
            tenant_id=tenant,
            agent=q.get("agent", ""),
            status=RunStatus(status) if status else None,
            since=_parse_time(q.get("since"), "since"),
            parent_run_id=q.get("parent", ""),
            limit=_parse_int(q.get("limit"), "limit", 50, 1, 1000),
            cursor=q.get("cursor", ""),
        )
        try:
            page = self._store.list_runs(query)
        except ValueError as error:
            raise ApiError(400, "invalid_argument", str(error)) from error
        return _json(RunPage(runs=[Run.of(r) for r in page.runs], next_cursor=page.next_cursor))

    async def submit(self, request: Request, principal: Principal) -> Response:
        """Publish a goal for the key's tenant."""
        body = await _body(request, SubmitBody)
        if not principal.may_use_agent(body.agent):
            raise ApiError(403, "permission_denied", f"this key may not run agent {body.agent!r}")
        run_id = await self._commands.submit(
            Goal(
                body.goal,
                tenant_id=principal.tenant_id,
                agent=body.agent,
                session_id=body.session_id,
                budget=body.budget,
                currency=body.currency,
                metadata=body.metadata,
                idempotency_key=body.idempotency_key,
                submitted_by=principal.label or principal.key_id,
            )
        )
        return _json(Submitted(run_id=run_id), 202)

    async def get_run(self, request: Request, principal: Principal) -> Response:
        """A run with everything the run page shows."""
        run_id = request.path_params["run_id"]
        run = self._run_or_404(principal, run_id)
        tenant = principal.tenant_id
        children = self._store.list_runs(
            RunFilter(tenant_id=tenant, parent_run_id=run_id, limit=1000)
        )
        events = self._store.events(tenant, run_id)
        detail = RunDetail(
            run=run,
            events=[Event.of(e) for e in events],
            attempts=[Attempt.of(a) for a in self._store.attempts(tenant, run_id)],
            tool_outputs=[ToolOutput.of(o) for o in self._store.tool_outputs(tenant, run_id)],
            approvals=[Approval.of(a) for a in self._store.approvals(tenant, run_id=run_id)],
            children=[Run.of(r) for r in children.runs],
            replay_of=next((e.body.get("replay", {}).get("original_run_id", "") for e in events
                            if e.kind is EventKind.STARTED), ""),
            replays=[Run.of(r) for r in self._store.replays(tenant, run_id)],
        )  # fmt: skip
        return _json(detail)

    async def compare(self, request: Request, principal: Principal) -> Response:
        """Run A against run B, both of the key's tenant, as `stepline runs diff` reports it."""
        records = []
        for name in ("run_id", "other_run_id"):
            run_id = request.path_params[name]
            run = self._run_or_404(principal, run_id)
            rows = self._store.events(principal.tenant_id, run_id)
            if not any(row.kind is EventKind.STARTED for row in rows):
                raise ApiError(409, "failed_precondition", f"run {run_id} has not started yet")
            records.append(RecordedRun([run_event(row, run.agent) for row in rows]))
        return _json(RunDiff.model_validate(compare(records[0], records[1])))

    async def watch_run(self, request: Request, principal: Principal) -> Response:
        """Server-Sent Events of the run's timeline, live until the run ends."""
        run_id = request.path_params["run_id"]
        self._run_or_404(principal, run_id)
        after = _parse_int(
            request.query_params.get("after") or request.headers.get("last-event-id"),
            "after",
            0,
            0,
            2**62,
        )
        stream = self._stream(request, principal.tenant_id, run_id, after)
        return StreamingResponse(
            stream,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    async def _stream(
        self, request: Request, tenant: str, run_id: str, after: int
    ) -> AsyncIterator[str]:
        last = after
        yield "retry: 2000\n\n"
        while True:
            for event in self._store.events(tenant, run_id, last):
                last = event.sequence
                data = Event.of(event).model_dump_json()
                yield f"id: {event.sequence}\nevent: run-event\ndata: {data}\n\n"
            run = self._store.run(tenant, run_id)
            if run is None or run.status in _TERMINAL:
                yield "event: end\ndata: {}\n\n"
                return
            if await request.is_disconnected():
                return
            changed = await self._feed.wait(run_id, self._heartbeat_s)
            # Usage arrives without a run event: tell the page to re-read the attempts.
            yield "event: changed\ndata: {}\n\n" if changed else ": heartbeat\n\n"

    async def cancel(self, request: Request, principal: Principal) -> Response:
        """Ask the planner to cancel the run."""
        run_id = request.path_params["run_id"]
        run = self._run_or_404(principal, run_id)
        body = await _body(request, CancelBody)
        if RunStatus(run.status) in _TERMINAL:
            raise ApiError(409, "failed_precondition", f"run {run_id} has already ended")
        await self._commands.cancel(
            Cancel(run_id, principal.tenant_id, body.reason or "cancelled from the console",
                   principal.label or principal.key_id, body.keep_children)
        )  # fmt: skip
        return Response(status_code=202)

    async def list_approvals(self, request: Request, principal: Principal) -> Response:
        """Approvals of the tenant, pending by default."""
        raw = request.query_params.get("status") or ApprovalStatus.PENDING.value
        if raw not in ApprovalStatus._value2member_map_:
            raise ApiError(400, "invalid_argument", f"unknown approval status {raw!r}")
        rows = self._store.approvals(principal.tenant_id, status=ApprovalStatus(raw))
        return _json(ApprovalList(approvals=[Approval.of(a) for a in rows]))

    async def decide(self, request: Request, principal: Principal) -> Response:
        """Publish the approver's decision, with who decided."""
        run_id = request.path_params["run_id"]
        approval_id = request.path_params["approval_id"]
        self._run_or_404(principal, run_id)
        body = await _body(request, DecisionBody)
        found = self._store.approvals(principal.tenant_id, run_id=run_id)
        approval = next((a for a in found if a.approval_id == approval_id), None)
        if approval is None:
            raise ApiError(404, "not_found", f"no approval {approval_id} in run {run_id}")
        if approval.status is not ApprovalStatus.PENDING:
            state = approval.status.value
            raise ApiError(409, "failed_precondition", f"approval {approval_id} is already {state}")
        if body.edited_arguments is not None and body.decision != "approve":
            raise ApiError(400, "invalid_argument", "edited_arguments go with an approval only")
        edited = "" if body.edited_arguments is None else json.dumps(body.edited_arguments)
        await self._commands.decide(
            Decision(
                run_id=run_id,
                tenant_id=principal.tenant_id,
                approval_id=approval_id,
                call_id=approval.call_id,
                approve=body.decision == "approve",
                reason=body.reason,
                decided_by=principal.label or principal.key_id,
                edited_arguments_json=edited,
            )
        )
        return Response(status_code=202)

    async def costs(self, request: Request, principal: Principal) -> Response:
        """Spend of the key's tenant per window (every tenant's for the local development key)."""
        raw = request.query_params.get("granularity") or Granularity.HOUR.value
        if raw not in Granularity._value2member_map_:
            raise ApiError(400, "invalid_argument", f"unknown granularity {raw!r}")
        granularity = Granularity(raw)
        since = _parse_time(request.query_params.get("since"), "since")
        # Whole windows: the rollup that holds `since` counts, as its agent lines do.
        since = window_start(since or self._clock() - timedelta(days=7), granularity)
        tenant = None if principal.loopback_only else principal.tenant_id
        rollups = self._store.rollups(tenant, raw, since)
        agents = agent_spend(self._store.attempts_since(tenant, since), granularity)
        found = self._store.budget(principal.tenant_id)
        return _json(
            SpendList(
                granularity=raw,
                lines=[Spend.of(r) for r in rollups],
                agents=[AgentCost.of(a) for a in agents],
                budget=None if found is None else Budget.of(found),
            )
        )

    async def providers(self, request: Request, principal: Principal) -> Response:
        """Deployment health from the attempts (all tenants' for an admin key)."""
        minutes = _parse_int(request.query_params.get("minutes"), "minutes", 15, 1, 1440)
        now = self._clock()
        window = timedelta(minutes=minutes)
        tenant = None if principal.has(Scope.ADMIN) else principal.tenant_id
        health = provider_health(
            self._store.attempts_since(tenant, now - window), now=now, window=window
        )
        return _json(ProviderList(window_minutes=minutes,
                                  providers=[Provider.of(p) for p in health]))  # fmt: skip

    # -- keys ------------------------------------------------------------------------------
    def _key_info(self, key_id: str) -> KeyInfo:
        key = self._keys.registry.get(key_id)
        assert key is not None, "a key the registry just folded"
        return KeyInfo.of(key, self._clock(), self._last_used(key_id))

    async def list_keys(self, request: Request, principal: Principal) -> Response:
        """Keys of the admin key's tenant (every tenant's for the local development key)."""
        include = request.query_params.get("all", "").lower() in ("1", "true", "yes")
        tenant = None if principal.loopback_only else principal.tenant_id
        keys = self._keys.listing(tenant=tenant, include_inactive=include)
        now = self._clock()
        return _json(KeyList(keys=[KeyInfo.of(k, now, self._last_used(k.key_id)) for k in keys]))

    async def create_key(self, request: Request, principal: Principal) -> Response:
        """Issue a key; the answer carries its secret, which is never shown again."""
        body = await _body(request, NewKeyBody)
        tenant = principal.tenant_for(body.tenant)
        expires = None
        if body.expires_in_days is not None:
            expires = self._clock() + timedelta(days=body.expires_in_days)
        try:
            grant = Grant(
                parse_scopes(body.scopes),
                agents=frozenset(a.strip() for a in body.agents if a.strip()),
                expires_at=expires,
                label=body.label,
            )
            new = await self._keys.create(tenant, grant, actor=principal.label or principal.key_id)
        except KeyAdminError as error:
            raise ApiError(400, "invalid_argument", str(error)) from error
        return _json(NewKey(key=self._key_info(new.key_id), secret=new.secret), 201)

    async def revoke_key(self, request: Request, principal: Principal) -> Response:
        """Revoke a key of the admin key's tenant."""
        key_id = request.path_params["key_id"]
        key = self._keys.registry.get(key_id)
        # Another tenant's key is answered like a missing one.
        if key is None or not principal.may_see(key.tenant_id):
            raise ApiError(404, "not_found", f"no key {key_id}")
        body = await _body(request, RevokeKeyBody)
        try:
            await self._keys.revoke(
                key_id,
                actor=principal.label or principal.key_id,
                reason=body.reason or "revoked from the console",
            )
        except RevokedKeyError as error:
            raise ApiError(409, "failed_precondition", str(error)) from error
        return _json(self._key_info(key_id))


def build_app(
    api: Api,
    openapi: Callable[[], dict[str, Any]],
    ready: Callable[[], bool],
) -> Starlette:
    """The Starlette application: API routes from `ENDPOINTS`, OpenAPI, health and pages."""

    async def index(_: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    async def document(_: Request) -> Response:
        return JSONResponse(openapi())

    async def health(_: Request) -> Response:
        caught_up = ready()
        return JSONResponse({"ready": caught_up}, status_code=200 if caught_up else 503)

    async def unknown(_: Request) -> Response:
        return _error(404, "not_found", "no such API endpoint")

    routes: list[BaseRoute] = [
        Route(e.route_path, api.route(e), methods=[e.method]) for e in ENDPOINTS
    ]
    routes += [
        Route("/openapi.json", document),
        Route("/healthz", health),
        Route("/api/{rest:path}", unknown, methods=["GET", "POST", "PUT", "DELETE"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
        Route("/", index),
        # The pages are client-side routes (#/runs, …); any other path is not found.
    ]
    return Starlette(routes=routes)

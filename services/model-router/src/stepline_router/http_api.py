"""Inbound HTTP port: the OpenAI- and Anthropic-compatible gateway over the routing core.

`POST /v1/chat/completions` and `POST /v1/embeddings` (OpenAI), `POST /v1/messages`
(Anthropic) and `GET /v1/models`. Each route is named `<api>.<operation>`: the API's error
format is the one every answer of that route uses, authentication errors included.
HTTP and JSON stop here: the wire modules parse bodies into a `GatewayRequest`, the gateway
authenticates, reserves and routes, and this module writes the answer, the stream or the error
in the caller's own format. A stream's headers wait for its first content token, so a call that
fails before any output still gets a proper HTTP status; after it, a failure is an in-band error
event and the stream never ends as if it were complete.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, assert_never

from aiohttp import web

from stepline_keys import (
    PermissionDeniedError,
    Principal,
    RateLimitedError,
    UnauthenticatedError,
)
from stepline_keys.access import is_loopback_host, require_origin
from stepline_router import anthropic_wire, embeddings_wire, openai_wire
from stepline_router.clock import Clock
from stepline_router.errors import Outcome
from stepline_router.gateway import (
    CallSummary,
    Gateway,
    GatewayCall,
    GatewayRequest,
    UnknownModelError,
    UnsupportedModelError,
    UsageBacklogError,
)
from stepline_router.router import (
    CallFailed,
    CallOutcome,
    CallStream,
    CallSucceeded,
    Continuation,
    ErrorKind,
)
from stepline_router.stream import ContentDelta, Restarted
from stepline_router.wire import WireError
from stepline_runtime.logs import bind

__all__ = ["API_NAMES", "CONTINUE_HEADER", "MAX_BODY_BYTES", "GatewayPart", "build_app"]

# Long transcripts are large; beyond this a body is refused with 413.
MAX_BODY_BYTES = 32 * 1024 * 1024
# The APIs whose error formats the routes answer in: each route's name starts with one.
API_NAMES = ("openai", "anthropic")
# Opt-in: a stream broken after output is finished by a deployment that continues it
# (`prefill`, or `true`), or else restarted on one that cannot, flagged in the stream (`restart`).
CONTINUE_HEADER = "x-stepline-continue"
_CONTINUATIONS = {
    "": Continuation.NONE,
    "false": Continuation.NONE,
    "true": Continuation.PREFILL,
    "prefill": Continuation.PREFILL,
    "restart": Continuation.RESTART,
}


def _continuation(request: web.Request) -> Continuation:
    value = request.headers.get(CONTINUE_HEADER, "").strip().lower()
    found = _CONTINUATIONS.get(value)
    if found is None:
        raise WireError(
            f"{CONTINUE_HEADER}: {value!r} is not one of {sorted(k for k in _CONTINUATIONS if k)}"
        )
    return found


@dataclass(frozen=True, slots=True)
class _Problem:
    """An error as both APIs report it: status, kinds, code and text, extra headers."""

    status: int
    openai_type: str
    anthropic_type: str
    message: str
    code: str | None = None
    param: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


def _invalid(message: str, param: str | None = None, code: str | None = None) -> _Problem:
    return _Problem(400, "invalid_request_error", "invalid_request_error", message, code, param)


def _problem_of_auth(error: Exception) -> _Problem:
    if isinstance(error, UnauthenticatedError):
        return _Problem(
            401, "authentication_error", "authentication_error", str(error), "invalid_api_key"
        )
    if isinstance(error, PermissionDeniedError):
        return _Problem(403, "permission_error", "permission_error", str(error), "forbidden")
    if isinstance(error, RateLimitedError):
        wait = max(1, round(error.retry_after_s))
        return _Problem(
            429,
            "rate_limit_error",
            "rate_limit_error",
            str(error),
            "rate_limit_exceeded",
            headers={"retry-after": str(wait)},
        )
    raise error


def _problem_of_failure(failed: CallFailed) -> _Problem:
    """The HTTP status a call without an answer maps to (exhaustive over `ErrorKind`)."""
    kind, message = failed.kind, failed.message
    match kind:
        case ErrorKind.UNKNOWN_ROUTE:
            return _Problem(
                404, "invalid_request_error", "not_found_error", message, "model_not_found"
            )
        case ErrorKind.INVALID_REQUEST:
            return _invalid(message)
        case ErrorKind.CONTEXT_TOO_LONG:
            return _invalid(message, "messages", "context_length_exceeded")
        case ErrorKind.CONTENT_REFUSED:
            return _invalid(message, None, "content_filter")
        case ErrorKind.BUDGET_EXCEEDED:
            return _Problem(402, "insufficient_quota", "billing_error", message, "budget_exceeded")
        case ErrorKind.DEADLINE_EXCEEDED:
            return _Problem(504, "timeout", "timeout_error", message, "deadline_exceeded")
        case ErrorKind.NO_ELIGIBLE_DEPLOYMENT | ErrorKind.ALL_DEPLOYMENTS_FAILED:
            sent = [a for a in failed.attempts if a.sent]
            if sent and all(a.outcome is Outcome.RATE_LIMITED for a in sent):
                waits = [a.retry_after_s for a in sent if a.retry_after_s is not None]
                headers = {"retry-after": str(max(1, round(max(waits))))} if waits else {}
                return _Problem(
                    429,
                    "rate_limit_error",
                    "rate_limit_error",
                    message,
                    "upstream_rate_limited",
                    headers=headers,
                )
            if failed.retryable:
                return _Problem(503, "server_error", "overloaded_error", message, "unavailable")
            if kind is ErrorKind.NO_ELIGIBLE_DEPLOYMENT:
                return _invalid(message, "model", "no_eligible_deployment")
            return _Problem(502, "server_error", "api_error", message, "upstream_failed")
        case ErrorKind.INTERNAL:
            return _Problem(500, "server_error", "api_error", message, "internal_error")
        case _:
            assert_never(kind)


class _Writer(Protocol):
    """A streamed answer in one wire format."""

    def opened(self) -> bytes: ...
    def delta(self, delta: ContentDelta) -> bytes: ...
    def restarted(self, event: Restarted) -> bytes: ...
    def finished(self, outcome: CallSucceeded) -> bytes: ...


@dataclass(frozen=True, slots=True)
class _Api:
    """What differs between the two wire formats; everything else is shared below."""

    name: str
    id_prefix: str
    parse: Callable[[Any], tuple[GatewayRequest, bool]]
    body: Callable[[CallSucceeded, str, int], dict[str, Any]]
    writer: Callable[[str, int, str, bool], _Writer]
    error: Callable[[_Problem, str], dict[str, Any]]
    stream_error: Callable[[_Writer, _Problem], bytes]


def _openai_parse(raw: Any) -> tuple[GatewayRequest, bool]:
    parsed = openai_wire.parse_chat_request(raw)
    return parsed.request, parsed.include_usage


def _openai_stream_error(writer: _Writer, problem: _Problem) -> bytes:
    assert isinstance(writer, openai_wire.ChunkWriter)
    return writer.error(problem.message, problem.openai_type, problem.code or "stream_error")


def _anthropic_stream_error(writer: _Writer, problem: _Problem) -> bytes:
    assert isinstance(writer, anthropic_wire.EventWriter)
    return writer.error(problem.anthropic_type, problem.message)


_OPENAI = _Api(
    name="openai",
    id_prefix="chatcmpl-",
    parse=_openai_parse,
    body=openai_wire.completion_body,
    writer=lambda rid, created, model, usage: openai_wire.ChunkWriter(rid, created, model, usage),
    error=lambda p, rid: openai_wire.error_body(p.message, p.openai_type, p.code, p.param),
    stream_error=_openai_stream_error,
)
_ANTHROPIC = _Api(
    name="anthropic",
    id_prefix="msg_",
    parse=lambda raw: (anthropic_wire.parse_messages_request(raw), False),
    body=lambda outcome, rid, created: anthropic_wire.message_body(outcome, rid),
    writer=lambda rid, created, model, usage: anthropic_wire.EventWriter(rid, model),
    error=lambda p, rid: anthropic_wire.error_body(p.anthropic_type, p.message, rid),
    stream_error=_anthropic_stream_error,
)


def _secret(request: web.Request) -> str | None:
    """The presented key: `x-api-key` (Anthropic) or `Authorization: Bearer` (OpenAI)."""
    key = request.headers.get("x-api-key")
    if key:
        return key
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


class _Handlers:
    """Request handlers bound to one gateway."""

    def __init__(self, gateway: Gateway, clock: Clock, new_id: Callable[[], str]) -> None:
        self._gateway = gateway
        self._clock = clock
        self._new_id = new_id

    def _error(
        self, api: _Api, problem: _Problem, request_id: str, extra: dict[str, str] | None = None
    ) -> web.Response:
        headers = {"x-request-id": request_id, **problem.headers, **(extra or {})}
        if api is _ANTHROPIC:
            headers["request-id"] = request_id
        return web.json_response(
            api.error(problem, request_id), status=problem.status, headers=headers
        )

    def _headers(
        self, request_id: str, call: GatewayCall, outcome: CallOutcome | None
    ) -> dict[str, str]:
        headers = {"x-request-id": request_id, "x-stepline-route": call.request.route}
        if outcome is not None:
            summary = CallSummary.of(outcome)
            headers["x-stepline-attempts"] = str(summary.attempts)
            headers["x-stepline-cost"] = f"{summary.cost:f}"
            headers["x-stepline-currency"] = summary.currency
            if summary.deployment:
                headers["x-stepline-deployment"] = summary.deployment
        return headers

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        """`POST /v1/chat/completions`."""
        return await self._call(_OPENAI, request)

    async def messages(self, request: web.Request) -> web.StreamResponse:
        """`POST /v1/messages` (needs a supported `anthropic-version`)."""
        return await self._call(_ANTHROPIC, request)

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        """`POST /v1/embeddings`: vectors from a deployment that serves embeddings."""
        request_id = "emb-" + self._new_id()
        parsed: list[embeddings_wire.EmbeddingsRequest] = []

        def parse(raw: Any) -> GatewayRequest:
            parsed.append(embeddings_wire.parse_embeddings_request(raw))
            return parsed[0].request

        started = await self._start(_OPENAI, request, request_id, parse)
        if isinstance(started, web.Response):
            return started
        call, principal = started
        with bind(tenant_id=principal.tenant_id, call_id=request_id):
            outcome = await call.complete()
        headers = self._headers(request_id, call, outcome)
        if isinstance(outcome, CallFailed):
            return self._error(_OPENAI, _problem_of_failure(outcome), request_id, headers)
        body = embeddings_wire.embeddings_body(outcome, parsed[0].encoding_format)
        return web.json_response(body, headers=headers)

    def _authorised(
        self, api: _Api, request: web.Request, request_id: str
    ) -> Principal | web.Response:
        """The caller's principal, or the 401/403 answer in `api`'s format (checked first on
        every route, before anything about the request is looked at)."""
        try:
            principal = self._gateway.authenticate(_secret(request))
            # The peer's address is parsed only for a key that is bound to loopback.
            loopback = not principal.loopback_only or is_loopback_host(request.remote)
            return require_origin(principal, loopback=loopback)
        except (UnauthenticatedError, PermissionDeniedError) as error:
            return self._error(api, _problem_of_auth(error), request_id)

    async def _start(
        self,
        api: _Api,
        request: web.Request,
        request_id: str,
        parse: Callable[[Any], GatewayRequest],
    ) -> tuple[GatewayCall, Principal] | web.Response:
        """Authenticate, read and parse the body, reserve: the call, or the error answer."""
        principal = self._authorised(api, request, request_id)
        if isinstance(principal, web.Response):
            return principal
        if api is _ANTHROPIC:
            version = request.headers.get("anthropic-version")
            if not anthropic_wire.version_supported(version):
                what = "is required" if version is None else f"{version!r} is not supported"
                return self._error(
                    api,
                    _invalid(
                        f"anthropic-version: header {what} "
                        f"(a date, {anthropic_wire.OLDEST_VERSION} or later)"
                    ),
                    request_id,
                )
        try:
            raw = await request.json()
        except (ValueError, UnicodeDecodeError):
            return self._error(api, _invalid("the body is not valid JSON"), request_id)
        except web.HTTPRequestEntityTooLarge:
            problem = _Problem(
                413, "invalid_request_error", "request_too_large", "the body is too large"
            )
            return self._error(api, problem, request_id)
        try:
            wanted = parse(raw)
            continuation = _continuation(request)
            if continuation is not Continuation.NONE:
                wanted = replace(wanted, continuation=continuation)
            return await self._gateway.start(principal, wanted, request_id), principal
        except WireError as error:
            return self._error(api, _invalid(str(error), error.param), request_id)
        except UnknownModelError as error:
            problem = _Problem(
                404,
                "invalid_request_error",
                "not_found_error",
                str(error),
                "model_not_found",
                "model",
            )
            return self._error(api, problem, request_id)
        except UnsupportedModelError as error:
            return self._error(
                api, _invalid(str(error), "model", "model_not_supported"), request_id
            )
        except (PermissionDeniedError, RateLimitedError) as error:
            return self._error(api, _problem_of_auth(error), request_id)
        except UsageBacklogError as error:
            problem = _Problem(
                503,
                "server_error",
                "overloaded_error",
                str(error),
                "usage_backlog",
                headers={"retry-after": "1"},
            )
            return self._error(api, problem, request_id)

    async def models(self, request: web.Request) -> web.StreamResponse:
        """`GET /v1/models`: the routes and deployments this key may name (an Anthropic
        client, known by its `anthropic-version` header, gets the Anthropic list format)."""
        anthropic = "anthropic-version" in request.headers
        api = _ANTHROPIC if anthropic else _OPENAI
        request_id = "req_" + self._new_id()
        principal = self._authorised(api, request, request_id)
        if isinstance(principal, web.Response):
            return principal
        entries = self._gateway.models(principal)
        body = (
            anthropic_wire.models_body(entries) if anthropic else openai_wire.models_body(entries)
        )
        return web.json_response(body, headers={"x-request-id": request_id})

    async def _call(self, api: _Api, request: web.Request) -> web.StreamResponse:
        request_id = api.id_prefix + self._new_id()
        include_usage: list[bool] = []

        def parse(raw: Any) -> GatewayRequest:
            wanted, usage = api.parse(raw)
            include_usage.append(usage)
            return wanted

        started = await self._start(api, request, request_id, parse)
        if isinstance(started, web.Response):
            return started
        call, principal = started
        with bind(tenant_id=principal.tenant_id, call_id=request_id):
            if not call.request.stream:
                return await self._answer(api, call, request_id)
            return await self._stream(api, request, call, request_id, include_usage[0])

    async def _answer(self, api: _Api, call: GatewayCall, request_id: str) -> web.StreamResponse:
        outcome = await call.complete()
        headers = self._headers(request_id, call, outcome)
        if isinstance(outcome, CallFailed):
            return self._error(api, _problem_of_failure(outcome), request_id, headers)
        if outcome.completion.incomplete:
            # Never hand out a cut answer as if it were whole.
            problem = _Problem(
                502,
                "server_error",
                "api_error",
                f"the answer was cut: {outcome.completion.incomplete_reason}",
                "incomplete",
            )
            return self._error(api, problem, request_id, headers)
        created = int(self._clock.now().timestamp())
        return web.json_response(api.body(outcome, request_id, created), headers=headers)

    async def _stream(
        self,
        api: _Api,
        request: web.Request,
        call: GatewayCall,
        request_id: str,
        include_usage: bool,
    ) -> web.StreamResponse:
        stream = call.stream()
        outcome: CallOutcome | None = None
        try:
            # Failover stays invisible until the first token: nothing is sent before it.
            first = await anext(stream, None)
            if first is None:
                outcome = stream.outcome
                assert outcome is not None
                if isinstance(outcome, CallFailed):
                    headers = self._headers(request_id, call, outcome)
                    return self._error(api, _problem_of_failure(outcome), request_id, headers)
            response = await self._open(request, request_id, call, stream)
            deployment = stream.deployment.name if stream.deployment else call.request.route
            writer = api.writer(
                request_id, int(self._clock.now().timestamp()), deployment, include_usage
            )
            buffer = writer.opened()
            if first is not None:
                buffer += _encoded(writer, first)
            await response.write(buffer)
            async for delta in stream:
                await response.write(_encoded(writer, delta))
            outcome = stream.outcome
            assert outcome is not None
            await response.write(self._ending(api, writer, outcome))
            await response.write_eof()
            return response
        except (ConnectionError, asyncio.CancelledError):
            # The caller went away: stop the provider, bill what it did.
            outcome = await stream.aclose()
            raise
        finally:
            if outcome is None:
                outcome = await stream.aclose()
            call.finish_later(outcome)

    async def _open(
        self, request: web.Request, request_id: str, call: GatewayCall, stream: CallStream
    ) -> web.StreamResponse:
        headers = {
            "content-type": "text/event-stream",
            "cache-control": "no-cache",
            "x-request-id": request_id,
            "x-stepline-route": call.request.route,
            "x-stepline-attempts": str(stream.attempts),
        }
        if stream.deployment is not None:
            headers["x-stepline-deployment"] = stream.deployment.name
        response = web.StreamResponse(status=200, headers=headers)
        await response.prepare(request)
        return response

    @staticmethod
    def _ending(api: _Api, writer: _Writer, outcome: CallOutcome) -> bytes:
        if isinstance(outcome, CallSucceeded) and not outcome.completion.incomplete:
            return writer.finished(outcome)
        if isinstance(outcome, CallSucceeded):
            reason = f"the stream was cut: {outcome.completion.incomplete_reason}"
            problem = _Problem(502, "server_error", "api_error", reason, "incomplete")
        else:
            problem = _problem_of_failure(outcome)
        return api.stream_error(writer, problem)


def _encoded(writer: _Writer, item: ContentDelta | Restarted) -> bytes:
    return writer.restarted(item) if isinstance(item, Restarted) else writer.delta(item)


def build_app(gateway: Gateway, clock: Clock, new_id: Callable[[], str]) -> web.Application:
    """The aiohttp application of the gateway."""
    handlers = _Handlers(gateway, clock, new_id)
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    # Named `<api>.<operation>`: the API whose error format the route answers in.
    app.router.add_post(
        "/v1/chat/completions", handlers.chat_completions, name="openai.chat_completions"
    )
    app.router.add_post("/v1/embeddings", handlers.embeddings, name="openai.embeddings")
    app.router.add_post("/v1/messages", handlers.messages, name="anthropic.messages")
    # An Anthropic client (known by its `anthropic-version` header) gets Anthropic bodies here.
    app.router.add_get("/v1/models", handlers.models, name="openai.models")
    return app


class GatewayPart:
    """The gateway as a part of the router service: serves `app`, drains usage on stop."""

    name = "http"

    def __init__(
        self,
        app: web.Application,
        gateway: Gateway,
        host: str,
        port: int,
        info: dict[str, object],
        *,
        drain_s: float = 10.0,
    ) -> None:
        self._app = app
        self._gateway = gateway
        self._host = host
        self._port = port
        self._info = info
        self._drain_s = drain_s
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        """Listen on host:port (0 picks a free port, reported as `http_port`)."""
        runner = web.AppRunner(self._app, access_log=None, handle_signals=False)
        await runner.setup()
        await web.TCPSite(runner, self._host, self._port).start()
        self._runner = runner
        for address in runner.addresses:
            if isinstance(address, tuple):
                self._info["http_port"] = int(address[1])
                break

    async def stop(self) -> None:
        """Stop accepting, finish the calls in flight, then publish their usage."""
        if self._runner is not None:
            await self._runner.cleanup()
        await self._gateway.drain(timeout_s=self._drain_s)

    async def wait(self) -> None:
        """Serves until stopped."""
        await asyncio.Event().wait()

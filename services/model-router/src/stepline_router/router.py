"""The failover engine: plan a route, try deployments with retries, breakers and one deadline.

No Kafka, no HTTP, no protobuf here: providers, clock, randomness, routes and prices come in
through ports, so every path is testable with twins.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncGenerator, Callable, Mapping
from contextlib import aclosing
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal
from enum import StrEnum

from opentelemetry.trace import Tracer

from stepline_pricebook import PriceBook
from stepline_router.backoff import full_jitter
from stepline_router.breaker import BreakerPolicy, CircuitBreaker
from stepline_router.clock import Clock
from stepline_router.credentials import Credentials
from stepline_router.errors import (
    Disposition,
    Outcome,
    ProviderError,
    counts_against_health,
    disposition,
)
from stepline_router.providers.base import AttemptLimits, Embedder, Provider
from stepline_router.providers.json_tools import JsonToolProvider, uses_json_tools
from stepline_router.routes import (
    Deployment,
    Route,
    RoutesConfig,
    Timeouts,
    map_deployments,
    resolve_capabilities,
)
from stepline_router.routing import (
    LatencyEwma,
    Needs,
    RateWindow,
    Skipped,
    estimated_cost,
    output_cap,
    plan_route,
)
from stepline_router.stream import ContentDelta, Restarted, StreamFold, TextDelta, is_content
from stepline_router.telemetry import AttemptSpan, default_tracer, record_attempt
from stepline_router.tokens import (
    estimate_embedding_tokens,
    estimate_input_tokens,
    estimate_text_tokens,
)
from stepline_router.types import Completion, Message, ModelRequest, Role, ToolChoice, Usage
from stepline_runtime.tracing import spans_dropped

__all__ = [
    "Attempt",
    "CallFailed",
    "CallOutcome",
    "CallStream",
    "CallSucceeded",
    "Continuation",
    "ErrorKind",
    "Router",
    "WorstCase",
    "spent",
]

# Slack over a provider's own total timeout before the router abandons the attempt itself.
_GUARD_S = 1.0
_RETRYABLE = frozenset(
    {
        Outcome.RATE_LIMITED,
        Outcome.OVERLOADED,
        Outcome.SERVER_ERROR,
        Outcome.TIMED_OUT,
        Outcome.CONNECTION_FAILED,
        Outcome.MALFORMED_RESPONSE,
        Outcome.CIRCUIT_OPEN,
        Outcome.CANCELLED,
    }
)


class ErrorKind(StrEnum):
    """Why a call produced no answer; mirrors `stepline.v1.ModelCallErrorKind`."""

    ALL_DEPLOYMENTS_FAILED = "ALL_DEPLOYMENTS_FAILED"
    NO_ELIGIBLE_DEPLOYMENT = "NO_ELIGIBLE_DEPLOYMENT"
    UNKNOWN_ROUTE = "UNKNOWN_ROUTE"
    BUDGET_EXCEEDED = "BUDGET_EXCEEDED"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    INVALID_REQUEST = "INVALID_REQUEST"
    CONTEXT_TOO_LONG = "CONTEXT_TOO_LONG"
    CONTENT_REFUSED = "CONTENT_REFUSED"
    INTERNAL = "INTERNAL"


class Continuation(StrEnum):
    """What a stream that breaks after output was sent does; the caller opts in."""

    # End with an incomplete answer, reported as such (the default).
    NONE = "none"
    # A later deployment that continues answers (assistant prefill) finishes the text.
    PREFILL = "prefill"
    # Prefill where a deployment supports it; otherwise a later deployment answers anew,
    # after a `Restarted` marker in the stream tells the caller to drop what it got.
    RESTART = "restart"


@dataclass(frozen=True, slots=True)
class Attempt:
    """One entry of the failover trail; `sent` is False when nothing reached the provider."""

    number: int
    deployment: str
    provider: str
    model: str
    outcome: Outcome
    started_at: datetime
    latency_s: float = 0.0
    status_code: int = 0
    error: str = ""
    usage: Usage = field(default_factory=Usage)
    # None: the model has no price in the price book (unpriced, never zero).
    cost: Decimal | None = Decimal(0)
    retry_after_s: float | None = None
    sent: bool = True
    # The provider reported no token counts (a stream without usage): `usage` is estimated.
    usage_estimated: bool = False


@dataclass(frozen=True, slots=True)
class CallSucceeded:
    """The call produced an answer (possibly `incomplete`, see the completion)."""

    completion: Completion
    deployment: Deployment
    attempts: tuple[Attempt, ...]
    latency_s: float
    price_book_version: str
    currency: str


@dataclass(frozen=True, slots=True)
class CallFailed:
    """The call produced no answer."""

    kind: ErrorKind
    message: str
    retryable: bool
    attempts: tuple[Attempt, ...]
    latency_s: float
    price_book_version: str
    currency: str


CallOutcome = CallSucceeded | CallFailed
# Whether the caller may use a deployment (e.g. its API key's allow-list).
Allowed = Callable[[Deployment], bool]


@dataclass(frozen=True, slots=True)
class WorstCase:
    """Upper bounds of one attempt of a request on its route, for quotas reserved up front."""

    # None: the route is unknown or one of its deployments is unpriced.
    cost: Decimal | None
    tokens: int


def spent(outcome: CallOutcome) -> tuple[Decimal, int]:
    """The priced cost and the tokens of every attempt of a finished call."""
    cost = sum((a.cost or Decimal(0) for a in outcome.attempts), Decimal(0))
    tokens = sum(a.usage.input + a.usage.output for a in outcome.attempts)
    if isinstance(outcome, CallSucceeded) and not outcome.attempts:
        usage = outcome.completion.usage
        tokens = usage.input + usage.output
    return cost, tokens


_FAIL_NOW_KINDS = {
    Outcome.BAD_REQUEST: ErrorKind.INVALID_REQUEST,
    Outcome.CONTENT_REFUSED: ErrorKind.CONTENT_REFUSED,
    Outcome.CANCELLED: ErrorKind.DEADLINE_EXCEEDED,
}


class Router:
    """Routes model calls; keeps per-deployment breakers, latency averages and rate windows."""

    def __init__(
        self,
        *,
        routes: Callable[[], RoutesConfig],
        prices: Callable[[], PriceBook],
        providers: Mapping[str, Provider],
        credentials: Credentials,
        clock: Clock,
        random: Callable[[], float],
        tracer: Tracer | None = None,
    ) -> None:
        self._routes = routes
        self._prices = prices
        self._providers = providers
        self._credentials = credentials
        self._clock = clock
        self._random = random
        # Each attempt sent is a span with the GenAI semantic-convention attributes.
        self._tracer = tracer or default_tracer()
        # The process's tracer builds spans only to drop them when tracing was configured
        # without an exporter: then attempts make none (a given tracer always gets them).
        self._spans_dropped = spans_dropped if tracer is None else _never
        self._breakers: dict[str, CircuitBreaker] = {}
        self._windows: dict[str, RateWindow] = {}
        self.latency = LatencyEwma()
        # (routes, price book, routes resolved against the book): rebuilt when either reloads.
        self._resolved: tuple[RoutesConfig, PriceBook, RoutesConfig] | None = None

    def config(self) -> tuple[RoutesConfig, PriceBook]:
        """The routes (capabilities filled from the catalog) and the price book in force now."""
        routes, book = self._routes(), self._prices()
        cached = self._resolved
        if cached is None or cached[0] is not routes or cached[1] is not book:
            resolved = _blind_where_unsent(resolve_capabilities(routes, book), self._providers)
            cached = self._resolved = (routes, book, resolved)
        return cached[2], book

    def breaker(self, deployment: str, policy: BreakerPolicy | None = None) -> CircuitBreaker:
        """The breaker of `deployment` (recreated when a reload changed its policy)."""
        policy = policy or self._routes().breaker
        current = self._breakers.get(deployment)
        if current is None or current.policy != policy:
            current = self._breakers[deployment] = CircuitBreaker(policy)
        return current

    def circuit_states(self) -> dict[str, str]:
        """Each known deployment's breaker state now (closed, open, half_open), for metrics."""
        now = self._clock.monotonic()
        return {name: breaker.state(now).value for name, breaker in self._breakers.items()}

    async def complete(
        self, request: ModelRequest, *, allowed: Allowed | None = None
    ) -> CallOutcome:
        """Run one call: the answer from the first deployment that gives one, or why none did.

        `request.route` names a route or a single deployment; `allowed` (a caller's key) keeps
        deployments it may not use out of the plan.
        """
        # A streamed request is streamed from the provider too (same first-token and idle
        # limits as a streaming caller), but nothing is handed on until the end, so a break
        # before any tool-call output still fails over.
        call = _Call(self, request, streaming=request.stream, allowed=allowed, forwarding=False)
        # Closed here, not by the event loop's finaliser (a wake-up of the loop per call).
        async with aclosing(call.events()) as events:
            async for item in events:
                if isinstance(item, CallSucceeded | CallFailed):
                    return item
        raise AssertionError("a call always ends with an outcome")

    def stream(
        self,
        request: ModelRequest,
        *,
        allowed: Allowed | None = None,
        continuation: Continuation = Continuation.NONE,
    ) -> CallStream:
        """Run one call streamed: content deltas as they arrive, then `CallStream.outcome`.

        Failover is invisible until the first content delta was handed out; after that a
        broken stream ends the call with an incomplete answer, never a silent second model —
        unless the caller opted into `continuation`: then a later deployment that continues
        answers (prefill) is asked to finish the partial text, and the stitched answer is
        whole (every attempt billed); with `RESTART` a deployment without prefill answers
        anew after a `Restarted` marker. Tool calls are never continued.
        """
        call = _Call(self, request, streaming=True, allowed=allowed, continuation=continuation)
        return CallStream(call)

    def unreachable_routes(self) -> dict[str, str]:
        """Routes none of whose deployments can be reached (provider off, key unset), and why."""
        found = {}
        for route in self._routes().routes.values():
            message = self._unreachable_route(route)
            if message is not None:
                found[route.name] = message
        return found

    def route_deployments(self, route: str) -> tuple[str, ...]:
        """Names of the deployments a call on `route` may reach (none for an unknown route)."""
        found = self._routes().routes.get(route)
        return tuple(d.name for d in found.deployments) if found is not None else ()

    def worst_case(self, request: ModelRequest) -> WorstCase:
        """The dearest attempt `request` could make on its route: cost and tokens.

        With `max_cost` set to this cost the router never spends more on the whole call, so a
        quota can hold it before the call and settle the real cost after.
        """
        config, book = self.config()
        route = config.routes.get(request.route)
        input_tokens = estimate_input_tokens(request.messages, request.tools)
        if route is None or not route.deployments:
            return WorstCase(None, input_tokens)
        needs = _needs(request, input_tokens)
        costs = [estimated_cost(d, needs, book.model_price) for d in route.deployments]
        outputs = [output_cap(d, needs) for d in route.deployments]
        priced = [c for c in costs if c is not None]
        cost = max(priced) if len(priced) == len(costs) else None
        return WorstCase(cost, input_tokens + max(outputs))

    # Helpers used by _Call; kept here because they touch the router's shared state.
    def _unreachable_route(self, route: Route) -> str | None:
        """Why no deployment of `route` can be reached, naming each one's missing piece."""
        gaps = []
        for deployment in route.deployments:
            if deployment.provider not in self._providers:
                gaps.append(f"{deployment.name}: provider {deployment.provider!r} is not enabled")
            elif deployment.credential_env and not self._credentials.get(deployment.credential_env):
                gaps.append(f"{deployment.name} needs {deployment.credential_env}")
            else:
                return None
        return (
            f"route {route.name!r} has no reachable deployment: {'; '.join(gaps)} "
            "(set the variable in the router's environment or as a secret file of that name)"
        )

    def _unavailable(self, deployment: Deployment, tokens: int) -> str | None:
        if deployment.provider not in self._providers:
            return f"provider {deployment.provider!r} is not enabled in this router"
        if deployment.credential_env and not self._credentials.get(deployment.credential_env):
            return f"credential {deployment.credential_env} is not set"
        limits = deployment.rate_limits
        window = self._windows.setdefault(deployment.name, RateWindow())
        if not window.admits(self._clock.monotonic(), tokens, limits.rpm, limits.tpm):
            return "local rate limit reached (rpm/tpm)"
        return None


class CallStream:
    """A streamed call: iterate for content deltas; `outcome` is set once iteration ended."""

    def __init__(self, call: _Call) -> None:
        self._call = call
        self._events = call.events()
        self.outcome: CallOutcome | None = None

    def __aiter__(self) -> CallStream:
        return self

    @property
    def deployment(self) -> Deployment | None:
        """The deployment streaming now (after the first delta: the one that answers)."""
        return self._call.current

    @property
    def attempts(self) -> int:
        """Attempts made so far, the running one included."""
        return len(self._call.attempts) + (self._call.current is not None and self.outcome is None)

    async def __anext__(self) -> ContentDelta | Restarted:
        if self.outcome is not None:
            raise StopAsyncIteration
        item = await anext(self._events)
        if isinstance(item, CallSucceeded | CallFailed):
            self.outcome = item
            await self._events.aclose()
            raise StopAsyncIteration
        return item

    async def aclose(self) -> CallOutcome:
        """Stop early (the caller went away): the running attempt is recorded as cancelled."""
        if self.outcome is None:
            await self._events.aclose()
            self.outcome = self._call.abandoned()
        return self.outcome


@dataclass(frozen=True, slots=True)
class _AttemptEnd:
    """How one attempt ended: an answer (maybe incomplete) or a classified error."""

    error: ProviderError | None
    completion: Completion | None


class _Call:
    """The state of one call while it runs (attempt trail, spend, deadline)."""

    def __init__(
        self,
        router: Router,
        request: ModelRequest,
        *,
        streaming: bool,
        allowed: Allowed | None = None,
        continuation: Continuation = Continuation.NONE,
        forwarding: bool = True,
    ) -> None:
        self.r = router
        self.request = request
        self.streaming = streaming
        # Whether content deltas reach a caller as they arrive (else they are only folded).
        self.forwarding = forwarding
        self.allowed = allowed
        self.continuation = continuation
        # Text already handed to the caller by attempts that broke (continued elsewhere).
        self.prefix = ""
        # The last broken answer: the outcome when no deployment could finish it.
        self.broken: CallSucceeded | None = None
        # The deployment of the attempt running now (streaming callers name it in headers).
        self.current: Deployment | None = None
        self.config, self.book = router.config()
        self.clock = router._clock
        self.started = self.clock.monotonic()
        self.attempts: list[Attempt] = []
        self.spent = Decimal(0)
        self.input_tokens = (
            estimate_input_tokens(request.messages, request.tools)
            if request.embedding is None
            else estimate_embedding_tokens(request.embedding)
        )
        if request.deadline is not None:
            budget = (request.deadline - self.clock.now()).total_seconds()
        else:
            budget = self.config.default_deadline_s
        self.deadline = self.started + budget

    def _failed(self, kind: ErrorKind, message: str, retryable: bool) -> CallFailed:
        return CallFailed(
            kind,
            message,
            retryable,
            tuple(self.attempts),
            self.clock.monotonic() - self.started,
            self.book.version,
            self.book.currency,
        )

    def abandoned(self) -> CallFailed:
        """The outcome of a call its caller stopped before the end."""
        return self._failed(
            ErrorKind.DEADLINE_EXCEEDED, "cancelled: the caller stopped the call", False
        )

    async def events(self) -> AsyncGenerator[ContentDelta | Restarted | CallOutcome, None]:
        """Content deltas (streaming calls only), then exactly one outcome."""
        route = self.config.route_for(self.request.route)
        if route is None:
            known = ", ".join(sorted(self.config.routes))
            yield self._failed(
                ErrorKind.UNKNOWN_ROUTE,
                f"route {self.request.route!r} is not configured (known: {known})",
                False,
            )
            return
        unreachable = self.r._unreachable_route(route)
        if unreachable is not None:
            # Fail loudly: nothing will answer until an operator sets a key or enables a provider.
            yield self._failed(ErrorKind.NO_ELIGIBLE_DEPLOYMENT, unreachable, False)
            return
        if self.clock.monotonic() >= self.deadline:
            yield self._failed(
                ErrorKind.DEADLINE_EXCEEDED, "the deadline passed before the call started", False
            )
            return
        needs = _needs(self.request, self.input_tokens)
        plan = plan_route(
            route,
            needs,
            price=self.book.model_price,
            latency=self.r.latency.snapshot(),
            random=self.r._random,
            unavailable=self._unavailable,
        )
        for skipped in plan.skipped:
            if skipped.cause == "capability":
                # In the attempt trail (and the ledger, at no cost): who was passed over and why.
                self._record(
                    self.config.deployments[skipped.deployment],
                    Outcome.SKIPPED,
                    sent=False,
                    error=f"skipped: {skipped.reason}",
                )
        if not plan.deployments:
            yield self._no_eligible(route, plan.skipped)
            return
        budget_skips: list[Skipped] = []
        for deployment in plan.deployments:
            if (
                self.prefix
                and not self.r._providers[deployment.provider].continues_answers
                and self.continuation is not Continuation.RESTART
            ):
                continue  # it would start the answer anew after the caller has its beginning
            # aclosing: a caller that stops early closes the running attempt too.
            async with aclosing(self._try(route, deployment, needs, budget_skips)) as tries:
                async for item in tries:
                    if isinstance(item, CallSucceeded) and self._continue_after(item):
                        break
                    yield item
                    if isinstance(item, CallSucceeded | CallFailed):
                        return
            if self.clock.monotonic() >= self.deadline:
                break
            if sum(a.sent for a in self.attempts) >= route.retry.max_attempts:
                break
        if self.broken is not None:
            yield replace(self.broken, attempts=tuple(self.attempts))
            return
        yield self._exhausted(route, plan.skipped, budget_skips)

    def _continue_after(self, outcome: CallSucceeded) -> bool:
        """Whether to ask another deployment to finish this broken text answer."""
        answer = outcome.completion
        wanted = self.continuation is not Continuation.NONE
        if not (wanted and answer.incomplete and answer.content):
            return False
        if answer.tool_calls:
            return False  # a second model would start a different tool call
        self.prefix, self.broken = answer.content, outcome
        return True

    def _unavailable(self, deployment: Deployment) -> str | None:
        if self.allowed is not None and not self.allowed(deployment):
            return "not allowed for this API key"
        provider = self.r._providers.get(deployment.provider)
        embedding = self.request.embedding is not None
        if embedding and provider is not None and not isinstance(provider, Embedder):
            return f"provider {deployment.provider!r} does not serve embeddings"
        return self.r._unavailable(deployment, self.input_tokens)

    def _no_eligible(self, route: Route, skipped: tuple[Skipped, ...]) -> CallFailed:
        reasons = "; ".join(f"{s.deployment}: {s.reason}" for s in skipped)
        if skipped and all(s.cause == "cost" for s in skipped):
            kind = ErrorKind.BUDGET_EXCEEDED
        elif skipped and all("context window" in s.reason for s in skipped):
            kind = ErrorKind.CONTEXT_TOO_LONG
        else:
            kind = ErrorKind.NO_ELIGIBLE_DEPLOYMENT
        retryable = any(s.cause == "unavailable" for s in skipped)
        return self._failed(
            kind,
            f"no deployment of route {route.name!r} can take this request: {reasons}",
            retryable,
        )

    def _exhausted(
        self, route: Route, skipped: tuple[Skipped, ...], budget: list[Skipped]
    ) -> CallFailed:
        trail = "; ".join(
            f"#{a.number} {a.deployment}: {a.outcome.value}" + (f" ({a.error})" if a.error else "")
            for a in self.attempts
        )
        extra = "; ".join(f"{s.deployment}: {s.reason}" for s in (*skipped, *budget))
        detail = trail + (f"; skipped {extra}" if extra else "")
        if self.clock.monotonic() >= self.deadline:
            return self._failed(
                ErrorKind.DEADLINE_EXCEEDED,
                f"deadline passed after {len(self.attempts)} attempts: {detail}",
                True,
            )
        sent = [a for a in self.attempts if a.sent]
        if not sent and budget:
            return self._failed(ErrorKind.BUDGET_EXCEEDED, f"cost cap reached: {detail}", False)
        if sent and all(a.outcome is Outcome.CONTEXT_TOO_LONG for a in sent):
            return self._failed(
                ErrorKind.CONTEXT_TOO_LONG, f"prompt too long everywhere: {detail}", False
            )
        retryable = any(a.outcome in _RETRYABLE for a in self.attempts)
        return self._failed(
            ErrorKind.ALL_DEPLOYMENTS_FAILED,
            f"all deployments of route {route.name!r} failed: {detail}",
            retryable,
        )

    async def _try(
        self, route: Route, deployment: Deployment, needs: Needs, budget: list[Skipped]
    ) -> AsyncGenerator[ContentDelta | Restarted | CallOutcome, None]:
        """Attempts on one deployment; an outcome ends the call, ending without one fails over."""
        breaker = self.r.breaker(deployment.name, self.config.breaker)
        retries = 0
        while sum(a.sent for a in self.attempts) < route.retry.max_attempts:
            now = self.clock.monotonic()
            remaining = self.deadline - now
            if remaining <= 0:
                return
            if self.request.max_cost is not None:
                estimate = estimated_cost(deployment, needs, self.book.model_price)
                if estimate is None or self.spent + estimate > self.request.max_cost:
                    budget.append(
                        Skipped(deployment.name, "the call's cost cap would be exceeded", "cost")
                    )
                    return
            if not breaker.allow(now):
                self._record(
                    deployment, Outcome.CIRCUIT_OPEN, sent=False, error="circuit open: not sent"
                )
                return
            end = _AttemptEnd(None, None)
            if self.streaming:
                attempt = self._attempt_stream(deployment, remaining, breaker)
                async with aclosing(attempt):
                    async for item in attempt:
                        if isinstance(item, _AttemptEnd):
                            end = item
                        else:
                            yield item
            else:
                end = await self._attempt(deployment, remaining, breaker)
            if end.completion is not None:
                yield CallSucceeded(
                    end.completion,
                    deployment,
                    tuple(self.attempts),
                    self.clock.monotonic() - self.started,
                    self.book.version,
                    self.book.currency,
                )
                return
            error = end.error
            assert error is not None
            action = disposition(error.outcome)
            if action is Disposition.FAIL_NOW:
                kind = _FAIL_NOW_KINDS.get(error.outcome, ErrorKind.INTERNAL)
                yield self._failed(
                    kind, f"{deployment.name}: {error.outcome.value}: {error.message}", False
                )
                return
            if action is Disposition.FAIL_OVER or retries >= route.retry.retries_per_deployment:
                return
            wait = full_jitter(
                retries,
                base_s=route.retry.backoff_base_s,
                cap_s=route.retry.backoff_cap_s,
                random=self.r._random,
            )
            if error.retry_after_s is not None:
                if error.retry_after_s > route.retry.max_retry_after_s:
                    return
                wait = max(wait, error.retry_after_s)
            if self.clock.monotonic() + wait >= self.deadline:
                # Waiting would use up the deadline: better spend what is left elsewhere.
                return
            await self.clock.sleep(wait)
            retries += 1

    def _limits(self, deployment: Deployment, remaining: float) -> AttemptLimits:
        timeouts = deployment.timeouts
        return AttemptLimits(
            connect_s=min(timeouts.connect_s, remaining),
            first_byte_s=min(timeouts.first_byte_s, remaining),
            total_s=min(timeouts.total_s, remaining),
        )

    def _provider(self, deployment: Deployment) -> Provider:
        provider = self.r._providers[deployment.provider]
        if uses_json_tools(deployment, self.request):
            return JsonToolProvider(provider)
        return provider

    def _credential(self, deployment: Deployment) -> str | None:
        if not deployment.credential_env:
            return None
        return self.r._credentials.get(deployment.credential_env)

    async def _attempt(
        self, deployment: Deployment, remaining: float, breaker: CircuitBreaker
    ) -> _AttemptEnd:
        provider = self._provider(deployment)
        limits = self._limits(deployment, remaining)
        start = self.clock.monotonic()
        started_at = self.clock.now()
        self.r._windows.setdefault(deployment.name, RateWindow()).record(start, self.input_tokens)
        try:
            if getattr(provider, "in_process", False):
                # It computes its answer without awaiting anything (the offline provider): a
                # timer could never fire, so none is armed.
                completion = await self._ask(provider, deployment, limits)
            else:
                async with asyncio.timeout(limits.total_s + _GUARD_S):
                    completion = await self._ask(provider, deployment, limits)
        except ProviderError as error:
            return self._ended(deployment, breaker, start, started_at, remaining, failure=error)
        except TimeoutError:
            failure = ProviderError(Outcome.TIMED_OUT, f"no answer within {limits.total_s:.1f}s")
            return self._ended(deployment, breaker, start, started_at, remaining, failure=failure)
        except asyncio.CancelledError:
            breaker.on_abandoned(self.clock.monotonic())
            raise
        return self._ended(deployment, breaker, start, started_at, remaining, answer=completion)

    async def _ask(
        self, provider: Provider, deployment: Deployment, limits: AttemptLimits
    ) -> Completion:
        credential = self._credential(deployment)
        if self.request.embedding is not None:
            # `_unavailable` planned only providers that embed.
            assert isinstance(provider, Embedder)
            return await provider.embed(deployment, self.request, limits, credential)
        return await provider.complete(deployment, self.request, limits, credential)

    async def _attempt_stream(
        self, deployment: Deployment, remaining: float, breaker: CircuitBreaker
    ) -> AsyncGenerator[ContentDelta | Restarted | _AttemptEnd, None]:
        """One streamed attempt: content deltas as they come, then how it ended.

        Each step of the stream is bounded in this task (never a timeout held across a yield):
        until the first content token by `first_token_s`, then by `idle_s` between deltas,
        and always by the attempt's total limit.
        """
        provider = self._provider(deployment)
        limits = self._limits(deployment, remaining)
        timeouts = deployment.timeouts
        self.current = deployment
        start = self.clock.monotonic()
        started_at = self.clock.now()
        self.r._windows.setdefault(deployment.name, RateWindow()).record(start, self.input_tokens)
        fold = StreamFold()
        forwarded = False
        request = self.request
        # Continuing a broken answer: the caller has `prefix`; this model finishes it, or
        # (restart) answers anew once the caller was told to drop what it has.
        restart = bool(self.prefix) and not provider.continues_answers
        sent_before = bool(self.prefix) and not restart
        trailing = "" if restart else self.prefix[len(self.prefix.rstrip()) :]
        if sent_before:
            # Providers refuse a prefill ending in whitespace; the caller already has it.
            prefill = Message(Role.ASSISTANT, self.prefix.rstrip())
            request = replace(request, messages=(*request.messages, prefill))
            fold.add(TextDelta(self.prefix))
        deltas = provider.stream(deployment, request, limits, self._credential(deployment))
        total_by = start + limits.total_s
        first_by = start + timeouts.first_token_s
        try:
            while True:
                now = self.clock.monotonic()
                step_by = min(total_by, now + timeouts.idle_s if forwarded else first_by)
                try:
                    async with asyncio.timeout(max(0.0, step_by - now)):
                        delta = await anext(deltas)
                except StopAsyncIteration:
                    break
                except TimeoutError as error:
                    raise _stream_timeout(forwarded, step_by == total_by, timeouts, limits) from (
                        error
                    )
                if trailing and isinstance(delta, TextDelta) and delta.text:
                    # The caller already has the whitespace the prefill left out.
                    delta = TextDelta(
                        delta.text.lstrip() if delta.text[:1].isspace() else delta.text
                    )
                    trailing = ""
                fold.add(delta)
                if is_content(delta):
                    if restart and not forwarded and self.forwarding:
                        why = self.broken.completion.incomplete_reason if self.broken else ""
                        yield Restarted(deployment.name, why)
                    forwarded = True
                    yield delta
        except ProviderError as error:
            failure = error
        except (GeneratorExit, asyncio.CancelledError):
            # The caller went away mid-attempt: bill what the provider counted so far.
            self._record(
                deployment,
                Outcome.CANCELLED,
                started_at=started_at,
                latency_s=self.clock.monotonic() - start,
                status_code=fold.status_code,
                usage=fold.usage,
                error="cancelled: the caller stopped reading",
            )
            breaker.on_abandoned(self.clock.monotonic())
            raise
        else:
            usage, estimated = self._counted(fold)
            answer = replace(fold.completion(), usage=usage)
            yield self._ended(
                deployment,
                breaker,
                start,
                started_at,
                remaining,
                answer=answer,
                estimated=estimated,
            )
            return
        finally:
            await deltas.aclose()
        failure.status_code = failure.status_code or fold.status_code
        estimated = False
        if not failure.usage.input and not failure.usage.output:
            failure.usage, estimated = self._counted(fold)
        ended = functools.partial(
            self._ended, deployment, breaker, start, started_at, remaining, estimated=estimated
        )
        if self.forwarding and (forwarded or sent_before):
            answer = fold.incomplete(f"stream broke after output was sent: {failure.message}")
            yield ended(answer=replace(answer, usage=failure.usage))
        elif fold.tool_call_started:
            # A second model would start a different tool call: report the cut instead.
            answer = fold.incomplete(f"stream broke after a tool call started: {failure.message}")
            yield ended(answer=replace(answer, usage=failure.usage))
        else:
            yield ended(failure=failure)

    def _counted(self, fold: StreamFold) -> tuple[Usage, bool]:
        """The stream's tokens, and whether they are estimated because the provider sent none.

        Some servers (llama-cpp-python's) send no usage in a stream even when asked: the
        provider still ran the tokens, so they are estimated (and flagged), never billed as 0.
        """
        if fold.usage_seen or not fold.content_seen:
            return fold.usage, False
        return Usage(self.input_tokens, estimate_text_tokens(fold.output_text())), True

    def _ended(
        self,
        deployment: Deployment,
        breaker: CircuitBreaker,
        start: float,
        started_at: datetime,
        remaining: float,
        *,
        answer: Completion | None = None,
        failure: ProviderError | None = None,
        estimated: bool = False,
    ) -> _AttemptEnd:
        """Record one attempt that reached the provider and tell its breaker; one path for all."""
        now = self.clock.monotonic()
        if answer is not None:
            latency = now - start
            outcome = Outcome.INCOMPLETE if answer.incomplete else Outcome.SUCCEEDED
            self._record(
                deployment,
                outcome,
                started_at=started_at,
                latency_s=latency,
                status_code=answer.status_code,
                usage=answer.usage,
                error=answer.incomplete_reason,
                answer=answer,
                usage_estimated=estimated,
            )
            if answer.incomplete:
                breaker.on_failure(now)
            else:
                breaker.on_success(now)
                self.r.latency.observe(deployment.name, latency)
            return _AttemptEnd(None, answer)
        assert failure is not None
        self._record(
            deployment,
            failure.outcome,
            started_at=started_at,
            latency_s=now - start,
            status_code=failure.status_code,
            usage=failure.usage,
            error=failure.message,
            retry_after_s=failure.retry_after_s,
            usage_estimated=estimated,
        )
        # True when the call's deadline, not the deployment, bounded this attempt.
        bounded_by_deadline = remaining < deployment.timeouts.total_s
        if failure.outcome is Outcome.TIMED_OUT and bounded_by_deadline and now >= self.deadline:
            breaker.on_abandoned(now)
        elif counts_against_health(failure.outcome):
            breaker.on_failure(now)
        else:
            # The deployment answered coherently (e.g. 400, 429): it is alive.
            breaker.on_success(now)
        return _AttemptEnd(failure, None)

    def _record(
        self,
        deployment: Deployment,
        outcome: Outcome,
        *,
        sent: bool = True,
        started_at: datetime | None = None,
        latency_s: float = 0.0,
        status_code: int = 0,
        usage: Usage | None = None,
        error: str = "",
        retry_after_s: float | None = None,
        answer: Completion | None = None,
        usage_estimated: bool = False,
    ) -> None:
        usage = usage or Usage()
        cost = self.book.model_cost(
            deployment.provider,
            deployment.model,
            usage,
        )
        if cost is not None:
            self.spent += cost
        self.attempts.append(
            Attempt(
                number=len(self.attempts) + 1,
                deployment=deployment.name,
                provider=deployment.provider,
                model=deployment.model,
                outcome=outcome,
                started_at=started_at or self.clock.now(),
                latency_s=latency_s,
                status_code=status_code,
                error=error,
                usage=usage,
                cost=cost,
                retry_after_s=retry_after_s,
                sent=sent,
                usage_estimated=usage_estimated,
            )
        )
        if sent and not self.r._spans_dropped():
            attempt = self.attempts[-1]
            record_attempt(
                self.r._tracer,
                self.request,
                AttemptSpan(
                    route=self.request.route,
                    deployment=deployment.name,
                    provider=deployment.provider,
                    model=deployment.model,
                    base_url=deployment.base_url,
                    number=attempt.number,
                    outcome=outcome,
                    started_at=attempt.started_at,
                    latency_s=latency_s,
                    status_code=status_code,
                    usage=usage,
                    cost=cost,
                    error=error,
                    answer=answer,
                ),
            )


def _never() -> bool:
    return False


def _blind_where_unsent(config: RoutesConfig, providers: Mapping[str, Provider]) -> RoutesConfig:
    """`config` with `vision` off where the deployment's adapter does not send images yet.

    Adapters say so with a `sends_images = True` attribute: a model that reads images is
    still never sent a request whose pictures its adapter would silently drop.
    """

    def blind(deployment: Deployment) -> Deployment:
        caps = deployment.capabilities
        if not caps.vision or getattr(providers.get(deployment.provider), "sends_images", False):
            return deployment
        return replace(deployment, capabilities=replace(caps, vision=False))

    return map_deployments(config, blind)


def _needs(request: ModelRequest, input_tokens: int) -> Needs:
    """What `request` requires of a deployment."""
    params = request.params
    return Needs(
        tools=bool(request.tools) and params.tool_choice != ToolChoice.NONE,
        stream=request.stream,
        input_tokens=input_tokens,
        max_output_tokens=params.max_output_tokens,
        max_cost=request.max_cost,
        json_schema=params.response_format.type == "json_schema",
        embeddings=request.embedding is not None,
        vision=any(m.images for m in request.messages),
    )


def _stream_timeout(
    forwarded: bool, total: bool, timeouts: Timeouts, limits: AttemptLimits
) -> ProviderError:
    """The error of a streamed attempt that waited too long for its next delta."""
    if total:
        message = f"stream not finished within {limits.total_s:.1f}s"
    elif forwarded:
        message = f"stream stalled: nothing for {timeouts.idle_s:.1f}s"
    else:
        message = f"no first token within {timeouts.first_token_s:.1f}s"
    return ProviderError(Outcome.TIMED_OUT, message)

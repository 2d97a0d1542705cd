"""The gateway's use case, free of HTTP: who calls, what they may use, what they reserve and spend.

Both wire formats (OpenAI, Anthropic) parse into a `GatewayRequest` and serve the `GatewayCall`
this module starts: the key is authenticated through the keys port, the tenant comes from the
key (never from the request), the worst-case cost is reserved before the call and the real cost
settled after, and every attempt is recorded as usage exactly like an agent's call.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from stepline_keys import (
    Authenticator,
    PermissionDeniedError,
    Principal,
    Quotas,
    Reservation,
    Scope,
)
from stepline_pricebook import PriceBook
from stepline_router.outbox import Outbox
from stepline_router.router import CallOutcome, CallStream, CallSucceeded, Continuation, Router
from stepline_router.routes import Deployment, RoutesConfig
from stepline_router.routing import Needs, estimated_cost, output_cap
from stepline_router.tokens import estimate_embedding_tokens, estimate_input_tokens
from stepline_router.types import (
    EmbeddingInput,
    Message,
    ModelRequest,
    Params,
    ToolChoice,
    ToolSpec,
)

__all__ = [
    "CallSummary",
    "Gateway",
    "GatewayCall",
    "GatewayRequest",
    "ModelEntry",
    "PublishUsage",
    "UnknownModelError",
    "UnsupportedModelError",
    "UsageBacklogError",
]


# Publishes the UsageRecorded records of finished calls as one batch (the Kafka path's encoder).
PublishUsage = Callable[[Sequence[tuple[ModelRequest, CallOutcome]]], Awaitable[None]]


class UnknownModelError(LookupError):
    """The `model` names neither a route nor a deployment."""


class UsageBacklogError(RuntimeError):
    """Usage of earlier calls still waits for the broker: no new call until it drains."""


class UnsupportedModelError(ValueError):
    """The `model` has no deployment of the kind asked for (chat or embeddings)."""


@dataclass(frozen=True, slots=True)
class GatewayRequest:
    """A model call as a wire format states it, before a key and a route are applied."""

    model: str
    messages: tuple[Message, ...]
    tools: tuple[ToolSpec, ...] = ()
    params: Params = field(default_factory=Params)
    stream: bool = False
    # The caller's end user, accepted for compatibility; the tenant always comes from the key.
    user: str = ""
    # Opt-in: what a stream that breaks after output does (finish by prefill, or restart).
    continuation: Continuation = Continuation.NONE
    # Set: an embeddings call (`messages` empty).
    embedding: EmbeddingInput | None = None


@dataclass(frozen=True, slots=True)
class ModelEntry:
    """One name a key may put in `model`: a route, or a deployment of one provider."""

    name: str
    kind: str
    owned_by: str


@dataclass(frozen=True, slots=True)
class CallSummary:
    """What a caller is told about a finished call: attempts, total cost, who answered."""

    attempts: int
    cost: Decimal
    currency: str
    deployment: str

    @classmethod
    def of(cls, outcome: CallOutcome) -> CallSummary:
        """The summary of `outcome` (cost over every attempt, unpriced ones counting 0)."""
        cost = sum((a.cost or Decimal(0) for a in outcome.attempts), Decimal(0))
        deployment = outcome.deployment.name if isinstance(outcome, CallSucceeded) else ""
        return cls(len(outcome.attempts), cost, outcome.currency, deployment)

    def as_json(self) -> dict[str, Any]:
        """The summary as JSON fields (cost as a plain decimal string)."""
        return {
            "attempts": self.attempts,
            "cost": f"{self.cost:f}",
            "currency": self.currency,
            "deployment": self.deployment,
        }


class GatewayCall:
    """One authorised call with its reservation; `finish` records usage and settles once."""

    def __init__(
        self,
        gateway: Gateway,
        request: ModelRequest,
        principal: Principal,
        reservation: Reservation,
        continuation: Continuation = Continuation.NONE,
    ) -> None:
        self._gateway = gateway
        self.request = request
        self._continuation = continuation
        self._allowed = _allowed(principal)
        self._reservation = reservation
        self._finished = False

    async def complete(self) -> CallOutcome:
        """Run the call to its end (not streamed); usage and settlement follow (`finish_later`)."""
        try:
            outcome = await self._gateway.router.complete(self.request, allowed=self._allowed)
        except BaseException:
            self.finish_later(None)
            raise
        self.finish_later(outcome)
        return outcome

    def stream(self) -> CallStream:
        """Run the call streamed; the caller must `finish_later` with the stream's outcome."""
        return self._gateway.router.stream(
            self.request, allowed=self._allowed, continuation=self._continuation
        )

    def finish_later(self, outcome: CallOutcome | None) -> None:
        """Record usage and settle in the background: the answer never waits for the broker's
        acknowledgement; `Gateway.drain` waits for it at shutdown."""
        if self._finished:
            return
        self._finished = True
        self._gateway.track(self._finish(outcome))

    async def _finish(self, outcome: CallOutcome | None) -> None:
        cost, tokens = Decimal(0), 0
        if outcome is not None:
            # Kept until the broker acknowledged it (retried with the same usage ids).
            self._gateway.usage.put((self.request, outcome))
            for attempt in outcome.attempts:
                cost += attempt.cost or 0
                tokens += attempt.usage.input + attempt.usage.output
        await self._reservation.settle(cost=cost, tokens=tokens)


def _allowed(principal: Principal) -> Callable[[Deployment], bool]:
    return lambda deployment: principal.may_use_model(deployment.name)


class Gateway:
    """Authenticates keys, resolves `model`, reserves quota and starts calls on the router."""

    def __init__(
        self,
        *,
        router: Router,
        routes: Callable[[], RoutesConfig],
        prices: Callable[[], PriceBook],
        authenticator: Authenticator,
        quotas: Quotas,
        publish_usage: PublishUsage,
        usage_capacity: int = 20_000,
    ) -> None:
        self.router = router
        self._routes = routes
        self._prices = prices
        self._authenticator = authenticator
        self._quotas = quotas
        # Finished calls whose usage waits for the broker; full, it refuses new calls.
        self.usage: Outbox[tuple[ModelRequest, CallOutcome]] = Outbox(
            publish_usage, capacity=usage_capacity
        )
        self._pending: set[asyncio.Task[None]] = set()

    def track(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` (a call's usage and settlement) in the background until `drain`."""
        task = asyncio.create_task(work)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def drain(self, timeout_s: float) -> int:
        """At shutdown: settle the calls in flight and flush their usage within `timeout_s`;
        the number of calls whose usage is still unsent then (logged and counted)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        if self._pending:
            await asyncio.wait(set(self._pending), timeout=timeout_s)
        return await self.usage.close(max(0.0, deadline - loop.time()))

    def authenticate(self, secret: str | None) -> Principal:
        """The key's principal if it may call models (`UnauthenticatedError`, else 403)."""
        principal = self._authenticator.authenticate(secret)
        if not principal.has(Scope.MODELS_CALL):
            raise PermissionDeniedError(f"this API key lacks the {Scope.MODELS_CALL} scope")
        return principal

    def models(self, principal: Principal) -> list[ModelEntry]:
        """Routes and deployments this key may name in `model`."""
        config = self._routes()
        entries = [
            ModelEntry(name, "route", "stepline")
            for name, route in sorted(config.routes.items())
            if principal.may_use_route(name)
            and any(_allowed(principal)(d) for d in route.deployments)
        ]
        entries += [
            ModelEntry(name, "deployment", deployment.provider)
            for name, deployment in sorted(config.deployments.items())
            if principal.may_use_model(name) and name not in config.routes
        ]
        return entries

    async def start(
        self, principal: Principal, wanted: GatewayRequest, call_id: str
    ) -> GatewayCall:
        """Check the key may use `wanted.model`, reserve its worst case, and prepare the call."""
        if self.usage.full:
            raise UsageBacklogError(
                f"{len(self.usage)} calls' usage waits for the event log; try again shortly"
            )
        config = self._routes()
        route = config.route_for(wanted.model)
        if route is None:
            raise UnknownModelError(
                f"model {wanted.model!r} is not a route or deployment of this gateway "
                f"(routes: {', '.join(sorted(config.routes))})"
            )
        if wanted.model in config.routes and not principal.may_use_route(wanted.model):
            raise PermissionDeniedError(f"this API key may not use route {wanted.model!r}")
        embeddings = wanted.embedding is not None
        fitting = [
            d
            for d in route.deployments
            if (d.capabilities.embeddings if embeddings else d.capabilities.chat)
        ]
        if not fitting:
            kind = "embeddings" if embeddings else "chat"
            raise UnsupportedModelError(
                f"model {wanted.model!r} has no deployment that serves {kind} calls"
            )
        usable = [d for d in fitting if principal.may_use_model(d.name)]
        if not usable:
            raise PermissionDeniedError(f"this API key may not use model {wanted.model!r}")
        request = ModelRequest(
            call_id=call_id,
            tenant_id=principal.tenant_id,
            route=route.name,
            messages=wanted.messages,
            tools=wanted.tools,
            params=wanted.params,
            stream=wanted.stream,
            agent=f"api:{principal.key_id}",
            embedding=wanted.embedding,
        )
        cost, tokens = self._worst_case(usable, request)
        reservation = await self._quotas.reserve(principal, cost=cost, tokens=tokens)
        return GatewayCall(self, request, principal, reservation, wanted.continuation)

    def _worst_case(self, usable: list[Deployment], request: ModelRequest) -> tuple[Decimal, int]:
        """The dearest usable deployment's cost at the output cap, and the tokens it may use."""
        embedding = request.embedding
        needs = Needs(
            tools=bool(request.tools) and request.params.tool_choice is not ToolChoice.NONE,
            stream=request.stream,
            input_tokens=estimate_input_tokens(request.messages, request.tools)
            if embedding is None
            else estimate_embedding_tokens(embedding),
            max_output_tokens=request.params.max_output_tokens,
            embeddings=embedding is not None,
        )
        book = self._prices()
        costs = [estimated_cost(d, needs, book.model_price) for d in usable]
        # An unpriced deployment cannot be reserved for; its real cost is settled as unknown.
        cost = max((c for c in costs if c is not None), default=Decimal(0))
        output = max(output_cap(d, needs) for d in usable)
        return cost, needs.input_tokens + output

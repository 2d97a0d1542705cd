"""Inbound gRPC port: `ModelRouterService.Complete` with the same routing, plus health."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, assert_never

import grpc

# Stubs: types-grpcio-health-checking (root dev group); without them the import is untyped.
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from stepline.v1 import router_service_pb2, router_service_pb2_grpc
from stepline_keys import (
    Authenticator,
    AuthError,
    PermissionDeniedError,
    Principal,
    Quotas,
    Reservation,
    Scope,
)
from stepline_keys.grpcdoor import RequireKey, abort_for, authorize
from stepline_router.clock import Clock
from stepline_router.convert import (
    InvalidRequestError,
    completed_message,
    failed_message,
    request_from_proto,
)
from stepline_router.handlers import ModelCallHandler
from stepline_router.router import CallFailed, CallOutcome, CallSucceeded, Router, spent
from stepline_router.stream import ContentDelta, Restarted, TextDelta
from stepline_router.types import ModelRequest
from stepline_runtime.atleastonce import Publisher
from stepline_runtime.logs import bind

__all__ = ["SERVICE_NAME", "RouterService", "server_for"]

log = logging.getLogger(__name__)

SERVICE_NAME = router_service_pb2.DESCRIPTOR.services_by_name["ModelRouterService"].full_name


class RouterService(router_service_pb2_grpc.ModelRouterServiceServicer):
    """`Complete` (unary) and `CompleteStream`: one model answer with failover; usage is
    published like for Kafka.

    Every call proves an API key with `models:call` and a route the key allows; the tenant is
    the key's. The key's quotas hold the call's worst case before it runs (the router is capped
    at that cost) and settle the real cost after.
    """

    def __init__(
        self,
        router: Router,
        handler: ModelCallHandler,
        publisher: Publisher,
        clock: Clock,
        new_id: Callable[[], str],
        authenticator: Authenticator,
        quotas: Quotas,
    ) -> None:
        self._router = router
        self._handler = handler
        self._publisher = publisher
        self._clock = clock
        self._new_id = new_id
        self.authenticator = authenticator
        self._quotas = quotas

    async def Complete(  # noqa: N802 - the gRPC method name
        self,
        request: router_service_pb2.CompleteRequest,
        context: grpc.aio.ServicerContext[
            router_service_pb2.CompleteRequest, router_service_pb2.CompleteResponse
        ],
    ) -> router_service_pb2.CompleteResponse:
        """Route one call; INVALID_ARGUMENT for a bad request, UNAVAILABLE if usage is lost."""
        request_id, core, principal = await self._core_request(request, context)
        core, held = await self._reserve(principal, core, context)
        try:
            with bind(tenant_id=core.tenant_id, call_id=request_id):
                outcome = await self._router.complete(core)
        except BaseException:
            await held.settle(cost=core.max_cost or Decimal(0), tokens=0)
            raise
        await _settle(held, outcome)
        await self._record(core, outcome, context)
        return _response(request_id, outcome)

    async def CompleteStream(  # noqa: N802 - the gRPC method name
        self,
        request: router_service_pb2.CompleteStreamRequest,
        context: grpc.aio.ServicerContext[
            router_service_pb2.CompleteStreamRequest, router_service_pb2.CompleteStreamResponse
        ],
    ) -> AsyncIterator[router_service_pb2.CompleteStreamResponse]:
        """Route one call streamed: content deltas as they come, then the outcome (`done`)."""
        request_id, core, principal = await self._core_request(request.request, context)
        core, held = await self._reserve(principal, replace(core, stream=True), context)
        stream = self._router.stream(core)
        outcome: CallOutcome | None = None
        try:
            with bind(tenant_id=core.tenant_id, call_id=request_id):
                async for delta in stream:
                    if isinstance(delta, Restarted):
                        continue  # gRPC callers never opt into restarts
                    yield _delta_message(delta)
            outcome = stream.outcome
        finally:
            if outcome is None:
                # The caller cancelled: stop the provider and bill what it did.
                outcome = await stream.aclose()
                await self._publish_quietly(core, outcome)
            await _settle(held, outcome)
        assert outcome is not None
        await self._record(core, outcome, context)
        yield router_service_pb2.CompleteStreamResponse(done=_response(request_id, outcome))

    async def _core_request(
        self,
        request: router_service_pb2.CompleteRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> tuple[str, ModelRequest, Principal]:
        """The request id, core request and caller's principal; or the refusal."""
        principal = await authorize(context, self.authenticator, Scope.MODELS_CALL)
        try:
            tenant_id = principal.tenant_for(request.tenant_id)
            if not principal.may_use_route(request.route):
                raise PermissionDeniedError(f"this API key may not use route {request.route!r}")
            barred = [
                d
                for d in self._router.route_deployments(request.route)
                if not principal.may_use_model(d)
            ]
            if barred:
                raise PermissionDeniedError(
                    f"this API key may not use deployment(s) {', '.join(barred)} "
                    f"of route {request.route!r}"
                )
        except AuthError as error:
            await abort_for(context, error)
        request_id = request.request_id or f"grpc:{self._new_id()}"
        try:
            core = request_from_proto(
                call_id=request_id,
                tenant_id=tenant_id,
                route=request.route,
                messages=request.messages,
                tools=request.tools,
                parameters=request.parameters,
                deadline=self._deadline(request, context),
                max_cost=request.max_cost,
            )
        except InvalidRequestError as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        return request_id, core, principal

    async def _reserve(
        self,
        principal: Principal,
        core: ModelRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> tuple[ModelRequest, Reservation]:
        """Hold the call's worst case in the key's quotas, capping the call at it."""
        worst = self._router.worst_case(core)
        if worst.cost is not None:
            # Capped at the held amount, the call can never cost more than the quota holds.
            cap = worst.cost if core.max_cost is None else min(worst.cost, core.max_cost)
            core = replace(core, max_cost=cap)
        try:
            held = await self._quotas.reserve(
                principal, cost=core.max_cost or Decimal(0), tokens=worst.tokens
            )
        except AuthError as error:
            await abort_for(context, error)
        return core, held

    async def _record(
        self,
        core: ModelRequest,
        outcome: CallOutcome,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> None:
        """Publish the usage of every attempt, or UNAVAILABLE (a retry bills the same ids)."""
        try:
            await self._publisher.publish(self._handler.usage_outputs(core, outcome))
        except Exception as error:
            log.error("could not record usage of a gRPC call", extra={"reason": str(error)})
            # Retrying with the same request_id bills under the same usage ids.
            await context.abort(
                grpc.StatusCode.UNAVAILABLE, "usage could not be recorded; retry with request_id"
            )

    async def _publish_quietly(self, core: ModelRequest, outcome: CallOutcome) -> None:
        try:
            await self._publisher.publish(self._handler.usage_outputs(core, outcome))
        except Exception as error:
            log.error("could not record usage of a cancelled call", extra={"reason": str(error)})

    def _deadline(
        self,
        request: router_service_pb2.CompleteRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> datetime | None:
        """The earlier of the request's deadline and the gRPC deadline."""
        candidates = []
        if request.HasField("deadline"):
            candidates.append(request.deadline.ToDatetime(tzinfo=self._clock.now().tzinfo))
        remaining = context.time_remaining()
        if remaining is not None:
            candidates.append(self._clock.now() + timedelta(seconds=remaining))
        return min(candidates) if candidates else None


async def _settle(held: Reservation, outcome: CallOutcome) -> None:
    cost, tokens = spent(outcome)
    await held.settle(cost=cost, tokens=tokens)


def _response(request_id: str, outcome: CallOutcome) -> router_service_pb2.CompleteResponse:
    response = router_service_pb2.CompleteResponse(request_id=request_id)
    if isinstance(outcome, CallSucceeded):
        response.completed.CopyFrom(completed_message(outcome))
    elif isinstance(outcome, CallFailed):
        response.failed.CopyFrom(failed_message(outcome))
    else:
        assert_never(outcome)
    return response


def _delta_message(delta: ContentDelta) -> router_service_pb2.CompleteStreamResponse:
    if isinstance(delta, TextDelta):
        return router_service_pb2.CompleteStreamResponse(text=delta.text)
    return router_service_pb2.CompleteStreamResponse(
        tool_call=router_service_pb2.StreamedToolCall(
            index=delta.index,
            call_id=delta.id,
            name=delta.name,
            arguments_delta=delta.arguments,
        )
    )


async def server_for(
    service: RouterService, address: str
) -> tuple[grpc.aio.Server, health.aio.HealthServicer, int]:
    """A server (bound, not started) with the router and health services, health, the port."""
    server = grpc.aio.server(interceptors=[RequireKey(service.authenticator)])
    router_service_pb2_grpc.add_ModelRouterServiceServicer_to_server(service, server)
    checker = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    port = server.add_insecure_port(address)
    # Reported to health checks once the server has started, which is when it answers.
    for name in ("", SERVICE_NAME):
        await checker.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server, checker, port

"""gRPC front door (`GatewayService`) for upstream systems that do not speak Kafka.

`python -m stepline_client.gateway` serves SubmitGoal, WatchRun (server stream), GetRun,
CancelRun and DecideApproval on `STEPLINE_GATEWAY_ADDRESS` (default 127.0.0.1:50063). Every call
names its tenant; a run of another tenant is reported as not found, never shown.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TypeAlias

import grpc
from pydantic import Field

from stepline.v1 import control_pb2
from stepline.v1 import gateway_service_pb2 as pb
from stepline.v1 import gateway_service_pb2_grpc as pb_grpc
from stepline_client.client import Stepline
from stepline_client.gateway_spec import SPEC
from stepline_client.summary import summarize
from stepline_runtime import lifecycle
from stepline_runtime.lifecycle import GrpcServerPart, Running, ServiceContext
from stepline_runtime.settings import ServiceSettings

__all__ = ["Gateway", "Settings", "build", "serve"]

log = logging.getLogger(__name__)

_Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


class Settings(ServiceSettings):
    """The gateway's settings (`STEPLINE_*`)."""

    gateway_address: str = Field(
        default=f"127.0.0.1:{SPEC.ports['grpc']}", description="host:port to serve on"
    )


class Gateway(pb_grpc.GatewayServiceServicer):
    """GatewayService over the Stepline client."""

    def __init__(self, client: Stepline) -> None:
        self._client = client

    async def SubmitGoal(  # noqa: N802  (gRPC method name)
        self, request: pb.SubmitGoalRequest, context: _Context
    ) -> pb.SubmitGoalResponse:
        """Publish the goal; the run id is derived from tenant and idempotency key when given."""
        goal = request.goal
        if not goal.tenant_id or not goal.goal.strip():
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "goal and tenant_id are required")
        return pb.SubmitGoalResponse(run_id=await self._client.submit_message(goal))

    async def WatchRun(  # noqa: N802
        self, request: pb.WatchRunRequest, context: _Context
    ) -> AsyncIterator[pb.WatchRunResponse]:
        """Stream the run's events after `after_sequence` until it ends."""
        await self._require(request.tenant_id, request.run_id, context)
        async for event in self._client.events(request.run_id):
            if event.tenant_id != request.tenant_id:
                await context.abort(grpc.StatusCode.NOT_FOUND, f"no run {request.run_id}")
            if event.sequence > request.after_sequence:
                yield pb.WatchRunResponse(event=event)

    async def GetRun(  # noqa: N802
        self, request: pb.GetRunRequest, context: _Context
    ) -> pb.GetRunResponse:
        """The run's current state, folded from its history."""
        await self._require(request.tenant_id, request.run_id, context)
        events = [e async for e in self._client.events(request.run_id, follow=False)]
        if not events or events[0].tenant_id != request.tenant_id:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no run {request.run_id}")
        return pb.GetRunResponse(run=summarize(events))

    async def CancelRun(  # noqa: N802
        self, request: pb.CancelRunRequest, context: _Context
    ) -> pb.CancelRunResponse:
        """Ask the planner to cancel the run (the planner checks the tenant)."""
        await self._require(request.tenant_id, request.run_id, context)
        cancel = request.cancel
        await self._client.cancel(
            request.run_id,
            request.tenant_id,
            reason=cancel.reason,
            requested_by=cancel.requested_by,
            keep_children=cancel.keep_children,
        )
        return pb.CancelRunResponse()

    async def DecideApproval(  # noqa: N802
        self, request: pb.DecideApprovalRequest, context: _Context
    ) -> pb.DecideApprovalResponse:
        """Approve or deny a pending tool call."""
        await self._require(request.tenant_id, request.run_id, context)
        d = request.decision
        if d.decision == control_pb2.APPROVAL_DECISION_UNSPECIFIED or not d.approval_id:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "decision.approval_id and decision.decision are required",
            )
        await self._client.decide(
            request.run_id,
            request.tenant_id,
            d.approval_id,
            approve=d.decision == control_pb2.APPROVAL_DECISION_APPROVED,
            reason=d.reason,
            edited_arguments_json=d.edited_arguments_json,
            decided_by=d.decided_by,
            call_id=d.call_id,
        )
        return pb.DecideApprovalResponse()

    @staticmethod
    async def _require(tenant_id: str, run_id: str, context: _Context) -> None:
        if not tenant_id or not run_id:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "tenant_id and run_id are required"
            )


@asynccontextmanager
async def build(context: ServiceContext[Settings]) -> AsyncIterator[Running]:
    """The gateway's one part: its gRPC server over a Stepline client."""
    settings = context.settings
    async with Stepline(settings, source=context.spec.name) as client:
        server = grpc.aio.server()
        pb_grpc.add_GatewayServiceServicer_to_server(Gateway(client), server)
        port = server.add_insecure_port(settings.gateway_address)
        yield Running([GrpcServerPart(server)], {"address": settings.gateway_address, "port": port})


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    """Serve in this process until `stop` is set."""
    await lifecycle.serve(SPEC, settings, stop)


if __name__ == "__main__":
    lifecycle.run_service(SPEC)

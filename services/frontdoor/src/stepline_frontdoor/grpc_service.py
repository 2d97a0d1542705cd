"""Inbound gRPC port: `GatewayService` for upstream systems that do not speak Kafka.

The front door serves SubmitGoal, WatchRun (server stream), GetRun, CancelRun and DecideApproval
on `STEPLINE_FRONTDOOR_GRPC_ADDRESS` (default 127.0.0.1:50063) beside the console and its JSON
API. Every call proves an API key (`authorization: Bearer sk-stl-…`); the tenant is the key's. A
run that is not the key's tenant's — another tenant's or none at all, the answer is the same —
is PERMISSION_DENIED, so a caller never learns whether another tenant's run exists.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, TypeAlias

import grpc

from stepline.v1 import control_pb2
from stepline.v1 import gateway_service_pb2 as pb
from stepline.v1 import gateway_service_pb2_grpc as pb_grpc
from stepline_client.client import Stepline
from stepline_client.summary import summarize
from stepline_keys import Authenticator, AuthError, PermissionDeniedError, Principal, Scope
from stepline_keys.grpcdoor import abort_for, authorize

__all__ = ["Gateway"]

_Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


class Gateway(pb_grpc.GatewayServiceServicer):
    """GatewayService over the Stepline client, for the tenant of each call's API key."""

    def __init__(self, client: Stepline, authenticator: Authenticator) -> None:
        self._client = client
        self.authenticator = authenticator

    async def SubmitGoal(  # noqa: N802  (gRPC method name)
        self, request: pb.SubmitGoalRequest, context: _Context
    ) -> pb.SubmitGoalResponse:
        """Publish the goal; the run id is derived from tenant and idempotency key when given."""
        principal = await authorize(context, self.authenticator, Scope.GOALS_SUBMIT)
        goal = request.goal
        try:
            goal.tenant_id = principal.tenant_for(goal.tenant_id)
            if goal.agent and not principal.may_use_agent(goal.agent):
                raise PermissionDeniedError(f"this API key may not run agent {goal.agent!r}")
        except AuthError as error:
            await abort_for(context, error)
        if not goal.goal.strip():
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "goal is required")
        if not goal.submitted_by:
            goal.submitted_by = f"key:{principal.key_id}"
        return pb.SubmitGoalResponse(run_id=await self._client.submit_message(goal))

    async def WatchRun(  # noqa: N802
        self, request: pb.WatchRunRequest, context: _Context
    ) -> AsyncIterator[pb.WatchRunResponse]:
        """Stream the run's events after `after_sequence` until it ends."""
        _, tenant_id = await self._run_of_key(request, Scope.RUNS_READ, context)
        async for event in self._client.events(request.run_id):
            if event.tenant_id != tenant_id:
                await abort_for(context, _hidden(request.run_id))
            if event.sequence > request.after_sequence:
                yield pb.WatchRunResponse(event=event)

    async def GetRun(  # noqa: N802
        self, request: pb.GetRunRequest, context: _Context
    ) -> pb.GetRunResponse:
        """The run's current state, folded from its history."""
        await self._run_of_key(request, Scope.RUNS_READ, context)
        events = [e async for e in self._client.events(request.run_id, follow=False)]
        return pb.GetRunResponse(run=summarize(events))

    async def CancelRun(  # noqa: N802
        self, request: pb.CancelRunRequest, context: _Context
    ) -> pb.CancelRunResponse:
        """Ask the planner to cancel the run (a key that may submit goals may cancel runs)."""
        principal, tenant_id = await self._run_of_key(request, Scope.GOALS_SUBMIT, context)
        cancel = request.cancel
        await self._client.cancel(
            request.run_id,
            tenant_id,
            reason=cancel.reason,
            requested_by=cancel.requested_by or f"key:{principal.key_id}",
            keep_children=cancel.keep_children,
        )
        return pb.CancelRunResponse()

    async def DecideApproval(  # noqa: N802
        self, request: pb.DecideApprovalRequest, context: _Context
    ) -> pb.DecideApprovalResponse:
        """Approve or deny a pending tool call."""
        d = request.decision
        principal, tenant_id = await self._run_of_key(request, Scope.APPROVALS_DECIDE, context)
        if d.decision == control_pb2.APPROVAL_DECISION_UNSPECIFIED or not d.approval_id:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "decision.approval_id and decision.decision are required",
            )
        await self._client.decide(
            request.run_id,
            tenant_id,
            d.approval_id,
            approve=d.decision == control_pb2.APPROVAL_DECISION_APPROVED,
            reason=d.reason,
            edited_arguments_json=d.edited_arguments_json,
            decided_by=d.decided_by or f"key:{principal.key_id}",
            call_id=d.call_id,
        )
        return pb.DecideApprovalResponse()

    async def _run_of_key(
        self, request: _RunRequest, scope: Scope, context: _Context
    ) -> tuple[Principal, str]:
        """The caller's principal and the run's tenant, once its key holds `scope` and may see
        the run."""
        principal = await authorize(context, self.authenticator, scope)
        if not request.run_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "run_id is required")
        try:
            principal.tenant_for(request.tenant_id)
        except AuthError as error:
            await abort_for(context, error)
        async for first in self._client.events(request.run_id, follow=False):
            if principal.may_see(first.tenant_id):
                return principal, first.tenant_id
            break
        await abort_for(context, _hidden(request.run_id))


_RunRequest: TypeAlias = (
    "pb.WatchRunRequest | pb.GetRunRequest | pb.CancelRunRequest | pb.DecideApprovalRequest"
)


def _hidden(run_id: str) -> PermissionDeniedError:
    # The same answer for another tenant's run and for no run: existence stays private.
    return PermissionDeniedError(f"run {run_id} is not visible to this API key")

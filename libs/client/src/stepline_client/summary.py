"""Fold a run's event history into a `RunSummary` (state, answer, cost, pending approvals)."""

from __future__ import annotations

from collections.abc import Iterable

from stepline.v1 import gateway_service_pb2, runs_pb2

__all__ = ["summarize"]

_STATUS_AFTER = {
    "queued": runs_pb2.RUN_STATUS_QUEUED,
    "started": runs_pb2.RUN_STATUS_RUNNING,
    "approval_requested": runs_pb2.RUN_STATUS_AWAITING_APPROVAL,
    "approval_resolved": runs_pb2.RUN_STATUS_RUNNING,
    "wrap_up_started": runs_pb2.RUN_STATUS_WRAPPING_UP,
    "completed": runs_pb2.RUN_STATUS_COMPLETED,
    "failed": runs_pb2.RUN_STATUS_FAILED,
    "cancelled": runs_pb2.RUN_STATUS_CANCELLED,
}


def summarize(events: Iterable[runs_pb2.RunEvent]) -> gateway_service_pb2.RunSummary:
    """The run as its events leave it; events must be one run's, in sequence order."""
    run = gateway_service_pb2.RunSummary()
    pending: dict[str, runs_pb2.ApprovalRequested] = {}
    for event in events:
        kind = event.WhichOneof("event")
        run.run_id, run.tenant_id, run.agent = event.run_id, event.tenant_id, event.agent
        run.last_sequence = event.sequence
        if kind in _STATUS_AFTER and not (kind == "approval_resolved" and len(pending) > 1):
            run.status = _STATUS_AFTER[kind]
        if kind == "started":
            run.goal = event.started.goal
            run.session_id = event.started.session_id
            run.parent_run_id = event.started.parent_run_id
            run.started_at.CopyFrom(event.occurred_at)
        elif kind == "step_completed":
            run.steps += 1
        elif kind == "child_run_started":
            run.child_run_ids.append(event.child_run_started.child_run_id)
        elif kind == "approval_requested":
            pending[event.approval_requested.approval_id] = event.approval_requested
        elif kind == "approval_resolved":
            pending.pop(event.approval_resolved.approval_id, None)
            if pending:  # other tool calls of the same turn still wait for a decision
                run.status = runs_pb2.RUN_STATUS_AWAITING_APPROVAL
        elif kind in ("completed", "failed", "cancelled"):
            final = getattr(event, kind)
            run.usage.CopyFrom(final.usage)
            run.cost.CopyFrom(final.cost)
            run.steps = final.steps
            run.finished_at.CopyFrom(event.occurred_at)
            pending.clear()
            if kind == "completed":
                run.answer = event.completed.answer
            elif kind == "failed":
                run.failure_reason = event.failed.reason
                run.failure_message = event.failed.message
    run.pending_approvals.extend(pending.values())
    return run

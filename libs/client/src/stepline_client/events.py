"""What a run event means: terminal or not, and a one-line human rendering."""

from __future__ import annotations

from stepline.v1 import common_pb2, control_pb2, runs_pb2
from stepline_vocab import format_amount, wire

__all__ = ["TERMINAL", "describe", "is_terminal", "money"]

TERMINAL = frozenset({"completed", "failed", "cancelled"})


def is_terminal(event: runs_pb2.RunEvent) -> bool:
    """True for RunCompleted, RunFailed and RunCancelled."""
    return event.WhichOneof("event") in TERMINAL


def money(amount: common_pb2.Money) -> str:
    """`$0.000123`-style text; `-` when there is no amount."""
    if not amount.amount:
        return "-"
    symbol = "$" if amount.currency in ("", "USD") else f"{amount.currency} "
    return f"{symbol}{format_amount(wire.amount_of(amount, negative=True))}"


def _tokens(usage: common_pb2.TokenUsage) -> str:
    return f"{usage.input_tokens}→{usage.output_tokens} tok"


def _enum(enum_name: str, value: int, prefix: str) -> str:
    name: str = runs_pb2.DESCRIPTOR.enum_types_by_name[enum_name].values_by_number[value].name
    return name.removeprefix(prefix).lower().replace("_", " ")


def _step(event: runs_pb2.StepCompleted) -> str:
    outcome = _enum("StepOutcome", event.outcome, "STEP_OUTCOME_")
    if event.kind == runs_pb2.STEP_KIND_MODEL:
        tools = f", wants {', '.join(event.requested_tools)}" if event.requested_tools else ""
        where = f"{event.provider}/{event.model}" if event.provider else event.route
        detail = f"model {where}: {outcome}{tools} ({_tokens(event.usage)}, {money(event.cost)})"
    else:
        detail = f"tool {event.tool}: {outcome}"
        if event.output_truncated:
            detail += " (output truncated)"
    if event.error_message:
        detail += f" — {event.error_message}"
    return detail


def describe(event: runs_pb2.RunEvent) -> str:
    """One line saying what happened, for live progress displays."""
    kind = event.WhichOneof("event")
    if kind == "queued":
        return f"queued: {event.queued.reason}"
    if kind == "started":
        return f"started: {event.started.goal!r} (agent {event.agent}, route {event.started.route})"
    if kind == "step_started":
        s = event.step_started
        what = f"tool {s.tool}({s.arguments_json})" if s.tool else f"model call on {s.route}"
        return f"step {s.step_id.rsplit(':', 1)[-1]} started: {what}"
    if kind == "step_completed":
        c = event.step_completed
        return f"step {c.step_id.rsplit(':', 1)[-1]} done: {_step(c)}"
    if kind == "approval_requested":
        a = event.approval_requested
        return (
            f"approval needed for {a.tool}({a.arguments_json}) — "
            f"`stepline approve {event.run_id} {a.approval_id}` or `stepline deny …`"
        )
    if kind == "approval_resolved":
        r = event.approval_resolved
        verdict = control_pb2.ApprovalDecision.Name(r.decision).removeprefix("APPROVAL_DECISION_")
        return f"approval {verdict.lower()}{' (timed out)' if r.timed_out else ''} {r.reason}"
    if kind == "duplicate_result_ignored":
        return f"duplicate result ignored for {event.duplicate_result_ignored.call_id}"
    if kind == "budget_reserved":
        b = event.budget_reserved
        return f"budget reserved {money(b.amount)} (in flight {money(b.reserved_total)})"
    if kind == "child_run_started":
        return f"child run {event.child_run_started.child_run_id} started"
    if kind == "wrap_up_started":
        return f"wrapping up: {event.wrap_up_started.message}"
    if kind == "completed":
        done = event.completed
        return f"completed in {done.steps} steps ({_tokens(done.usage)}, {money(done.cost)})"
    if kind == "failed":
        f = event.failed
        return f"failed ({_enum('RunFailureReason', f.reason, 'RUN_FAILURE_REASON_')}): {f.message}"
    if kind == "cancelled":
        return f"cancelled: {event.cancelled.reason}"
    return kind or "unknown event"

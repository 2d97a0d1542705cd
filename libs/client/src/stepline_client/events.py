"""What a run event means: terminal or not, and a one-line human rendering."""

from __future__ import annotations

from typing import assert_never

from stepline.v1 import common_pb2, control_pb2, model_pb2, replay_pb2, runs_pb2
from stepline_vocab import format_amount, wire

__all__ = ["TERMINAL", "describe", "describe_attempt", "is_terminal", "money"]

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
        if event.replay_served != replay_pb2.REPLAY_SERVED_UNSPECIFIED:
            served = replay_pb2.ReplayServed.Name(event.replay_served)
            detail += f" [replay: {served.removeprefix('REPLAY_SERVED_').lower()}"
            detail += f" {event.recorded_call_id}]" if event.recorded_call_id else "]"
    if event.error_message:
        detail += f" — {event.error_message}"
    return detail


def describe_attempt(attempt: model_pb2.ModelAttempt, last: bool) -> str:
    """One indented line for one provider attempt of a model step (`last`: no failover after)."""
    where = f"{attempt.deployment} ({attempt.provider}/{attempt.model})"
    if attempt.outcome == model_pb2.MODEL_ATTEMPT_OUTCOME_SUCCEEDED:
        return f"    ↳ attempt {attempt.attempt} {where}: succeeded"
    name = model_pb2.ModelAttemptOutcome.Name(attempt.outcome)
    outcome = name.removeprefix("MODEL_ATTEMPT_OUTCOME_").lower().replace("_", " ")
    status = f", HTTP {attempt.status_code}" if attempt.status_code else ""
    then = "" if last else " → failed over"
    return f"    ↳ attempt {attempt.attempt} {where}: {outcome}{status}{then}"


def describe(event: runs_pb2.RunEvent) -> str:
    """One line saying what happened, for live progress displays."""
    kind = event.WhichOneof("event")
    match kind:
        case "queued":
            return f"queued: {event.queued.reason}"
        case "started":
            started = event.started
            text = f"started: {started.goal!r} (agent {event.agent}, route {started.route})"
            if started.HasField("replay"):
                origin = started.replay
                mode = "fork" if origin.mode == replay_pb2.REPLAY_MODE_FORK else "replay"
                text += f", {mode} of {origin.original_run_id}"
                if origin.steps_forked:
                    text += f" (steps 1-{origin.steps_forked} from the record)"
            return text
        case "step_started":
            s = event.step_started
            what = f"tool {s.tool}({s.arguments_json})" if s.tool else f"model call on {s.route}"
            return f"step {s.step_id.rsplit(':', 1)[-1]} started: {what}"
        case "step_completed":
            c = event.step_completed
            return f"step {c.step_id.rsplit(':', 1)[-1]} done: {_step(c)}"
        case "approval_requested":
            a = event.approval_requested
            return (
                f"approval needed for {a.tool}({a.arguments_json}) — "
                f"`stepline approve {event.run_id} {a.approval_id}` or `stepline deny …`"
            )
        case "approval_resolved":
            r = event.approval_resolved
            verdict = control_pb2.ApprovalDecision.Name(r.decision).removeprefix(
                "APPROVAL_DECISION_"
            )
            return f"approval {verdict.lower()}{' (timed out)' if r.timed_out else ''} {r.reason}"
        case "duplicate_result_ignored":
            d = event.duplicate_result_ignored
            if d.HasField("cost"):  # a call given up on reported what it was billed
                return f"late result for {d.call_id}: its cost {money(d.cost)} counted in the run"
            return f"duplicate result ignored for {d.call_id}"
        case "budget_reserved":
            b = event.budget_reserved
            return f"budget reserved {money(b.amount)} (in flight {money(b.reserved_total)})"
        case "child_run_started":
            return f"child run {event.child_run_started.child_run_id} started"
        case "wrap_up_started":
            return f"wrapping up: {event.wrap_up_started.message}"
        case "completed":
            done = event.completed
            return f"completed in {done.steps} steps ({_tokens(done.usage)}, {money(done.cost)})"
        case "failed":
            f = event.failed
            reason = _enum("RunFailureReason", f.reason, "RUN_FAILURE_REASON_")
            return f"failed ({reason}): {f.message}"
        case "cancelled":
            return f"cancelled: {event.cancelled.reason}"
        case None:
            return "unknown event"  # from a newer producer: its kind is not in our contract
        case _:
            assert_never(kind)

"""Protobuf ↔ core types of replays (ReplaySpec, ReplayOrigin, ReplayServed)."""

from __future__ import annotations

from stepline.v1 import goals_pb2, replay_pb2, runs_pb2, tools_pb2
from stepline_planner.replay import (
    Approvals,
    Divergence,
    Mode,
    RecordedCall,
    Replay,
    Served,
)
from stepline_planner.state import Outcome, Role
from stepline_vocab import wire

__all__ = ["origin_to_proto", "replay_from_proto", "replay_to_proto", "served_to_proto"]


def _mode(value: replay_pb2.ReplayMode.ValueType) -> Mode:
    return Mode.FORK if value == replay_pb2.REPLAY_MODE_FORK else Mode.REPLAY


def _divergence(value: replay_pb2.DivergencePolicy.ValueType) -> Divergence:
    if value == replay_pb2.DIVERGENCE_POLICY_STUB:
        return Divergence.STUB
    if value == replay_pb2.DIVERGENCE_POLICY_EXECUTE:
        return Divergence.EXECUTE
    return Divergence.STOP  # unspecified stops: the safe reading of a missing policy


def _divergence_to_proto(value: Divergence) -> replay_pb2.DivergencePolicy.ValueType:
    return replay_pb2.DivergencePolicy.Value(f"DIVERGENCE_POLICY_{value.value}")


def _outcome(value: runs_pb2.StepOutcome.ValueType) -> Outcome:
    name = runs_pb2.StepOutcome.Name(value).removeprefix("STEP_OUTCOME_")
    return Outcome(name) if name in Outcome.__members__ else Outcome.SUCCEEDED


def _error_kind(value: tools_pb2.ToolCallErrorKind.ValueType) -> str:
    if value == tools_pb2.TOOL_CALL_ERROR_KIND_UNSPECIFIED:
        return ""
    return tools_pb2.ToolCallErrorKind.Name(value).removeprefix("TOOL_CALL_ERROR_KIND_")


def replay_from_proto(spec: goals_pb2.ReplaySpec) -> Replay:
    """A goal's ReplaySpec as the core's Replay."""
    requests = spec.approvals == replay_pb2.REPLAY_APPROVALS_REQUEST
    approvals = Approvals.REQUEST if requests else Approvals.DENY
    return Replay(
        original_run_id=spec.original_run_id,
        mode=_mode(spec.mode),
        from_step=spec.from_step,
        route=spec.route,
        system_prompt=spec.system_prompt,
        divergence=_divergence(spec.divergence),
        execute_tools=tuple(spec.execute_tools),
        approvals=approvals,
        recorded=tuple(
            RecordedCall(
                call_id=c.call_id,
                tool=c.tool,
                arguments_json=c.arguments_json,
                output=c.output,
                outcome=_outcome(c.outcome),
                error_kind=_error_kind(c.tool_error_kind),
            )
            for c in spec.recorded_calls
        ),
        forked=tuple(
            wire.message_from_proto(m, wire.role_from_proto(m.role) or Role.USER)
            for m in spec.forked_messages
        ),
        steps_forked=spec.steps_forked,
        settings_hash=spec.settings_hash,
    )


def replay_to_proto(replay: Replay) -> goals_pb2.ReplaySpec:
    """The core's Replay as a ReplaySpec (state changelog, forwarded goals)."""
    return goals_pb2.ReplaySpec(
        original_run_id=replay.original_run_id,
        mode=replay_pb2.ReplayMode.Value(f"REPLAY_MODE_{replay.mode.value}"),
        from_step=replay.from_step,
        route=replay.route,
        system_prompt=replay.system_prompt,
        divergence=_divergence_to_proto(replay.divergence),
        execute_tools=list(replay.execute_tools),
        approvals=replay_pb2.ReplayApprovals.Value(f"REPLAY_APPROVALS_{replay.approvals.value}"),
        recorded_calls=[
            goals_pb2.RecordedToolCall(
                call_id=c.call_id,
                tool=c.tool,
                arguments_json=c.arguments_json,
                output=c.output,
                outcome=runs_pb2.StepOutcome.Value(f"STEP_OUTCOME_{c.outcome.value}"),
                tool_error_kind=(
                    tools_pb2.ToolCallErrorKind.Value(f"TOOL_CALL_ERROR_KIND_{c.error_kind}")
                    if c.error_kind
                    else tools_pb2.TOOL_CALL_ERROR_KIND_UNSPECIFIED
                ),
            )
            for c in replay.recorded
        ],
        forked_messages=[wire.message_to_proto(m) for m in replay.forked],
        steps_forked=replay.steps_forked,
        settings_hash=replay.settings_hash,
    )


def origin_to_proto(replay: Replay, route: str) -> replay_pb2.ReplayOrigin:
    """What RunStarted says about a replay: its original, mode, route and policy."""
    return replay_pb2.ReplayOrigin(
        original_run_id=replay.original_run_id,
        mode=replay_pb2.ReplayMode.Value(f"REPLAY_MODE_{replay.mode.value}"),
        from_step=replay.from_step,
        steps_forked=replay.steps_forked if replay.mode is Mode.FORK else 0,
        route=route,
        prompt_overridden=bool(replay.system_prompt),
        divergence=_divergence_to_proto(replay.divergence),
        execute_tools=list(replay.execute_tools),
        settings_hash=replay.settings_hash,
    )


def served_to_proto(served: Served) -> replay_pb2.ReplayServed.ValueType:
    """A tool step's source as ReplayServed (LIVE is the unspecified default)."""
    if served is Served.LIVE:
        return replay_pb2.REPLAY_SERVED_UNSPECIFIED
    return replay_pb2.ReplayServed.Value(f"REPLAY_SERVED_{served.value}")

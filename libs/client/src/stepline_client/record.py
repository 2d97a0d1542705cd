"""A finished run as its events on stepline.runs.v1 recorded it, and the replay or fork built
from that record (the `ReplaySpec` a replay goal carries, its deterministic run id)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field

from stepline.v1 import common_pb2, goals_pb2, replay_pb2, runs_pb2
from stepline_runtime.ids import derive_replay_run_id
from stepline_vocab import SteplineError

__all__ = [
    "RecordError",
    "RecordedRun",
    "ReplaySettings",
    "replay_goal",
    "replay_run_id",
]

_NOT_REAL = (replay_pb2.REPLAY_SERVED_STUBBED, replay_pb2.REPLAY_SERVED_DIVERGED)


class RecordError(SteplineError):
    """The run cannot be replayed from its record; the message says why."""


def _ordinal(step_id: str) -> int:
    tail = step_id.rsplit(":", 1)[-1]
    return int(tail) if tail.isdigit() else 0


@dataclass(frozen=True, slots=True)
class RecordedRun:
    """One run's events, in sequence order, with what a replay needs read from them."""

    events: Sequence[runs_pb2.RunEvent]

    @classmethod
    def of(cls, run_id: str, events: Sequence[runs_pb2.RunEvent]) -> RecordedRun:
        """The record of `run_id`; RecordError when its start expired or it has not ended."""
        if not events:
            raise RecordError(f"no events of run {run_id}")
        if events[0].sequence != 1 or not any(e.HasField("started") for e in events):
            raise RecordError(
                f"the start of run {run_id} is no longer on the runs topic (its oldest event "
                f"left is #{events[0].sequence}): the topic's retention deleted it, so the run "
                "cannot be replayed"
            )
        record = cls(events)
        if record.terminal is None:
            raise RecordError(f"run {run_id} has not ended yet: replay a finished run")
        return record

    @property
    def run_id(self) -> str:
        """The run's id."""
        return self.events[0].run_id

    @property
    def tenant_id(self) -> str:
        """The run's tenant."""
        return self.events[0].tenant_id

    @property
    def agent(self) -> str:
        """The run's agent profile."""
        return self.events[0].agent

    @property
    def started(self) -> runs_pb2.RunStarted:
        """The RunStarted event's body."""
        return next(e.started for e in self.events if e.HasField("started"))

    @property
    def terminal(self) -> runs_pb2.RunEvent | None:
        """The completed/failed/cancelled event, if the run ended."""
        kinds = ("completed", "failed", "cancelled")
        return next((e for e in self.events if e.WhichOneof("event") in kinds), None)

    def steps(self) -> list[tuple[runs_pb2.StepStarted, runs_pb2.StepCompleted]]:
        """Each ended step (last call of a retried one) with the request that started it."""
        started: dict[str, runs_pb2.StepStarted] = {}
        ended: dict[str, tuple[runs_pb2.StepStarted, runs_pb2.StepCompleted]] = {}
        for event in self.events:
            if event.HasField("step_started"):
                started[event.step_started.call_id] = event.step_started
            elif event.HasField("step_completed"):
                done = event.step_completed
                begun = started.get(done.call_id, runs_pb2.StepStarted(step_id=done.step_id))
                ended[done.step_id] = (begun, done)
        return sorted(ended.values(), key=lambda pair: _ordinal(pair[1].step_id))

    def tool_calls(self) -> list[goals_pb2.RecordedToolCall]:
        """The tool calls whose result the model was given, in step order."""
        calls = []
        for begun, done in self.steps():
            if done.kind != runs_pb2.STEP_KIND_TOOL or done.replay_served in _NOT_REAL:
                continue
            if done.outcome == runs_pb2.STEP_OUTCOME_CANCELLED:
                continue  # abandoned: the model never had a result of it
            if not done.output and not done.error_message:
                raise RecordError(
                    f"run {self.run_id} was recorded before run events kept tool outputs "
                    f"(step {done.step_id} has none), so its tool calls cannot be served"
                )
            calls.append(
                goals_pb2.RecordedToolCall(
                    call_id=done.call_id,
                    tool=done.tool or begun.tool,
                    arguments_json=begun.arguments_json,
                    output=done.output or f"error: {done.error_message}",
                    outcome=done.outcome,
                    tool_error_kind=done.tool_error_kind,
                )
            )
        return calls

    def fork(self, from_step: int) -> tuple[list[common_pb2.ChatMessage], int]:
        """The transcript after the goal up to `from_step`, whole turns only, and the last step
        it covers: a model turn is kept with all its tool results or not at all."""
        steps = self.steps()
        results = {
            done.model_tool_call_id: done
            for _, done in steps
            if done.kind == runs_pb2.STEP_KIND_TOOL and done.model_tool_call_id
        }
        messages: list[common_pb2.ChatMessage] = []
        covered = 0
        for _, done in steps:
            if done.kind != runs_pb2.STEP_KIND_MODEL or _ordinal(done.step_id) > from_step:
                continue
            if done.outcome != runs_pb2.STEP_OUTCOME_SUCCEEDED or not done.tool_calls:
                break  # a failed model step or the final answer: the fork redoes it live
            answers = [results.get(call.call_id) for call in done.tool_calls]
            if any(a is None or _ordinal(a.step_id) > from_step for a in answers):
                break
            turn = [
                common_pb2.ChatMessage(
                    role=common_pb2.ChatMessage.ROLE_ASSISTANT,
                    content=done.content,
                    tool_calls=done.tool_calls,
                )
            ]
            for call, answer in zip(done.tool_calls, answers, strict=True):
                assert answer is not None
                turn.append(
                    common_pb2.ChatMessage(
                        role=common_pb2.ChatMessage.ROLE_TOOL,
                        content=answer.output,
                        tool_call_id=call.call_id,
                        name=call.name,
                    )
                )
            messages.extend(turn)
            covered = max(_ordinal(done.step_id), *(_ordinal(a.step_id) for a in answers if a))
        return messages, covered


@dataclass(frozen=True, slots=True)
class ReplaySettings:
    """What a replay changes and how it treats diverging calls (hashed into its run id)."""

    mode: replay_pb2.ReplayMode.ValueType = replay_pb2.REPLAY_MODE_REPLAY
    from_step: int = 0
    route: str = ""
    system_prompt: str = ""
    divergence: replay_pb2.DivergencePolicy.ValueType = replay_pb2.DIVERGENCE_POLICY_STOP
    execute_tools: tuple[str, ...] = ()
    approvals: replay_pb2.ReplayApprovals.ValueType = replay_pb2.REPLAY_APPROVALS_DENY
    extra: dict[str, str] = field(default_factory=dict)

    def digest(self) -> str:
        """SHA-256 of the settings, one spelling for the same settings."""
        text = json.dumps(
            {
                "mode": int(self.mode),
                "from_step": self.from_step,
                "route": self.route,
                "system_prompt": self.system_prompt,
                "divergence": int(self.divergence),
                "execute_tools": sorted(self.execute_tools),
                "approvals": int(self.approvals),
                "extra": self.extra,
            },
            sort_keys=True,
        )
        return hashlib.sha256(text.encode()).hexdigest()


def replay_run_id(tenant_id: str, original_run_id: str, settings: ReplaySettings) -> str:
    """The replay's run id: the same run and settings always give the same id (idempotent)."""
    fork = settings.mode == replay_pb2.REPLAY_MODE_FORK
    return derive_replay_run_id(tenant_id, original_run_id, settings.digest(), fork=fork)


def replay_goal(
    record: RecordedRun, settings: ReplaySettings, submitted_by: str = ""
) -> goals_pb2.GoalSubmitted:
    """The goal that re-drives `record` with `settings`."""
    spec = goals_pb2.ReplaySpec(
        original_run_id=record.run_id,
        mode=settings.mode,
        from_step=settings.from_step,
        route=settings.route,
        system_prompt=settings.system_prompt,
        divergence=settings.divergence,
        execute_tools=list(settings.execute_tools),
        approvals=settings.approvals,
        recorded_calls=record.tool_calls(),
        settings_hash=settings.digest(),
    )
    if settings.mode == replay_pb2.REPLAY_MODE_FORK:
        messages, covered = record.fork(settings.from_step)
        spec.forked_messages.extend(messages)
        spec.steps_forked = covered
    started = record.started
    return goals_pb2.GoalSubmitted(
        run_id=replay_run_id(record.tenant_id, record.run_id, settings),
        tenant_id=record.tenant_id,
        agent=record.agent,
        goal=started.goal,
        metadata={**started.metadata, "replay_of": record.run_id},
        submitted_by=submitted_by,
        max_steps=started.max_steps,
        replay=spec,
    )

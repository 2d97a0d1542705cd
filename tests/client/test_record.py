"""A run's record read from its events: recorded calls, fork cut points, ids, and the diff."""

from __future__ import annotations

import pytest

from stepline.v1 import common_pb2, replay_pb2, runs_pb2
from stepline_client.diff import compare
from stepline_client.record import RecordedRun, RecordError, ReplaySettings, replay_goal

RUN = "run-1"


class Events:
    """Builds one run's events in sequence order."""

    def __init__(self, run_id: str = RUN) -> None:
        self.run_id = run_id
        self.events: list[runs_pb2.RunEvent] = []

    def add(self, **body: object) -> None:
        event = runs_pb2.RunEvent(
            run_id=self.run_id, tenant_id="acme", agent="support", sequence=len(self.events) + 1
        )
        ((kind, value),) = body.items()
        getattr(event, kind).CopyFrom(value)
        self.events.append(event)

    def model(self, n: int, *calls: tuple[str, str, str], answer: str = "") -> None:
        step = f"{self.run_id}:{n}"
        self.add(
            step_started=runs_pb2.StepStarted(
                step_id=step, call_id=f"{step}:1", kind=runs_pb2.STEP_KIND_MODEL
            )
        )
        self.add(
            step_completed=runs_pb2.StepCompleted(
                step_id=step,
                call_id=f"{step}:1",
                kind=runs_pb2.STEP_KIND_MODEL,
                outcome=runs_pb2.STEP_OUTCOME_SUCCEEDED,
                content=answer,
                tool_calls=[
                    common_pb2.ToolCall(call_id=i, name=t, arguments_json=a) for i, t, a in calls
                ],
            )
        )

    def tool(self, n: int, model_call: str, tool: str, args: str, output: str) -> None:
        step = f"{self.run_id}:{n}"
        self.add(
            step_started=runs_pb2.StepStarted(
                step_id=step,
                call_id=f"{step}:1",
                kind=runs_pb2.STEP_KIND_TOOL,
                tool=tool,
                arguments_json=args,
            )
        )
        self.add(
            step_completed=runs_pb2.StepCompleted(
                step_id=step,
                call_id=f"{step}:1",
                kind=runs_pb2.STEP_KIND_TOOL,
                outcome=runs_pb2.STEP_OUTCOME_SUCCEEDED,
                tool=tool,
                output=output,
                model_tool_call_id=model_call,
            )
        )


def original() -> Events:
    """model(1) → two lookups (2, 3) → model(4) → reply (5) → answer (6)."""
    e = Events()
    e.add(started=runs_pb2.RunStarted(goal="help ops@acme.example", route="default"))
    e.model(1, ("c1", "find", '{"email": "ops@acme.example"}'), ("c2", "search", '{"q": "x"}'))
    e.tool(2, "c1", "find", '{"email": "ops@acme.example"}', "found")
    e.tool(3, "c2", "search", '{"q": "x"}', "tickets")
    e.model(4, ("c3", "reply", '{"body": "hi"}'))
    e.tool(5, "c3", "reply", '{"body": "hi"}', "sent")
    e.model(6, answer="done")
    e.add(completed=runs_pb2.RunCompleted(answer="done", steps=6))
    return e


def test_the_record_lists_every_tool_call_with_what_the_model_was_given() -> None:
    record = RecordedRun.of(RUN, original().events)
    calls = [(c.call_id, c.tool, c.output) for c in record.tool_calls()]
    assert calls == [
        ("run-1:2:1", "find", "found"),
        ("run-1:3:1", "search", "tickets"),
        ("run-1:5:1", "reply", "sent"),
    ]


def test_a_fork_keeps_whole_turns_only() -> None:
    record = RecordedRun.of(RUN, original().events)
    messages, covered = record.fork(3)
    assert covered == 3
    assert [m.role for m in messages] == [
        common_pb2.ChatMessage.ROLE_ASSISTANT,
        common_pb2.ChatMessage.ROLE_TOOL,
        common_pb2.ChatMessage.ROLE_TOOL,
    ]
    assert [m.tool_call_id for m in messages[1:]] == ["c1", "c2"]
    # Step 2 ends inside the first turn (its second lookup is step 3): nothing is kept.
    assert record.fork(2) == ([], 0)
    # The final answer is never forked: the fork redoes it live.
    assert record.fork(6)[1] == 5


def test_a_record_whose_start_expired_or_that_runs_on_is_refused() -> None:
    events = original().events
    with pytest.raises(RecordError, match="retention deleted it"):
        RecordedRun.of(RUN, events[3:])
    with pytest.raises(RecordError, match="has not ended yet"):
        RecordedRun.of(RUN, events[:-1])


def test_replay_ids_are_deterministic_per_settings_and_say_what_they_are() -> None:
    record = RecordedRun.of(RUN, original().events)
    fast = ReplaySettings(route="fast")
    assert replay_goal(record, fast).run_id == replay_goal(record, fast).run_id
    assert replay_goal(record, fast).run_id.startswith("replay-")
    assert replay_goal(record, ReplaySettings(route="cheap")).run_id != (
        replay_goal(record, fast).run_id
    )
    fork = replay_goal(record, ReplaySettings(mode=replay_pb2.REPLAY_MODE_FORK, from_step=3))
    assert fork.run_id.startswith("fork-")
    assert fork.replay.steps_forked == 3
    assert len(fork.replay.forked_messages) == 3


def test_diff_classifies_tool_calls() -> None:
    a = RecordedRun.of(RUN, original().events)
    e = Events("replay-1")
    e.add(started=runs_pb2.RunStarted(goal="help ops@acme.example", route="fast"))
    e.model(1, ("d1", "find", '{"email":"ops@acme.example"}'), ("d2", "lookup", "{}"))
    e.tool(2, "d1", "find", '{"email":"ops@acme.example"}', "found")
    e.tool(3, "d2", "lookup", "{}", "?")
    e.model(4, ("d3", "reply", '{"body": "hello"}'))
    e.tool(5, "d3", "reply", '{"body": "hello"}', "sent")
    e.model(6, answer="done")
    e.add(completed=runs_pb2.RunCompleted(answer="done", steps=6))
    report = compare(a, RecordedRun.of("replay-1", e.events))
    calls = report["tool_calls"]
    assert [c["tool"] for c in calls["same"]] == ["find"]  # key spacing does not matter
    assert [c["tool"] for c in calls["different_arguments"]] == ["reply"]
    assert [c["tool"] for c in calls["new"]] == ["lookup"]
    assert [c["tool"] for c in calls["missing"]] == ["search"]
    assert report["same_answer"]

"""Replays and forks in the planner's core: the settings a replay carries and how a recorded
call is matched (pure: no Kafka, no protobuf).

A replay is an ordinary run whose goal carries the original run's recorded tool calls. When the
model asks for a call whose tool and arguments match a recorded one, the recorded result answers
it and nothing is executed; a diverging call follows the replay's policy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

from stepline_planner.state import Message, Outcome
from stepline_vocab import canonical_arguments

if TYPE_CHECKING:  # outputs imports inputs, which imports this module
    from stepline_planner.outputs import ToolSpec

__all__ = [
    "BUILTIN_SOURCE",
    "Approvals",
    "Divergence",
    "Mode",
    "RecordedCall",
    "Replay",
    "Served",
    "canonical_arguments",
    "match_recorded",
    "may_execute",
]

# The executor's own tools (search, saved SQL queries, calculator…); webhooks and MCP tools have
# other sources. Built-in and idempotent is what a replay treats as read-only.
BUILTIN_SOURCE = "builtin"


class Mode(StrEnum):
    """Replay from the goal, or fork from a recorded step; mirrors `ReplayMode`."""

    REPLAY = "REPLAY"
    FORK = "FORK"


class Divergence(StrEnum):
    """What a tool call matching no recorded call does; mirrors `DivergencePolicy`."""

    STOP = "STOP"
    STUB = "STUB"
    EXECUTE = "EXECUTE"


class Approvals(StrEnum):
    """What an executed call that needs approval does in a replay; mirrors `ReplayApprovals`."""

    DENY = "DENY"
    REQUEST = "REQUEST"


class Served(StrEnum):
    """Where a tool step's result came from; mirrors `ReplayServed`."""

    LIVE = "LIVE"
    RECORDED = "RECORDED"
    STUBBED = "STUBBED"
    DIVERGED = "DIVERGED"
    DENIED = "DENIED"


@dataclass(frozen=True, slots=True)
class RecordedCall:
    """One tool step of the original run: the call and the text the model was given."""

    call_id: str
    tool: str
    arguments_json: str
    output: str
    outcome: Outcome = Outcome.SUCCEEDED
    error_kind: str = ""


@dataclass(frozen=True, slots=True)
class Replay:
    """A replay's settings and record."""

    original_run_id: str
    mode: Mode = Mode.REPLAY
    from_step: int = 0
    route: str = ""
    system_prompt: str = ""
    divergence: Divergence = Divergence.STOP
    execute_tools: tuple[str, ...] = ()
    approvals: Approvals = Approvals.DENY
    recorded: tuple[RecordedCall, ...] = ()
    # FORK: the original's transcript after the goal up to the fork point, and its step count.
    forked: tuple[Message, ...] = field(default=(), compare=False)
    steps_forked: int = 0
    settings_hash: str = ""


def may_execute(replay: Replay, tool: str, spec: ToolSpec | None) -> bool:
    """Whether a diverging call of `tool` may run for real in this replay.

    Only under EXECUTE, and only for tools named explicitly or read-only ones (the executor's
    built-in idempotent tools): webhooks and other side effects need the explicit opt-in.
    """
    if replay.divergence is not Divergence.EXECUTE:
        return False
    if tool in replay.execute_tools:
        return True
    return spec is not None and spec.idempotent and spec.source == BUILTIN_SOURCE


def match_recorded(
    replay: Replay, used: Sequence[int], tool: str, arguments_json: str, read_only: bool
) -> int | None:
    """The index of the recorded call that answers this call, or None (it diverges).

    An unused identical call first, in step order; once every identical call has served, a
    read-only tool is answered again from the last one (reading twice changes nothing), any
    other tool diverges: the original did it fewer times.
    """
    wanted = canonical_arguments(arguments_json)
    same = [
        i
        for i, call in enumerate(replay.recorded)
        if call.tool == tool and canonical_arguments(call.arguments_json) == wanted
    ]
    unused = [i for i in same if i not in used]
    if unused:
        return unused[0]
    if same and read_only:
        return same[-1]
    return None

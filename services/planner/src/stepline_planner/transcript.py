"""Keeping transcripts bounded: token estimates, truncated tool outputs, compacted old turns."""

from __future__ import annotations

import re
from collections.abc import Sequence

from stepline_planner.outputs import ToolSpec
from stepline_planner.state import Message, Role

__all__ = ["COMPACTION_NOTE", "bound_memory", "compact", "estimate_tokens", "truncate"]

# A rough, provider-neutral estimate: about four characters per token, plus framing per message.
_CHARS_PER_TOKEN = 4
_PER_MESSAGE = 8

COMPACTION_NOTE = (
    "[Earlier conversation compacted: {n} messages omitted to fit the context window.]"
)
_NOTE_RE = re.compile(r"\n\n\[Earlier conversation compacted: (\d+) messages omitted[^\]]*\]$")


def estimate_tokens(messages: Sequence[Message], tools: Sequence[ToolSpec] = ()) -> int:
    """Upper-ish estimate of the prompt tokens of `messages` plus tool schemas."""
    chars = 0
    for message in messages:
        chars += len(message.content) + len(message.name)
        for call in message.tool_calls:
            chars += len(call.name) + len(call.arguments_json) + len(call.call_id)
    for tool in tools:
        chars += len(tool.name) + len(tool.description) + len(tool.parameters_json_schema)
    return chars // _CHARS_PER_TOKEN + _PER_MESSAGE * len(messages)


def truncate(text: str, limit: int) -> tuple[str, bool]:
    """`text` cut to `limit` characters with a visible marker, and whether it was cut."""
    if len(text) <= limit:
        return text, False
    omitted = len(text) - limit
    return f"{text[:limit]}\n[… truncated {omitted} characters]", True


def _units(messages: Sequence[Message]) -> list[list[Message]]:
    """Group messages into turns: a user or assistant message with the tool results after it."""
    units: list[list[Message]] = []
    for message in messages:
        if message.role is Role.TOOL and units:
            units[-1].append(message)
        else:
            units.append([message])
    return units


def compact(
    messages: Sequence[Message], max_tokens: int, tools: Sequence[ToolSpec] = ()
) -> tuple[Message, ...]:
    """Drop the oldest whole turns until the prompt fits; keep the system prompt and the goal.

    Turns are dropped whole so every tool result still follows the call it answers, and the
    system prompt gains a note saying how many messages were omitted.
    """
    if estimate_tokens(messages, tools) <= max_tokens or len(messages) < 3:
        return tuple(messages)
    system, rest = messages[0], list(messages[1:])
    goal_index = max((i for i, m in enumerate(rest) if m.role is Role.USER), default=0)
    before, goal, after = rest[:goal_index], rest[goal_index], rest[goal_index + 1 :]
    before_units, after_units = _units(before), _units(after)
    match = _NOTE_RE.search(system.content)
    omitted = int(match.group(1)) if match else 0
    base = system.content[: match.start()] if match else system.content

    def assemble() -> list[Message]:
        note = COMPACTION_NOTE.format(n=omitted)
        head = Message(Role.SYSTEM, f"{base}\n\n{note}", name=system.name)
        kept = [m for u in before_units for m in u] + [goal] + [m for u in after_units for m in u]
        return [head, *kept]

    while estimate_tokens(assemble(), tools) > max_tokens:
        if before_units:
            omitted += len(before_units.pop(0))
        elif len(after_units) > 1:
            omitted += len(after_units.pop(0))
        else:
            break  # only the goal and the latest turn remain: send them, the router decides
    return tuple(assemble())


def bound_memory(memory: Sequence[Message], max_messages: int) -> tuple[Message, ...]:
    """The newest whole turns of a session's memory, at most `max_messages` messages."""
    units = _units([m for m in memory if m.role is not Role.SYSTEM])
    kept: list[list[Message]] = []
    count = 0
    for unit in reversed(units):
        if count + len(unit) > max_messages:
            break
        kept.insert(0, unit)
        count += len(unit)
    # Memory must start with a user turn so providers see a well-formed conversation.
    while kept and kept[0][0].role is not Role.USER:
        kept.pop(0)
    return tuple(m for u in kept for m in u)

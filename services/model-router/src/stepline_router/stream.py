"""Streamed model output as provider-neutral deltas, and the fold that turns them into an answer.

Every provider streams these deltas; the router forwards the content ones to a streaming caller
and folds all of them into the `Completion` a non-streaming caller gets, so both see one truth.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TypeGuard, assert_never

from stepline_router.types import Completion, FinishReason, ToolCall, Usage

__all__ = [
    "ContentDelta",
    "Delta",
    "Finished",
    "Opened",
    "Restarted",
    "StreamFold",
    "TextDelta",
    "ToolCallDelta",
    "UsageDelta",
    "completion_deltas",
    "is_content",
]


@dataclass(frozen=True, slots=True)
class Opened:
    """The provider answered with a 2xx status and the stream began."""

    status_code: int


@dataclass(frozen=True, slots=True)
class TextDelta:
    """A piece of the answer's text."""

    text: str


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A piece of tool call number `index` (0-based): id and name first, then argument text."""

    index: int
    id: str = ""
    name: str = ""
    arguments: str = ""


@dataclass(frozen=True, slots=True)
class UsageDelta:
    """The token counts so far (cumulative: each one replaces the previous)."""

    usage: Usage


@dataclass(frozen=True, slots=True)
class Finished:
    """The model said why it stopped; the stream is complete when the provider ends it."""

    reason: FinishReason
    # The model that answered, when the stream names it.
    model: str = ""


@dataclass(frozen=True, slots=True)
class Restarted:
    """Not a provider delta: the router tells a streaming caller that the answer starts over
    on `deployment` (drop the text received so far), after `reason` broke the first one."""

    deployment: str
    reason: str


Delta = Opened | TextDelta | ToolCallDelta | UsageDelta | Finished
ContentDelta = TextDelta | ToolCallDelta


def is_content(delta: Delta) -> TypeGuard[ContentDelta]:
    """Whether `delta` is output a caller sees (text or a tool call), not bookkeeping."""
    return isinstance(delta, ToolCallDelta) or (isinstance(delta, TextDelta) and bool(delta.text))


@dataclass
class _PartialCall:
    id: str = ""
    name: str = ""
    arguments: str = ""


@dataclass
class StreamFold:
    """Output accumulated from deltas, so a finished or broken stream can be judged."""

    status_code: int = 0
    text: list[str] = field(default_factory=list)
    calls: dict[int, _PartialCall] = field(default_factory=dict)
    finish: FinishReason | None = None
    usage: Usage = field(default_factory=Usage)
    content_seen: bool = False
    model: str = ""
    # Whether the provider reported token counts at all (some servers never do in a stream).
    usage_seen: bool = False

    def add(self, delta: Delta) -> None:
        """Fold one delta in."""
        match delta:
            case Opened(status_code=status):
                self.status_code = status
            case TextDelta(text=text):
                self.text.append(text)
                self.content_seen = self.content_seen or bool(text)
            case ToolCallDelta():
                call = self.calls.setdefault(delta.index, _PartialCall())
                call.id = delta.id or call.id
                call.name = delta.name or call.name
                call.arguments += delta.arguments
                self.content_seen = True
            case UsageDelta(usage=usage):
                self.usage = usage
                self.usage_seen = True
            case Finished(reason=reason, model=model):
                self.finish = reason
                self.model = model or self.model
            case _:
                assert_never(delta)

    def output_text(self) -> str:
        """Everything the model produced so far: text, tool names and arguments."""
        calls = "".join(c.name + c.arguments for c in self.calls.values())
        return "".join(self.text) + calls

    @property
    def tool_call_started(self) -> bool:
        """Whether any tool-call output has arrived."""
        return bool(self.calls)

    def completion(self) -> Completion:
        """The finished answer."""
        calls = self._calls()
        finish = self.finish or (FinishReason.TOOL_CALLS if calls else FinishReason.STOP)
        return Completion(
            "".join(self.text), calls, finish, self.usage, self.status_code, model=self.model
        )

    def incomplete(self, reason: str) -> Completion:
        """The partial answer of a stream that broke after output was handed on."""
        return Completion(
            "".join(self.text),
            self._calls(),
            FinishReason.INCOMPLETE,
            self.usage,
            self.status_code,
            incomplete=True,
            incomplete_reason=reason,
            model=self.model,
        )

    def _calls(self) -> tuple[ToolCall, ...]:
        return tuple(
            ToolCall(c.id, c.name, c.arguments or "{}") for _, c in sorted(self.calls.items())
        )


_PIECES = re.compile(r"\S+\s*|\s+")


def completion_deltas(completion: Completion) -> list[Delta]:
    """A whole answer as the deltas a provider would stream (text word by word)."""
    out: list[Delta] = [TextDelta(piece) for piece in _PIECES.findall(completion.content)]
    for index, call in enumerate(completion.tool_calls):
        out.append(ToolCallDelta(index, call.call_id, call.name))
        out.append(ToolCallDelta(index, arguments=call.arguments_json))
    out.append(UsageDelta(completion.usage))
    out.append(Finished(completion.finish_reason, completion.model))
    return out

"""Stream faults every wire format must meet alike, run against a primary and a fallback server."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from stepline_router.errors import Outcome
from stepline_router.router import CallSucceeded, Router
from stepline_router.types import ToolCall
from tests.router.fakes import FakeProvider, Reply
from tests.router.support import request, weather_tool

__all__ = ["check_cut_streams", "fails_over_from", "retried_on_primary"]

# A streamed answer of these text pieces, in one wire format.
TextStream = Callable[[list[str]], Reply]


async def check_cut_streams(
    router: Router,
    servers: tuple[FakeProvider, FakeProvider],
    text: TextStream,
    cut_call: Reply,
    call_id: str,
) -> None:
    """A stream cut before any output fails over; one cut after a tool call began (`cut_call`,
    arguments `{"ci` so far) is an incomplete answer, never sent to the fallback."""
    primary, fallback = servers
    primary.queue(replace(text(["Hel", "lo"]), cut_after=1))
    fallback.queue(text(["whole"]))
    outcome = await router.complete(request(stream=True))
    assert isinstance(outcome, CallSucceeded)
    assert outcome.completion.content == "whole"
    assert outcome.attempts[0].outcome is Outcome.CONNECTION_FAILED
    primary.queue(cut_call)
    cut = await router.complete(request(stream=True, tools=(weather_tool(),)))
    assert isinstance(cut, CallSucceeded)
    assert cut.completion.incomplete
    assert cut.completion.tool_calls == (ToolCall(call_id, "get_weather", '{"ci'),)
    assert len(fallback.received) == 1


async def retried_on_primary(
    router: Router, primary: FakeProvider, broken: Reply, whole: Reply
) -> CallSucceeded:
    """A malformed stream (`broken`) is retried on the same deployment, which then answers
    `whole` ("fine"); the outcome, for the caller's own checks."""
    primary.queue(broken, whole)
    outcome = await router.complete(request(stream=True))
    assert isinstance(outcome, CallSucceeded)
    assert outcome.completion.content == "fine"
    assert outcome.attempts[0].outcome is Outcome.MALFORMED_RESPONSE
    assert outcome.deployment.name == "primary"
    return outcome


async def fails_over_from(
    router: Router, servers: tuple[FakeProvider, FakeProvider], failing: Reply, whole: Reply
) -> CallSucceeded:
    """A stream failing in band (`failing`, every time) ends on the fallback's `whole` answer
    ("from fallback"); the outcome, for the caller to check how the failure was classified."""
    primary, fallback = servers
    primary.default = lambda _: failing
    fallback.queue(whole)
    result = await router.complete(request(stream=True))
    assert isinstance(result, CallSucceeded)
    assert result.completion.content == "from fallback"
    return result

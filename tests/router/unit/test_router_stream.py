"""Streamed calls: invisible failover before the first token, TTFT, stalls, cuts, cancellation."""

from __future__ import annotations

from stepline_router.clock import ManualClock
from stepline_router.convert import usage_records
from stepline_router.credentials import StaticCredentials
from stepline_router.errors import Outcome, ProviderError
from stepline_router.providers.scripted import ScriptedProvider, ScriptedStream
from stepline_router.router import (
    CallFailed,
    CallStream,
    CallSucceeded,
    Continuation,
    ErrorKind,
    Router,
)
from stepline_router.routes import RoutesConfig
from stepline_router.stream import (
    ContentDelta,
    Finished,
    Opened,
    Restarted,
    TextDelta,
    ToolCallDelta,
    UsageDelta,
)
from stepline_router.types import Completion, FinishReason, Role, Usage
from tests.router.support import BOOK, request, routes

TWO = """
[deployments.primary]
provider = "scripted"
model = "cheap"
timeouts = { first_token_s = 0.2, idle_s = 0.2, total_s = 10 }
[deployments.fallback]
provider = "scripted"
model = "dear"
[routes.default]
deployments = ["primary", "fallback"]
"""

HELLO = ScriptedStream(
    (
        Opened(200),
        UsageDelta(Usage(30, 1)),
        TextDelta(""),
        TextDelta("Hel"),
        TextDelta("lo"),
        UsageDelta(Usage(30, 2)),
        Finished(FinishReason.STOP),
    )
)


def _router(provider: ScriptedProvider, config: RoutesConfig | None = None) -> Router:
    return Router(
        routes=lambda: config or routes(TWO),
        prices=lambda: BOOK,
        providers={"scripted": provider},
        credentials=StaticCredentials({}),
        clock=ManualClock(),
        random=lambda: 0.5,
    )


async def _drain(stream: CallStream) -> list[ContentDelta | Restarted]:
    return [delta async for delta in stream]


async def test_stream_forwards_content_and_folds_the_same_answer() -> None:
    scripted = ScriptedProvider(per_deployment={"primary": [HELLO]})
    stream = _router(scripted).stream(request(stream=True))
    deltas = await _drain(stream)
    assert deltas == [TextDelta("Hel"), TextDelta("lo")]  # bookkeeping is not forwarded
    outcome = stream.outcome
    assert isinstance(outcome, CallSucceeded)
    assert outcome.completion.content == "Hello"
    assert outcome.completion.usage == Usage(30, 2)
    assert [(a.outcome, a.status_code) for a in outcome.attempts] == [(Outcome.SUCCEEDED, 200)]
    # The non-streaming caller gets the same answer from the same scripted stream.
    again = ScriptedProvider(per_deployment={"primary": [HELLO]})
    folded = await _router(again).complete(request(stream=True))
    assert isinstance(folded, CallSucceeded)
    assert folded.completion.content == "Hello"


async def test_failure_before_the_first_token_fails_over_invisibly() -> None:
    broken = ScriptedStream(
        (Opened(200), UsageDelta(Usage(30, 0)), ProviderError(Outcome.SERVER_ERROR, "boom"))
    )
    refused = ProviderError(Outcome.CONNECTION_FAILED, "refused")
    scripted = ScriptedProvider(per_deployment={"primary": [broken, refused], "fallback": [HELLO]})
    stream = _router(scripted).stream(request(stream=True))
    assert "".join(d.text for d in await _drain(stream) if isinstance(d, TextDelta)) == "Hello"
    outcome = stream.outcome
    assert isinstance(outcome, CallSucceeded)
    assert outcome.deployment.name == "fallback"
    assert [(a.number, a.outcome, a.status_code) for a in outcome.attempts] == [
        (1, Outcome.SERVER_ERROR, 200),
        # No HTTP response at all: no status code (never a made-up 200).
        (2, Outcome.CONNECTION_FAILED, 0),
        (3, Outcome.SUCCEEDED, 200),
    ]
    assert outcome.attempts[0].usage == Usage(30, 0)  # billed input of the broken attempt


async def test_headers_then_silence_fails_over_at_the_first_token_limit() -> None:
    silent = ScriptedStream((Opened(200), UsageDelta(Usage(30, 0)), 5.0))
    scripted = ScriptedProvider(per_deployment={"primary": [silent], "fallback": [HELLO]})
    stream = _router(scripted).stream(request(stream=True))
    await _drain(stream)
    outcome = stream.outcome
    assert isinstance(outcome, CallSucceeded)
    assert outcome.deployment.name == "fallback"
    first = outcome.attempts[0]
    assert first.outcome is Outcome.TIMED_OUT
    assert "no first token within 0.2s" in first.error


async def test_cut_after_tokens_ends_incomplete_without_failover() -> None:
    cut = ScriptedStream(
        (Opened(200), TextDelta("Par"), ProviderError(Outcome.CONNECTION_FAILED, "reset"))
    )
    scripted = ScriptedProvider(per_deployment={"primary": [cut], "fallback": [HELLO]})
    stream = _router(scripted).stream(request(stream=True))
    assert await _drain(stream) == [TextDelta("Par")]
    outcome = stream.outcome
    assert isinstance(outcome, CallSucceeded)
    assert outcome.completion.incomplete
    assert outcome.completion.finish_reason is FinishReason.INCOMPLETE
    assert "reset" in outcome.completion.incomplete_reason
    assert [a.outcome for a in outcome.attempts] == [Outcome.INCOMPLETE]
    assert scripted.calls_to("fallback") == 0


async def test_stall_after_tokens_ends_at_the_idle_limit() -> None:
    stall = ScriptedStream(
        (Opened(200), ToolCallDelta(0, "call_1", "lookup"), ToolCallDelta(0, arguments='{"a"'), 5.0)
    )
    scripted = ScriptedProvider(per_deployment={"primary": [stall]})
    stream = _router(scripted).stream(request(stream=True))
    assert len(await _drain(stream)) == 2
    outcome = stream.outcome
    assert isinstance(outcome, CallSucceeded)
    assert outcome.completion.incomplete
    assert "stalled" in outcome.completion.incomplete_reason
    assert outcome.completion.tool_calls[0].name == "lookup"


async def test_bad_request_before_tokens_fails_now() -> None:
    bad = ProviderError(Outcome.CONTEXT_TOO_LONG, "context_length_exceeded", status_code=400)
    scripted = ScriptedProvider(per_deployment={"primary": [bad], "fallback": [bad]})
    stream = _router(scripted).stream(request(stream=True))
    assert await _drain(stream) == []
    outcome = stream.outcome
    assert isinstance(outcome, CallFailed)
    assert outcome.kind is ErrorKind.CONTEXT_TOO_LONG
    assert scripted.calls_to("primary") == 1  # never retried on the same model


async def test_caller_leaving_mid_stream_records_a_cancelled_attempt() -> None:
    slow = ScriptedStream((Opened(200), UsageDelta(Usage(30, 4)), TextDelta("a"), 0.05) * 10)
    scripted = ScriptedProvider(per_deployment={"primary": [slow]})
    stream = _router(scripted).stream(request(stream=True))
    assert await anext(stream) == TextDelta("a")
    outcome = await stream.aclose()
    assert isinstance(outcome, CallFailed)
    assert [(a.outcome, a.usage) for a in outcome.attempts] == [(Outcome.CANCELLED, Usage(30, 4))]
    assert [r.attempt for r in usage_records(request(), outcome)] == [1]


async def test_circuit_open_skip_is_recorded_so_attempt_numbers_have_no_gaps() -> None:
    config = routes(TWO, breaker="failure_threshold = 1\nwindow_s = 60\ncooldown_s = 60")
    down = ProviderError(Outcome.CONNECTION_FAILED, "refused")
    ok = Completion("ok", usage=Usage(10, 1))
    scripted = ScriptedProvider(per_deployment={"primary": [down], "fallback": [ok, ok]})
    router = _router(scripted, config)
    await router.complete(request())
    outcome = await router.complete(request(call_id="run-1:2:1"))
    assert isinstance(outcome, CallSucceeded)
    assert [a.outcome for a in outcome.attempts] == [Outcome.CIRCUIT_OPEN, Outcome.SUCCEEDED]
    records = usage_records(request(call_id="run-1:2:1"), outcome)
    assert [(r.attempt, r.status_code, r.succeeded) for r in records] == [
        (1, 0, False),
        (2, 0, True),
    ]


CONTINUED = """
[deployments.primary]
provider = "scripted"
model = "cheap"
[deployments.plain]
provider = "scripted"
model = "cheap"
[deployments.finisher]
provider = "anthropic"
model = "dear"
[routes.default]
deployments = ["primary", "plain", "finisher"]
"""


def _continuing(scripted: ScriptedProvider, finisher: ScriptedProvider) -> Router:
    return Router(
        routes=lambda: routes(CONTINUED),
        prices=lambda: BOOK,
        providers={"scripted": scripted, "anthropic": finisher},
        credentials=StaticCredentials({}),
        clock=ManualClock(),
        random=lambda: 0.5,
    )


CUT = ScriptedStream(
    (Opened(200), TextDelta("Hello "), ProviderError(Outcome.CONNECTION_FAILED, "reset"))
)


async def test_opt_in_continuation_finishes_a_broken_answer_on_a_prefill_deployment() -> None:
    scripted = ScriptedProvider(per_deployment={"primary": [CUT], "plain": [HELLO]})
    finisher = ScriptedProvider(
        per_deployment={
            "finisher": [
                ScriptedStream((Opened(200), TextDelta(" there"), Finished(FinishReason.STOP)))
            ]
        },
        continues_answers=True,
    )
    stream = _continuing(scripted, finisher).stream(
        request(stream=True), continuation=Continuation.PREFILL
    )
    deltas = await _drain(stream)
    # The caller sees one seamless answer (the prefill's dropped space is not sent twice).
    assert "".join(d.text for d in deltas if isinstance(d, TextDelta)) == "Hello there"
    outcome = stream.outcome
    assert isinstance(outcome, CallSucceeded)
    assert not outcome.completion.incomplete
    assert outcome.completion.content == "Hello there"
    assert outcome.deployment.name == "finisher"
    assert [(a.deployment, a.outcome) for a in outcome.attempts] == [
        ("primary", Outcome.INCOMPLETE),
        ("finisher", Outcome.SUCCEEDED),
    ]
    assert scripted.calls_to("plain") == 0  # it would have started the answer anew
    sent = finisher.calls[0].request.messages[-1]
    assert (sent.role, sent.content) == (Role.ASSISTANT, "Hello")


async def test_without_opt_in_or_a_finisher_the_broken_answer_stays_incomplete() -> None:
    finisher = ScriptedProvider(default=HELLO, continues_answers=True)
    scripted = ScriptedProvider(per_deployment={"primary": [CUT]})
    stream = _continuing(scripted, finisher).stream(request(stream=True))
    await _drain(stream)
    assert isinstance(stream.outcome, CallSucceeded)
    assert stream.outcome.completion.incomplete
    assert finisher.calls == []
    tool_cut = ScriptedStream(
        (Opened(200), ToolCallDelta(0, "c1", "lookup"), ProviderError(Outcome.SERVER_ERROR, "x"))
    )
    scripted = ScriptedProvider(per_deployment={"primary": [tool_cut]})
    stream = _continuing(scripted, finisher).stream(
        request(stream=True), continuation=Continuation.PREFILL
    )
    await _drain(stream)
    assert isinstance(stream.outcome, CallSucceeded)
    assert stream.outcome.completion.incomplete  # tool calls are never continued
    assert finisher.calls == []


async def test_opt_in_restart_answers_anew_where_no_deployment_can_prefill() -> None:
    stalled = ScriptedStream((Opened(200), ProviderError(Outcome.SERVER_ERROR, "down")))
    again = ScriptedStream(
        (Opened(200), TextDelta("Hello "), TextDelta("there"), Finished(FinishReason.STOP))
    )
    # `plain` fails before any output, then answers anew on its retry: no prefill anywhere.
    scripted = ScriptedProvider(per_deployment={"primary": [CUT], "plain": [stalled, again]})
    finisher = ScriptedProvider(default=HELLO)  # cannot continue either
    stream = _continuing(scripted, finisher).stream(
        request(stream=True), continuation=Continuation.RESTART
    )
    deltas = await _drain(stream)
    assert deltas == [
        TextDelta("Hello "),
        Restarted("plain", "stream broke after output was sent: reset"),
        TextDelta("Hello "),
        TextDelta("there"),
    ]
    outcome = stream.outcome
    assert isinstance(outcome, CallSucceeded)
    assert not outcome.completion.incomplete
    assert outcome.completion.content == "Hello there"  # the restarted answer, whole
    assert outcome.deployment.name == "plain"
    assert [(a.deployment, a.outcome) for a in outcome.attempts] == [
        ("primary", Outcome.INCOMPLETE),
        ("plain", Outcome.SERVER_ERROR),
        ("plain", Outcome.SUCCEEDED),
    ]
    assert scripted.calls[-1].request.messages[-1].role is Role.USER  # no prefill sent


async def test_a_restart_that_also_breaks_is_reported_incomplete() -> None:
    scripted = ScriptedProvider(per_deployment={"primary": [CUT], "plain": [CUT]})
    finisher = ScriptedProvider(per_deployment={"finisher": [CUT]})
    stream = _continuing(scripted, finisher).stream(
        request(stream=True), continuation=Continuation.RESTART
    )
    deltas = await _drain(stream)
    assert sum(isinstance(d, Restarted) for d in deltas) == 2
    assert isinstance(stream.outcome, CallSucceeded)
    assert stream.outcome.completion.incomplete  # never a cut answer presented as whole
    assert len(stream.outcome.attempts) == 3


async def test_a_stream_without_token_counts_is_billed_on_an_estimate_and_says_so() -> None:
    # llama-cpp-python's server streams no usage at all, even when asked for it.
    uncounted = ScriptedStream(
        (Opened(200), TextDelta("Hello there, "), TextDelta("friend."), Finished(FinishReason.STOP))
    )
    stream = _router(ScriptedProvider(per_deployment={"primary": [uncounted, HELLO]})).stream(
        request(text="say hello", stream=True)
    )
    await _drain(stream)
    assert isinstance(stream.outcome, CallSucceeded)
    (attempt,) = stream.outcome.attempts
    assert attempt.usage_estimated
    assert attempt.usage.input > 0
    assert attempt.usage.output == 5  # 20 characters at ~4 per token
    assert attempt.cost is not None
    assert attempt.cost > 0
    (record,) = usage_records(request(stream=True), stream.outcome)
    assert record.usage_estimated
    assert record.usage.output_tokens == 5
    # A provider that counts is believed as it is.
    counted = _router(ScriptedProvider(per_deployment={"primary": [HELLO]})).stream(
        request(stream=True)
    )
    await _drain(counted)
    assert isinstance(counted.outcome, CallSucceeded)
    assert not counted.outcome.attempts[0].usage_estimated
    assert counted.outcome.attempts[0].usage == Usage(30, 2)

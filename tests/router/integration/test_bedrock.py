"""Bedrock Converse on loopback: SigV4 checked by the server, event streams, injected faults."""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import replace
from typing import Any

import botocore.session
import httpx
import pytest
from botocore.config import Config as BotocoreConfig
from botocore.exceptions import ClientError

from stepline_router.credentials import StaticCredentials
from stepline_router.errors import Outcome
from stepline_router.router import CallFailed, CallSucceeded, Router
from stepline_router.routes import RoutesConfig
from stepline_router.types import FinishReason, Message, Role, ToolCall
from tests.router.bedrock_fakes import (
    KEY_ID,
    REGION,
    SECRET_KEY,
    SESSION_TOKEN,
    bedrock_exception,
    converse_frames,
    converse_output,
    exception_frame,
    model_of,
    sigv4_guard,
)
from tests.router.fakes import FakeProvider, Reply
from tests.router.stream_faults import check_cut_streams, fails_over_from, retried_on_primary
from tests.router.support import (
    catalog_cost,
    http_router,
    pair_routes,
    request,
    shipped_book,
    weather_tool,
)

MODEL = "amazon.nova-lite-v1:0"
API_KEY = "bedrock-api-key-0123456789"
CREDENTIALS = StaticCredentials(
    {
        "AWS_ACCESS_KEY_ID": KEY_ID,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_SESSION_TOKEN": SESSION_TOKEN,
        "AWS_REGION": REGION,
        "AWS_BEARER_TOKEN_BEDROCK": API_KEY,
    }
)
# An API key alone: no key id, no region (the endpoint is given).
KEY_ONLY = StaticCredentials({"AWS_BEARER_TOKEN_BEDROCK": API_KEY})
BOOK = shipped_book()


@pytest.fixture
def signed(servers: tuple[FakeProvider, FakeProvider]) -> tuple[FakeProvider, FakeProvider]:
    """The two servers, each checking every request's SigV4 signature as Bedrock does."""
    for server in servers:
        server.guard = sigv4_guard(server.url)
    return servers


def _config(
    primary: str, fallback: str, credential: str = "AWS_SECRET_ACCESS_KEY", model: str = MODEL
) -> RoutesConfig:
    return pair_routes(primary, fallback, "bedrock", model, credential=credential)


def _router(config: RoutesConfig, client: httpx.AsyncClient) -> Router:
    return http_router(config, client, CREDENTIALS, BOOK)


def _catalog_cost(input_tokens: int, output: int, read: int = 0, write: int = 0) -> object:
    return catalog_cost(MODEL, "aws", input_tokens, output, read, write)


async def test_converse_signed_tools_cache_usage_and_catalog_price(
    signed: tuple[FakeProvider, FakeProvider], client: httpx.AsyncClient
) -> None:
    primary, fallback = signed
    primary.queue(
        Reply(
            body=converse_output(
                "checking", [("tu_1", "get_weather", {"city": "Oslo"})], cache_read=100
            )
        )
    )
    req = request(tools=(weather_tool(),))
    outcome = await _router(_config(primary.url, fallback.url), client).complete(req)
    assert isinstance(outcome, CallSucceeded)
    completion = outcome.completion
    assert completion.content == "checking"
    assert completion.tool_calls == (ToolCall("tu_1", "get_weather", '{"city": "Oslo"}'),)
    assert completion.finish_reason is FinishReason.TOOL_CALLS
    usage = completion.usage
    assert (usage.input, usage.cached_input, usage.output) == (120, 100, 9)
    assert outcome.attempts[0].cost == _catalog_cost(120, 9, read=100)
    sent = primary.received[0]
    assert sent.path == "/model/amazon.nova-lite-v1:0/converse"
    assert model_of(sent) == MODEL
    assert sent.headers["x-amz-security-token"] == SESSION_TOKEN
    assert sent.body["system"] == [{"text": "be brief"}]
    assert sent.body["toolConfig"]["tools"][0]["toolSpec"]["inputSchema"]["json"]["required"] == [
        "city"
    ]
    # The secret signs; it never travels.
    assert SECRET_KEY not in json.dumps(sent.headers) + sent.raw.decode()


async def test_a_bad_signature_is_refused_and_fails_over(
    signed: tuple[FakeProvider, FakeProvider], client: httpx.AsyncClient
) -> None:
    primary, fallback = signed
    # The primary holds another secret for the key id: the signature cannot match.
    primary.guard = sigv4_guard(primary.url, secret="another-secret-entirely")
    fallback.queue(Reply(body=converse_output("from fallback")))
    outcome = await _router(_config(primary.url, fallback.url), client).complete(request())
    assert isinstance(outcome, CallSucceeded)
    assert outcome.completion.content == "from fallback"
    assert [(a.outcome, a.status_code) for a in outcome.attempts] == [
        (Outcome.AUTH_FAILED, 403),
        (Outcome.SUCCEEDED, 200),
    ]
    assert "InvalidSignatureException" in outcome.attempts[0].error


async def test_throttling_with_retry_after_retries_the_same_deployment(
    signed: tuple[FakeProvider, FakeProvider], client: httpx.AsyncClient
) -> None:
    primary, fallback = signed
    primary.queue(
        bedrock_exception(
            429,
            "ThrottlingException",
            "Too many requests",
            {"retry-after": "0.2", "x-amzn-RequestId": "a1b2c3"},
        ),
        Reply(body=converse_output("after the wait")),
    )
    outcome = await _router(_config(primary.url, fallback.url), client).complete(request())
    assert isinstance(outcome, CallSucceeded)
    assert outcome.deployment.name == "primary"
    assert outcome.attempts[0].outcome is Outcome.RATE_LIMITED
    assert outcome.attempts[0].retry_after_s == pytest.approx(0.2)
    assert outcome.attempts[0].error.endswith("(request a1b2c3)")
    assert fallback.received == []


@pytest.mark.parametrize(
    ("status", "kind", "message", "outcome", "primary_attempts"),
    [
        (503, "ServiceUnavailableException", "unavailable", Outcome.OVERLOADED, 2),
        (429, "ModelNotReadyException", "model is warming up", Outcome.OVERLOADED, 2),
        (500, "InternalServerException", "oops", Outcome.SERVER_ERROR, 2),
        (403, "AccessDeniedException", "not allowed", Outcome.AUTH_FAILED, 1),
        (
            400,
            "ValidationException",
            "Input is too long for requested model.",
            Outcome.CONTEXT_TOO_LONG,
            1,
        ),
    ],
)
async def test_exceptions_retry_or_fail_over(
    signed: tuple[FakeProvider, FakeProvider],
    client: httpx.AsyncClient,
    status: int,
    kind: str,
    message: str,
    outcome: Outcome,
    primary_attempts: int,
) -> None:
    primary, fallback = signed
    primary.default = lambda _: bedrock_exception(status, kind, message)
    fallback.queue(Reply(body=converse_output("from fallback")))
    result = await _router(_config(primary.url, fallback.url), client).complete(request())
    assert isinstance(result, CallSucceeded)
    assert [a.outcome for a in result.attempts] == [outcome] * primary_attempts + [
        Outcome.SUCCEEDED
    ]
    assert kind in result.attempts[0].error


async def test_a_validation_error_fails_now(
    signed: tuple[FakeProvider, FakeProvider], client: httpx.AsyncClient
) -> None:
    primary, fallback = signed
    primary.queue(bedrock_exception(400, "ValidationException", "messages.0: content is empty"))
    outcome = await _router(_config(primary.url, fallback.url), client).complete(request())
    assert isinstance(outcome, CallFailed)
    assert [a.outcome for a in outcome.attempts] == [Outcome.BAD_REQUEST]
    assert not outcome.retryable
    assert fallback.received == []


async def test_guardrail_stop_is_a_content_filter_answer_not_retried(
    signed: tuple[FakeProvider, FakeProvider], client: httpx.AsyncClient
) -> None:
    primary, fallback = signed
    primary.queue(Reply(body=converse_output("Sorry, I can't help.", stop="guardrail_intervened")))
    outcome = await _router(_config(primary.url, fallback.url), client).complete(request())
    assert isinstance(outcome, CallSucceeded)
    assert outcome.completion.finish_reason is FinishReason.CONTENT_FILTER
    assert len(outcome.attempts) == 1
    assert fallback.received == []


async def test_converse_stream_text_tool_use_and_cache_usage(
    signed: tuple[FakeProvider, FakeProvider], client: httpx.AsyncClient
) -> None:
    primary, fallback = signed
    frames = converse_frames(
        ["Let me ", "check. "],
        ("tu_2", "get_weather", ['{"city"', ': "Oslo"}']),
        cache_read=50,
        cache_write=10,
    )
    primary.queue(Reply(frames=frames))
    req = request(stream=True, tools=(weather_tool(),))
    outcome = await _router(_config(primary.url, fallback.url), client).complete(req)
    assert isinstance(outcome, CallSucceeded)
    assert outcome.completion.content == "Let me check. "
    assert outcome.completion.tool_calls == (ToolCall("tu_2", "get_weather", '{"city": "Oslo"}'),)
    assert outcome.completion.finish_reason is FinishReason.TOOL_CALLS
    usage = outcome.completion.usage
    assert (usage.input, usage.cached_input, usage.cache_write_input) == (80, 50, 10)
    assert outcome.attempts[0].cost == _catalog_cost(80, 9, read=50, write=10)
    sent = primary.received[0]
    assert sent.path == "/model/amazon.nova-lite-v1:0/converse-stream"
    assert sent.headers["accept"] == "application/vnd.amazon.eventstream"


async def test_stream_cut_before_output_fails_over_and_after_a_tool_call_is_incomplete(
    signed: tuple[FakeProvider, FakeProvider], client: httpx.AsyncClient
) -> None:
    primary, fallback = signed
    frames = converse_frames(tool_use=("tu_3", "get_weather", ['{"ci', 'ty": "Oslo"}']))
    await check_cut_streams(
        _router(_config(primary.url, fallback.url), client),
        signed,
        lambda texts: Reply(frames=converse_frames(texts)),
        Reply(frames=frames, cut_after=3),  # start, tool start, first arguments
        "tu_3",
    )


async def test_a_corrupt_frame_is_malformed_and_retried(
    signed: tuple[FakeProvider, FakeProvider], client: httpx.AsyncClient
) -> None:
    primary, fallback = signed
    frames = converse_frames(["fine"])
    broken = bytearray(frames[1])
    broken[-6] ^= 0xFF  # a payload byte: the message CRC no longer matches
    outcome = await retried_on_primary(
        _router(_config(primary.url, fallback.url), client),
        primary,
        Reply(frames=[frames[0], bytes(broken), *frames[2:]]),
        Reply(frames=frames),
    )
    assert "ChecksumMismatch" in outcome.attempts[0].error


@pytest.mark.parametrize(
    ("kind", "message", "outcome"),
    [
        ("throttlingException", "slow down", Outcome.RATE_LIMITED),
        ("modelStreamErrorException", "model broke", Outcome.SERVER_ERROR),
        ("validationException", "Input is too long for requested model.", Outcome.CONTEXT_TOO_LONG),
    ],
)
async def test_stream_exception_events_are_classified(
    signed: tuple[FakeProvider, FakeProvider],
    client: httpx.AsyncClient,
    kind: str,
    message: str,
    outcome: Outcome,
) -> None:
    primary, fallback = signed
    result = await fails_over_from(
        _router(_config(primary.url, fallback.url), client),
        signed,
        Reply(frames=[converse_frames(["x"])[0], exception_frame(kind, message)]),
        Reply(frames=converse_frames(["from fallback"])),
    )
    assert result.attempts[0].outcome is outcome
    assert result.attempts[0].status_code == 200


async def test_a_bedrock_api_key_is_sent_as_a_bearer_token(
    signed: tuple[FakeProvider, FakeProvider], client: httpx.AsyncClient
) -> None:
    primary, fallback = signed
    primary.guard = lambda _: None
    primary.queue(Reply(body=converse_output("keyed")))
    config = _config(primary.url, fallback.url, credential="AWS_BEARER_TOKEN_BEDROCK")
    outcome = await http_router(config, client, KEY_ONLY, BOOK).complete(request())
    assert isinstance(outcome, CallSucceeded)
    assert primary.received[0].headers["authorization"] == f"Bearer {API_KEY}"
    assert "x-amz-date" not in primary.received[0].headers


async def test_a_tool_transcript_is_sent_as_tool_use_and_tool_result_blocks(
    signed: tuple[FakeProvider, FakeProvider], client: httpx.AsyncClient
) -> None:
    primary, fallback = signed
    primary.queue(Reply(body=converse_output("Rome is sunny too")))
    req = replace(
        request(tools=(weather_tool(),)),
        messages=(
            Message(Role.SYSTEM, "be brief"),
            Message(Role.USER, "weather?"),
            Message(Role.ASSISTANT, "", (ToolCall("tu_0", "get_weather", '{"city":"Rome"}'),)),
            Message(Role.TOOL, "sunny", tool_call_id="tu_0"),
        ),
    )
    outcome = await _router(_config(primary.url, fallback.url), client).complete(req)
    assert isinstance(outcome, CallSucceeded)
    messages = primary.received[0].body["messages"]
    assert messages[1] == {
        "role": "assistant",
        "content": [
            {"toolUse": {"toolUseId": "tu_0", "name": "get_weather", "input": {"city": "Rome"}}}
        ],
    }
    assert messages[2] == {
        "role": "user",
        "content": [{"toolResult": {"toolUseId": "tu_0", "content": [{"text": "sunny"}]}}],
    }


async def test_no_secret_reaches_the_logs_even_at_debug(
    signed: tuple[FakeProvider, FakeProvider],
    client: httpx.AsyncClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    primary, fallback = signed
    caplog.set_level(logging.DEBUG)
    primary.queue(bedrock_exception(400, "ValidationException", "bad input"))
    outcome = await _router(_config(primary.url, fallback.url), client).complete(request())
    assert isinstance(outcome, CallFailed)
    assert caplog.records  # the call was logged at all
    for secret in (SECRET_KEY, SESSION_TOKEN):
        assert secret not in caplog.text
        assert secret not in outcome.message


async def test_an_inference_profile_arn_is_signed_as_sent(
    signed: tuple[FakeProvider, FakeProvider], client: httpx.AsyncClient
) -> None:
    primary, fallback = signed
    arn = "arn:aws:bedrock:eu-central-1:123456789012:inference-profile/eu.amazon.nova-lite-v1:0"
    primary.queue(Reply(body=converse_output("via the profile")))
    outcome = await _router(_config(primary.url, fallback.url, model=arn), client).complete(
        request()
    )
    assert isinstance(outcome, CallSucceeded), outcome
    assert model_of(primary.received[0]) == arn
    assert "%2F" in primary.received[0].path


async def test_malformed_json_and_a_stalled_stream(
    signed: tuple[FakeProvider, FakeProvider], client: httpx.AsyncClient
) -> None:
    primary, fallback = signed
    config = _config(primary.url, fallback.url)
    primary.queue(Reply(raw=b'{"output": {"mess'), Reply(body=converse_output("fine")))
    outcome = await _router(config, client).complete(request())
    assert isinstance(outcome, CallSucceeded)
    assert [a.outcome for a in outcome.attempts] == [Outcome.MALFORMED_RESPONSE, Outcome.SUCCEEDED]
    primary.queue(Reply(frames=converse_frames(["Hel", "lo"]), hang_after=1, hang_s=3))
    fallback.queue(Reply(frames=converse_frames(["on time"])))
    stalled = await _router(config, client).complete(request(stream=True))
    assert isinstance(stalled, CallSucceeded)
    assert stalled.completion.content == "on time"
    assert stalled.attempts[0].outcome is Outcome.TIMED_OUT


async def test_botocores_own_client_talks_to_the_test_server(
    signed: tuple[FakeProvider, FakeProvider],
) -> None:
    """The fake is faithful: AWS's own client signs for it and parses its answers and frames."""
    primary, _ = signed
    primary.queue(
        Reply(body=converse_output("hi", [("tu_1", "get_weather", {"city": "Oslo"})])),
        Reply(frames=converse_frames(["a", "b"], ("tu_2", "get_weather", ['{"city"', ": 1}"]))),
        bedrock_exception(429, "ThrottlingException", "slow down"),
    )

    def call() -> tuple[Any, list[Any], str]:
        # Typed stubs know no service methods: botocore generates them at run time.
        client: Any = botocore.session.get_session().create_client(
            "bedrock-runtime",
            region_name=REGION,
            endpoint_url=primary.url,
            aws_access_key_id=KEY_ID,
            aws_secret_access_key=SECRET_KEY,
            aws_session_token=SESSION_TOKEN,
            config=BotocoreConfig(retries={"total_max_attempts": 1}),
        )
        messages = [{"role": "user", "content": [{"text": "hi"}]}]
        answer = client.converse(modelId=MODEL, messages=messages)
        events = list(client.converse_stream(modelId=MODEL, messages=messages)["stream"])
        try:
            client.converse(modelId=MODEL, messages=messages)
        except ClientError as error:
            return answer, events, str(error.response["Error"]["Code"])
        raise AssertionError("the throttling answer was not an error to botocore")

    answer, events, code = await asyncio.to_thread(call)
    assert answer["output"]["message"]["content"][1]["toolUse"]["input"] == {"city": "Oslo"}
    assert answer["usage"]["inputTokens"] == 20
    assert [next(iter(e)) for e in events][-2:] == ["messageStop", "metadata"]
    assert code == "ThrottlingException"
    # Every request botocore signed passed the server's signature check.
    assert [model_of(r) for r in primary.received] == [MODEL] * 3

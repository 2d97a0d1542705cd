"""The HTTP gateway in a real router process, called by the official OpenAI and Anthropic SDKs.

Behind the router: local servers speaking the providers' wire formats with injected faults.
Every test checks what the caller gets: a whole answer, or an explicit error — never a cut
answer that looks complete.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from stepline.v1 import model_pb2, usage_pb2
from stepline_router.clock import SystemClock
from stepline_router.credentials import StaticCredentials
from stepline_router.gateway import Gateway
from stepline_router.http_api import API_NAMES, build_app
from stepline_router.router import Router
from stepline_runtime.settings import KafkaSettings, namespaced
from stepline_runtime.topics import Topics
from tests.kafkatools import read_all
from tests.router.fakes import (
    FakeProvider,
    Received,
    Reply,
    anthropic_events,
    anthropic_message,
    openai_chunks,
    openai_completion,
    openai_embeddings,
    openai_error,
)
from tests.router.keys_twin import keys_from_json
from tests.router.support import BOOK, free_port, routes, spawn

pytestmark = pytest.mark.kafka

ROOT = Path(__file__).resolve().parents[3]
KEY = "sk-stepline-acme-0001"
KEYS = [
    {"secret": KEY, "key_id": "k-acme", "tenant": "acme"},
    {"secret": "sk-read-only", "key_id": "k-ro", "tenant": "acme", "scopes": ["runs:read"]},
    {
        "secret": "sk-narrow",
        "key_id": "k-narrow",
        "tenant": "beta",
        "routes": ["default"],
        "models": ["primary", "fallback"],
    },
    {"secret": "sk-limited", "key_id": "k-limited", "tenant": "acme", "requests": 1},
    {
        "secret": "sk-beta-embed",
        "key_id": "k-beta-embed",
        "tenant": "beta",
        "routes": ["embed"],
        "models": ["embed-primary", "embed-fallback"],
    },
]
WEATHER: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def _openai_default(request: Received) -> Reply:
    if request.path.endswith("/embeddings"):
        count = len((request.body or {}).get("input") or [])
        return Reply(body=openai_embeddings([[0.5, -0.5, 0.25]] * count))
    if (request.body or {}).get("stream"):
        return Reply(events=openai_chunks(["Hel", "lo", " there"]))
    return Reply(body=openai_completion("hello there"))


def _anthropic_default(request: Received) -> Reply:
    if (request.body or {}).get("stream"):
        return Reply(events=anthropic_events(["Bon", "jour"]))
    return Reply(body=anthropic_message("bonjour"))


@dataclass
class Stack:
    """The router process and the provider servers behind it."""

    url: str
    primary: FakeProvider
    fallback: FakeProvider
    claude: FakeProvider
    namespace: str
    log: Path

    def reset(self) -> None:
        """Forget queued replies and received requests."""
        for fake in (self.primary, self.fallback, self.claude):
            fake.replies.clear()
            fake.received.clear()

    def openai(self, key: str = KEY, retries: int = 0) -> openai.AsyncOpenAI:
        """The OpenAI SDK pointed at the gateway."""
        return openai.AsyncOpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=retries)

    def anthropic(self, key: str = KEY) -> anthropic.AsyncAnthropic:
        """The Anthropic SDK pointed at the gateway."""
        return anthropic.AsyncAnthropic(base_url=self.url, api_key=key, max_retries=0)


def _routes(path: Path, primary: str, fallback: str, claude: str) -> None:
    quick = "{ connect_s = 1, first_byte_s = 5, total_s = 10, first_token_s = 1, idle_s = 1 }"
    path.write_text(
        f"""
[defaults]
backoff_base_s = 0.05
backoff_cap_s = 0.1
[breaker]
failure_threshold = 1000  # faults injected on purpose must not open a circuit here
[deployments.primary]
provider = "openai"
model = "gpt-4o-mini"
base_url = "{primary}/v1"
timeouts = {quick}
[deployments.fallback]
provider = "openai"
model = "gpt-4o"
base_url = "{fallback}/v1"
timeouts = {quick}
[deployments.claude]
provider = "anthropic"
model = "claude-haiku-4-5"
base_url = "{claude}"
timeouts = {quick}
[deployments.embed-primary]
provider = "openai"
model = "text-embedding-3-small"
base_url = "{primary}/v1"
capabilities = {{ chat = false, embeddings = true }}
timeouts = {quick}
[deployments.embed-fallback]
provider = "openai"
model = "text-embedding-3-large"
base_url = "{fallback}/v1"
capabilities = {{ chat = false, embeddings = true }}
timeouts = {quick}
[deployments.embed-local]
provider = "local"
model = "stepline-local-1"
capabilities = {{ embeddings = true }}
[routes.embed]
deployments = ["embed-primary", "embed-fallback"]
[routes.offline]
deployments = ["embed-local"]
[routes.default]
deployments = ["primary", "fallback"]
[routes.claude]
deployments = ["claude", "fallback"]
[routes.mixed]
deployments = ["primary", "claude"]
""",
        encoding="utf-8",
    )


@pytest.fixture(scope="module")
async def stack(
    kafka: KafkaSettings, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    """One router process (keys twin) in its own topic namespace, three provider servers."""
    del kafka  # the broker must be there; the router creates its topics itself
    tmp = tmp_path_factory.mktemp("gateway")
    primary = await FakeProvider(_openai_default).start()
    fallback = await FakeProvider(_openai_default).start()
    claude = await FakeProvider(_anthropic_default).start()
    routes = tmp / "routes.toml"
    _routes(routes, primary.url, fallback.url, claude.url)
    port = free_port()
    namespace = f"t{uuid.uuid4().hex[:10]}"
    env = {
        **os.environ,
        "STEPLINE_TOPIC_NAMESPACE": namespace,
        "STEPLINE_ROUTES": str(routes),
        "STEPLINE_GRPC_ENABLED": "false",
        "STEPLINE_HTTP_PORT": str(port),
        "STEPLINE_PARTITIONS": "1",
        "STEPLINE_TEST_KEYS": json.dumps(KEYS),
    }
    log = tmp / "router.log"
    process = spawn("tests.router.gateway_main", env, log)
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient() as client:
            for _ in range(300):
                try:
                    ready = await client.get(f"{url}/v1/models", headers={"x-api-key": KEY})
                    if ready.status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert process.poll() is None, log.read_text()[-3000:]
                await asyncio.sleep(0.1)
            else:
                raise AssertionError(f"the gateway did not start: {log.read_text()[-3000:]}")
        yield Stack(url, primary, fallback, claude, namespace, log)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.to_thread(process.wait, 30)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
        for fake in (primary, fallback, claude):
            await fake.stop()
    assert code == 0, log.read_text()[-3000:]


@pytest.fixture
def gw(stack: Stack) -> Stack:
    """The stack with empty queues."""
    stack.reset()
    return stack


async def test_openai_sdk_answer_names_the_deployment_and_carries_cost_headers(gw: Stack) -> None:
    raw = await gw.openai().chat.completions.with_raw_response.create(
        model="default",
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
        temperature=0.2,
        max_tokens=50,
        stop=["\n\n"],
        seed=7,
        user="someone-else",
    )
    answer = raw.parse()
    assert answer.choices[0].message.content == "hello there"
    assert answer.choices[0].finish_reason == "stop"
    assert answer.model == "primary"  # the deployment that answered
    assert answer.usage is not None
    assert answer.usage.prompt_tokens == 11
    assert raw.headers["x-request-id"] == answer.id
    assert raw.headers["x-stepline-attempts"] == "1"
    assert raw.headers["x-stepline-deployment"] == "primary"
    assert raw.headers["x-stepline-cost"] == "0.00000585"  # 11×0.15/M + 7×0.60/M
    sent = gw.primary.received[0].body
    assert sent["model"] == "gpt-4o-mini"
    assert (sent["temperature"], sent["max_completion_tokens"], sent["stop"], sent["seed"]) == (
        0.2,
        50,
        ["\n\n"],
        7,
    )


async def _weather_app(client: openai.AsyncOpenAI, model: str, stream: bool) -> str:
    """An application written against the OpenAI SDK: tool call, tool result, final answer."""
    messages: list[Any] = [{"role": "user", "content": "Weather in Paris?"}]
    first: Any
    created: Any
    if stream:
        async with client.chat.completions.stream(
            model=model, messages=messages, tools=[WEATHER]
        ) as events:
            first = await events.get_final_completion()
    else:
        first = await client.chat.completions.create(
            model=model, messages=messages, tools=[WEATHER]
        )
    call = first.choices[0].message.tool_calls[0]
    assert call.type == "function"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    messages += [
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": '{"temp_c": 21}'},
    ]
    if stream:
        text = ""
        created = await client.chat.completions.create(
            model=model, messages=messages, tools=[WEATHER], stream=True
        )
        async for chunk in created:
            if chunk.choices and chunk.choices[0].delta.content:
                text += chunk.choices[0].delta.content
        return text
    final = await client.chat.completions.create(model=model, messages=messages, tools=[WEATHER])
    return final.choices[0].message.content or ""


@pytest.mark.parametrize("stream", [False, True])
async def test_an_openai_sdk_app_switches_by_base_url_and_key_only(gw: Stack, stream: bool) -> None:
    arguments = ['{"ci', 'ty": "Pa', 'ris"}']
    if stream:
        gw.primary.queue(
            Reply(events=openai_chunks(tool_calls=[("call_1", "get_weather", arguments)])),
            Reply(events=openai_chunks(["It is ", "21 °C."])),
        )
    else:
        gw.primary.queue(
            Reply(body=openai_completion(None, [("call_1", "get_weather", "".join(arguments))])),
            Reply(body=openai_completion("It is 21 °C.")),
        )
    # The app's own client, configured like any OpenAI app: only base_url and key differ.
    client = openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key=KEY)
    assert await _weather_app(client, "default", stream) == "It is 21 °C."
    second = gw.primary.received[1].body
    assert second["messages"][-1] == {
        "role": "tool",
        "tool_call_id": "call_1",
        "content": '{"temp_c": 21}',
    }
    assert second["messages"][1]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert second["tools"][0]["function"]["name"] == "get_weather"


async def test_stream_with_usage_and_json_schema(gw: Stack) -> None:
    gw.primary.queue(Reply(events=openai_chunks(['{"answer":', ' "4"}'])))
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}}
    response_format: Any = {
        "type": "json_schema",
        "json_schema": {"name": "answer", "schema": schema, "strict": True},
    }
    chunks = await gw.openai().chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": "2+2 as JSON"}],
        response_format=response_format,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, finish, usage, models = "", None, None, set()
    async for chunk in chunks:
        models.add(chunk.model)
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage:
            usage = chunk.usage
    assert json.loads(text) == {"answer": "4"}
    assert finish == "stop"
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (11, 7)
    assert models == {"primary"}
    sent = gw.primary.received[0].body
    assert sent["response_format"]["json_schema"]["schema"] == schema
    assert sent["stream"] is True


async def _collect(stream: Any, seen: list[Any] | None = None) -> tuple[str, str | None]:
    text, finish = "", None
    async for chunk in stream:
        if seen is not None:
            seen.append(chunk)
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
    return text, finish


async def test_headers_then_silence_fails_over_before_the_first_token(gw: Stack) -> None:
    gw.primary.queue(Reply(events=openai_chunks(["never"]), hang_after=0, hang_s=5))
    started = time.monotonic()
    raw = await gw.openai().chat.completions.with_raw_response.create(
        model="default", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    seen: list[Any] = []
    text, finish = await _collect(raw.parse(), seen)
    assert (text, finish) == ("Hello there", "stop")  # the fallback's whole answer, no seam
    assert raw.headers["x-stepline-deployment"] == "fallback"
    assert raw.headers["x-stepline-attempts"] == "2"
    # The stream's last chunk tells what headers could not: attempts, cost, who answered.
    summary = next(c.model_extra["stepline"] for c in seen if "stepline" in c.model_extra)
    assert (summary["attempts"], summary["deployment"]) == (2, "fallback")
    assert summary["cost"] == "0.0000975"  # gpt-4o: 11 × 2.50/M + 7 × 10.00/M
    assert 1.0 <= time.monotonic() - started < 4.0  # the 1 s first-token limit, not 5 s


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        (Reply(events=openai_chunks(["Hel", "lo", " the", "re"]), hang_after=3), "stalled"),
        (Reply(events=openai_chunks(["Hel", "lo", " the", "re"]), cut_after=3), "cut"),
        (
            Reply(events=[*openai_chunks(["Hel", "lo"])[:3], "data: {not json", "data: [DONE]"]),
            "not valid JSON",
        ),
        # No finish reason and no [DONE]: a clean end of the HTTP body is still a cut answer.
        (Reply(events=openai_chunks(["Hel", "lo", " the", "re"])[:4]), "[DONE]"),
    ],
    ids=["stall", "cut", "malformed", "no-done"],
)
async def test_a_stream_broken_after_tokens_ends_with_an_error_never_complete(
    gw: Stack, fault: Reply, reason: str
) -> None:
    gw.primary.queue(fault)
    stream = await gw.openai().chat.completions.create(
        model="default", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    seen: list[Any] = []
    with pytest.raises(openai.APIError) as error:
        await _collect(stream, seen)
    text = "".join(c.choices[0].delta.content or "" for c in seen if c.choices)
    finish = {c.choices[0].finish_reason for c in seen if c.choices} - {None}
    assert text.startswith("Hel")
    assert text != "Hello there"
    assert not finish  # never marked complete
    assert reason in str(error.value)
    assert gw.fallback.received == []  # no second model stitched in silently


async def test_malformed_first_chunk_fails_over_invisibly(gw: Stack) -> None:
    gw.primary.queue(Reply(events=["data: {not json"]), Reply(events=["data: {not json either"]))
    stream = await gw.openai().chat.completions.create(
        model="default", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    assert await _collect(stream) == ("Hello there", "stop")
    assert len(gw.primary.received) == 2  # retried once (malformed is retryable), then failover


async def test_429_retry_after_is_honoured(gw: Stack) -> None:
    gw.primary.queue(
        Reply(
            429,
            {"error": {"message": "slow down", "type": "requests", "code": "rate_limit_exceeded"}},
            headers={"retry-after": "1"},
        )
    )
    started = time.monotonic()
    answer = await gw.openai().chat.completions.create(
        model="default", messages=[{"role": "user", "content": "hi"}]
    )
    assert answer.model == "primary"
    assert time.monotonic() - started >= 1.0
    assert len(gw.primary.received) == 2


async def test_rate_limited_everywhere_is_a_429_with_retry_after(gw: Stack) -> None:
    limited = Reply(
        429,
        {"error": {"message": "slow down", "type": "requests", "code": "rate_limit_exceeded"}},
        headers={"retry-after": "60"},
    )
    gw.primary.queue(limited)
    gw.fallback.queue(limited)
    with pytest.raises(openai.RateLimitError) as error:
        await gw.openai().chat.completions.create(
            model="default", messages=[{"role": "user", "content": "hi"}]
        )
    assert error.value.response.headers["retry-after"] == "60"


async def test_context_length_400_is_not_retried_on_the_same_model(gw: Stack) -> None:
    too_long = openai_error(
        400,
        "This model's maximum context length is 128000 tokens",
        "invalid_request_error",
        "context_length_exceeded",
    )
    gw.primary.queue(too_long)
    gw.fallback.queue(too_long)
    with pytest.raises(openai.BadRequestError) as error:
        await gw.openai().chat.completions.create(
            model="default", messages=[{"role": "user", "content": "x" * 1000}]
        )
    assert error.value.code == "context_length_exceeded"
    assert (len(gw.primary.received), len(gw.fallback.received)) == (1, 1)


async def test_content_filter_refusal_is_final_and_says_why(gw: Stack) -> None:
    gw.primary.queue(
        openai_error(
            400,
            "Your request was rejected as a result of our safety system",
            "invalid_request_error",
            "content_policy_violation",
        )
    )
    with pytest.raises(openai.BadRequestError) as error:
        await gw.openai().chat.completions.create(
            model="default", messages=[{"role": "user", "content": "something bad"}]
        )
    assert error.value.code == "content_filter"
    assert "safety system" in str(error.value)
    assert gw.fallback.received == []


async def test_keys_401_403_429_in_each_api_format(gw: Stack) -> None:
    hi: list[Any] = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.AuthenticationError):
        await gw.openai(key="sk-wrong").chat.completions.create(model="default", messages=hi)
    with pytest.raises(openai.PermissionDeniedError):
        await gw.openai(key="sk-read-only").chat.completions.create(model="default", messages=hi)
    with pytest.raises(openai.PermissionDeniedError) as denied:
        await gw.openai(key="sk-narrow").chat.completions.create(model="claude", messages=hi)
    assert "route 'claude'" in str(denied.value)
    with pytest.raises(openai.NotFoundError):
        await gw.openai().chat.completions.create(model="no-such-model", messages=hi)
    await gw.openai(key="sk-limited").chat.completions.create(model="default", messages=hi)
    with pytest.raises(openai.RateLimitError) as limited:
        await gw.openai(key="sk-limited").chat.completions.create(model="default", messages=hi)
    assert limited.value.response.headers["retry-after"] == "7"
    with pytest.raises(anthropic.AuthenticationError) as unknown:
        await gw.anthropic(key="sk-wrong").messages.create(
            model="claude", max_tokens=10, messages=hi
        )
    assert unknown.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    with pytest.raises(anthropic.RateLimitError):
        await gw.anthropic(key="sk-limited").messages.create(
            model="claude", max_tokens=10, messages=hi
        )
    models = await gw.openai(key="sk-narrow").models.list()
    assert [m.id for m in models.data] == ["default", "fallback", "primary"]
    everything = {m.id async for m in gw.openai().models.list()}
    assert everything == {
        "claude",
        "default",
        "fallback",
        "mixed",
        "primary",
        "embed",
        "offline",
        "embed-primary",
        "embed-fallback",
        "embed-local",
    }
    assert {m.id async for m in gw.anthropic().models.list()} == everything


async def test_anthropic_sdk_messages_tools_and_stream(gw: Stack) -> None:
    client = gw.anthropic()
    answer = await client.messages.create(
        model="claude",
        max_tokens=100,
        system="be brief",
        messages=[{"role": "user", "content": "hi"}],
    )
    assert answer.model == "claude"
    assert answer.content[0].type == "text"
    assert answer.content[0].text == "bonjour"
    assert answer.stop_reason == "end_turn"
    assert (answer.usage.input_tokens, answer.usage.output_tokens) == (20, 9)
    gw.claude.queue(
        Reply(body=anthropic_message("", [("toolu_1", "get_weather", {"city": "Paris"})]))
    )
    tool: Any = {
        "name": "get_weather",
        "description": "Current weather for a city",
        "input_schema": WEATHER["function"]["parameters"],
    }
    first = await client.messages.create(
        model="claude",
        max_tokens=100,
        tools=[tool],
        messages=[{"role": "user", "content": "Weather in Paris?"}],
    )
    use = first.content[0]
    assert use.type == "tool_use"
    assert use.input == {"city": "Paris"}
    assert first.stop_reason == "tool_use"
    turns: Any = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": [use.model_dump()]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "21 °C"}],
        },
    ]
    async with client.messages.stream(
        model="claude",
        max_tokens=100,
        tools=[tool],
        messages=turns,
    ) as stream:
        final = await stream.get_final_message()
    assert final.content[0].type == "text"
    assert final.content[0].text == "Bonjour"
    assert final.stop_reason == "end_turn"
    sent = gw.claude.received[-1].body
    assert sent["messages"][-1]["content"][0] == {
        "type": "tool_result",
        "tool_use_id": "toolu_1",
        "content": "21 °C",
    }


async def test_anthropic_stream_cut_after_tokens_is_an_error_event(gw: Stack) -> None:
    gw.claude.queue(Reply(events=anthropic_events(["Bon", "jour", " à", " tous"]), cut_after=5))
    pieces: list[str] = []

    async def read() -> None:
        async with gw.anthropic().messages.stream(
            model="claude", max_tokens=100, messages=[{"role": "user", "content": "hi"}]
        ) as stream:
            async for piece in stream.text_stream:
                pieces.append(piece)

    with pytest.raises(anthropic.APIStatusError) as error:
        await read()
    text = "".join(pieces)
    assert text.startswith("Bon")
    assert text != "Bonjour à tous"
    assert "cut" in str(error.value)
    assert gw.fallback.received == []


async def test_anthropic_version_header_is_required(gw: Stack) -> None:
    async with httpx.AsyncClient() as client:
        response = await client.post(
            f"{gw.url}/v1/messages",
            headers={"x-api-key": KEY},
            json={
                "model": "claude",
                "max_tokens": 5,
                "messages": [{"role": "user", "content": "x"}],
            },
        )
        bad = await client.post(
            f"{gw.url}/v1/chat/completions",
            headers={"authorization": f"Bearer {KEY}"},
            content=b"{not json",
        )
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert "anthropic-version" in response.json()["error"]["message"]
    assert bad.status_code == 400
    assert bad.json()["error"]["type"] == "invalid_request_error"


async def test_every_attempt_is_billed_to_the_keys_tenant(gw: Stack, kafka: KafkaSettings) -> None:
    gw.primary.queue(Reply(events=openai_chunks(["never"]), hang_after=0, hang_s=3))
    raw = await gw.openai(key="sk-narrow").chat.completions.with_raw_response.create(
        model="default",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        user="tenant-from-the-request",
    )
    await _collect(raw.parse())
    call_id = raw.headers["x-request-id"]
    topic = namespaced(Topics.USAGE, gw.namespace)
    mine: list[usage_pb2.UsageRecorded] = []
    deadline = time.monotonic() + 20
    while len(mine) < 2 and time.monotonic() < deadline:
        records = await read_all(kafka, topic, expect=10_000, timeout_s=2)
        decoded = [usage_pb2.UsageRecorded.FromString(r.value or b"") for r in records]
        mine = sorted((u for u in decoded if u.call_id == call_id), key=lambda u: u.attempt)
    assert [(u.attempt, u.deployment, u.tenant_id) for u in mine] == [
        (1, "primary", "beta"),
        (2, "fallback", "beta"),
    ]
    assert mine[0].outcome == model_pb2.MODEL_ATTEMPT_OUTCOME_TIMED_OUT
    assert mine[0].status_code == 200
    assert mine[1].succeeded
    assert mine[1].priced
    assert mine[1].usage.output_tokens == 7
    assert mine[1].usage_id == f"{call_id}/attempt/2"


async def test_opt_in_continuation_finishes_a_cut_stream_on_a_prefill_deployment(
    gw: Stack,
) -> None:
    gw.primary.queue(Reply(events=openai_chunks(["Hel", "lo", " the", "re"]), cut_after=3))
    gw.claude.queue(Reply(events=anthropic_events([" there"])))
    stream = await gw.openai().chat.completions.create(
        model="mixed",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        extra_headers={"x-stepline-continue": "true"},
    )
    assert await _collect(stream) == ("Hello there", "stop")
    prefill = gw.claude.received[0].body["messages"][-1]
    assert prefill == {"role": "assistant", "content": [{"type": "text", "text": "Hello"}]}


async def test_one_api_to_every_model_across_wire_formats(gw: Stack) -> None:
    # The Anthropic SDK on an OpenAI route, the OpenAI SDK on an Anthropic route.
    answer = await gw.anthropic().messages.create(
        model="default", max_tokens=50, messages=[{"role": "user", "content": "hi"}]
    )
    assert answer.model == "primary"
    assert answer.content[0].type == "text"
    assert answer.content[0].text == "hello there"
    assert (answer.usage.input_tokens, answer.usage.output_tokens) == (11, 7)
    stream = await gw.openai().chat.completions.create(
        model="claude", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    assert await _collect(stream) == ("Bonjour", "stop")
    assert gw.claude.received[-1].headers["anthropic-version"]


async def test_a_caller_who_leaves_mid_stream_stops_the_provider_and_is_billed(
    gw: Stack, kafka: KafkaSettings
) -> None:
    events = openai_chunks(["Hel", "lo", " the", "re", " and", " more"])
    # Output keeps coming, slower than the caller reads it (but never idle past the limit).
    gw.primary.queue(Reply(events=events, hang_after=3, hang_s=0.5))
    async with (
        httpx.AsyncClient() as client,
        client.stream(
            "POST",
            f"{gw.url}/v1/chat/completions",
            headers={"authorization": f"Bearer {KEY}"},
            json={
                "model": "default",
                "messages": [{"role": "user", "content": "hi"}],
                "stream": True,
            },
        ) as response,
    ):
        call_id = response.headers["x-request-id"]
        async for line in response.aiter_lines():
            if '"Hel"' in line:
                break  # leave after the first token
    topic = namespaced(Topics.USAGE, gw.namespace)
    mine: list[usage_pb2.UsageRecorded] = []
    deadline = time.monotonic() + 20
    while not mine and time.monotonic() < deadline:
        records = await read_all(kafka, topic, expect=10_000, timeout_s=2)
        decoded = [usage_pb2.UsageRecorded.FromString(r.value or b"") for r in records]
        mine = [u for u in decoded if u.call_id == call_id]
    assert [(u.attempt, u.outcome) for u in mine] == [
        (1, model_pb2.MODEL_ATTEMPT_OUTCOME_CANCELLED)
    ]
    assert mine[0].usage_id == f"{call_id}/attempt/1"


async def _usage_of(
    kafka: KafkaSettings, gw: Stack, call_id: str, count: int
) -> list[usage_pb2.UsageRecorded]:
    """The `count` UsageRecorded records of `call_id`, by attempt."""
    topic = namespaced(Topics.USAGE, gw.namespace)
    mine: list[usage_pb2.UsageRecorded] = []
    deadline = time.monotonic() + 20
    while len(mine) < count and time.monotonic() < deadline:
        records = await read_all(kafka, topic, expect=10_000, timeout_s=2)
        decoded = [usage_pb2.UsageRecorded.FromString(r.value or b"") for r in records]
        mine = sorted((u for u in decoded if u.call_id == call_id), key=lambda u: u.attempt)
    return mine


async def test_openai_sdk_embeddings_fail_over_and_every_attempt_is_billed(
    gw: Stack, kafka: KafkaSettings
) -> None:
    down = openai_error(503, "overloaded", "server_error")
    gw.primary.queue(down, down)
    gw.fallback.queue(Reply(body=openai_embeddings([[0.25, 0.5], [1.0, -2.0]], tokens=9)))
    # The SDK asks for base64 by default and decodes it: the gateway encodes float32 like OpenAI.
    raw = await gw.openai(key="sk-beta-embed").embeddings.with_raw_response.create(
        model="embed", input=["the cat sat", "on the mat"], dimensions=2, user="end-user-1"
    )
    answer = raw.parse()
    assert [d.embedding for d in answer.data] == [[0.25, 0.5], [1.0, -2.0]]
    assert [d.index for d in answer.data] == [0, 1]
    assert answer.model == "embed-fallback"
    assert (answer.usage.prompt_tokens, answer.usage.total_tokens) == (9, 9)
    assert raw.headers["x-stepline-attempts"] == "3"
    assert raw.headers["x-stepline-deployment"] == "embed-fallback"
    assert raw.headers["x-stepline-cost"] == "0.00000117"  # 9 × 0.13/M, the catalog's price
    sent = gw.fallback.received[0]
    assert sent.path == "/v1/embeddings"
    assert sent.body == {
        "model": "text-embedding-3-large",
        "input": ["the cat sat", "on the mat"],
        "encoding_format": "float",
        "dimensions": 2,
    }
    assert gw.primary.received[0].path == "/v1/embeddings"
    mine = await _usage_of(kafka, gw, raw.headers["x-request-id"], 3)
    assert [(u.attempt, u.deployment, u.tenant_id) for u in mine] == [
        (1, "embed-primary", "beta"),
        (2, "embed-primary", "beta"),
        (3, "embed-fallback", "beta"),
    ]
    assert mine[0].outcome == model_pb2.MODEL_ATTEMPT_OUTCOME_OVERLOADED
    assert mine[2].succeeded
    assert mine[2].priced
    assert (mine[2].usage.input_tokens, mine[2].usage.output_tokens) == (9, 0)


async def test_offline_embeddings_are_deterministic_unit_vectors(gw: Stack) -> None:
    client = gw.openai()
    inputs: Any = ["the cat sat on the mat", [101, 2023, 102], "the cat sat on a mat"]
    first = await client.embeddings.create(
        model="offline", input=inputs, dimensions=64, encoding_format="float"
    )
    again = await client.embeddings.create(model="offline", input=inputs, dimensions=64)
    vectors = [d.embedding for d in first.data]
    # Same vectors run to run; base64 (the SDK's default) carries them as float32.
    assert [pytest.approx(v, abs=1e-6) for v in vectors] == [d.embedding for d in again.data]
    assert [len(v) for v in vectors] == [64, 64, 64]
    for vector in vectors:
        assert abs(sum(x * x for x in vector) - 1.0) < 1e-6

    def cosine(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b, strict=True))

    assert cosine(vectors[0], vectors[2]) > cosine(vectors[0], vectors[1])
    assert first.model == "embed-local"
    assert first.usage.prompt_tokens > 0


async def test_chat_and_embeddings_never_use_the_wrong_kind_of_deployment(gw: Stack) -> None:
    client = gw.openai()
    with pytest.raises(openai.BadRequestError) as chat_only:
        await client.embeddings.create(model="default", input="hi")
    assert chat_only.value.code == "model_not_supported"
    assert "embeddings" in str(chat_only.value)
    with pytest.raises(openai.BadRequestError) as embed_only:
        await client.chat.completions.create(
            model="embed", messages=[{"role": "user", "content": "hi"}]
        )
    assert embed_only.value.code == "model_not_supported"
    with pytest.raises(openai.NotFoundError):
        await client.embeddings.create(model="no-such-model", input="hi")
    with pytest.raises(openai.BadRequestError) as empty:
        await client.embeddings.create(model="embed", input="")
    assert empty.value.param == "input"
    assert gw.primary.received == []
    assert gw.fallback.received == []


def _gateway_routes() -> list[tuple[str, str, str]]:
    """(method, path, API) of every route of the gateway app the router serves."""
    config = routes(
        '[deployments.a]\nprovider = "local"\nmodel = "m"\n[routes.r]\ndeployments = ["a"]'
    )
    clock = SystemClock()
    router = Router(
        routes=lambda: config,
        prices=lambda: BOOK,
        providers={},
        credentials=StaticCredentials(),
        clock=clock,
        random=lambda: 0.5,
    )
    authenticator, quotas = keys_from_json(json.dumps(KEYS))

    async def record(*_: object) -> None:
        return None

    gateway = Gateway(
        router=router,
        routes=lambda: config,
        prices=lambda: BOOK,
        authenticator=authenticator,
        quotas=quotas,
        publish_usage=record,
    )
    found = []
    for route in build_app(gateway, clock, lambda: "x").router.routes():
        name = route.resource.name if route.resource is not None else None
        api = (name or "").split(".")[0]
        assert api in API_NAMES, f"route {route.method} {route} must be named <api>.<operation>"
        assert route.resource is not None
        found.append((route.method, route.resource.canonical, api))
    return found


@pytest.mark.parametrize(("method", "path", "api"), _gateway_routes())
async def test_every_route_refuses_a_missing_wrong_or_unfit_key_in_its_api_format(
    gw: Stack, method: str, path: str, api: str
) -> None:
    # One body fit for any operation that takes one: a model this tenant's narrow key may not use.
    body = {
        "model": "claude",
        "messages": [{"role": "user", "content": "hi"}],
        "input": "hi",
        "max_tokens": 5,
    }
    cases: list[tuple[str, dict[str, str], int]] = [
        ("no key", {}, 401),
        ("wrong key", {"authorization": "Bearer sk-wrong"}, 401),
        ("wrong key (x-api-key)", {"x-api-key": "sk-wrong"}, 401),
        ("key without the models:call scope", {"authorization": "Bearer sk-read-only"}, 403),
    ]
    if method == "POST":
        cases.append(("key of another tenant's scope", {"x-api-key": "sk-narrow"}, 403))
    async with httpx.AsyncClient() as client:
        for case, headers, status in cases:
            if api == "anthropic":
                # Past the key, an Anthropic client's request also names its API version.
                headers = {**headers, "anthropic-version": "2023-06-01"}
            response = await client.request(
                method,
                f"{gw.url}{path}",
                headers=headers,
                json=body if method == "POST" else None,
            )
            assert response.status_code == status, (case, response.text)
            if method == "HEAD":
                continue
            error = response.json()
            if api == "anthropic":
                assert error["type"] == "error", case
                assert error["error"]["type"] in ("authentication_error", "permission_error")
                assert response.headers["request-id"]
            else:
                assert set(error["error"]) == {"message", "type", "param", "code"}, case
                assert error["error"]["type"] in ("authentication_error", "permission_error")
            assert response.headers["x-request-id"]
    assert gw.primary.received == []
    assert gw.claude.received == []


async def test_opt_in_restart_on_a_fallback_without_prefill_is_flagged_and_billed(
    gw: Stack, kafka: KafkaSettings
) -> None:
    gw.primary.queue(Reply(events=openai_chunks(["Hel", "lo", " the", "re"]), cut_after=3))
    raw = await gw.openai().chat.completions.with_raw_response.create(
        model="default",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        extra_headers={"x-stepline-continue": "restart"},
    )
    # A restart-aware client: on the restart chunk it drops the text it has.
    text, seen, restarts = "", [], []
    async for chunk in raw.parse():
        seen.append(chunk)
        extra = (chunk.model_extra or {}).get("stepline") or {}
        if extra.get("event") == "restart":
            restarts.append(extra)
            text = ""
        elif chunk.choices:
            text += chunk.choices[0].delta.content or ""
    finish = {c.choices[0].finish_reason for c in seen if c.choices} - {None}
    assert (text, finish) == ("Hello there", {"stop"})
    assert [(r["deployment"], "stream broke" in r["reason"]) for r in restarts] == [
        ("fallback", True)
    ]
    assert gw.fallback.received[0].body["messages"][-1]["role"] == "user"  # no prefill
    mine = await _usage_of(kafka, gw, raw.headers["x-request-id"], 2)
    assert [(u.attempt, u.deployment, u.outcome) for u in mine] == [
        (1, "primary", model_pb2.MODEL_ATTEMPT_OUTCOME_INCOMPLETE),
        (2, "fallback", model_pb2.MODEL_ATTEMPT_OUTCOME_SUCCEEDED),
    ]
    assert mine[1].usage.output_tokens == 7
    assert all(u.priced for u in mine)  # both attempts billed
    # The Anthropic format: the broken block closes, a `stepline_restart` event, a new block.
    gw.primary.queue(Reply(events=openai_chunks(["Hel", "lo", " the", "re"]), cut_after=3))
    async with httpx.AsyncClient() as client:
        response = await client.post(
            f"{gw.url}/v1/messages",
            headers={
                "x-api-key": KEY,
                "anthropic-version": "2023-06-01",
                "x-stepline-continue": "restart",
            },
            json={
                "model": "default",
                "max_tokens": 50,
                "stream": True,
                "messages": [{"role": "user", "content": "hi"}],
            },
        )
    kinds = [line[7:] for line in response.text.splitlines() if line.startswith("event: ")]
    restart = kinds.index("stepline_restart")
    assert kinds[restart - 1] == "content_block_stop"
    assert kinds[restart + 1] == "content_block_start"
    assert kinds[-1] == "message_stop"

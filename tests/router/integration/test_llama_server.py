"""The openai_compatible adapter against a real inference server: llama.cpp's (llama-cpp-python
[server]) running SmolLM2-135M-Instruct, one server process for the module, small outputs."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx
import pytest
from aiohttp.test_utils import TestServer

from stepline_pricebook import PriceBook
from stepline_router.clock import SystemClock
from stepline_router.credentials import StaticCredentials
from stepline_router.devkey import DevKeyAuthenticator, UnmeteredQuotas
from stepline_router.errors import Outcome
from stepline_router.gateway import Gateway
from stepline_router.http_api import build_app
from stepline_router.router import CallFailed, CallOutcome, CallSucceeded, ErrorKind, Router
from stepline_router.routes import RoutesConfig
from stepline_router.stream import TextDelta
from stepline_router.types import FinishReason, ModelRequest, Params, ToolChoice, Usage
from tests.llama import LLAMA_N_CTX as N_CTX
from tests.llama import MODEL_ALIAS, LlamaServer
from tests.router.support import http_router, request, routes, weather_tool

BOOK = PriceBook.parse(
    f"""
version = "llama-test"
currency = "USD"
[[models]]
provider = "openai_compatible"
model = "{MODEL_ALIAS}"
input_per_mtok = "0.05"
output_per_mtok = "0.10"
"""
)
QUESTION = "Name three colours of the rainbow."
# Greedy decoding: the router's call and a direct call to the server give the same tokens.
GREEDY = {"temperature": 0.0, "seed": 7}


@pytest.fixture
def server(llama_server: LlamaServer) -> LlamaServer:
    """The session's llama.cpp server (its window is `N_CTX`)."""
    return llama_server


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    """The router's outbound HTTP client."""
    async with httpx.AsyncClient() as http:
        yield http


def _routes(server: LlamaServer, *, window: int = N_CTX, extra: str = "") -> RoutesConfig:
    return routes(
        f'[deployments.llama]\nprovider = "openai_compatible"\nmodel = "{MODEL_ALIAS}"\n'
        f'base_url = "{server.url}"\n'
        f"capabilities = {{ context_window = {window}, max_output_tokens = 256 }}\n"
        "timeouts = { connect_s = 2, first_byte_s = 60, total_s = 90, first_token_s = 60 }\n"
        f"{extra}\n"
        '[routes.default]\ndeployments = ["llama"]\n',
        defaults="retries_per_deployment = 1",
    )


def _router(config: RoutesConfig, client: httpx.AsyncClient) -> Router:
    return http_router(config, client, StaticCredentials({}), BOOK)


async def _direct(client: httpx.AsyncClient, server: LlamaServer, **body: Any) -> dict[str, Any]:
    """The same question straight to the server: what it says and counts itself."""
    answer = await client.post(
        f"{server.url}/chat/completions",
        json={
            "model": MODEL_ALIAS,
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": QUESTION},
            ],
            **GREEDY,
            **body,
        },
        timeout=90,
    )
    answer.raise_for_status()
    data: dict[str, Any] = answer.json()
    return data


def _params(max_tokens: int, **extra: Any) -> Params:
    return Params(temperature=0.0, seed=7, max_output_tokens=max_tokens, **extra)


async def test_an_answer_with_the_servers_own_token_counts_and_cost(
    server: LlamaServer, client: httpx.AsyncClient
) -> None:
    direct = await _direct(client, server, max_tokens=24)
    outcome = await _router(_routes(server), client).complete(
        request(text=QUESTION, params=_params(24))
    )
    assert isinstance(outcome, CallSucceeded), outcome
    assert outcome.completion.content == direct["choices"][0]["message"]["content"]
    assert outcome.completion.content.strip()
    counted = direct["usage"]
    assert outcome.completion.usage == Usage(counted["prompt_tokens"], counted["completion_tokens"])
    (attempt,) = outcome.attempts
    assert attempt.outcome is Outcome.SUCCEEDED
    assert attempt.status_code == 200
    assert attempt.cost == BOOK.model_cost("openai_compatible", MODEL_ALIAS, attempt.usage)
    assert not attempt.usage_estimated


async def test_a_stream_arrives_in_pieces_and_its_uncounted_tokens_are_estimated(
    server: LlamaServer, client: httpx.AsyncClient
) -> None:
    direct = await _direct(client, server, max_tokens=24)
    stream = _router(_routes(server), client).stream(
        request(text=QUESTION, params=_params(24), stream=True)
    )
    pieces = [d.text async for d in stream if isinstance(d, TextDelta)]
    assert len(pieces) > 3  # token by token, not one block
    outcome = stream.outcome
    assert isinstance(outcome, CallSucceeded), outcome
    assert "".join(pieces) == direct["choices"][0]["message"]["content"]
    # llama-cpp-python's server sends no usage in a stream (stream_options is ignored): the
    # router estimates the tokens and says so, instead of billing the attempt as free.
    (attempt,) = outcome.attempts
    assert attempt.usage_estimated
    counted = direct["usage"]
    assert attempt.usage.output == pytest.approx(counted["completion_tokens"], rel=0.5)
    assert attempt.usage.input == pytest.approx(counted["prompt_tokens"], rel=0.6)
    assert attempt.cost == BOOK.model_cost("openai_compatible", MODEL_ALIAS, attempt.usage)
    assert attempt.cost is not None
    assert attempt.cost > 0


@pytest.mark.parametrize("stream", [False, True])
async def test_stop_reasons_length_at_max_tokens_and_stop(
    server: LlamaServer, client: httpx.AsyncClient, stream: bool
) -> None:
    router = _router(_routes(server), client)
    cut = await router.complete(request(text=QUESTION, params=_params(3), stream=stream))
    assert isinstance(cut, CallSucceeded), cut
    assert cut.completion.finish_reason is FinishReason.LENGTH
    if not stream:  # (a stream's counts are estimated, see above)
        assert cut.completion.usage.output == 3
    whole = await router.complete(
        request(text="What is 2+2? Answer with a number only.", params=_params(48), stream=stream)
    )
    assert isinstance(whole, CallSucceeded), whole
    assert whole.completion.finish_reason is FinishReason.STOP
    assert whole.completion.usage.output < 48


async def test_a_prompt_over_the_servers_window_is_context_too_long_without_a_retry(
    server: LlamaServer, client: httpx.AsyncClient
) -> None:
    # The routes file believes in a bigger window than the server was started with, so the
    # router sends it and the server's own refusal must be understood.
    config = _routes(server, window=32_000)
    long = request(text="Repeat after me: " + "apple banana cherry " * 300, params=_params(16))
    outcome = await _router(config, client).complete(long)
    assert isinstance(outcome, CallFailed), outcome
    assert outcome.kind is ErrorKind.CONTEXT_TOO_LONG
    (attempt,) = outcome.attempts  # never retried on the same model
    assert attempt.outcome is Outcome.CONTEXT_TOO_LONG
    assert attempt.status_code == 400
    # Told the real window, the router does not even send it.
    skipped = await _router(_routes(server), client).complete(long)
    assert isinstance(skipped, CallFailed)
    assert skipped.kind is ErrorKind.CONTEXT_TOO_LONG
    assert [a.outcome for a in skipped.attempts] == [Outcome.SKIPPED]


async def test_json_tool_mode_gets_a_parseable_tool_call_from_a_model_without_tools(
    server: LlamaServer, client: httpx.AsyncClient
) -> None:
    # llama-cpp-python takes a schema as {"type": "json_object", "schema": …} only.
    config = _routes(server, extra='tool_mode = "json"\nschema_style = "json_object"')
    ask = request(
        text="What is the weather in Paris?",
        tools=(weather_tool(),),
        params=_params(48, tool_choice=ToolChoice.REQUIRED),
    )
    for streamed in (False, True):
        outcome = await _router(config, client).complete(
            request(
                text=ask.messages[1].content, tools=ask.tools, params=ask.params, stream=streamed
            )
        )
        assert isinstance(outcome, CallSucceeded), outcome
        (call,) = outcome.completion.tool_calls
        assert call.name == "get_weather"
        assert isinstance(json.loads(call.arguments_json)["city"], str)
        assert outcome.completion.finish_reason is FinishReason.TOOL_CALLS
        assert outcome.completion.usage.output > 0


async def test_a_server_killed_mid_stream_ends_incomplete_and_a_restart_serves_again(
    server: LlamaServer, client: httpx.AsyncClient
) -> None:
    router = _router(_routes(server), client)
    stream = router.stream(
        request(
            text="Write a long story about a dragon who learns to bake bread.",
            params=_params(200),
            stream=True,
        )
    )
    received = []
    async for delta in stream:
        if isinstance(delta, TextDelta) and delta.text:
            received.append(delta.text)
            if len(received) == 3:
                server.kill()
    outcome = stream.outcome
    # Never a truncated answer presented as complete: the call says it is incomplete.
    assert isinstance(outcome, CallSucceeded), outcome
    assert outcome.completion.incomplete
    assert outcome.completion.finish_reason is FinishReason.INCOMPLETE
    assert "stream broke after output was sent" in outcome.completion.incomplete_reason
    assert outcome.attempts[-1].outcome is Outcome.INCOMPLETE
    assert outcome.completion.content == "".join(received)
    # While it is down, a new call fails cleanly (connection refused), then the restart serves.
    down = await router.complete(request(text=QUESTION, params=_params(8)))
    assert isinstance(down, CallFailed)
    assert {a.outcome for a in down.attempts} == {Outcome.CONNECTION_FAILED}
    server.start()
    again = await _router(_routes(server), client).complete(
        request(text=QUESTION, params=_params(8))
    )
    assert isinstance(again, CallSucceeded), again
    assert again.completion.content.strip()


async def test_the_gateway_ends_a_stream_cut_by_a_killed_server_with_an_in_band_error(
    server: LlamaServer, client: httpx.AsyncClient
) -> None:
    config = _routes(server)
    recorded: list[CallOutcome] = []

    async def record(batch: Sequence[tuple[ModelRequest, CallOutcome]]) -> None:
        recorded.extend(outcome for _, outcome in batch)

    gateway = Gateway(
        router=_router(config, client),
        routes=lambda: config,
        prices=lambda: BOOK,
        authenticator=DevKeyAuthenticator("sk-dev-llama", "dev"),
        quotas=UnmeteredQuotas(),
        publish_usage=record,
    )
    app = build_app(gateway, SystemClock(), lambda: uuid.uuid4().hex)
    events: list[str] = []
    story = {
        "model": "default",
        "messages": [{"role": "user", "content": "Write a long story about a dragon."}],
        "max_tokens": 200,
        "stream": True,
        **GREEDY,
    }
    async with (
        TestServer(app, host="127.0.0.1") as front,
        httpx.AsyncClient() as caller,
        caller.stream(
            "POST",
            f"http://127.0.0.1:{front.port}/v1/chat/completions",
            headers={"authorization": "Bearer sk-dev-llama"},
            json=story,
            timeout=90,
        ) as answer,
    ):
        assert answer.status_code == 200
        async for line in answer.aiter_lines():
            if line.startswith("data: "):
                events.append(line.removeprefix("data: "))
                if len(events) == 4:
                    server.kill()
    try:
        # The caller saw tokens, then an error event, and never `[DONE]` or a finish reason.
        assert "[DONE]" not in events
        last = json.loads(events[-1])
        assert last["error"]["code"] == "incomplete"
        chunks = [json.loads(e) for e in events[:-1]]
        assert any(c["choices"] and c["choices"][0]["delta"].get("content") for c in chunks)
        assert not any(c["choices"] and c["choices"][0].get("finish_reason") for c in chunks)
        await gateway.drain(10)  # the call's usage is published after the stream ends
        (outcome,) = recorded
        assert isinstance(outcome, CallSucceeded)
        assert outcome.completion.incomplete
    finally:
        server.start()

"""OpenAI-compatible presets: a route names the service, the table fills in URL, key and quirks."""

from __future__ import annotations

import argparse
import io
import json
import random
from collections.abc import AsyncIterator

import httpx
import pytest

from stepline_client import models_cli
from stepline_pricebook import PriceBook
from stepline_router.app import PROVIDER_NAMES, build_providers
from stepline_router.clock import SystemClock
from stepline_router.credentials import StaticCredentials
from stepline_router.router import CallSucceeded, Router
from stepline_router.routes import RoutesConfig, RoutesError, parse_routes
from stepline_router.types import Params
from stepline_routes import PRESETS
from tests.router.fakes import FakeProvider, Reply, openai_chunks, openai_completion
from tests.router.support import ROOT, request

SHIPPED_BOOK = PriceBook.load(ROOT / "deploy" / "config" / "pricebook.toml")


def test_a_preset_fills_base_url_and_key_unless_the_deployment_sets_them() -> None:
    config = parse_routes(
        '[deployments.g]\nprovider = "groq"\nmodel = "llama-3.3-70b-versatile"\n'
        '[deployments.mine]\nprovider = "vllm"\nmodel = "qwen"\n'
        'base_url = "http://10.0.0.5:8000/v1"\ncredential_env = "VLLM_KEY"\n'
        '[deployments.o]\nprovider = "ollama"\nmodel = "llama3.2:3b"\n'
        '[routes.r]\ndeployments = ["g", "mine", "o"]\n',
        known_providers=PROVIDER_NAMES,
    )
    groq, mine, ollama = (config.deployments[n] for n in ("g", "mine", "o"))
    assert (groq.base_url, groq.credential_env) == (
        "https://api.groq.com/openai/v1",
        "GROQ_API_KEY",
    )
    assert (mine.base_url, mine.credential_env) == ("http://10.0.0.5:8000/v1", "VLLM_KEY")
    assert (ollama.base_url, ollama.credential_env) == ("http://127.0.0.1:11434/v1", "")
    with pytest.raises(RoutesError, match="unknown provider 'grok'"):
        parse_routes(
            '[deployments.x]\nprovider = "grok"\nmodel = "m"\n[routes.r]\ndeployments = ["x"]\n',
            known_providers=PROVIDER_NAMES,
        )


async def test_every_preset_is_a_router_provider_and_hosted_ones_are_priced() -> None:
    async with httpx.AsyncClient() as http:
        providers = build_providers(http, SystemClock())
    assert set(PRESETS) <= set(providers)
    sample = {
        "groq": "llama-3.3-70b-versatile",
        "deepseek": "deepseek-chat",
        "mistral": "mistral-large-latest",
        "xai": "grok-3",
        "together": "meta-llama/Llama-3.3-70B-Instruct-Turbo",
        "openrouter": "openai/gpt-4o-mini",
        "fireworks": "accounts/fireworks/models/llama-v3p1-8b-instruct",
    }
    for provider, model in sample.items():
        entry = SHIPPED_BOOK.model_entry(provider, model)
        assert entry is not None, provider
        assert entry.source.value == "catalog"
    # self-hosted servers are unpriced (never free) until the price book prices them
    assert SHIPPED_BOOK.model_entry("vllm", "qwen") is None


@pytest.fixture
async def server() -> AsyncIterator[FakeProvider]:
    """A local server speaking Chat Completions."""
    fake = await FakeProvider().start()
    try:
        yield fake
    finally:
        await fake.stop()


def _one(provider: str, model: str, url: str) -> RoutesConfig:
    return parse_routes(
        f'[deployments.d]\nprovider = "{provider}"\nmodel = "{model}"\nbase_url = "{url}"\n'
        '[routes.default]\ndeployments = ["d"]\n',
        known_providers=PROVIDER_NAMES,
    )


def _router(config: RoutesConfig, client: httpx.AsyncClient) -> Router:
    clock = SystemClock()
    return Router(
        routes=lambda: config,
        prices=lambda: SHIPPED_BOOK,
        providers=build_providers(client, clock),
        credentials=StaticCredentials(
            {"MISTRAL_API_KEY": "m-key", "GROQ_API_KEY": "g-key", "DEEPSEEK_API_KEY": "d-key"}
        ),
        clock=clock,
        random=random.Random(1).random,
    )


async def test_preset_quirks_reach_the_wire(
    server: FakeProvider, client: httpx.AsyncClient
) -> None:
    params = Params(max_output_tokens=64, seed=9)
    server.queue(Reply(events=openai_chunks(["bon", "jour"], usage=(12, 3))))
    mistral = await _router(_one("mistral", "mistral-large-latest", server.url), client).complete(
        request(stream=True, params=params)
    )
    assert isinstance(mistral, CallSucceeded)
    assert mistral.completion.content == "bonjour"
    sent = server.received[0]
    assert sent.headers["authorization"] == "Bearer m-key"
    assert sent.body["random_seed"] == 9
    assert "seed" not in sent.body
    assert "stream_options" not in sent.body
    assert sent.body["max_tokens"] == 64
    assert mistral.attempts[0].cost is not None  # priced from the catalog

    server.queue(Reply(body=openai_completion("hi")))
    groq = await _router(_one("groq", "llama-3.3-70b-versatile", server.url), client).complete(
        request(params=params)
    )
    assert isinstance(groq, CallSucceeded)
    assert server.received[1].body["max_completion_tokens"] == 64
    assert server.received[1].body["seed"] == 9

    body = openai_completion("cached")
    body["usage"].pop("prompt_tokens_details")
    body["usage"].update(prompt_cache_hit_tokens=8, prompt_cache_miss_tokens=3)
    server.queue(Reply(body=body))
    deepseek = await _router(_one("deepseek", "deepseek-chat", server.url), client).complete(
        request()
    )
    assert isinstance(deepseek, CallSucceeded)
    assert deepseek.completion.usage.cached_input == 8


def test_stepline_models_lists_the_presets() -> None:
    out = io.StringIO()
    args = argparse.Namespace(presets=True, json=True)
    assert models_cli.run(args, None, out) == 0
    rows = {row["provider"]: row for row in json.loads(out.getvalue())["presets"]}
    assert set(rows) == set(PRESETS)
    assert rows["openrouter"]["base_url"] == "https://openrouter.ai/api/v1"
    assert rows["openrouter"]["credential_env"] == "OPENROUTER_API_KEY"
    assert rows["llamacpp"]["credential_env"] is None
    assert rows["mistral"]["renamed"] == {"seed": "random_seed"}
    table = io.StringIO()
    models_cli.run(argparse.Namespace(presets=True, json=False), None, table)
    groq = next(line for line in table.getvalue().splitlines() if line.startswith("groq "))
    assert groq.split()[1:3] == ["https://api.groq.com/openai/v1", "GROQ_API_KEY"]

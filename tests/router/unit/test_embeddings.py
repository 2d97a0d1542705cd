"""Embeddings adapters: OpenAI-style `/embeddings` beside the chat endpoint, vectors in order."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import httpx
import pytest

from stepline_router.errors import Outcome, ProviderError
from stepline_router.providers.azure import AzureOpenAIProvider
from stepline_router.providers.base import AttemptLimits, Embedder
from stepline_router.providers.local import LocalProvider, embed_text
from stepline_router.providers.openai import OpenAIProvider
from stepline_router.routes import Deployment
from stepline_router.types import EmbeddingInput, ModelRequest

LIMITS = AttemptLimits(connect_s=1, first_byte_s=1, total_s=2)
REQUEST = ModelRequest(
    "emb-1", "acme", "embed", (), embedding=EmbeddingInput(("a b", (5, 6)), dimensions=3)
)


def _now() -> datetime:
    return datetime(2026, 12, 1, tzinfo=UTC)


def _answer(seen: list[httpx.Request], vectors: list[list[float]]) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        data = [{"index": i, "embedding": v} for i, v in enumerate(vectors)][::-1]
        return httpx.Response(200, json={"data": data, "usage": {"prompt_tokens": 4}})

    return httpx.MockTransport(handle)


async def test_openai_and_azure_post_to_embeddings_beside_their_chat_endpoint() -> None:
    seen: list[httpx.Request] = []
    async with httpx.AsyncClient(transport=_answer(seen, [[1, 0, 0], [0, 1, 0]])) as client:
        openai = OpenAIProvider(client, _now)
        plain = Deployment("e", "openai", "text-embedding-3-small", base_url="http://h/v1")
        answer = await openai.embed(plain, REQUEST, LIMITS, "sk-x")
        azure = AzureOpenAIProvider(client, _now)
        deployed = Deployment(
            "az",
            "azure_openai",
            "text-embedding-3-small",
            base_url="https://res.openai.azure.com/openai/deployments/emb?api-version=2024-10-21",
        )
        await azure.embed(deployed, REQUEST, LIMITS, "az-key")
    assert answer.embeddings == ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0))  # by index, not body order
    assert (answer.usage.input, answer.usage.output) == (4, 0)
    assert str(seen[0].url) == "http://h/v1/embeddings"
    assert json.loads(seen[0].content) == {
        "model": "text-embedding-3-small",
        "input": ["a b", [5, 6]],
        "encoding_format": "float",
        "dimensions": 3,
    }
    assert seen[0].headers["authorization"] == "Bearer sk-x"
    assert seen[1].url.path == "/openai/deployments/emb/embeddings"
    assert seen[1].url.params["api-version"] == "2024-10-21"
    assert seen[1].headers["api-key"] == "az-key"


async def test_a_wrong_number_of_vectors_is_a_malformed_answer() -> None:
    async with httpx.AsyncClient(transport=_answer([], [[1.0]])) as client:
        deployment = Deployment("e", "openai", "m", base_url="http://h/v1")
        with pytest.raises(ProviderError) as error:
            await OpenAIProvider(client, _now).embed(deployment, REQUEST, LIMITS, None)
    assert error.value.outcome is Outcome.MALFORMED_RESPONSE


async def test_the_offline_embedding_is_deterministic_and_normalised() -> None:
    local = LocalProvider()
    assert isinstance(local, Embedder)
    answer = await local.embed(Deployment("l", "local", "m"), REQUEST, LIMITS, None)
    assert [len(v) for v in answer.embeddings] == [3, 3]
    assert answer.embeddings[0] == embed_text("A  b", 3)  # words, case and spacing aside
    assert abs(sum(x * x for x in embed_text("a cat sat", 64)) - 1) < 1e-9
    assert embed_text("", 8) == (0.0,) * 8

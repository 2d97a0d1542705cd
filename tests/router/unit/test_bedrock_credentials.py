"""Which AWS credentials, region and endpoint a Bedrock deployment signs with."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, date, datetime

import httpx
import pytest
from genai_prices import Usage as CatalogUsage
from genai_prices import calc_price

from stepline_pricebook import PriceBook
from stepline_router.credentials import StaticCredentials
from stepline_router.errors import Outcome, ProviderError
from stepline_router.providers.base import AttemptLimits
from stepline_router.providers.bedrock import BedrockProvider
from stepline_router.routes import Deployment
from stepline_router.types import Usage
from tests.router.bedrock_fakes import converse_output
from tests.router.support import request

LIMITS = AttemptLimits(connect_s=1, first_byte_s=1, total_s=1)
MODEL = "amazon.nova-lite-v1:0"


@pytest.fixture
async def seen() -> AsyncIterator[tuple[httpx.AsyncClient, list[httpx.Request]]]:
    """A client whose transport records requests and answers a Converse output."""
    requests: list[httpx.Request] = []

    def answer(sent: httpx.Request) -> httpx.Response:
        requests.append(sent)
        return httpx.Response(200, json=converse_output("ok"))

    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as client:
        yield client, requests


def _provider(client: httpx.AsyncClient, values: dict[str, str]) -> BedrockProvider:
    return BedrockProvider(
        client, lambda: datetime(2026, 12, 1, tzinfo=UTC), StaticCredentials(values)
    )


def _scope(sent: httpx.Request) -> list[str]:
    credential = sent.headers["authorization"].split("Credential=")[1].split(",")[0]
    return credential.split("/")


async def test_the_usual_variables_and_the_regions_endpoint(
    seen: tuple[httpx.AsyncClient, list[httpx.Request]],
) -> None:
    client, requests = seen
    values = {
        "AWS_ACCESS_KEY_ID": "AKIDUSUAL",
        "AWS_SECRET_ACCESS_KEY": "usual-secret",
        "AWS_DEFAULT_REGION": "us-west-2",
    }
    deployment = Deployment("d", "bedrock", MODEL, credential_env="AWS_SECRET_ACCESS_KEY")
    completion = await _provider(client, values).complete(
        deployment, request(), LIMITS, "usual-secret"
    )
    assert completion.content == "ok"
    sent = requests[0]
    assert (
        str(sent.url) == f"https://bedrock-runtime.us-west-2.amazonaws.com/model/{MODEL}/converse"
    )
    key_id, _, region, service, _ = _scope(sent)
    assert (key_id, region, service) == ("AKIDUSUAL", "us-west-2", "bedrock")
    assert "x-amz-security-token" not in sent.headers


async def test_a_prefixed_account_and_the_region_of_its_base_url(
    seen: tuple[httpx.AsyncClient, list[httpx.Request]],
) -> None:
    client, requests = seen
    values = {
        "PROD_AWS_ACCESS_KEY_ID": "AKIDPROD",
        "PROD_AWS_SECRET_ACCESS_KEY": "prod-secret",
        "PROD_AWS_SESSION_TOKEN": "prod-token",
        "AWS_REGION": "us-east-1",
    }
    deployment = Deployment(
        "d",
        "bedrock",
        MODEL,
        base_url="https://bedrock-runtime.eu-west-3.amazonaws.com",
        credential_env="PROD_AWS_SECRET_ACCESS_KEY",
    )
    await _provider(client, values).complete(deployment, request(), LIMITS, "prod-secret")
    sent = requests[0]
    key_id, _, region, service, _ = _scope(sent)
    assert (key_id, region, service) == ("AKIDPROD", "eu-west-3", "bedrock")
    assert sent.headers["x-amz-security-token"] == "prod-token"


@pytest.mark.parametrize(
    ("values", "missing"),
    [
        ({"AWS_REGION": "us-east-1"}, "AWS_ACCESS_KEY_ID"),
        ({"AWS_ACCESS_KEY_ID": "AKID"}, "AWS_REGION"),
    ],
)
async def test_a_missing_companion_variable_fails_over_with_its_name(
    seen: tuple[httpx.AsyncClient, list[httpx.Request]], values: dict[str, str], missing: str
) -> None:
    client, requests = seen
    deployment = Deployment("d", "bedrock", MODEL, credential_env="AWS_SECRET_ACCESS_KEY")
    with pytest.raises(ProviderError) as failed:
        await _provider(client, values).complete(deployment, request(), LIMITS, "secret")
    assert failed.value.outcome is Outcome.AUTH_FAILED
    assert missing in failed.value.message
    assert "secret" not in failed.value.message.replace("SECRET", "")
    assert requests == []


def test_the_shipped_price_book_prices_bedrock_and_responses_models_from_the_catalog() -> None:
    book = PriceBook.load(as_of=date(2026, 12, 1))
    tokens = Usage(input=1_000, output=200, cached_input=600, cache_write_input=100)
    catalog = CatalogUsage(
        input_tokens=1_000, output_tokens=200, cache_read_tokens=600, cache_write_tokens=100
    )
    for provider, catalog_id, model in (
        ("bedrock", "aws", "global.anthropic.claude-haiku-4-5-20251001-v1:0"),
        ("bedrock", "aws", MODEL),
        ("openai_responses", "openai", "o4-mini"),
    ):
        expected = calc_price(catalog, model, provider_id=catalog_id).total_price
        assert book.model_cost(provider, model, tokens) == expected, model

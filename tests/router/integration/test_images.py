"""Images on Gemini, Bedrock and Responses over loopback HTTP: the exact request bodies, the
URLs the router fetches for them (as LiteLLM does), and the URLs it refuses to fetch."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx
import pytest
from aiohttp.test_utils import TestServer
from google.genai import types as gtypes

from stepline_router.clock import SystemClock
from stepline_router.credentials import StaticCredentials
from stepline_router.devkey import DevKeyAuthenticator, UnmeteredQuotas
from stepline_router.errors import Outcome
from stepline_router.gateway import Gateway
from stepline_router.http_api import build_app
from stepline_router.router import CallFailed, CallOutcome, CallSucceeded, ErrorKind
from stepline_router.routes import RoutesConfig
from stepline_router.types import Message, ModelRequest, Role
from tests.router.bedrock_fakes import (
    KEY_ID,
    REGION,
    SECRET_KEY,
    converse_output,
    sigv4_guard,
)
from tests.router.cloud_fakes import gemini_response
from tests.router.fakes import FakeProvider, Reply
from tests.router.responses_fakes import response_body
from tests.router.support import http_router, pair_routes, shipped_book

PIXELS = b"\x89PNG\r\n\x1a\n not really pixels"
PNG = base64.b64encode(PIXELS).decode()
DATA_URI = f"data:image/png;base64,{PNG}"
JPEG_URL = "https://images.example.test/cat.jpg"
CREDENTIALS = StaticCredentials(
    {
        "KEY": "test-key-0123456789",
        "AWS_ACCESS_KEY_ID": KEY_ID,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_REGION": REGION,
    }
)
BOOK = shipped_book()
MODELS = {
    "gemini": "gemini-2.5-flash",
    "bedrock": "amazon.nova-lite-v1:0",
    "openai_responses": "gpt-4o-mini",
}


@pytest.fixture
async def pictures() -> AsyncIterator[FakeProvider]:
    """A loopback server answering every GET with a PNG (no extension in its URLs)."""
    server = await FakeProvider(
        lambda _: Reply(raw=PIXELS, headers={"content-type": "image/png"})
    ).start()
    try:
        yield server
    finally:
        await server.stop()


def _config(provider: str, primary: str, fallback: str) -> RoutesConfig:
    credential = "AWS_SECRET_ACCESS_KEY" if provider == "bedrock" else "KEY"
    return pair_routes(
        primary,
        fallback,
        provider,
        MODELS[provider],
        credential=credential,
        extra="capabilities = { vision = true }\n",
    )


def _ask(*images: str) -> ModelRequest:
    return ModelRequest(
        "c1", "t", "default", (Message(Role.USER, "What is in the picture?", images=images),)
    )


async def _answered(
    provider: str,
    servers: tuple[FakeProvider, FakeProvider],
    client: httpx.AsyncClient,
    reply: Reply,
    *images: str,
    private_images: bool = True,
) -> dict[str, Any]:
    """The body the primary received for a question with `images`, answered by it."""
    primary, fallback = servers
    primary.queue(reply)
    config = _config(provider, primary.url, fallback.url)
    router = http_router(config, client, CREDENTIALS, BOOK, private_images=private_images)
    outcome = await router.complete(_ask(*images))
    assert isinstance(outcome, CallSucceeded), outcome
    assert outcome.deployment.name == "primary"
    body = primary.received[-1].body
    assert isinstance(body, dict)
    return body


async def test_gemini_sends_inline_data_and_file_data_parts(
    servers: tuple[FakeProvider, FakeProvider], client: httpx.AsyncClient
) -> None:
    body = await _answered(
        "gemini", servers, client, Reply(body=gemini_response("a cat")), DATA_URI, JPEG_URL
    )
    (turn,) = body["contents"]
    assert turn == {
        "role": "user",
        "parts": [
            {"inlineData": {"mimeType": "image/png", "data": PNG}},
            {"fileData": {"mimeType": "image/jpeg", "fileUri": JPEG_URL}},
            {"text": "What is in the picture?"},
        ],
    }
    # The SDK's own types read it, the bytes decoded from base64 as the API does.
    content = gtypes.Content.model_validate_json(json.dumps(turn))
    assert content.parts is not None
    assert content.parts[0].inline_data == gtypes.Blob(mime_type="image/png", data=PIXELS)
    assert content.parts[1].file_data == gtypes.FileData(mime_type="image/jpeg", file_uri=JPEG_URL)


async def test_gemini_fetches_a_url_whose_type_does_not_show(
    servers: tuple[FakeProvider, FakeProvider],
    client: httpx.AsyncClient,
    pictures: FakeProvider,
) -> None:
    url = f"{pictures.url}/photo?size=large"
    body = await _answered(
        "gemini", servers, client, Reply(body=gemini_response("a cat")), url, url
    )
    (turn,) = body["contents"]
    inline = {"inlineData": {"mimeType": "image/png", "data": PNG}}
    assert turn["parts"][:2] == [inline, inline]
    assert [r.path for r in pictures.received] == ["/photo?size=large"]  # once per URL


async def test_bedrock_sends_image_bytes_signed_and_fetches_urls(
    servers: tuple[FakeProvider, FakeProvider],
    client: httpx.AsyncClient,
    pictures: FakeProvider,
) -> None:
    for server in servers:
        server.guard = sigv4_guard(server.url)
    body = await _answered(
        "bedrock",
        servers,
        client,
        Reply(body=converse_output("a cat")),
        DATA_URI,
        f"{pictures.url}/photo",
    )
    png = {"image": {"format": "png", "source": {"bytes": PNG}}}
    assert body["messages"] == [
        {"role": "user", "content": [png, png, {"text": "What is in the picture?"}]}
    ]


async def test_responses_sends_input_image_items(
    servers: tuple[FakeProvider, FakeProvider], client: httpx.AsyncClient
) -> None:
    body = await _answered(
        "openai_responses",
        servers,
        client,
        Reply(body=response_body("a cat")),
        DATA_URI,
        JPEG_URL,
    )
    assert body["input"] == [
        {
            "type": "message",
            "role": "user",
            "content": [
                {"type": "input_text", "text": "What is in the picture?"},
                {"type": "input_image", "image_url": DATA_URI, "detail": "auto"},
                {"type": "input_image", "image_url": JPEG_URL, "detail": "auto"},
            ],
        }
    ]


@pytest.mark.parametrize(
    ("images", "why"),
    [
        (("PRIVATE",), "its host is not a public address"),
        (("data:image/bmp;base64,Qk0=",), "Bedrock reads png, jpeg, gif or webp images"),
    ],
)
async def test_bedrock_refuses_what_it_cannot_send_as_a_bad_request(
    servers: tuple[FakeProvider, FakeProvider],
    client: httpx.AsyncClient,
    pictures: FakeProvider,
    images: tuple[str, ...],
    why: str,
) -> None:
    primary, fallback = servers
    config = _config("bedrock", primary.url, fallback.url)
    # Loopback is not public: without STEPLINE_IMAGE_FETCH_PRIVATE the router never fetches it.
    asked = tuple(ref.replace("PRIVATE", f"{pictures.url}/secret") for ref in images)
    failed = await http_router(config, client, CREDENTIALS, BOOK).complete(
        _ask(*(f"{ref}?sig=s3cr3t" if ref.startswith("http") else ref for ref in asked))
    )
    assert isinstance(failed, CallFailed)
    assert failed.kind is ErrorKind.INVALID_REQUEST
    assert [a.outcome for a in failed.attempts] == [Outcome.BAD_REQUEST]
    assert why in failed.message
    assert "s3cr3t" not in failed.message  # a signed URL's query never shows
    assert pictures.received == []
    assert primary.received == []
    assert fallback.received == []


async def test_a_missing_image_is_a_bad_request_naming_its_status(
    servers: tuple[FakeProvider, FakeProvider], client: httpx.AsyncClient
) -> None:
    primary, fallback = servers
    missing = await FakeProvider(lambda _: Reply(404, {"error": "no such picture"})).start()
    try:
        config = _config("bedrock", primary.url, fallback.url)
        router = http_router(config, client, CREDENTIALS, BOOK, private_images=True)
        failed = await router.complete(_ask(f"{missing.url}/gone.png"))
    finally:
        await missing.stop()
    assert isinstance(failed, CallFailed)
    assert failed.kind is ErrorKind.INVALID_REQUEST
    assert f"image {missing.url}/gone.png could not be fetched: HTTP 404" in failed.message
    assert primary.received == []
    assert fallback.received == []


async def test_a_redirect_is_followed_to_the_image(
    servers: tuple[FakeProvider, FakeProvider],
    client: httpx.AsyncClient,
    pictures: FakeProvider,
) -> None:
    moved = await FakeProvider(
        lambda _: Reply(302, {}, {"location": f"{pictures.url}/new-home"})
    ).start()
    try:
        body = await _answered(
            "bedrock", servers, client, Reply(body=converse_output("a cat")), f"{moved.url}/old"
        )
    finally:
        await moved.stop()
    png = {"image": {"format": "png", "source": {"bytes": PNG}}}
    assert body["messages"] == [
        {"role": "user", "content": [png, {"text": "What is in the picture?"}]}
    ]
    assert [r.path for r in pictures.received] == ["/new-home"]


async def test_the_gateway_answers_an_unfetchable_image_with_a_400_in_openai_format(
    servers: tuple[FakeProvider, FakeProvider],
    client: httpx.AsyncClient,
    pictures: FakeProvider,
) -> None:
    primary, fallback = servers
    config = _config("bedrock", primary.url, fallback.url)
    recorded: list[CallOutcome] = []

    async def record(batch: Sequence[tuple[ModelRequest, CallOutcome]]) -> None:
        recorded.extend(outcome for _, outcome in batch)

    gateway = Gateway(
        router=http_router(config, client, CREDENTIALS, BOOK),
        routes=lambda: config,
        prices=lambda: BOOK,
        authenticator=DevKeyAuthenticator("sk-dev-images", "dev"),
        quotas=UnmeteredQuotas(),
        publish_usage=record,
    )
    question = {
        "model": "default",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": f"{pictures.url}/cat?k=s3cr3t"}},
                ],
            }
        ],
    }
    app = build_app(gateway, SystemClock(), lambda: uuid.uuid4().hex)
    async with TestServer(app, host="127.0.0.1") as front, httpx.AsyncClient() as caller:
        answer = await caller.post(
            f"http://127.0.0.1:{front.port}/v1/chat/completions",
            headers={"authorization": "Bearer sk-dev-images"},
            json=question,
        )
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["message"].endswith(
        f"image {pictures.url}/cat could not be fetched: its host is not a public address"
    )
    assert pictures.received == []
    assert primary.received == []
    # The refused attempt is on the usage record like any other.
    assert [a.outcome for o in recorded for a in o.attempts] == [Outcome.BAD_REQUEST]

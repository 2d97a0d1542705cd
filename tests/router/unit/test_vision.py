"""Image input: parsed at both doors, sent in each wire format, routed only where it can be read."""

from __future__ import annotations

import base64

from stepline_pricebook import PriceBook
from stepline_router.anthropic_wire import parse_messages_request
from stepline_router.clock import ManualClock
from stepline_router.credentials import StaticCredentials
from stepline_router.errors import Outcome
from stepline_router.openai_wire import parse_chat_request
from stepline_router.providers.anthropic import anthropic_body
from stepline_router.providers.local import LocalProvider
from stepline_router.providers.openai import openai_body
from stepline_router.providers.scripted import ScriptedProvider
from stepline_router.router import CallFailed, CallSucceeded, ErrorKind, Router
from stepline_router.routes import RoutesConfig, resolve_capabilities
from stepline_router.tokens import estimate_input_tokens
from stepline_router.types import Completion, Message, ModelRequest, Role
from tests.router.support import BOOK, routes

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n fake pixels").decode()
DATA_URI = f"data:image/png;base64,{PNG}"
URL = "https://example.test/cat.jpg"


def _ask(images: tuple[str, ...]) -> ModelRequest:
    return ModelRequest(
        "c1", "t", "default", (Message(Role.USER, "What is in the picture?", images=images),)
    )


def test_openai_image_parts_become_the_turns_images() -> None:
    parsed = parse_chat_request(
        {
            "model": "default",
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is this?"},
                        {"type": "image_url", "image_url": {"url": DATA_URI, "detail": "low"}},
                        {"type": "image_url", "image_url": {"url": URL}},
                    ],
                }
            ],
        }
    )
    (turn,) = parsed.request.messages
    assert (turn.content, turn.images) == ("What is this?", (DATA_URI, URL))


def test_anthropic_image_blocks_become_the_turns_images() -> None:
    parsed = parse_messages_request(
        {
            "model": "default",
            "max_tokens": 10,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "image",
                            "source": {"type": "base64", "media_type": "image/png", "data": PNG},
                        },
                        {"type": "image", "source": {"type": "url", "url": URL}},
                        {"type": "text", "text": "What is this?"},
                    ],
                }
            ],
        }
    )
    (turn,) = parsed.messages
    assert (turn.content, turn.images) == ("What is this?", (DATA_URI, URL))


def test_each_wire_format_sends_the_images() -> None:
    config = routes(
        '[deployments.o]\nprovider = "openai"\nmodel = "gpt-4o"\n'
        '[deployments.a]\nprovider = "anthropic"\nmodel = "claude-sonnet-4-5"\n'
        '[routes.default]\ndeployments = ["o", "a"]\n'
    )
    ask = _ask((DATA_URI, URL))
    (sent,) = openai_body(config.deployments["o"], ask)["messages"]
    assert sent["content"] == [
        {"type": "text", "text": "What is in the picture?"},
        {"type": "image_url", "image_url": {"url": DATA_URI}},
        {"type": "image_url", "image_url": {"url": URL}},
    ]
    (sent,) = anthropic_body(config.deployments["a"], ask)["messages"]
    assert sent["content"] == [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "image", "source": {"type": "url", "url": URL}},
        {"type": "text", "text": "What is in the picture?"},
    ]


def _router(config: RoutesConfig, book: PriceBook = BOOK) -> Router:
    return Router(
        routes=lambda: config,
        prices=lambda: book,
        providers={"scripted": ScriptedProvider(default=Completion("a cat"))},
        credentials=StaticCredentials({}),
        clock=ManualClock(),
        random=lambda: 0.5,
    )


async def test_an_image_goes_only_to_a_deployment_that_reads_images() -> None:
    config = routes(
        '[deployments.text]\nprovider = "scripted"\nmodel = "cheap"\n'
        '[deployments.eyes]\nprovider = "scripted"\nmodel = "dear"\n'
        "capabilities = { vision = true }\n"
        '[routes.default]\ndeployments = ["text", "eyes"]\n'
    )
    outcome = await _router(config).complete(_ask((URL,)))
    assert isinstance(outcome, CallSucceeded)
    assert outcome.deployment.name == "eyes"
    skipped = outcome.attempts[0]
    assert (skipped.deployment, skipped.outcome, skipped.error) == (
        "text",
        Outcome.SKIPPED,
        "skipped: does not support image input",
    )
    text_only = routes(
        '[deployments.text]\nprovider = "scripted"\nmodel = "cheap"\n'
        '[routes.default]\ndeployments = ["text"]\n'
    )
    refused = await _router(text_only).complete(_ask((URL,)))
    assert isinstance(refused, CallFailed)
    assert refused.kind is ErrorKind.NO_ELIGIBLE_DEPLOYMENT
    assert "does not support image input" in refused.message


def test_the_price_book_says_which_models_read_images() -> None:
    # The catalog only knows image input where it is priced apart (e.g. gpt-image-1); a local
    # entry may declare it, and the routes file always can (`capabilities.vision`).
    book = PriceBook.parse(
        'version = "t"\ncurrency = "USD"\n[catalog]\npackage = "genai-prices"\n'
        '[[models]]\nprovider = "openai_compatible"\nmodel = "llava"\ninput_per_mtok = "0"\n'
        'output_per_mtok = "0"\ncapabilities = ["image-in"]\n'
    )
    config = routes(
        '[deployments.llava]\nprovider = "openai_compatible"\nmodel = "llava"\n'
        '[deployments.smol]\nprovider = "openai_compatible"\nmodel = "smollm2"\n'
        '[deployments.image]\nprovider = "openai"\nmodel = "gpt-image-1"\n'
        '[deployments.blind]\nprovider = "openai"\nmodel = "gpt-image-1"\n'
        "capabilities = { vision = false }\n"
        '[routes.default]\ndeployments = ["llava", "smol", "image", "blind"]\n'
    )
    resolved = resolve_capabilities(config, book).deployments
    assert [resolved[n].capabilities.vision for n in ("llava", "smol", "image", "blind")] == [
        True,
        False,
        True,
        False,
    ]


async def test_an_image_counts_towards_the_window_and_the_cost_estimate() -> None:
    config = routes(
        '[deployments.small]\nprovider = "scripted"\nmodel = "cheap"\n'
        "capabilities = { vision = true, context_window = 1000 }\n"
        '[routes.default]\ndeployments = ["small"]\n'
    )
    assert estimate_input_tokens(_ask((URL,)).messages) > 1_600
    router = _router(config)
    assert router.worst_case(_ask((URL, URL))).tokens > 3_200
    outcome = await router.complete(_ask((URL,)))
    assert isinstance(outcome, CallFailed)
    assert outcome.kind is ErrorKind.CONTEXT_TOO_LONG


async def test_an_adapter_that_would_drop_images_never_gets_them() -> None:
    # The routes file says the model reads images, but the adapter (here the offline one)
    # does not send them: the request goes where the pictures arrive.
    config = routes(
        '[deployments.offline]\nprovider = "local"\nmodel = "stepline-local-1"\n'
        "capabilities = { vision = true }\n"
        '[deployments.eyes]\nprovider = "scripted"\nmodel = "dear"\n'
        "capabilities = { vision = true }\n"
        '[routes.default]\ndeployments = ["offline", "eyes"]\n'
    )
    router = Router(
        routes=lambda: config,
        prices=lambda: BOOK,
        providers={
            "local": LocalProvider(),
            "scripted": ScriptedProvider(default=Completion("a cat")),
        },
        credentials=StaticCredentials({}),
        clock=ManualClock(),
        random=lambda: 0.5,
    )
    outcome = await router.complete(_ask((URL,)))
    assert isinstance(outcome, CallSucceeded)
    assert outcome.deployment.name == "eyes"
    assert outcome.attempts[0].error == "skipped: does not support image input"
    plain = await router.complete(ModelRequest("c2", "t", "default", (Message(Role.USER, "hi"),)))
    assert isinstance(plain, CallSucceeded)
    assert plain.deployment.name == "offline"

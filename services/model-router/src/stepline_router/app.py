"""Composition root: the only place that builds settings, clients, adapters and servers."""

from __future__ import annotations

import logging
import os
import random
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager

import httpx

from stepline_keys import Authenticator, Quotas
from stepline_keys.service import key_services
from stepline_keys.tenants import load_tenant_limits
from stepline_pricebook import PriceBook
from stepline_router.clock import SystemClock
from stepline_router.config import Settings
from stepline_router.credentials import Credentials, EnvCredentials
from stepline_router.devkey import DevKeyAuthenticator, UnmeteredQuotas
from stepline_router.gateway import Gateway
from stepline_router.grpc_service import RouterService, server_for
from stepline_router.handlers import ModelCallHandler
from stepline_router.handlers import Topics as OutputTopics
from stepline_router.http_api import GatewayPart, build_app
from stepline_router.providers.anthropic import AnthropicProvider
from stepline_router.providers.azure import AzureOpenAIProvider
from stepline_router.providers.base import Provider
from stepline_router.providers.bedrock import BedrockProvider
from stepline_router.providers.gemini import GeminiProvider
from stepline_router.providers.local import LocalProvider
from stepline_router.providers.openai import OpenAIProvider
from stepline_router.providers.responses import ResponsesProvider
from stepline_router.providers.transport import FastTransport
from stepline_router.reload import ConfigFile
from stepline_router.router import CallOutcome, Router
from stepline_router.routes import RoutesConfig, parse_routes
from stepline_router.types import ModelRequest
from stepline_routes import PRESETS
from stepline_runtime.atleastonce import (
    AtLeastOnce,
    BrokerPublisher,
    Publisher,
    broker_for,
)
from stepline_runtime.catalog import Topics
from stepline_runtime.keyed import KeyedConsumer
from stepline_runtime.lifecycle import (
    BrokerPart,
    Build,
    GrpcServerPart,
    Part,
    Running,
    ServiceContext,
    TaskPart,
)
from stepline_runtime.metrics import watch_circuits

__all__ = ["PROVIDER_NAMES", "build", "build_providers", "build_with_keys"]

log = logging.getLogger(__name__)

# Provider kinds a routes file may name. `openai_compatible` is the same wire format for
# vLLM, Ollama, llama.cpp server, OpenRouter…, sending `max_tokens` where OpenAI wants
# `max_completion_tokens`.
PROVIDER_NAMES = (
    "openai",
    "openai_compatible",
    "anthropic",
    "local",
    "gemini",
    "azure_openai",
    "bedrock",
    "openai_responses",
    # OpenAI-compatible services by name, with their base URL, key variable and quirks.
    *PRESETS,
)


def build_providers(
    client: httpx.AsyncClient,
    clock: SystemClock,
    credentials: Credentials | None = None,
    *,
    private_images: bool = False,
) -> Mapping[str, Provider]:
    """Every provider adapter, sharing one HTTP connection pool.

    `credentials` is for adapters that read more than the deployment's one credential (AWS
    key id, session token and region beside the secret); the environment by default.
    `private_images` lets the adapters that fetch image URLs (Bedrock, Gemini) fetch from
    non-public addresses too (`providers.images`).
    """
    credentials = credentials or EnvCredentials(os.environ)
    return {
        "openai": OpenAIProvider(client, clock.now, max_tokens_field="max_completion_tokens"),
        "openai_compatible": OpenAIProvider(client, clock.now),
        "anthropic": AnthropicProvider(client, clock.now),
        "local": LocalProvider(),
        "gemini": GeminiProvider(client, clock.now, private_images=private_images),
        "azure_openai": AzureOpenAIProvider(client, clock.now),
        "bedrock": BedrockProvider(client, clock.now, credentials, private_images=private_images),
        "openai_responses": ResponsesProvider(client, clock.now),
        **{
            name: OpenAIProvider(
                client,
                clock.now,
                max_tokens_field=preset.max_tokens_field,
                stream_usage=preset.stream_usage,
                renamed=preset.renamed,
            )
            for name, preset in PRESETS.items()
        },
    }


def _routes_file(settings: Settings) -> ConfigFile[RoutesConfig]:
    return ConfigFile(
        settings.routes_path(),
        lambda text, origin: parse_routes(text, known_providers=PROVIDER_NAMES, origin=origin),
        "routes",
    )


def _gateway_part(
    settings: Settings,
    gateway: Gateway,
    clock: SystemClock,
    info: dict[str, object],
) -> GatewayPart:
    """The OpenAI/Anthropic-compatible HTTP gateway as a part of the service."""
    app = build_app(gateway, clock, lambda: uuid.uuid4().hex)
    return GatewayPart(app, gateway, settings.http_host, settings.http_port, info)


def _gateway(
    settings: Settings,
    router: Router,
    config: tuple[ConfigFile[RoutesConfig], ConfigFile[PriceBook]],
    handler: ModelCallHandler,
    publisher: Publisher,
    keys: tuple[Authenticator | None, Quotas | None],
) -> Gateway:
    """The gateway's use case; without keys ports it accepts only the dev key (or nothing)."""
    routes, prices = config
    authenticator, quotas = keys
    if authenticator is None:
        dev_key = settings.dev_api_key.get_secret_value() if settings.dev_api_key else None
        authenticator = DevKeyAuthenticator(dev_key, settings.dev_tenant)
        quotas = quotas or UnmeteredQuotas()
    if quotas is None:
        raise ValueError("an authenticator needs its quotas")

    async def publish_usage(calls: Sequence[tuple[ModelRequest, CallOutcome]]) -> None:
        # One hand-over of every record, one wait for all acknowledgements.
        await publisher.publish([r for call in calls for r in handler.usage_outputs(*call)])

    return Gateway(
        router=router,
        routes=routes.current,
        prices=prices.current,
        authenticator=authenticator,
        quotas=quotas,
        publish_usage=publish_usage,
    )


@asynccontextmanager
async def build(context: ServiceContext[Settings]) -> AsyncIterator[Running]:
    """The router's parts: the model-request consumer, its gRPC server and HTTP gateway (both
    behind the API key registry; HTTP takes the dev key instead when one is set), watchers."""
    async with _build(context, (None, None)) as running:
        yield running


def build_with_keys(authenticator: Authenticator, quotas: Quotas) -> Build:
    """The router's build with the HTTP gateway's keys ports given (a key registry, tests)."""

    @asynccontextmanager
    async def build_(context: ServiceContext[Settings]) -> AsyncIterator[Running]:
        async with _build(context, (authenticator, quotas)) as running:
            yield running

    return build_


@asynccontextmanager
async def _build(
    context: ServiceContext[Settings], keys: tuple[Authenticator | None, Quotas | None]
) -> AsyncIterator[Running]:
    settings = context.settings
    clock = SystemClock()
    routes = _routes_file(settings)
    prices = ConfigFile(
        settings.pricebook_path(), lambda text, origin: PriceBook.parse(text, origin), "price book"
    )
    log.info(
        "router configured",
        extra={
            "routes": ",".join(sorted(routes.current().routes)),
            "price_book_version": prices.current().version,
        },
    )
    limits = httpx.Limits(
        max_connections=settings.max_connections,
        max_keepalive_connections=settings.max_connections,
    )
    # aiohttp under the httpx API: several times the throughput of httpx's pool under load.
    transport = FastTransport(limits)
    async with (
        httpx.AsyncClient(transport=transport, limits=limits, follow_redirects=False) as client,
        key_services(
            settings,
            client_id=context.spec.name,
            clock=clock.now,
            spend_currency=prices.current().currency,
            tenant_limits=load_tenant_limits(settings.tenant_limits),
        ) as registry,
    ):
        assert registry.quotas is not None
        if keys == (None, None) and not settings.dev_api_key:
            # The key registry guards the HTTP door too, unless a dev key was asked for.
            keys = (registry.registry, registry.quotas)
        credentials = EnvCredentials(os.environ, settings.secrets_dir)
        router = Router(
            routes=routes.current,
            prices=prices.current,
            providers=build_providers(
                client, clock, credentials, private_images=settings.image_fetch_private
            ),
            credentials=credentials,
            clock=clock,
            random=random.SystemRandom().random,
        )
        # Fail loudly: a route no deployment of which can be reached fails every call.
        for route, why in router.unreachable_routes().items():
            log.error("route has no reachable deployment", extra={"route": route, "reason": why})
        name = context.spec.name
        broker = broker_for(settings.kafka, name)
        publisher = BrokerPublisher(broker)
        handler = ModelCallHandler(
            router,
            OutputTopics(
                results=context.topic(Topics.MODEL_RESULTS), usage=context.topic(Topics.USAGE)
            ),
            clock,
            source=name,
        )
        consumer = KeyedConsumer(
            settings.kafka,
            [context.topic(Topics.MODEL_REQUESTS)],
            group_id=context.group,
            processor=AtLeastOnce(
                name,
                handler.on_model_call_requested,
                publisher,
                dead_letter_topic=context.topic(Topics.DLQ),
            ),
            max_in_flight=settings.max_in_flight,
        )
        watch_circuits(router.circuit_states)
        parts: list[Part] = [
            BrokerPart(broker),
            consumer,
            # A reload bug is logged; the router keeps serving its last good config.
            TaskPart(
                "routes-watch",
                lambda: routes.watch(settings.reload_interval_s),
                critical=False,
            ),
            TaskPart(
                "prices-watch",
                lambda: prices.watch(settings.reload_interval_s),
                critical=False,
            ),
        ]
        info: dict[str, object] = {}
        if settings.grpc_enabled:
            service = RouterService(
                router,
                handler,
                publisher,
                clock,
                lambda: uuid.uuid4().hex,
                registry.registry,
                registry.quotas,
            )
            server, _, info["grpc_port"] = await server_for(
                service, f"{settings.grpc_host}:{settings.grpc_port}"
            )
            parts.append(GrpcServerPart(server))
        if settings.http_enabled:
            gateway = _gateway(settings, router, (routes, prices), handler, publisher, keys)
            # Last: stopped first, so the usage of its last answers still reaches the broker.
            parts.append(_gateway_part(settings, gateway, clock, info))
        yield Running(parts, info)

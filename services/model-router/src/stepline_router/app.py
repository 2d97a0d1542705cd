"""Composition root: the only place that builds settings, clients, adapters and servers."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import uuid
from collections.abc import Mapping

import httpx

from stepline_pricebook import PriceBook
from stepline_router.clock import SystemClock
from stepline_router.config import Settings
from stepline_router.credentials import EnvCredentials
from stepline_router.grpc_service import RouterService, serve
from stepline_router.handlers import ModelCallHandler
from stepline_router.handlers import Topics as OutputTopics
from stepline_router.providers.anthropic import AnthropicProvider
from stepline_router.providers.base import Provider
from stepline_router.providers.local import LocalProvider
from stepline_router.providers.openai import OpenAIProvider
from stepline_router.reload import ConfigFile
from stepline_router.router import Router
from stepline_router.routes import RoutesConfig, parse_routes
from stepline_runtime.atleastonce import AtLeastOnce, BrokerPublisher, broker_for, subscribe
from stepline_runtime.logs import configure_logging
from stepline_runtime.metrics import watch_circuits
from stepline_runtime.observe import start_observability
from stepline_runtime.topics import Topics, ensure_service_topics

__all__ = ["PROVIDER_NAMES", "build_providers", "main", "run"]

log = logging.getLogger(__name__)

CONSUMER = "model-router"
# Provider kinds a routes file may name. `openai_compatible` is the same wire format for
# vLLM, Ollama, llama.cpp server, OpenRouter…, sending `max_tokens` where OpenAI wants
# `max_completion_tokens`.
PROVIDER_NAMES = ("openai", "openai_compatible", "anthropic", "local")


def build_providers(client: httpx.AsyncClient, clock: SystemClock) -> Mapping[str, Provider]:
    """Every provider adapter, sharing one HTTP connection pool."""
    return {
        "openai": OpenAIProvider(client, clock.now, max_tokens_field="max_completion_tokens"),
        "openai_compatible": OpenAIProvider(client, clock.now),
        "anthropic": AnthropicProvider(client, clock.now),
        "local": LocalProvider(),
    }


def _routes_file(settings: Settings) -> ConfigFile[RoutesConfig]:
    return ConfigFile(
        settings.routes_path(),
        lambda text, origin: parse_routes(text, known_providers=PROVIDER_NAMES, origin=origin),
        "routes",
    )


async def run(settings: Settings, stop: asyncio.Event) -> None:
    """Run the Kafka consumer and the gRPC server until `stop` is set."""
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
    used = {Topics.MODEL_REQUESTS, Topics.MODEL_RESULTS, Topics.USAGE, Topics.DLQ}
    await ensure_service_topics(settings, used, f"{CONSUMER}-admin")

    limits = httpx.Limits(
        max_connections=settings.max_connections,
        max_keepalive_connections=settings.max_connections,
    )
    async with httpx.AsyncClient(limits=limits, follow_redirects=False) as client:
        router = Router(
            routes=routes.current,
            prices=prices.current,
            providers=build_providers(client, clock),
            credentials=EnvCredentials(os.environ, settings.secrets_dir),
            clock=clock,
            random=random.SystemRandom().random,
        )
        # Fail loudly: a route no deployment of which can be reached fails every call.
        for route, why in router.unreachable_routes().items():
            log.error("route has no reachable deployment", extra={"route": route, "reason": why})
        broker = broker_for(settings.kafka, CONSUMER)
        publisher = BrokerPublisher(broker)
        handler = ModelCallHandler(
            router,
            OutputTopics(
                results=settings.topic(Topics.MODEL_RESULTS), usage=settings.topic(Topics.USAGE)
            ),
            clock,
            source=CONSUMER,
        )
        subscribe(
            broker,
            settings.topic(Topics.MODEL_REQUESTS),
            group_id=settings.group(CONSUMER),
            processor=AtLeastOnce(
                CONSUMER,
                handler.on_model_call_requested,
                publisher,
                dead_letter_topic=settings.topic(Topics.DLQ),
            ),
            max_workers=settings.max_workers,
        )
        watchers = [
            asyncio.create_task(routes.watch(settings.reload_interval_s)),
            asyncio.create_task(prices.watch(settings.reload_interval_s)),
        ]
        watch_circuits(router.circuit_states)
        observability = await start_observability(
            settings.service_name,
            settings.kafka,
            metrics_host=settings.metrics_host,
            metrics_port=settings.metrics_port,
            group=settings.group(CONSUMER),
            topics=[settings.topic(Topics.MODEL_REQUESTS)],
        )
        async with broker:
            await broker.start()
            server = None
            if settings.grpc_enabled:
                service = RouterService(router, handler, publisher, clock, lambda: uuid.uuid4().hex)
                server, _, port = await serve(service, f"{settings.grpc_host}:{settings.grpc_port}")
                log.info("gRPC serving", extra={"port": port})
            log.info("model router started")
            try:
                await stop.wait()
            finally:
                if server is not None:
                    await server.stop(grace=5)
                for task in watchers:
                    task.cancel()
                await asyncio.gather(*watchers, return_exceptions=True)
                await observability.stop()
    log.info("model router stopped")


async def main() -> None:
    """Entry point: configure logging, stop on SIGTERM/SIGINT."""
    settings = Settings()
    configure_logging(settings.service_name, settings.log_level, settings.log_format)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await run(settings, stop)

"""Composition root: the only place that builds settings, the store, Kafka clients and the server.

`build` wires the parts from ports it is given (store, commands, authenticator) and returns them
unstarted; `serve` opens the real adapters, starts the projector and the HTTP server, and stops
them on `stop`. A shared service scaffold can call `build` and run the returned parts as is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import uvicorn
from starlette.applications import Starlette

from stepline_client.client import Stepline
from stepline_frontdoor.commands import Commands, KafkaCommands
from stepline_frontdoor.config import Settings
from stepline_frontdoor.http_api import Api, build_app
from stepline_frontdoor.keyfile import StaticAuthenticator
from stepline_frontdoor.live import RunFeed
from stepline_frontdoor.openapi import document
from stepline_frontdoor.projector import Projector
from stepline_frontdoor.sqlstore import PostgresReadStore, SqliteReadStore
from stepline_frontdoor.store import ReadStore
from stepline_keys import Authenticator
from stepline_runtime.logs import configure_logging
from stepline_runtime.topics import Topics, ensure_service_topics

__all__ = ["Frontdoor", "build", "clock", "main", "open_store", "serve"]

log = logging.getLogger(__name__)

# Read: runs, usage, model and tool results; written: goals and control.
_TOPICS = (
    Topics.RUNS,
    Topics.USAGE,
    Topics.MODEL_RESULTS,
    Topics.TOOL_RESULTS,
    Topics.GOALS,
    Topics.CONTROL,
)


def clock() -> datetime:
    """The wall clock, in UTC."""
    return datetime.now(UTC)


def open_store(settings: Settings) -> ReadStore:
    """PostgreSQL when a DSN is configured, else the SQLite file under the data folder."""
    if settings.frontdoor_dsn:
        return PostgresReadStore(settings.frontdoor_dsn)
    return SqliteReadStore(settings.sqlite_path)


@dataclass(frozen=True, slots=True)
class Frontdoor:
    """The service's running parts: the web app, the projector feeding its read model."""

    app: Starlette
    store: ReadStore
    projector: Projector
    feed: RunFeed


def build(
    settings: Settings,
    *,
    store: ReadStore,
    commands: Commands,
    authenticator: Authenticator,
    partitions: Mapping[str, int],
    now: Callable[[], datetime] = clock,
) -> Frontdoor:
    """Wire the console over the given ports (nothing is started).

    `partitions` maps the namespaced topics the projector reads to their partition counts.
    """
    feed = RunFeed()
    projector = Projector(
        store,
        feed,
        settings.kafka,
        runs_topic=settings.topic(Topics.RUNS),
        usage_topic=settings.topic(Topics.USAGE),
        tool_results_topic=settings.topic(Topics.TOOL_RESULTS),
        model_results_topic=settings.topic(Topics.MODEL_RESULTS),
        partitions=partitions,
        clock=now,
    )
    api = Api(store, commands, authenticator, feed, clock=now)
    app = build_app(api, document, projector.caught_up.is_set)
    return Frontdoor(app, store, projector, feed)


async def serve(
    settings: Settings,
    stop: asyncio.Event,
    *,
    authenticator: Authenticator | None = None,
    ready: Callable[[str], None] | None = None,
) -> None:
    """Project the topics and serve the console until `stop` is set."""
    partitions = await ensure_service_topics(settings, _TOPICS, "frontdoor-admin")
    keys = authenticator or StaticAuthenticator.from_file(settings.frontdoor_keys_file)
    store = open_store(settings)
    async with Stepline(settings, source="stepline-frontdoor") as client:
        parts = build(
            settings,
            store=store,
            commands=KafkaCommands(client),
            authenticator=keys,
            partitions=partitions,
        )
        server = uvicorn.Server(
            uvicorn.Config(
                parts.app,
                host=settings.frontdoor_host,
                port=settings.frontdoor_port,
                log_config=None,
                access_log=False,
                lifespan="off",
            )
        )
        projecting = asyncio.create_task(parts.projector.run(), name="projector")
        serving = asyncio.create_task(server.serve(), name="http")
        try:
            while not server.started:
                if serving.done() or projecting.done():
                    break
                await asyncio.sleep(0.05)
            if server.started:
                host, port = server.servers[0].sockets[0].getsockname()[:2]
                url = f"http://{host}:{port}/"
                log.info("console serving", extra={"url": url})
                if ready is not None:
                    ready(url)
            stopped = asyncio.create_task(stop.wait())
            await asyncio.wait({stopped, serving, projecting}, return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
        finally:
            server.should_exit = True
            parts.projector.stop()
            with contextlib.suppress(asyncio.CancelledError):
                await serving
            await projecting  # raises what ended it, if it failed
            store.close()
            log.info("frontdoor stopped")


async def _main() -> None:
    settings = Settings()
    configure_logging(settings.service_name, settings.log_level, settings.log_format)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await serve(settings, stop)


def main() -> None:
    """Entry point of `python -m stepline_frontdoor`."""
    asyncio.run(_main())

"""Composition root: the only place that builds settings, the store, Kafka clients and servers.

`build` is the service's build function for `stepline_runtime.lifecycle.run_service`: it opens
the real adapters and yields the running parts (the projector, the HTTP server of the console
and its JSON API, and the gRPC server of `GatewayService`). `wire` assembles the console over
whatever ports it is given, so tests can run it on in-memory twins.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

import grpc
import uvicorn
from starlette.applications import Starlette

from stepline.v1 import gateway_service_pb2_grpc
from stepline_client.client import Stepline
from stepline_frontdoor.commands import Commands, KafkaCommands
from stepline_frontdoor.config import Settings
from stepline_frontdoor.grpc_service import Gateway
from stepline_frontdoor.http_api import Api, LastUsed, build_app
from stepline_frontdoor.keyfile import StaticAuthenticator
from stepline_frontdoor.keyuse import LastUse
from stepline_frontdoor.live import RunFeed
from stepline_frontdoor.openapi import document
from stepline_frontdoor.projector import Projector
from stepline_frontdoor.sqlstore import PostgresReadStore, SqliteReadStore
from stepline_frontdoor.store import ReadStore
from stepline_keys import Authenticator, Principal
from stepline_keys.feeds import KafkaKeyLog
from stepline_keys.grpcdoor import RequireKey
from stepline_keys.manage import KeyAdmin
from stepline_keys.secret import key_id_of
from stepline_keys.service import key_services
from stepline_runtime.catalog import Topics
from stepline_runtime.lifecycle import GrpcServerPart, Running, ServiceContext, TaskPart

__all__ = ["Frontdoor", "HttpServerPart", "RegistryOrFile", "build", "clock", "open_store", "wire"]

log = logging.getLogger(__name__)


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
    """The console's parts: the web app and the projector feeding its read model."""

    app: Starlette
    store: ReadStore
    projector: Projector
    feed: RunFeed


def wire(
    settings: Settings,
    *,
    store: ReadStore,
    commands: Commands,
    authenticator: Authenticator,
    keys: KeyAdmin,
    partitions: Mapping[str, int],
    last_used: LastUsed = lambda _: None,
    now: Callable[[], datetime] = clock,
) -> Frontdoor:
    """The console over the given ports (nothing is started).

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
        budgets_topic=settings.topic(Topics.BUDGETS),
        rollups_topic=settings.topic(Topics.USAGE_ROLLUPS),
        partitions=partitions,
        clock=now,
    )
    api = Api(store, commands, authenticator, feed, keys=keys, last_used=last_used, clock=now)
    app = build_app(api, document, projector.caught_up.is_set)
    return Frontdoor(app, store, projector, feed)


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The service lifecycle owns SIGTERM/SIGINT and stops this part in order.
        yield


class HttpServerPart:
    """Uvicorn serving an ASGI app, as a lifecycle part; `url` is known once started."""

    name = "http"

    def __init__(self, app: Starlette, host: str, port: int, grace_s: int = 3) -> None:
        self._server = _Server(
            uvicorn.Config(
                app,
                host=host,
                port=port,
                log_config=None,
                access_log=False,
                lifespan="off",
                # An open event stream (a console tab) must not hold a shutdown forever.
                timeout_graceful_shutdown=grace_s,
            )
        )
        self._task: asyncio.Task[None] | None = None
        self.url = ""

    async def start(self) -> None:
        """Bind and start serving; raises when the port cannot be bound."""
        self._task = asyncio.create_task(self._server.serve(), name="uvicorn")
        while not self._server.started:
            if self._task.done():
                await self._task  # raises what stopped it
                raise RuntimeError("the HTTP server stopped while starting")
            await asyncio.sleep(0.02)
        host, port = self._server.servers[0].sockets[0].getsockname()[:2]
        self.url = f"http://{host}:{port}/"

    async def stop(self) -> None:
        """Finish open requests within the grace period (event streams are cut), then close."""
        self._server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def wait(self) -> None:
        """Until the server ends on its own."""
        assert self._task is not None, "wait() before start()"
        await asyncio.shield(self._task)


class RegistryOrFile:
    """Keys of the registry (`sk-stl-…`, from `stepline.keys.v1`) and of the local key file."""

    def __init__(self, registry: Authenticator, file: Authenticator) -> None:
        self._registry = registry
        self._file = file

    def authenticate(self, secret: str | None) -> Principal:
        """The principal of a registry key, else of a key-file key."""
        if secret and key_id_of(secret):
            return self._registry.authenticate(secret)
        return self._file.authenticate(secret)


@asynccontextmanager
async def build(
    context: ServiceContext[Settings], authenticator: Authenticator | None = None
) -> AsyncIterator[Running]:
    """The front door's parts: the read-model projector, the HTTP server over it (console and
    JSON API) and the gRPC server of `GatewayService`, all on the same keys."""
    settings = context.settings
    store = open_store(settings)
    try:
        async with (
            Stepline(settings, source=context.spec.name) as client,
            key_services(settings, client_id=context.spec.name, clock=clock) as registry,
            KafkaKeyLog(settings, source=context.spec.name) as key_log,
        ):
            chosen = authenticator
            if chosen is None:
                from_file = StaticAuthenticator.from_file(settings.frontdoor_keys_file)
                if not from_file and not registry.registry.all_keys():
                    log.warning(
                        "no API keys: the console refuses every request until one is issued "
                        "with `stepline keys create` (or in the key file: `python -m "
                        "stepline_frontdoor.keyfile issue --file FILE --tenant T --scope admin`)",
                        extra={"keys_file": str(settings.frontdoor_keys_file)},
                    )
                chosen = RegistryOrFile(registry.registry, from_file)
            keys = LastUse(chosen, clock)
            parts = wire(
                settings,
                store=store,
                commands=KafkaCommands(client),
                authenticator=keys,
                keys=KeyAdmin(registry.registry, key_log, clock),
                partitions=context.partitions,
                last_used=keys.last_used,
            )
            http = HttpServerPart(parts.app, settings.frontdoor_host, settings.frontdoor_port)
            server = grpc.aio.server(interceptors=[RequireKey(keys)])
            gateway_service_pb2_grpc.add_GatewayServiceServicer_to_server(
                Gateway(client, keys), server
            )
            grpc_port = server.add_insecure_port(settings.frontdoor_grpc_address)
            projector = TaskPart("projector", parts.projector.run, stop=parts.projector.stop)
            yield Running(
                [projector, http, GrpcServerPart(server, grace_s=2)],
                {
                    "url": f"http://{settings.frontdoor_host}:{settings.frontdoor_port}/",
                    "grpc_port": grpc_port,
                    "store": "postgresql" if settings.frontdoor_dsn else "sqlite",
                },
            )
    finally:
        store.close()

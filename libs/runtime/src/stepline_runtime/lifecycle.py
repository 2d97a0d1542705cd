"""One lifecycle for every service: `run_service(SPEC)` is each service's `__main__`.

It owns what used to be repeated per service: settings and logging, SIGTERM/SIGINT, creating
the spec's topics, starting what the service's build function returned, readiness (metrics
served once everything started), observability (metrics endpoint, tracing, lag of the topics
its group consumes) and a graceful shutdown in reverse order.

A build function is the service's composition root, shaped like a Starlette lifespan: an
async context manager that builds clients and adapters, yields a `Running` (the parts to
start: brokers, servers, background tasks, the processor loop) and releases its resources
when the block exits:

    @asynccontextmanager
    async def build(context: ServiceContext[Settings]) -> AsyncIterator[Running]:
        store = open_store(context.settings)
        try:
            yield Running([BrokerPart(broker), GrpcServerPart(server)], {"store": "sqlite"})
        finally:
            store.close()

Parts start in order and stop in reverse. A part that ends on its own (a processor loop
that failed, a critical task) stops the whole service with an error, so a supervisor or
Kubernetes restarts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from pydantic import ValidationError

from stepline_runtime import faults
from stepline_runtime.logs import adopt_library_loggers, configure_logging, flush_repeats
from stepline_runtime.observe import Observability, start_observability
from stepline_runtime.service import ServiceSpec
from stepline_runtime.settings import ServiceSettings
from stepline_runtime.topics import ensure_service_topics

__all__ = [
    "BrokerPart",
    "Build",
    "GrpcServerPart",
    "Part",
    "PartEndedError",
    "Running",
    "ServiceContext",
    "TaskPart",
    "run_service",
    "serve",
]

log = logging.getLogger(__name__)

S = TypeVar("S", bound=ServiceSettings)


@dataclass(frozen=True)
class ServiceContext(Generic[S]):
    """What a build function gets: its spec, its settings, its topics' partition counts."""

    spec: ServiceSpec
    settings: S
    # Partition count of every topic of the spec, by namespaced name (read at start).
    partitions: Mapping[str, int] = field(default_factory=dict)

    def topic(self, name: str) -> str:
        """Catalog topic `name` in this deployment's namespace."""
        return self.settings.topic(name)

    @property
    def group(self) -> str:
        """The service's consumer group (also its transactional app id), namespaced."""
        if self.spec.group is None:
            raise ValueError(f"{self.spec.name} consumes no topic: its spec has no group")
        return self.settings.group(self.spec.group)


class Part(Protocol):
    """Something a service runs: started after build, stopped before its resources close."""

    name: str

    async def start(self) -> None:
        """Start serving; return once started."""

    async def stop(self) -> None:
        """Stop gracefully."""

    async def wait(self) -> None:
        """Return (or raise) when the part ended on its own; parts that never do wait forever."""


@dataclass
class Running:
    """What a build function yields: the parts to run and fields for the "started" line."""

    parts: Sequence[Part] = ()
    info: dict[str, Any] = field(default_factory=dict)


Build = Callable[[ServiceContext[Any]], AbstractAsyncContextManager[Running]]


class PartEndedError(RuntimeError):
    """A part ended while the service was meant to run."""


class _Startable(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class BrokerPart:
    """A FastStream broker (its subscribers consume once it started), or anything else with
    async `start()` and `stop()` that runs until stopped (name it: `BrokerPart(x, "http")`)."""

    def __init__(self, broker: _Startable, name: str = "kafka") -> None:
        self.name = name
        self._broker = broker

    async def start(self) -> None:
        """Connect and start the subscribers."""
        await self._broker.start()

    async def stop(self) -> None:
        """Stop consuming (in-flight handlers finish) and disconnect."""
        await self._broker.stop()

    async def wait(self) -> None:
        """A broker reconnects by itself: it never ends on its own."""
        await asyncio.Event().wait()


class _GrpcServer(Protocol):
    async def start(self) -> None: ...

    async def stop(self, grace: float | None) -> None: ...


class GrpcServerPart:
    """A `grpc.aio` server whose ports were already added by the build function."""

    def __init__(self, server: _GrpcServer, *, grace_s: float = 5.0, name: str = "grpc") -> None:
        self.name = name
        self._server = server
        self._grace_s = grace_s

    async def start(self) -> None:
        """Start serving."""
        await self._server.start()

    async def stop(self) -> None:
        """Refuse new calls, let running ones finish within the grace period."""
        await self._server.stop(self._grace_s)

    async def wait(self) -> None:
        """A server runs until stopped: it never ends on its own."""
        # Not `wait_for_termination()`: cancelling that waiter breaks a later graceful stop.
        await asyncio.Event().wait()


class TaskPart:
    """A coroutine run as a task: the processor loop, a config watcher, an announcer.

    `stop` asks the loop to return (else the task is cancelled). A `critical` task that ends
    stops the service; a non-critical one that fails is logged and the service goes on.
    """

    def __init__(
        self,
        name: str,
        run: Callable[[], Awaitable[None]],
        *,
        stop: Callable[[], object] | None = None,
        critical: bool = True,
    ) -> None:
        self.name = name
        self._run = run
        self._stop = stop
        self._critical = critical
        self._task: asyncio.Task[None] | None = None

    async def _main(self) -> None:
        await self._run()

    async def start(self) -> None:
        """Start the task."""
        self._task = asyncio.create_task(self._main(), name=self.name)

    async def stop(self) -> None:
        """Ask it to return (or cancel it) and wait until it has."""
        task = self._task
        if task is None or task.done():
            return
        if self._stop is None:
            task.cancel()
        else:
            outcome = self._stop()
            if inspect.isawaitable(outcome):
                await outcome
        with contextlib.suppress(asyncio.CancelledError):
            try:
                await task
            except Exception:
                log.exception("task failed while stopping", extra={"task": self.name})

    async def wait(self) -> None:
        """Critical: until the task ends. Otherwise forever (a failure is only logged)."""
        assert self._task is not None, "wait() before start()"
        if self._critical:
            await asyncio.shield(self._task)
            return
        try:
            await asyncio.shield(self._task)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("background task failed; the service goes on", extra={"task": self.name})
        await asyncio.Event().wait()


async def _flush_repeats_forever(interval_s: float = 1.0) -> None:
    while True:
        await asyncio.sleep(interval_s)
        flush_repeats()


async def _run(
    spec: ServiceSpec,
    settings: ServiceSettings,
    running: Running,
    stop: asyncio.Event,
    ready: Callable[[Running], None] | None,
) -> None:
    started: list[Part] = []
    observability: Observability | None = None
    waiters: dict[asyncio.Task[None], Part] = {}
    helpers: list[asyncio.Task[Any]] = []
    failure: BaseException | None = None
    try:
        for part in running.parts:
            await part.start()
            started.append(part)
        # Libraries built or started above may have installed their own console handlers.
        adopt_library_loggers()
        metrics_port = (
            settings.metrics_port if settings.metrics_port is not None else spec.metrics_port
        )
        # Serving /metrics only now makes it the readiness signal (Kubernetes probes it).
        observability = await start_observability(
            spec.name,
            settings.kafka,
            metrics_host=settings.metrics_host,
            metrics_port=metrics_port or 0,
            group=settings.group(spec.group) if spec.group else "",
            topics=[settings.topic(t) for t in spec.consumes],
        )
        log.info(
            "service started",
            extra={
                **running.info,
                "parts": ",".join(p.name for p in started),
                "metrics_port": observability.metrics_port or 0,
                "namespace": settings.topic_namespace,
            },
        )
        if settings.ready_file is not None:
            settings.ready_file.parent.mkdir(parents=True, exist_ok=True)
            settings.ready_file.write_text(f"{os.getpid()}\n")
        if ready is not None:
            ready(running)
        waiters = {asyncio.create_task(p.wait(), name=f"wait-{p.name}"): p for p in started}
        stopping = asyncio.create_task(stop.wait(), name="wait-stop")
        helpers = [stopping, asyncio.create_task(_flush_repeats_forever(), name="log-repeats")]
        done, _ = await asyncio.wait([stopping, *waiters], return_when=asyncio.FIRST_COMPLETED)
        for task, part in waiters.items():
            if task in done:
                error = None if task.cancelled() else task.exception()
                failure = error or PartEndedError(f"{part.name} ended on its own")
                log.error(
                    "part ended; stopping the service",
                    extra={"part": part.name, "error": repr(failure)},
                )
                break
        log.info("service stopping")
    finally:
        if settings.ready_file is not None:
            settings.ready_file.unlink(missing_ok=True)
        for task in [*waiters, *helpers]:
            task.cancel()
        await asyncio.gather(*waiters, *helpers, return_exceptions=True)
        for part in reversed(started):
            try:
                await part.stop()
            except Exception:
                log.exception("part did not stop cleanly", extra={"part": part.name})
        if observability is not None:
            await observability.stop()
    if failure is not None:
        raise PartEndedError(f"{spec.name}: {failure!r}") from failure


async def serve(
    spec: ServiceSpec,
    settings: ServiceSettings,
    stop: asyncio.Event,
    *,
    ready: Callable[[Running], None] | None = None,
    build: Build | None = None,
) -> None:
    """Create the spec's topics, build, start, serve until `stop` is set, shut down.

    `build` defaults to the spec's; `ready` is called once everything started (tests).
    """
    partitions: dict[str, int] = {}
    if spec.topics:
        partitions = await ensure_service_topics(settings, spec.topics, f"{spec.name}-admin")
    factory: Build = build or spec.load_build()
    async with factory(ServiceContext(spec, settings, partitions)) as running:
        await _run(spec, settings, running, stop, ready)
    log.info("service stopped")


async def _main(spec: ServiceSpec, settings: ServiceSettings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await serve(spec, settings, stop)


def run_service(spec: ServiceSpec) -> None:
    """`python -m <service>`: run until SIGTERM/SIGINT; exit 0 when stopped, 1 when failed."""
    try:
        settings = spec.load_settings()(service_name=spec.name)
    except ValidationError as error:
        configure_logging(spec.name)
        log.error("invalid settings", extra={"error": str(error)})
        sys.exit(2)
    configure_logging(spec.name, settings.log_level, settings.log_format)
    faults.install(settings.fault_kill_after_records)
    try:
        asyncio.run(_main(spec, settings))
    except (Exception, asyncio.CancelledError):
        log.exception("service failed")
        flush_repeats(everything=True)
        sys.exit(1)
    flush_repeats(everything=True)

"""Composition root: the only place that builds settings, the store, Kafka and gRPC clients."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import grpc

from stepline.v1 import billing_service_pb2_grpc
from stepline_billing.config import Settings, load_budgets
from stepline_billing.grpc_service import BillingServicer
from stepline_billing.handlers import OutputTopics, UsageHandler
from stepline_billing.sqlstore import PostgresLedgerStore, SqliteLedgerStore
from stepline_billing.store import LedgerStore
from stepline_pricebook import PriceBook
from stepline_runtime.atleastonce import AtLeastOnce, BrokerPublisher, Handle, broker_for, subscribe
from stepline_runtime.logs import configure_logging
from stepline_runtime.observe import start_observability
from stepline_runtime.records import InboundRecord, OutboundRecord
from stepline_runtime.topics import Topics, ensure_service_topics

__all__ = ["clock", "open_store", "run"]

log = logging.getLogger(__name__)

_TOPICS = (Topics.USAGE, Topics.USAGE_ROLLUPS, Topics.BUDGETS, Topics.DLQ)


def clock() -> datetime:
    """The wall clock, in UTC."""
    return datetime.now(UTC)


def open_store(settings: Settings) -> LedgerStore:
    """PostgreSQL when a DSN is configured, else the SQLite file under the data folder."""
    if settings.billing_dsn:
        return PostgresLedgerStore(settings.billing_dsn)
    return SqliteLedgerStore(settings.sqlite_path)


def _kill_after(handle: Handle, commits: int) -> Handle:
    """Fault hook for tests: die by SIGKILL after the N-th commit, before the offset commit."""
    count = 0

    async def handle_then_maybe_die(record: InboundRecord) -> Sequence[OutboundRecord]:
        nonlocal count
        outputs = await handle(record)
        count += 1
        if count >= commits:
            log.warning("fault hook: SIGKILL after ledger commit", extra={"offset": record.offset})
            os.kill(os.getpid(), signal.SIGKILL)
        return outputs

    return handle_then_maybe_die


async def run(settings: Settings, ready: Callable[[int], None] | None = None) -> None:
    """Consume usage, serve gRPC, until SIGTERM/SIGINT."""
    store = open_store(settings)
    book = PriceBook.load()
    handler = UsageHandler(
        store,
        book,
        load_budgets(settings.billing_config),
        OutputTopics(settings.topic(Topics.USAGE_ROLLUPS), settings.topic(Topics.BUDGETS)),
        clock,
    )
    await ensure_service_topics(settings, _TOPICS, "billing-admin")

    broker = broker_for(settings.kafka, "billing")
    handle: Handle = handler.on_usage_recorded
    if settings.billing_fault_kill_after:
        handle = _kill_after(handle, settings.billing_fault_kill_after)
    group = settings.group("billing")
    processor = AtLeastOnce(
        group, handle, BrokerPublisher(broker), dead_letter_topic=settings.topic(Topics.DLQ)
    )
    subscribe(broker, settings.topic(Topics.USAGE), group_id=group, processor=processor)

    server = grpc.aio.server()
    billing_service_pb2_grpc.add_BillingServiceServicer_to_server(
        BillingServicer(store, load_budgets(settings.billing_config), book.currency, clock),
        server,
    )
    port = server.add_insecure_port(settings.billing_grpc_address)
    await server.start()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    observability = await start_observability(
        settings.service_name,
        settings.kafka,
        metrics_host=settings.metrics_host,
        metrics_port=settings.metrics_port,
        group=group,
        topics=[settings.topic(Topics.USAGE)],
    )
    try:
        async with broker:
            await broker.start()
            log.info(
                "billing started",
                extra={
                    "grpc_port": port,
                    "store": "postgresql" if settings.billing_dsn else "sqlite",
                },
            )
            if ready is not None:
                ready(port)
            await stop.wait()
    finally:
        await server.stop(grace=2)
        store.close()
        await observability.stop()
        log.info("billing stopped")


def main() -> None:
    """Entry point of `python -m stepline_billing`."""
    settings = Settings()
    configure_logging("billing", settings.log_level, settings.log_format)
    asyncio.run(run(settings))

"""Composition root: the only place that builds the store, the Kafka consumer and gRPC server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import grpc

from stepline.v1 import billing_service_pb2_grpc
from stepline_billing.config import Settings, load_budgets
from stepline_billing.grpc_service import BillingServicer
from stepline_billing.handlers import AcknowledgingPublisher, OutputTopics, UsageHandler
from stepline_billing.sqlstore import PostgresLedgerStore, SqliteLedgerStore
from stepline_billing.store import LedgerStore
from stepline_keys.grpcdoor import RequireKey
from stepline_keys.service import key_services
from stepline_pricebook import PriceBook
from stepline_runtime.atleastonce import AtLeastOnce, BrokerPublisher, broker_for
from stepline_runtime.catalog import Topics
from stepline_runtime.keyed import KeyedConsumer
from stepline_runtime.lifecycle import BrokerPart, GrpcServerPart, Running, ServiceContext

__all__ = ["build", "clock", "open_store"]


def clock() -> datetime:
    """The wall clock, in UTC."""
    return datetime.now(UTC)


def open_store(settings: Settings) -> LedgerStore:
    """PostgreSQL when a DSN is configured, else the SQLite file under the data folder."""
    if settings.billing_dsn:
        return PostgresLedgerStore(settings.billing_dsn)
    return SqliteLedgerStore(settings.sqlite_path)


@asynccontextmanager
async def build(context: ServiceContext[Settings]) -> AsyncIterator[Running]:
    """Billing's parts: the usage consumer and the BillingService gRPC server."""
    settings = context.settings
    store = open_store(settings)
    try:
        book = PriceBook.load()
        handler = UsageHandler(
            store,
            book,
            load_budgets(settings.billing_config),
            OutputTopics(context.topic(Topics.USAGE_ROLLUPS), context.topic(Topics.BUDGETS)),
            clock,
            source=context.spec.name,
        )
        broker = broker_for(settings.kafka, context.spec.name)
        processor = AtLeastOnce(
            context.group,
            handler.on_usage_recorded,
            # Tells the handler which of its per-batch publications were acknowledged.
            AcknowledgingPublisher(BrokerPublisher(broker), handler.acknowledged),
            dead_letter_topic=context.topic(Topics.DLQ),
            prepare=handler.prepare_batch,
        )
        consumer = KeyedConsumer(
            settings.kafka,
            [context.topic(Topics.USAGE)],
            group_id=context.group,
            processor=processor,
            max_in_flight=settings.max_in_flight,
        )

        async with key_services(settings, client_id=context.spec.name, clock=clock) as keys:
            server = grpc.aio.server(interceptors=[RequireKey(keys.registry)])
            billing_service_pb2_grpc.add_BillingServiceServicer_to_server(
                BillingServicer(
                    store,
                    load_budgets(settings.billing_config),
                    book.currency,
                    clock,
                    keys.registry,
                ),
                server,
            )
            port = server.add_insecure_port(settings.billing_grpc_address)
            yield Running(
                [BrokerPart(broker), consumer, GrpcServerPart(server, grace_s=2)],
                {"grpc_port": port, "store": "postgresql" if settings.billing_dsn else "sqlite"},
            )
    finally:
        store.close()

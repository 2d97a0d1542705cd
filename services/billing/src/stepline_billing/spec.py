"""Billing's service spec: what it reads and writes, its Kafka identity and ports."""

from __future__ import annotations

from stepline_runtime.catalog import Topics
from stepline_runtime.service import ServiceSpec

__all__ = ["SPEC"]

SPEC = ServiceSpec(
    name="billing",
    module="stepline_billing",
    build="stepline_billing.app:build",
    settings="stepline_billing.config:Settings",
    consumes=(Topics.USAGE,),
    reads=(Topics.KEYS,),
    writes=(Topics.USAGE_ROLLUPS, Topics.BUDGETS, Topics.DLQ),
    metrics_port=9104,
    ports={"grpc": 50062},
    port_settings={"grpc": "billing_grpc_address"},
    # Instances share the ledger through PostgreSQL; the SQLite default is one process's file.
    scale_needs={
        "billing_dsn": "several billing instances share one PostgreSQL ledger "
        "(postgresql://…); the default SQLite ledger is a single instance's file"
    },
)

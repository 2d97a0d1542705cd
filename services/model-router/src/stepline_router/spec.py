"""The model router's service spec: what it reads and writes, its Kafka identity and ports."""

from __future__ import annotations

from stepline_runtime.catalog import Topics
from stepline_runtime.service import ServiceSpec

__all__ = ["SPEC"]

SPEC = ServiceSpec(
    name="model-router",
    module="stepline_router",
    build="stepline_router.app:build",
    settings="stepline_router.config:Settings",
    consumes=(Topics.MODEL_REQUESTS,),
    reads=(Topics.KEYS, Topics.KEY_SPEND),
    writes=(Topics.MODEL_RESULTS, Topics.USAGE, Topics.KEY_SPEND, Topics.DLQ),
    metrics_port=9102,
    ports={"grpc": 50061, "http": 8400},
    port_settings={"grpc": "grpc_port", "http": "http_port"},
)

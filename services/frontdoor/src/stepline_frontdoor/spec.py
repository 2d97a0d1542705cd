"""The front door's service spec: what it reads and writes, its identity and ports (the console
and JSON API over HTTP, `GatewayService` over gRPC)."""

from __future__ import annotations

from stepline_runtime.catalog import Topics
from stepline_runtime.service import ServiceSpec

__all__ = ["SPEC"]

SPEC = ServiceSpec(
    name="frontdoor",
    module="stepline_frontdoor",
    build="stepline_frontdoor.app:build",
    settings="stepline_frontdoor.config:Settings",
    # The read model follows these itself, from its own stored offsets (no group).
    reads=(
        Topics.RUNS,
        Topics.USAGE,
        Topics.MODEL_RESULTS,
        Topics.TOOL_RESULTS,
        Topics.USAGE_ROLLUPS,
        Topics.BUDGETS,
        Topics.KEYS,
    ),
    # Goals and control from the console, the JSON API and gRPC; key events from the Keys page.
    writes=(Topics.GOALS, Topics.CONTROL, Topics.KEYS),
    metrics_port=9106,
    ports={"http": 8470, "grpc": 50063},
    port_settings={"http": "frontdoor_port", "grpc": "frontdoor_grpc_address"},
)

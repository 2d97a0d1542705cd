"""The goal gateway's service spec (`stepline_client.gateway`): topics, identity and ports."""

from __future__ import annotations

from stepline_runtime.catalog import Topics
from stepline_runtime.service import ServiceSpec

__all__ = ["SPEC"]

SPEC = ServiceSpec(
    name="gateway",
    module="stepline_client.gateway",
    build="stepline_client.gateway:build",
    settings="stepline_client.gateway:Settings",
    # Follows runs with a reader of its own (no group).
    reads=(Topics.RUNS, Topics.KEYS),
    writes=(Topics.GOALS, Topics.CONTROL),
    ports={"grpc": 50063},
)

"""The tool executor's service spec: what it reads and writes, its Kafka identity and ports."""

from __future__ import annotations

from stepline_runtime.catalog import Topics
from stepline_runtime.service import ServiceSpec

__all__ = ["SPEC"]

SPEC = ServiceSpec(
    name="tool-executor",
    module="stepline_executor",
    build="stepline_executor.app:build",
    settings="stepline_executor.config:Settings",
    consumes=(Topics.TOOL_REQUESTS,),
    # Its own registry, read back at start to tombstone tools that disappeared; its outcome
    # changelog, read per assigned partition.
    reads=(Topics.TOOLS, Topics.TOOL_OUTCOMES),
    writes=(Topics.TOOL_RESULTS, Topics.TOOL_OUTCOMES, Topics.TOOLS, Topics.USAGE, Topics.DLQ),
    metrics_port=9103,
)

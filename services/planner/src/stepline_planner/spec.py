"""The planner's service spec: what it reads and writes, its Kafka identity and ports."""

from __future__ import annotations

from stepline_runtime.catalog import Topics
from stepline_runtime.service import ServiceSpec

__all__ = ["SPEC"]

SPEC = ServiceSpec(
    name="planner",
    module="stepline_planner",
    build="stepline_planner.app:build",
    settings="stepline_planner.config:Settings",
    # Co-partitioned inputs of the transactional loop.
    consumes=(Topics.GOALS, Topics.CONTROL, Topics.MODEL_RESULTS, Topics.TOOL_RESULTS),
    # Tables (tool registry, budgets) and its own changelog, read without the group.
    reads=(Topics.TOOLS, Topics.BUDGETS, Topics.PLANNER_STATE),
    writes=(
        # Child runs are goals; session and child-run notices travel on control.
        Topics.GOALS,
        Topics.CONTROL,
        Topics.MODEL_REQUESTS,
        Topics.TOOL_REQUESTS,
        Topics.RUNS,
        Topics.PLANNER_STATE,
        Topics.DLQ,
    ),
    transactional=True,
    metrics_port=9101,
)

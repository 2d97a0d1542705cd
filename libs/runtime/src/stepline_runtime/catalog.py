"""The one topic catalog: every Stepline topic, its key, cleanup policy and configs.

Pure data (no Kafka client imports), so service specs can name topics cheaply.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum

__all__ = ["CATALOG", "Cleanup", "Topic", "Topics", "retention"]

_DAY_MS = 24 * 60 * 60 * 1000


class Cleanup(StrEnum):
    """Kafka `cleanup.policy`."""

    DELETE = "delete"
    COMPACT = "compact"
    # Compacted, and records older than retention.ms are deleted too (windowed counters).
    COMPACT_DELETE = "compact,delete"


@dataclass(frozen=True, slots=True)
class Topic:
    """One topic of the catalog."""

    name: str
    key: str
    payloads: tuple[str, ...]
    cleanup: Cleanup = Cleanup.DELETE
    configs: Mapping[str, str] = field(default_factory=dict)
    # Topics in the same group are read together by one consumer and must be co-partitioned.
    copartition_group: str | None = None

    def kafka_configs(self) -> dict[str, str]:
        """Topic-level configs sent at creation."""
        return {"cleanup.policy": self.cleanup.value, **self.configs}


def _retention(days: int) -> dict[str, str]:
    return {"retention.ms": str(days * _DAY_MS)}


class Topics:
    """Names of every topic, so code never spells a topic name twice."""

    GOALS = "stepline.goals.v1"
    CONTROL = "stepline.control.v1"
    MODEL_REQUESTS = "stepline.model.requests.v1"
    MODEL_RESULTS = "stepline.model.results.v1"
    TOOL_REQUESTS = "stepline.tool.requests.v1"
    TOOL_RESULTS = "stepline.tool.results.v1"
    TOOL_OUTCOMES = "stepline.tool.outcomes.v1"
    TOOLS = "stepline.tools.v1"
    RUNS = "stepline.runs.v1"
    USAGE = "stepline.usage.v1"
    USAGE_ROLLUPS = "stepline.usage.rollups.v1"
    BUDGETS = "stepline.budgets.v1"
    PLANNER_STATE = "stepline.planner.state.v1"
    DLQ = "stepline.dlq.v1"
    KEYS = "stepline.keys.v1"
    KEY_SPEND = "stepline.keys.spend.v1"


_PLANNER = "planner-inputs"
_EXECUTOR = "tool-executor-inputs"
# Tool requests live this long; the executor's outcome records outlive the requests they answer
# by a day, so a request read again (offsets reset to the earliest) still finds its outcome.
_TOOL_REQUEST_DAYS = 7

CATALOG: tuple[Topic, ...] = (
    Topic(
        Topics.GOALS,
        "run_id",
        ("stepline.v1.GoalSubmitted",),
        configs=_retention(7),
        copartition_group=_PLANNER,
    ),
    Topic(
        Topics.CONTROL,
        "run_id (session notices: session/<tenant>/<session_id>)",
        (
            "stepline.v1.ControlCommand",
            # Planner-internal notices between partitions, in the same transaction as the rest.
            "stepline.v1.SessionTurnRequested",
            "stepline.v1.SessionTurnGranted",
            "stepline.v1.SessionTurnRejected",
            "stepline.v1.SessionTurnEnded",
            "stepline.v1.ChildRunEnded",
        ),
        configs=_retention(7),
        copartition_group=_PLANNER,
    ),
    Topic(
        Topics.MODEL_REQUESTS, "run_id", ("stepline.v1.ModelCallRequested",), configs=_retention(7)
    ),
    Topic(
        Topics.MODEL_RESULTS,
        "run_id",
        ("stepline.v1.ModelCallResult",),
        configs=_retention(7),
        copartition_group=_PLANNER,
    ),
    Topic(
        Topics.TOOL_REQUESTS,
        "run_id",
        ("stepline.v1.ToolCallRequested", "stepline.v1.ToolCallsCancelRequested"),
        configs=_retention(_TOOL_REQUEST_DAYS),
        copartition_group=_EXECUTOR,
    ),
    # The executor's intent -> outcome records, co-partitioned with its requests: a call's
    # record lives in the partition of its request (written there explicitly, whatever the
    # call id hashes to), so whichever instance owns that request partition owns its outcomes.
    Topic(
        Topics.TOOL_OUTCOMES,
        "call_id (in the partition of its request's run_id)",
        ("stepline.v1.ToolCallRecorded",),
        Cleanup.COMPACT_DELETE,
        {
            **_retention(_TOOL_REQUEST_DAYS + 1),
            "min.compaction.lag.ms": "0",
            "segment.ms": str(60 * 60 * 1000),
        },
        copartition_group=_EXECUTOR,
    ),
    Topic(
        Topics.TOOL_RESULTS,
        "run_id",
        ("stepline.v1.ToolCallResult",),
        configs=_retention(7),
        copartition_group=_PLANNER,
    ),
    # The executor's tool registry: the schemas models see are the ones the executor validates.
    Topic(Topics.TOOLS, "tool name", ("stepline.v1.ToolRegistered",), Cleanup.COMPACT),
    Topic(Topics.RUNS, "run_id", ("stepline.v1.RunEvent",), configs=_retention(30)),
    Topic(Topics.USAGE, "tenant_id", ("stepline.v1.UsageRecorded",), configs=_retention(30)),
    Topic(Topics.USAGE_ROLLUPS, "tenant_id", ("stepline.v1.UsageRollup",), configs=_retention(90)),
    Topic(Topics.BUDGETS, "tenant_id", ("stepline.v1.BudgetState",), Cleanup.COMPACT),
    # The changelog is co-partitioned with the planner inputs: partition p's state lives in p.
    Topic(
        Topics.PLANNER_STATE,
        "run_id (sessions: session/<tenant>/<session_id>)",
        ("stepline.v1.RunState", "stepline.v1.SessionState"),
        Cleanup.COMPACT,
        {"min.compaction.lag.ms": "0", "segment.ms": str(60 * 60 * 1000)},
        copartition_group=_PLANNER,
    ),
    Topic(Topics.DLQ, "original key", ("stepline.v1.DeadLetter",), configs=_retention(30)),
    # API keys as events (hash only); every front door folds it from the beginning. Compacted:
    # the latest event per key is its state; the full history stays until compaction.
    Topic(Topics.KEYS, "key_id", ("stepline.v1.KeyEvent",), Cleanup.COMPACT),
    # Settled spend per key, UTC day and router instance (running totals); a month's spend is
    # the sum of its days, so 40 days of records suffice.
    Topic(
        Topics.KEY_SPEND,
        "key_id/day/instance_id",
        ("stepline.v1.KeySpendRecorded",),
        Cleanup.COMPACT_DELETE,
        _retention(40),
    ),
)


def retention(name: str) -> timedelta | None:
    """How long the catalog topic `name` keeps a record (None: for ever, as compaction keeps)."""
    for topic in CATALOG:
        if topic.name == name:
            kept = topic.configs.get("retention.ms")
            return timedelta(milliseconds=int(kept)) if kept is not None else None
    raise KeyError(name)

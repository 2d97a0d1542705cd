"""The projector on the real broker: catch up, follow live, resume, rebuild from scratch."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from google.protobuf.message import Message

from stepline.v1 import budgets_pb2, common_pb2
from stepline_frontdoor.live import RunFeed
from stepline_frontdoor.projector import Projector
from stepline_frontdoor.sqlstore import SqliteReadStore
from stepline_frontdoor.store import RunFilter
from stepline_runtime.codec import encode
from stepline_runtime.settings import KafkaSettings, namespaced
from stepline_runtime.topics import CATALOG, Topics, ensure_topics
from tests.frontdoor.factories import T0, RunScript, model_attempt, usage_rollup

pytestmark = pytest.mark.kafka

PARTITIONS = 2
READ = (
    Topics.RUNS,
    Topics.USAGE,
    Topics.TOOL_RESULTS,
    Topics.MODEL_RESULTS,
    Topics.BUDGETS,
    Topics.USAGE_ROLLUPS,
)


class Namespace:
    """A fresh topic namespace and a producer for it."""

    def __init__(self, name: str, producer: AIOKafkaProducer) -> None:
        self.name = name
        self.producer = producer

    def topic(self, catalog: str) -> str:
        """A catalog topic inside the namespace."""
        return namespaced(catalog, self.name)

    async def publish(
        self, catalog: str, key: str, message: Message, value: bytes | None = None
    ) -> None:
        """Produce `message` (or raw `value`) with the standard headers."""
        out = encode(self.topic(catalog), key, message, event_id=key, source="test")
        await self.producer.send_and_wait(
            out.topic, value if value is not None else out.value, key=out.key,
            headers=list(out.headers),
        )  # fmt: skip


@pytest.fixture
async def ns(
    kafka: KafkaSettings, admin: AIOKafkaAdminClient, producer: AIOKafkaProducer,
    unique: Callable[[str], str],
) -> Namespace:  # fmt: skip
    name = unique("fd").replace(".", "-")
    await ensure_topics(admin, CATALOG, PARTITIONS, namespace=name)
    return Namespace(name, producer)


@contextlib.asynccontextmanager
async def projecting(
    kafka: KafkaSettings, ns: Namespace, path: Path
) -> AsyncIterator[tuple[SqliteReadStore, Projector, RunFeed]]:
    store = SqliteReadStore(path)
    feed = RunFeed()
    topics = {ns.topic(t): PARTITIONS for t in READ}
    projector = Projector(
        store, feed, kafka,
        runs_topic=ns.topic(Topics.RUNS), usage_topic=ns.topic(Topics.USAGE),
        tool_results_topic=ns.topic(Topics.TOOL_RESULTS),
        model_results_topic=ns.topic(Topics.MODEL_RESULTS),
        budgets_topic=ns.topic(Topics.BUDGETS), rollups_topic=ns.topic(Topics.USAGE_ROLLUPS),
        partitions=topics,
    )  # fmt: skip
    task = asyncio.create_task(projector.run())
    try:
        await asyncio.wait_for(projector.caught_up.wait(), 30)
        yield store, projector, feed
    finally:
        projector.stop()
        await task
        store.close()


def _snapshot(store: SqliteReadStore) -> object:
    runs = store.list_runs(RunFilter("acme", limit=1000)).runs
    return (
        runs,
        [store.events("acme", r.run_id) for r in runs],
        [store.attempts("acme", r.run_id) for r in runs],
        store.approvals("acme"),
    )


def _delete(folder: Path, pattern: str) -> None:
    for leftover in folder.glob(pattern):
        leftover.unlink()


async def _publish_runs(ns: Namespace, count: int) -> None:
    for i in range(count):
        script = RunScript(f"run-{i}").started().model_step(1).approval(f"run-{i}:9:1/approval")
        script.resolved(f"run-{i}:9:1/approval", approve=True).completed()
        for event in script.events:
            await ns.publish(Topics.RUNS, event.run_id, event)
        await ns.publish(Topics.USAGE, "acme", model_attempt(f"run-{i}", 1))


async def test_catches_up_follows_live_resumes_and_rebuilds_identically(
    kafka: KafkaSettings, ns: Namespace, tmp_path: Path
) -> None:
    await _publish_runs(ns, 5)
    # Budget states: a late older version never replaces a newer one.
    for version, spent in ((2, "0.30"), (1, "0.10")):
        await ns.publish(Topics.BUDGETS, "acme", budgets_pb2.BudgetState(
            tenant_id="acme", version=version, exhausted=False,
            daily=budgets_pb2.BudgetPeriod(limit=common_pb2.Money(currency="USD", amount="5"),
                                           spent=common_pb2.Money(currency="USD", amount=spent)),
        ))  # fmt: skip
    # Billing's rollups: the state with more calls wins, whatever order they are read in.
    for calls, cost in ((3, "0.0015"), (2, "0.0010")):
        await ns.publish(Topics.USAGE_ROLLUPS, "acme", usage_rollup(calls=calls, cost=cost))
    # Bad bytes on a topic the projector reads are skipped, never a stop.
    await ns.publish(Topics.RUNS, "run-bad", RunScript("x").started().events[0], b"\xff\x00junk")
    db = tmp_path / "rm.sqlite3"
    async with projecting(kafka, ns, db) as (store, projector, feed):
        assert len(store.list_runs(RunFilter("acme")).runs) == 5
        assert projector.skipped == 1
        budget = store.budget("acme")
        assert budget is not None
        assert (budget.version, budget.daily_spent, budget.daily_limit) == (
            2, Decimal("0.30"), Decimal("5"),
        )  # fmt: skip
        assert budget.monthly_limit is None
        [rollup] = store.rollups("acme", "hour", T0)
        assert (rollup.calls, rollup.cost, rollup.model) == (
            3,
            Decimal("0.0015"),
            "stepline-local-1",
        )
        # Live: a new event wakes whoever watches its run.
        woke = asyncio.create_task(feed.wait("live-1", 20))
        await asyncio.sleep(0.1)
        for event in RunScript("live-1").started().events:
            await ns.publish(Topics.RUNS, event.run_id, event)
        assert await woke
        assert store.run("acme", "live-1") is not None
        first = _snapshot(store)
    # A restart resumes from the stored positions: nothing is folded twice.
    async with projecting(kafka, ns, db) as (store, _, _):
        assert _snapshot(store) == first
    # Deleted: rebuilt from the beginning of the topics, row for row.
    _delete(tmp_path, "rm.sqlite3*")
    async with projecting(kafka, ns, db) as (store, _, _):
        assert _snapshot(store) == first
        [attempt] = store.attempts("acme", "run-3")
        assert attempt.deployment == "local"

"""Start a service's observability in one call: metrics endpoint, tracing, consumer-lag gauge."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from stepline_runtime.metrics import CONSUMER_LAG, serve_metrics
from stepline_runtime.settings import KafkaSettings
from stepline_runtime.tracing import configure_tracing, shutdown_tracing

__all__ = [
    "LagMonitor",
    "Observability",
    "group_lag",
    "lag_reader",
    "start_observability",
]

log = logging.getLogger(__name__)


SCAN_LIMIT = 1000
SCAN_TIMEOUT_S = 5.0


def lag_reader(kafka: KafkaSettings, client_id: str) -> AIOKafkaConsumer:
    """The consumer `group_lag` reads end offsets and scans with: read_committed, no group."""
    return AIOKafkaConsumer(
        enable_auto_commit=False,
        isolation_level="read_committed",
        **kafka.client_kwargs(client_id),
    )


async def group_lag(
    admin: AIOKafkaAdminClient,
    reader: AIOKafkaConsumer,
    group: str,
    partitions: Sequence[TopicPartition],
    *,
    scan_limit: int = SCAN_LIMIT,
) -> dict[TopicPartition, int]:
    """Committed records `group` has still to read, per partition.

    The end is the last stable offset (what a read_committed consumer can reach). Offsets are not
    records: every transaction leaves a commit marker at an offset of its own, so a transactional
    partition that is fully consumed is still one offset short of its end. When at most
    `scan_limit` offsets remain they are read (`reader`, read_committed) and only records are
    counted; a longer backlog is reported as its offset distance, an upper bound.
    """
    if not partitions:
        return {}
    committed = await admin.list_consumer_group_offsets(group, partitions=list(partitions))
    ends = await reader.end_offsets(list(partitions))
    missing = [tp for tp in partitions if tp not in committed or committed[tp].offset < 0]
    starts = await reader.beginning_offsets(missing) if missing else {}
    # No commit yet: the group starts from the earliest retained record.
    positions = {tp: starts[tp] if tp in starts else committed[tp].offset for tp in partitions}
    lag = {tp: max(0, ends[tp] - positions[tp]) for tp in partitions}
    short = {tp: positions[tp] for tp in partitions if 0 < lag[tp] <= scan_limit}
    if short:
        counted = await _count_records(reader, short, {tp: ends[tp] for tp in short})
        lag.update(counted)
    return lag


async def _count_records(
    reader: AIOKafkaConsumer, starts: dict[TopicPartition, int], ends: dict[TopicPartition, int]
) -> dict[TopicPartition, int]:
    """Records (not markers, not aborted ones) in [start, end) of each partition, by reading."""
    reader.assign(list(starts))
    for tp, start in starts.items():
        reader.seek(tp, start)
    counts = dict.fromkeys(starts, 0)
    open_ = set(starts)
    deadline = asyncio.get_running_loop().time() + SCAN_TIMEOUT_S
    while open_ and asyncio.get_running_loop().time() < deadline:
        batch = await reader.getmany(*open_, timeout_ms=200)
        for tp, records in batch.items():
            counts[tp] += sum(1 for r in records if r.offset < ends[tp])
        for tp in list(open_):
            # The position moves past markers and aborted records without returning them.
            position = await reader.position(tp)
            if position >= ends[tp]:
                open_.discard(tp)
    for tp in open_:  # not read in time: what is left counts by offsets
        counts[tp] += max(0, ends[tp] - await reader.position(tp))
    return counts


class LagMonitor:
    """Computes a group's lag (committed records after its committed offset) into a gauge.

    Read from the cluster, not from the consumer, so it covers every member of the group and
    also reports lag while the service is down (when another instance runs it). See
    `group_lag` for how transaction markers are left out.
    """

    def __init__(
        self,
        kafka: KafkaSettings,
        group: str,
        topics: Sequence[str],
        *,
        interval_s: float = 15.0,
    ) -> None:
        self._kafka = kafka
        self._group = group
        self._topics = list(topics)
        self._interval_s = interval_s
        self._admin = AIOKafkaAdminClient(**kafka.client_kwargs(f"{group}-lag"))
        self._offsets = lag_reader(kafka, f"{group}-lag-offsets")

    async def start(self) -> None:
        """Connect the admin client and the offsets reader."""
        await self._admin.start()
        await self._offsets.start()

    async def stop(self) -> None:
        """Disconnect."""
        await self._offsets.stop()
        await self._admin.close()

    async def poll(self) -> dict[TopicPartition, int]:
        """Lag per partition now; also sets `stepline_consumer_lag_records`."""
        described = await self._admin.describe_topics(self._topics)
        partitions = [
            TopicPartition(d["topic"], p["partition"])
            for d in described
            if not d.get("error_code")
            for p in d["partitions"]
        ]
        lag = await group_lag(self._admin, self._offsets, self._group, partitions)
        for tp, records in lag.items():
            CONSUMER_LAG.labels(self._group, tp.topic, str(tp.partition)).set(records)
        return lag

    async def run(self) -> None:
        """Poll every `interval_s` until cancelled; a failed poll is logged and retried."""
        while True:
            try:
                await self.poll()
            except (KafkaError, OSError, KeyError) as error:
                log.warning("consumer lag not measured", extra={"error": repr(error)})
            await asyncio.sleep(self._interval_s)


class Observability:
    """What `start_observability` started; `stop()` ends it."""

    def __init__(self, lag: LagMonitor | None, task: asyncio.Task[None] | None) -> None:
        self._lag = lag
        self._task = task
        self.metrics_port: int | None = None

    async def stop(self) -> None:
        """Stop the lag poller and flush exported spans."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._lag is not None:
            with contextlib.suppress(KafkaError):
                await self._lag.stop()
        shutdown_tracing()


async def start_observability(
    service: str,
    kafka: KafkaSettings,
    *,
    metrics_host: str,
    metrics_port: int,
    group: str = "",
    topics: Sequence[str] = (),
    lag_interval_s: float = 15.0,
) -> Observability:
    """Tracing (OTLP when configured), `/metrics` unless `metrics_port` is 0, lag of `group`."""
    configure_tracing(service)
    lag = task = None
    port = None
    if metrics_port:
        port = serve_metrics(metrics_port, metrics_host)
        if group and topics:
            lag = LagMonitor(kafka, group, topics, interval_s=lag_interval_s)
            try:
                await lag.start()
            except KafkaError as error:
                log.warning("consumer lag disabled", extra={"error": repr(error)})
                lag = None
            else:
                task = asyncio.create_task(lag.run(), name=f"{service}-lag")
    observability = Observability(lag, task)
    observability.metrics_port = port
    return observability

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

__all__ = ["LagMonitor", "Observability", "start_observability"]

log = logging.getLogger(__name__)


class LagMonitor:
    """Computes a group's lag (end offset − committed offset) per partition into a gauge.

    Read from the cluster, not from the consumer, so it covers every member of the group and
    also reports lag while the service is down (when another instance runs it). End offsets are
    read `read_committed` (the last stable offset), as the consumers read.
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
        self._offsets = AIOKafkaConsumer(
            enable_auto_commit=False,
            isolation_level="read_committed",
            **kafka.client_kwargs(f"{group}-lag-offsets"),
        )

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
        if not partitions:
            return {}
        committed = await self._admin.list_consumer_group_offsets(self._group)
        ends = await self._offsets.end_offsets(partitions)
        missing = [tp for tp in partitions if tp not in committed or committed[tp].offset < 0]
        starts = await self._offsets.beginning_offsets(missing) if missing else {}
        lag: dict[TopicPartition, int] = {}
        for tp in partitions:
            done = committed.get(tp)
            # No commit yet: the group starts from the earliest retained record.
            position = starts.get(tp, done.offset if done else 0)
            lag[tp] = max(0, ends[tp] - position)
            CONSUMER_LAG.labels(self._group, tp.topic, str(tp.partition)).set(lag[tp])
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

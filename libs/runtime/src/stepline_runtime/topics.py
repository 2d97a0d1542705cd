"""Topics on the cluster: create the catalog's topics idempotently, check co-partitioning."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection, Iterable
from dataclasses import replace
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from stepline_runtime.catalog import CATALOG, Cleanup, Topic, Topics
from stepline_runtime.settings import ServiceSettings, namespaced
from stepline_vocab import ConfigurationError

__all__ = [
    "CATALOG",
    "Cleanup",
    "Topic",
    "TopicMismatchError",
    "Topics",
    "assignable_partitions",
    "ensure_service_topics",
    "ensure_topics",
    "partition_counts",
]

log = logging.getLogger(__name__)

_TOPIC_ALREADY_EXISTS = 36
_METADATA_WAIT_S = 30.0


class TopicMismatchError(ConfigurationError, RuntimeError):
    """An existing topic does not match the catalog in a way that breaks a guarantee."""


def _errors(response: Any) -> list[tuple[str, int, str]]:
    """(topic, error code, message) triples of a CreateTopics response of any version."""
    errors = []
    for entry in response.topic_errors:
        name, code = entry[0], entry[1]
        message = entry[2] if len(entry) > 2 and isinstance(entry[2], str) else ""
        errors.append((name, code, message or ""))
    return errors


async def ensure_topics(
    admin: AIOKafkaAdminClient,
    topics: Iterable[Topic],
    partitions: int,
    replication_factor: int = 1,
    namespace: str = "",
) -> None:
    """Create missing topics and check co-partitioned ones agree; safe to call on every start."""
    wanted = [replace(t, name=namespaced(t.name, namespace)) for t in topics]
    response = await admin.create_topics(
        [
            NewTopic(t.name, partitions, replication_factor, topic_configs=t.kafka_configs())
            for t in wanted
        ]
    )
    for name, code, message in _errors(response):
        if code not in (0, _TOPIC_ALREADY_EXISTS):
            raise TopicMismatchError(f"cannot create topic {name}: error {code} {message}".strip())
        if code == 0:
            log.info("created topic", extra={"topic": name, "partitions": partitions})
    await _check_copartitioning(admin, wanted)


async def ensure_service_topics(
    settings: ServiceSettings, names: Collection[str], client_id: str
) -> dict[str, int]:
    """At a service's start: create the catalog topics `names` it uses (in its namespace) and
    return their partition counts by namespaced name, once the metadata shows them."""
    admin = AIOKafkaAdminClient(**settings.kafka.client_kwargs(client_id))
    await admin.start()
    try:
        await ensure_topics(
            admin,
            [t for t in CATALOG if t.name in names],
            settings.partitions,
            settings.replication_factor,
            settings.topic_namespace,
        )
        return await partition_counts(admin, [settings.topic(n) for n in names])
    finally:
        await admin.close()


async def _check_copartitioning(admin: AIOKafkaAdminClient, topics: list[Topic]) -> None:
    groups: dict[str, list[str]] = {}
    for topic in topics:
        if topic.copartition_group:
            groups.setdefault(topic.copartition_group, []).append(topic.name)
    for group, names in groups.items():
        counts = await partition_counts(admin, names)
        if len(set(counts.values())) > 1:
            raise TopicMismatchError(
                f"topics of co-partitioned group {group!r} have different partition counts "
                f"{counts}; give them the same count (kafka-topics --alter --partitions N)"
            )


async def partition_counts(
    admin: AIOKafkaAdminClient, names: list[str], timeout_s: float = _METADATA_WAIT_S
) -> dict[str, int]:
    """Partition count per topic, waiting while a just-created topic still shows none."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        described = await admin.describe_topics(names)
        counts = {d["topic"]: len(d["partitions"]) for d in described}
        # A topic created a moment ago can be missing from metadata: not a mismatch yet.
        if all(counts.get(n, 0) > 0 for n in names):
            return counts
        if asyncio.get_running_loop().time() > deadline:
            missing = sorted(n for n in names if counts.get(n, 0) == 0)
            raise TopicMismatchError(f"topics {missing} have no partitions in the metadata")
        await asyncio.sleep(0.1)


async def assignable_partitions(
    consumer: AIOKafkaConsumer, topic: str, timeout_s: float = _METADATA_WAIT_S
) -> list[TopicPartition]:
    """The topic's partitions for `consumer.assign`, waiting while a new topic shows none."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        partitions = consumer.partitions_for_topic(topic)
        if partitions:
            return [TopicPartition(topic, p) for p in sorted(partitions)]
        if asyncio.get_running_loop().time() > deadline:
            raise TopicMismatchError(f"topic {topic} has no partitions in the metadata")
        # aiokafka refreshes metadata only for subscribed topics; assignment needs it now.
        await consumer._client.force_metadata_update()
        await asyncio.sleep(0.1)

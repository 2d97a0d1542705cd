"""Topics from the catalog on a real broker: idempotent, configured, co-partitioning checked."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewPartitions
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from stepline_runtime.topics import CATALOG, TopicMismatchError, Topics, ensure_topics

pytestmark = pytest.mark.kafka


async def _partitions(admin: AIOKafkaAdminClient, names: list[str]) -> dict[str, int]:
    return {d["topic"]: len(d["partitions"]) for d in await admin.describe_topics(names)}


async def test_catalog_topics_are_created_once_with_their_configs(
    admin: AIOKafkaAdminClient, unique: Callable[[str], str]
) -> None:
    namespace = unique("ns").replace(".", "-")
    await ensure_topics(admin, CATALOG, partitions=3, namespace=namespace)
    await ensure_topics(admin, CATALOG, partitions=3, namespace=namespace)  # a restart: no error

    names = [f"{namespace}.{t.name}" for t in CATALOG]
    assert set(names) <= set(await admin.list_topics())
    assert set((await _partitions(admin, names)).values()) == {3}

    state = f"{namespace}.{Topics.PLANNER_STATE}"
    [response] = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, state)])
    configs = {entry[0]: entry[1] for entry in response.resources[0][4]}
    assert configs["cleanup.policy"] == "compact"
    assert configs["min.compaction.lag.ms"] == "0"


async def test_copartitioned_topics_with_different_partition_counts_are_refused(
    admin: AIOKafkaAdminClient, unique: Callable[[str], str]
) -> None:
    namespace = unique("ns").replace(".", "-")
    planner_inputs = [t for t in CATALOG if t.copartition_group]
    await ensure_topics(admin, planner_inputs, partitions=2, namespace=namespace)
    goals = f"{namespace}.{Topics.GOALS}"
    await admin.create_partitions({goals: NewPartitions(total_count=4)})
    for _ in range(100):  # partition metadata reaches the broker's cache asynchronously
        if (await _partitions(admin, [goals]))[goals] == 4:
            break
        await asyncio.sleep(0.05)

    with pytest.raises(TopicMismatchError, match="different partition counts"):
        await ensure_topics(admin, planner_inputs, partitions=2, namespace=namespace)

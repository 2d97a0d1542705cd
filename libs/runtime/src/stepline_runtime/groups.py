"""Consumer groups as the broker sees them: who reads a topic (e.g. "is a planner running?"),
and which member of a group holds which partitions (`stepline status`)."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.coordinator.protocol import (
    ConsumerProtocol,
    ConsumerProtocolMemberAssignment,
    ConsumerProtocolMemberMetadata,
)
from aiokafka.protocol.admin import (
    DescribeGroupsRequest_v0,
    DescribeGroupsRequest_v1,
    DescribeGroupsRequest_v2,
)
from aiokafka.protocol.api import Request
from aiokafka.structs import TopicPartition

__all__ = ["GroupMember", "consuming_groups", "describe_group"]


@dataclass(frozen=True, slots=True)
class GroupMember:
    """One live member of a consumer group and the partitions assigned to it."""

    member_id: str
    client_id: str
    client_host: str
    # Empty while the group rebalances (Kafka sends assignments of a Stable group only).
    partitions: tuple[TopicPartition, ...]


# aiokafka's Request is untyped (Any) for mypy.
class _DescribeGroups(
    Request[DescribeGroupsRequest_v0 | DescribeGroupsRequest_v1 | DescribeGroupsRequest_v2]  # type: ignore[misc]
):
    """DescribeGroups capped at v2: aiokafka 0.14 pairs its v3 request with the v2 response
    schema, so `AIOKafkaAdminClient.describe_consumer_groups` fails to decode Kafka 4's answer."""

    API_KEY = 15

    def __init__(self, groups: list[str]) -> None:
        self._groups = groups

    def build(
        self,
        request_struct_class: type[
            DescribeGroupsRequest_v0 | DescribeGroupsRequest_v1 | DescribeGroupsRequest_v2
        ],
    ) -> DescribeGroupsRequest_v0 | DescribeGroupsRequest_v1 | DescribeGroupsRequest_v2:
        return request_struct_class(self._groups)


async def _describe(admin: AIOKafkaAdminClient, groups: list[str], node: int) -> list[Any]:
    # The admin client sends any Request to a node; only this one needs a version cap.
    response = await admin._send_request(_DescribeGroups(groups), node)
    return list(response.groups)


async def describe_group(admin: AIOKafkaAdminClient, group: str) -> tuple[str, list[GroupMember]]:
    """The group's state (`Stable`, `PreparingRebalance`, `Empty`, `Dead`…) and live members."""
    node = await admin.find_coordinator(group)
    [described] = await _describe(admin, [group], node)
    error_code, _group, state, _protocol_type, _protocol, members = described[:6]
    if error_code:
        return "Unknown", []
    found = []
    for member_id, client_id, client_host, _metadata, assignment in members:
        partitions = (
            tuple(sorted(ConsumerProtocolMemberAssignment.decode(assignment).partitions()))
            if assignment
            else ()
        )
        found.append(GroupMember(member_id, client_id, client_host, partitions))
    return str(state), sorted(found, key=lambda m: (m.client_id, m.member_id))


async def consuming_groups(admin: AIOKafkaAdminClient, topic: str) -> list[str]:
    """Groups with at least one live member subscribed to `topic`, sorted.

    A group in the middle of a rebalance counts when it has committed offsets on `topic`.
    """
    listed = await admin.list_consumer_groups()
    groups = [g for g, protocol in listed if protocol == ConsumerProtocol.PROTOCOL_TYPE]
    coordinators = await asyncio.gather(*(admin.find_coordinator(g) for g in groups))
    by_coordinator: dict[int, list[str]] = defaultdict(list)
    for group, node in zip(groups, coordinators, strict=True):
        by_coordinator[node].append(group)
    found = set()
    rebalancing = []
    for node, members_of in by_coordinator.items():
        for described in await _describe(admin, members_of, node):
            error_code, group, _state, protocol_type, _protocol, members = described[:6]
            if error_code or protocol_type != ConsumerProtocol.PROTOCOL_TYPE or not members:
                continue
            for member in members:
                if not member[3]:
                    # Kafka sends member metadata only for a Stable group.
                    rebalancing.append(group)
                    break
                if topic in ConsumerProtocolMemberMetadata.decode(member[3]).subscription:
                    found.add(group)
    for group in rebalancing:
        # Subscriptions unknown while the group rebalances: its commits tell what it reads.
        committed = await admin.list_consumer_group_offsets(group)
        if any(tp.topic == topic for tp in committed):
            found.add(group)
    return sorted(found)

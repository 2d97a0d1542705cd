"""Which consumer groups have live members reading a topic (e.g. "is a planner running?")."""

from __future__ import annotations

import asyncio
from collections import defaultdict

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.coordinator.protocol import ConsumerProtocol, ConsumerProtocolMemberMetadata
from aiokafka.protocol.admin import (
    DescribeGroupsRequest_v0,
    DescribeGroupsRequest_v1,
    DescribeGroupsRequest_v2,
)
from aiokafka.protocol.api import Request

__all__ = ["consuming_groups"]


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
        # The admin client sends any Request to a node; only this one needs a version cap.
        response = await admin._send_request(_DescribeGroups(members_of), node)
        for described in response.groups:
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

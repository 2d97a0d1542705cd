"""Follow one compacted topic from its beginning into memory, and keep following it.

Used for the key registry and the spend totals; `start` returns once the topic is read to its
current end, so a service never authenticates against half a registry. The reading, following,
dead-lettering and outage handling are `stepline_runtime.follow.CompactedFollower`'s.
"""

from __future__ import annotations

from collections.abc import Callable

from stepline_runtime.follow import CompactedFollower
from stepline_runtime.records import InboundRecord
from stepline_runtime.settings import KafkaSettings

__all__ = ["TopicFollower"]


class TopicFollower(CompactedFollower):
    """Feeds every record of `topic` (tombstones included) to `apply`, oldest first."""

    def __init__(
        self,
        kafka: KafkaSettings,
        topic: str,
        apply: Callable[[InboundRecord], None],
        *,
        client_id: str,
        dead_letter_topic: str,
    ) -> None:
        super().__init__(
            kafka, [topic], apply, client_id=client_id, dead_letter_topic=dead_letter_topic
        )

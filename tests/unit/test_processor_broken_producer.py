"""A transactional producer aiokafka put in FATAL_ERROR cannot even be aborted or stopped cleanly:
aiokafka asserts on the state transition. The processor must retire it like a fenced one instead
of dying (seen in `make chaos-scaled`: an EndTxn answered UnknownError killed a planner)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, cast

from aiokafka import AIOKafkaProducer
from aiokafka.errors import UnknownError

from stepline_runtime.processor import ProcessorConfig, TransactionalProcessor, _Task
from stepline_runtime.records import InboundRecord, OutboundRecord
from stepline_runtime.settings import KafkaSettings

_FATAL_TRANSITION = "Invalid state transition TransactionState.FATAL_ERROR -> ABORTING_TRANSACTION"


class _Handler:
    def __init__(self) -> None:
        self.forgotten: list[int] = []

    def forget(self, partition: int) -> None:
        self.forgotten.append(partition)

    async def restore(self, partition: int, records: Sequence[InboundRecord]) -> None:
        return None

    async def handle(self, record: InboundRecord) -> Sequence[OutboundRecord]:
        return []

    async def tick(self, partition: int, now: datetime) -> Sequence[OutboundRecord]:
        return []


class _BrokenProducer:
    """Commit fails with a Kafka error, after which aiokafka's state machine is FATAL_ERROR."""

    def __init__(self) -> None:
        self.stopped = False

    async def begin_transaction(self) -> None:
        return None

    async def send_offsets_to_transaction(self, *_: Any) -> None:
        return None

    async def commit_transaction(self) -> None:
        raise UnknownError()

    async def abort_transaction(self) -> None:
        raise AssertionError(_FATAL_TRANSITION)

    async def stop(self) -> None:
        self.stopped = True
        raise AssertionError(_FATAL_TRANSITION)


def _processor(handler: _Handler) -> TransactionalProcessor:
    config = ProcessorConfig("app", ("in",), "changelog", retry_backoff_s=0)
    return TransactionalProcessor(config, handler, KafkaSettings(bootstrap="127.0.0.1:1"))


async def test_a_producer_that_cannot_abort_is_retired_not_fatal() -> None:
    handler = _Handler()
    processor = _processor(handler)
    producer = _BrokenProducer()
    task = _Task(0, cast(AIOKafkaProducer, producer))
    processor._tasks[0] = task

    await processor._transact(task, [], {})

    assert task.fenced
    # Not assigned any more (no consumer here): the task is closed, its producer discarded.
    assert producer.stopped
    assert processor.partitions == frozenset()
    assert handler.forgotten == [0]

"""The Stepline client: goals and control commands in, run events out, all over Kafka."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from types import TracebackType
from typing import TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError
from aiokafka.partitioner import murmur2
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from stepline.v1 import control_pb2, goals_pb2, model_pb2, runs_pb2
from stepline_client.events import is_terminal
from stepline_runtime.codec import InvalidRecordError, decode, encode
from stepline_runtime.groups import consuming_groups
from stepline_runtime.ids import derive_run_id, new_run_id
from stepline_runtime.processor import inbound
from stepline_runtime.settings import ServiceSettings
from stepline_runtime.topics import Topics
from stepline_vocab import SteplineError, wire

__all__ = ["BrokerUnavailableError", "Goal", "RunTimeoutError", "Stepline"]

SOURCE = "stepline-client"
_M = TypeVar("_M", bound=Message)


class BrokerUnavailableError(SteplineError, RuntimeError):
    """No broker answered at the configured bootstrap address."""


class RunTimeoutError(SteplineError, TimeoutError):
    """A run did not reach a terminal event in time."""


@dataclass(frozen=True, slots=True)
class Goal:
    """What to ask an agent, for whom, and within which limits."""

    goal: str
    tenant_id: str
    # No default: a goal silently run by some agent (with that agent's tools) is a surprise.
    agent: str
    session_id: str = ""
    budget: Decimal | None = None
    currency: str = "USD"
    deadline: datetime | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    idempotency_key: str = ""
    submitted_by: str = ""
    parent_run_id: str = ""

    def run_id(self) -> str:
        """The run id: derived from tenant and idempotency key when there is one."""
        if self.idempotency_key:
            return derive_run_id(self.tenant_id, self.idempotency_key)
        return new_run_id()


def _timestamp(when: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(when)
    return stamp


def _partition(key: str, partitions: int) -> int:
    # Kafka's default partitioner (Java clients, aiokafka): murmur2 of the key, positive.
    hashed: int = murmur2(key.encode())
    return (hashed & 0x7FFFFFFF) % partitions


class Stepline:
    """Async client; use as `async with Stepline() as client: ...`."""

    def __init__(self, settings: ServiceSettings | None = None, *, source: str = SOURCE) -> None:
        self._settings = settings or ServiceSettings()
        self._source = source
        self._producer: AIOKafkaProducer | None = None

    async def __aenter__(self) -> Stepline:
        producer = AIOKafkaProducer(
            enable_idempotence=True,
            acks="all",
            **self._settings.kafka.client_kwargs(self._source),
        )
        try:
            await producer.start()
        except KafkaConnectionError as error:
            await producer.stop()
            raise BrokerUnavailableError(
                f"no broker at {self._settings.kafka.bootstrap} — run `stepline up` "
                "or set STEPLINE_KAFKA_BOOTSTRAP"
            ) from error
        self._producer = producer
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    def _topic(self, name: str) -> str:
        return self._settings.topic(name)

    async def _send(
        self,
        topic: str,
        key: str,
        message: goals_pb2.GoalSubmitted | control_pb2.ControlCommand,
        *,
        event_id: str,
        tenant_id: str,
    ) -> None:
        if self._producer is None:
            raise RuntimeError("use the client inside `async with Stepline() as client:`")
        record = encode(
            self._topic(topic),
            key,
            message,
            event_id=event_id,
            source=self._source,
            tenant_id=tenant_id,
        )
        await self._producer.send_and_wait(
            record.topic, record.value, key=record.key, headers=list(record.headers)
        )

    async def submit(self, goal: Goal, *, run_id: str | None = None) -> str:
        """Publish `GoalSubmitted`; returns the run id. Resubmitting with the same key is safe."""
        run = run_id or goal.run_id()
        message = goals_pb2.GoalSubmitted(
            run_id=run,
            tenant_id=goal.tenant_id,
            agent=goal.agent,
            goal=goal.goal,
            session_id=goal.session_id,
            metadata=dict(goal.metadata),
            idempotency_key=goal.idempotency_key,
            submitted_at=_timestamp(datetime.now(UTC)),
            parent_run_id=goal.parent_run_id,
            submitted_by=goal.submitted_by,
        )
        budget = wire.money_to_proto(goal.budget, goal.currency)
        if budget is not None:
            message.budget.CopyFrom(budget)
        if goal.deadline is not None:
            message.deadline.CopyFrom(_timestamp(goal.deadline))
        return await self.submit_message(message)

    async def submit_message(self, message: goals_pb2.GoalSubmitted) -> str:
        """Publish a ready-made `GoalSubmitted` (filling in its run id); returns the run id."""
        if not message.run_id:
            message.run_id = (
                derive_run_id(message.tenant_id, message.idempotency_key)
                if message.idempotency_key
                else new_run_id()
            )
        if not message.HasField("submitted_at"):
            message.submitted_at.CopyFrom(_timestamp(datetime.now(UTC)))
        await self._send(
            Topics.GOALS,
            message.run_id,
            message,
            event_id=f"{message.run_id}/goal",
            tenant_id=message.tenant_id,
        )
        return message.run_id

    async def cancel(
        self,
        run_id: str,
        tenant_id: str,
        *,
        reason: str = "",
        requested_by: str = "",
        keep_children: bool = False,
    ) -> None:
        """Ask the planner to cancel a run (and, by default, its child runs)."""
        command = control_pb2.ControlCommand(
            run_id=run_id,
            tenant_id=tenant_id,
            run_cancel_requested=control_pb2.RunCancelRequested(
                reason=reason,
                requested_by=requested_by,
                keep_children=keep_children,
                requested_at=_timestamp(datetime.now(UTC)),
            ),
        )
        await self._send(
            Topics.CONTROL, run_id, command, event_id=f"{run_id}/cancel", tenant_id=tenant_id
        )

    async def decide(
        self,
        run_id: str,
        tenant_id: str,
        approval_id: str,
        *,
        approve: bool,
        reason: str = "",
        edited_arguments_json: str = "",
        decided_by: str = "",
        call_id: str = "",
    ) -> None:
        """Answer an `ApprovalRequested`: approve (optionally with edited arguments) or deny."""
        decision = (
            control_pb2.APPROVAL_DECISION_APPROVED
            if approve
            else control_pb2.APPROVAL_DECISION_DENIED
        )
        command = control_pb2.ControlCommand(
            run_id=run_id,
            tenant_id=tenant_id,
            approval_decided=control_pb2.ApprovalDecided(
                approval_id=approval_id,
                call_id=call_id,
                decision=decision,
                reason=reason,
                edited_arguments_json=edited_arguments_json,
                decided_by=decided_by,
                decided_at=_timestamp(datetime.now(UTC)),
            ),
        )
        await self._send(
            Topics.CONTROL,
            run_id,
            command,
            event_id=f"{run_id}/approval/{approval_id}",
            tenant_id=tenant_id,
        )

    async def events(
        self,
        run_id: str,
        *,
        since: datetime | None = None,
        follow: bool = True,
        idle_timeout_s: float | None = None,
    ) -> AsyncIterator[runs_pb2.RunEvent]:
        """The run's events in order, from `since` (default: the beginning of the topic).

        With `follow`, waits for new events until the run ends; otherwise stops at the end of
        what is there. Only the run's own partition is read.
        """
        last_sequence = 0
        async for event in self._keyed(
            Topics.RUNS,
            run_id,
            runs_pb2.RunEvent,
            since=since,
            follow=follow,
            idle_timeout_s=idle_timeout_s,
        ):
            if event.sequence and event.sequence <= last_sequence:
                continue  # a replayed duplicate
            last_sequence = event.sequence or last_sequence
            yield event
            if is_terminal(event):
                return

    async def attempts(
        self, run_id: str, *, since: datetime | None = None
    ) -> dict[str, list[model_pb2.ModelAttempt]]:
        """Every provider attempt of the run's model steps so far, by step id, in order.

        Read from the router's results (same key, so one partition), failed attempts and
        failovers before a successful one included, and every call of a step that the planner
        called again; `since` skips older records.
        """
        calls: dict[str, dict[str, list[model_pb2.ModelAttempt]]] = {}
        async for result in self._keyed(
            Topics.MODEL_RESULTS, run_id, model_pb2.ModelCallResult, since=since, follow=False
        ):
            outcome = result.completed if result.HasField("completed") else result.failed
            # A redelivered result carries the same trail: the last one read wins.
            calls.setdefault(result.step_id, {})[result.call_id] = list(outcome.attempts)
        return {
            step: [attempt for trail in by_call.values() for attempt in trail]
            for step, by_call in calls.items()
        }

    async def all_events(self) -> AsyncIterator[runs_pb2.RunEvent]:
        """Every committed run event of every run, partition by partition, up to now."""
        topic = self._topic(Topics.RUNS)
        consumer = self._reader()
        await consumer.start()
        try:
            tps = [TopicPartition(topic, p) for p in sorted(await self._partitions(topic))]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            ends = await consumer.end_offsets(tps)
            for tp in tps:
                while await consumer.position(tp) < ends[tp]:
                    batch = await consumer.getmany(tp, timeout_ms=500, max_records=1000)
                    for record in batch.get(tp, []):
                        try:
                            yield decode(inbound(record), [runs_pb2.RunEvent]).message
                        except InvalidRecordError:
                            continue  # not ours to judge: the DLQ is the planner's business
        finally:
            await consumer.stop()

    async def goal_consumers(self) -> list[str]:
        """Consumer groups with a live member reading the goals topic (the planners)."""
        admin = AIOKafkaAdminClient(**self._settings.kafka.client_kwargs(f"{self._source}-admin"))
        await admin.start()
        try:
            return await consuming_groups(admin, self._topic(Topics.GOALS))
        finally:
            await admin.close()

    def _reader(self) -> AIOKafkaConsumer:
        return AIOKafkaConsumer(
            enable_auto_commit=False,
            isolation_level="read_committed",
            **self._settings.kafka.client_kwargs(f"{self._source}-watch"),
        )

    async def _keyed(
        self,
        topic_name: str,
        key: str,
        message_type: type[_M],
        *,
        since: datetime | None,
        follow: bool,
        idle_timeout_s: float | None = None,
    ) -> AsyncIterator[_M]:
        """The decoded records of one key, from its partition, in order."""
        topic = self._topic(topic_name)
        consumer = self._reader()
        await consumer.start()
        try:
            partitions = await self._partitions(topic)
            tp = TopicPartition(topic, _partition(key, len(partitions)))
            consumer.assign([tp])
            await self._seek(consumer, tp, since)
            end = (await consumer.end_offsets([tp]))[tp]
            idle_since = time.monotonic()
            while True:
                batch = await consumer.getmany(tp, timeout_ms=500, max_records=500)
                records = batch.get(tp, [])
                if records:
                    idle_since = time.monotonic()
                for record in records:
                    if record.key != key.encode():
                        continue
                    try:
                        decoded = decode(inbound(record), [message_type]).message
                    except InvalidRecordError:
                        continue  # not ours to judge: the DLQ is the consumer's business
                    assert isinstance(decoded, message_type)
                    yield decoded
                position = await consumer.position(tp)
                if not follow and position >= end:
                    return
                if idle_timeout_s is not None and time.monotonic() - idle_since > idle_timeout_s:
                    return
        finally:
            await consumer.stop()

    async def wait(
        self, run_id: str, *, timeout_s: float = 300, since: datetime | None = None
    ) -> runs_pb2.RunEvent:
        """The run's terminal event (completed, failed or cancelled)."""

        async def terminal() -> runs_pb2.RunEvent:
            async for event in self.events(run_id, since=since):
                if is_terminal(event):
                    return event
            raise RunTimeoutError(f"run {run_id} ended its event stream without a final event")

        try:
            return await asyncio.wait_for(terminal(), timeout_s)
        except TimeoutError as error:
            raise RunTimeoutError(f"run {run_id} did not finish within {timeout_s:g}s") from error

    async def _partitions(self, topic: str) -> set[int]:
        if self._producer is None:
            raise RuntimeError("use the client inside `async with Stepline() as client:`")
        try:
            found: set[int] = await self._producer.partitions_for(topic)
        except KafkaTimeoutError as error:
            raise BrokerUnavailableError(
                f"topic {topic} does not exist — is the planner running (`stepline status`)?"
            ) from error
        return found

    @staticmethod
    async def _seek(consumer: AIOKafkaConsumer, tp: TopicPartition, since: datetime | None) -> None:
        if since is None:
            await consumer.seek_to_beginning(tp)
            return
        start_ms = int((since - timedelta(seconds=5)).timestamp() * 1000)
        found = await consumer.offsets_for_times({tp: start_ms})
        if found.get(tp) is None:
            await consumer.seek_to_end(tp)
        else:
            consumer.seek(tp, found[tp].offset)

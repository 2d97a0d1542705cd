"""Records as JSON: any Stepline record decoded by its `ce_type` header, for humans and tools."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import TextIO

from aiokafka import AIOKafkaConsumer
from google.protobuf import descriptor_pool, json_format, message_factory
from google.protobuf.message import DecodeError, Message

import stepline.v1  # noqa: F401  (the package docstring; modules below register the types)
from stepline.v1 import (  # noqa: F401  (imported to register every stepline.v1 type)
    budgets_pb2,
    control_pb2,
    dead_letter_pb2,
    goals_pb2,
    model_pb2,
    planner_state_pb2,
    runs_pb2,
    tools_pb2,
    usage_pb2,
)
from stepline_runtime.headers import HeaderName
from stepline_runtime.settings import KafkaSettings

__all__ = ["message_class", "record_json", "tail"]


def message_class(type_name: str) -> type[Message] | None:
    """The generated class of a full proto type name, or None when unknown."""
    try:
        descriptor = descriptor_pool.Default().FindMessageTypeByName(type_name)
    except KeyError:
        return None
    return message_factory.GetMessageClass(descriptor)


def record_json(
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    headers: Sequence[tuple[str, bytes]],
) -> dict[str, object]:
    """One Kafka record as a JSON-ready dict: coordinates, headers and the decoded payload."""
    decoded_headers = {k: (v or b"").decode("utf-8", errors="replace") for k, v in headers}
    entry: dict[str, object] = {
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "key": key.decode("utf-8", errors="replace") if key is not None else None,
        "headers": decoded_headers,
    }
    type_name = decoded_headers.get(HeaderName.TYPE, "")
    cls = message_class(type_name) if type_name else None
    if value is None:
        entry["value"] = None
    elif cls is None:
        entry["error"] = f"unknown type {type_name!r}"
        entry["value_hex"] = value.hex()
    else:
        try:
            message = cls.FromString(value)
        except DecodeError as error:
            entry["error"] = f"not a valid {type_name}: {error}"
            entry["value_hex"] = value.hex()
        else:
            entry["type"] = type_name
            entry["value"] = json_format.MessageToDict(message, preserving_proto_field_name=True)
    return entry


async def tail(
    kafka: KafkaSettings,
    topic: str,
    out: TextIO,
    *,
    from_beginning: bool = False,
    max_records: int | None = None,
    idle_timeout_s: float | None = None,
    client_id: str = "stepline-tail",
) -> int:
    """Print `topic`'s committed records as JSON lines; stop after `max_records` or after
    `idle_timeout_s` without a record (None: follow forever). Returns how many were printed."""
    consumer = AIOKafkaConsumer(
        topic,
        auto_offset_reset="earliest" if from_beginning else "latest",
        enable_auto_commit=False,
        isolation_level="read_committed",
        **kafka.client_kwargs(client_id),
    )
    seen = 0
    try:
        await consumer.start()
        last_record = time.monotonic()
        while max_records is None or seen < max_records:
            batch = await consumer.getmany(timeout_ms=500)
            if batch:
                last_record = time.monotonic()
            elif idle_timeout_s is not None and time.monotonic() - last_record >= idle_timeout_s:
                break
            for records in batch.values():
                for r in records:
                    line = record_json(r.topic, r.partition, r.offset, r.key, r.value, r.headers)
                    print(json.dumps(line, ensure_ascii=False), file=out, flush=True)
                    seen += 1
                    if max_records is not None and seen >= max_records:
                        return seen
    finally:
        await consumer.stop()
    return seen

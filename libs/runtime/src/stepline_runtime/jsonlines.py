"""Records as JSON: any Stepline record decoded by its `ce_type` header, for humans and tools."""

from __future__ import annotations

from collections.abc import Sequence

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

__all__ = ["message_class", "record_json"]


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

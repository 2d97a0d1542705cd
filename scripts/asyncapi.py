"""Generate and drift-check the AsyncAPI 3 document of every Stepline topic.

The topic catalog (`stepline_runtime.topics.CATALOG`) is the single source of the channels: the
same objects services pass to `ensure_topics`. Message payloads and their documentation come
from the shipped descriptor set (`libs/proto/.../descriptor_set.binpb`, built with source info
and itself drift-checked by `scripts/proto.py check`), rendered as JSON Schema of the proto3
JSON mapping (what `stepline tail` prints). Subcommands:

    uv run python scripts/asyncapi.py generate   # write proto/asyncapi.yaml
    uv run python scripts/asyncapi.py check      # exit 1 when proto/asyncapi.yaml drifts

The YAML is emitted by a small deterministic writer (no YAML library needed): same catalog and
descriptors, same bytes.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2

from stepline_runtime.headers import CONTENT_TYPE_PROTOBUF, HeaderName
from stepline_runtime.topics import CATALOG, Topic

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = REPO_ROOT / "proto" / "asyncapi.yaml"
DESCRIPTOR_SET = REPO_ROOT / "libs" / "proto" / "src" / "stepline" / "v1" / "descriptor_set.binpb"
REGENERATE_HINT = "run `uv run python scripts/asyncapi.py generate` and commit proto/asyncapi.yaml"

_FDP = descriptor_pb2.FieldDescriptorProto
_SCALARS: dict[int, dict[str, Any]] = {
    _FDP.TYPE_DOUBLE: {"type": "number"},
    _FDP.TYPE_FLOAT: {"type": "number"},
    _FDP.TYPE_INT32: {"type": "integer", "format": "int32"},
    _FDP.TYPE_SINT32: {"type": "integer", "format": "int32"},
    _FDP.TYPE_SFIXED32: {"type": "integer", "format": "int32"},
    _FDP.TYPE_UINT32: {"type": "integer", "format": "uint32", "minimum": 0},
    _FDP.TYPE_FIXED32: {"type": "integer", "format": "uint32", "minimum": 0},
    # proto3 JSON writes 64-bit integers as strings.
    _FDP.TYPE_INT64: {"type": "string", "format": "int64"},
    _FDP.TYPE_SINT64: {"type": "string", "format": "int64"},
    _FDP.TYPE_SFIXED64: {"type": "string", "format": "int64"},
    _FDP.TYPE_UINT64: {"type": "string", "format": "uint64"},
    _FDP.TYPE_FIXED64: {"type": "string", "format": "uint64"},
    _FDP.TYPE_BOOL: {"type": "boolean"},
    _FDP.TYPE_STRING: {"type": "string"},
    _FDP.TYPE_BYTES: {"type": "string", "contentEncoding": "base64"},
}
_WELL_KNOWN: dict[str, dict[str, Any]] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {"type": "string", "pattern": "^-?[0-9]+(\\.[0-9]+)?s$"},
    "google.protobuf.Struct": {"type": "object"},
    "google.protobuf.Value": {},
    "google.protobuf.ListValue": {"type": "array"},
    "google.protobuf.Empty": {"type": "object"},
    "google.protobuf.StringValue": {"type": "string"},
    "google.protobuf.BoolValue": {"type": "boolean"},
    "google.protobuf.Int64Value": {"type": "string", "format": "int64"},
    "google.protobuf.Int32Value": {"type": "integer"},
    "google.protobuf.DoubleValue": {"type": "number"},
}
_HEADER_DOCS = {
    HeaderName.SPEC_VERSION: "CloudEvents spec version, `1.0`.",
    HeaderName.ID: "Event id, deterministic where a retry must dedupe.",
    HeaderName.TYPE: "Full proto type name of the value, e.g. `stepline.v1.GoalSubmitted`.",
    HeaderName.SOURCE: "Producing service.",
    HeaderName.TIME: "Event time, RFC 3339.",
    HeaderName.TENANT: "Tenant id.",
    HeaderName.CONTENT_TYPE: f"`{CONTENT_TYPE_PROTOBUF}`.",
    HeaderName.TRACEPARENT: "W3C trace context: one run is one trace across services.",
    HeaderName.TRACESTATE: "W3C trace state.",
}


class AsyncApiError(Exception):
    """The catalog names a message the descriptors do not define, or the document drifted."""


class _Descriptors:
    """Messages, enums and their comments from a FileDescriptorSet."""

    def __init__(self, data: bytes) -> None:
        files = descriptor_pb2.FileDescriptorSet.FromString(data).file
        self.messages: dict[str, descriptor_pb2.DescriptorProto] = {}
        self.enums: dict[str, descriptor_pb2.EnumDescriptorProto] = {}
        self.docs: dict[str, str] = {}
        for file in files:
            comments = {
                tuple(loc.path): loc.leading_comments.strip()
                for loc in file.source_code_info.location
                if loc.leading_comments.strip()
            }
            prefix = f".{file.package}" if file.package else ""
            for i, message in enumerate(file.message_type):
                self._message(f"{prefix}.{message.name}", message, (4, i), comments)
            for i, enum in enumerate(file.enum_type):
                self._enum(f"{prefix}.{enum.name}", enum, (5, i), comments)

    def _message(
        self,
        name: str,
        message: descriptor_pb2.DescriptorProto,
        path: tuple[int, ...],
        comments: dict[tuple[int, ...], str],
    ) -> None:
        self.messages[name] = message
        self._doc(name, path, comments)
        for i, field in enumerate(message.field):
            self._doc(f"{name}#{field.name}", (*path, 2, i), comments)
        for i, nested in enumerate(message.nested_type):
            self._message(f"{name}.{nested.name}", nested, (*path, 3, i), comments)
        for i, enum in enumerate(message.enum_type):
            self._enum(f"{name}.{enum.name}", enum, (*path, 4, i), comments)

    def _enum(
        self,
        name: str,
        enum: descriptor_pb2.EnumDescriptorProto,
        path: tuple[int, ...],
        comments: dict[tuple[int, ...], str],
    ) -> None:
        self.enums[name] = enum
        self._doc(name, path, comments)

    def _doc(self, key: str, path: tuple[int, ...], comments: dict[tuple[int, ...], str]) -> None:
        if path in comments:
            self.docs[key] = " ".join(line.strip() for line in comments[path].splitlines())


def _schema_id(full_name: str) -> str:
    return full_name.lstrip(".").removeprefix("stepline.v1.")


class _Schemas:
    """JSON Schemas of the messages reachable from the topics' payloads."""

    def __init__(self, descriptors: _Descriptors) -> None:
        self._d = descriptors
        self.schemas: dict[str, dict[str, Any]] = {}

    def ref(self, full_name: str) -> dict[str, Any]:
        """A `$ref` to the schema of `full_name`, building it (and what it uses) on first use."""
        if full_name.lstrip(".") in _WELL_KNOWN:
            return dict(_WELL_KNOWN[full_name.lstrip(".")])
        sid = _schema_id(full_name)
        if sid not in self.schemas:
            self.schemas[sid] = {}  # placeholder: recursive messages refer to themselves
            if full_name in self._d.enums:
                self.schemas[sid] = self._enum(full_name)
            elif full_name in self._d.messages:
                self.schemas[sid] = self._message(full_name)
            else:
                raise AsyncApiError(f"{full_name.lstrip('.')} is not in the descriptor set")
        return {"$ref": f"#/components/schemas/{sid}"}

    def _enum(self, name: str) -> dict[str, Any]:
        enum = self._d.enums[name]
        schema: dict[str, Any] = {"type": "string", "enum": [v.name for v in enum.value]}
        if name in self._d.docs:
            schema["description"] = self._d.docs[name]
        schema["x-proto-type"] = name.lstrip(".")
        return schema

    def _message(self, name: str) -> dict[str, Any]:
        message = self._d.messages[name]
        properties: dict[str, Any] = {}
        oneofs: dict[int, list[str]] = {}
        for field in message.field:
            prop = self._field(field)
            if f"{name}#{field.name}" in self._d.docs:
                prop = {**prop, "description": self._d.docs[f"{name}#{field.name}"]}
            properties[field.json_name or field.name] = prop
            if field.HasField("oneof_index") and not field.proto3_optional:
                oneofs.setdefault(field.oneof_index, []).append(field.json_name or field.name)
        schema: dict[str, Any] = {"type": "object"}
        if name in self._d.docs:
            schema["description"] = self._d.docs[name]
        schema["properties"] = properties
        if oneofs:
            schema["x-oneof"] = {
                message.oneof_decl[index].name: members for index, members in oneofs.items()
            }
        schema["x-proto-type"] = name.lstrip(".")
        return schema

    def _field(self, field: descriptor_pb2.FieldDescriptorProto) -> dict[str, Any]:
        if field.type in (_FDP.TYPE_MESSAGE, _FDP.TYPE_ENUM):
            entry = self._d.messages.get(field.type_name)
            if entry is not None and entry.options.map_entry:
                value = self._field(entry.field[1])
                return {"type": "object", "additionalProperties": value}
            item = self.ref(field.type_name)
        else:
            item = dict(_SCALARS[field.type])
        if field.label == _FDP.LABEL_REPEATED:
            return {"type": "array", "items": item}
        return item


def _headers_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "description": "CloudEvents Kafka binding (binary mode) plus W3C trace context.",
        "properties": {
            name: {"type": "string", "description": doc} for name, doc in _HEADER_DOCS.items()
        },
        "required": [HeaderName.ID, HeaderName.TYPE, HeaderName.SOURCE, HeaderName.CONTENT_TYPE],
    }


def build(catalog: Sequence[Topic], descriptor_set: bytes) -> dict[str, Any]:
    """The AsyncAPI 3.0 document of `catalog`, payloads from `descriptor_set`."""
    descriptors = _Descriptors(descriptor_set)
    schemas = _Schemas(descriptors)
    channels: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for topic in catalog:
        refs: dict[str, Any] = {}
        for payload in topic.payloads:
            mid = _schema_id(payload)
            refs[mid] = {"$ref": f"#/components/messages/{mid}"}
            messages[mid] = {
                "name": payload,
                "title": mid,
                **(
                    {"summary": descriptors.docs[f".{payload}"]}
                    if f".{payload}" in descriptors.docs
                    else {}
                ),
                "contentType": CONTENT_TYPE_PROTOBUF,
                "headers": {"$ref": "#/components/schemas/CloudEventHeaders"},
                "payload": schemas.ref(f".{payload}"),
                "bindings": {
                    "kafka": {
                        "key": {"type": "string", "description": topic.key},
                        "bindingVersion": "0.5.0",
                    }
                },
            }
        configs = topic.kafka_configs()
        channels[topic.name] = {
            "address": topic.name,
            "title": topic.name,
            "description": (
                f"Key: {topic.key}. Cleanup: {topic.cleanup.value}. Payloads: "
                + ", ".join(topic.payloads)
                + "."
            ),
            "messages": refs,
            "bindings": {
                "kafka": {
                    "topic": topic.name,
                    "topicConfiguration": {
                        "cleanup.policy": topic.cleanup.value.split(","),
                        **(
                            {"retention.ms": int(configs["retention.ms"])}
                            if "retention.ms" in configs
                            else {}
                        ),
                    },
                    "bindingVersion": "0.5.0",
                }
            },
            **({"x-copartition-group": topic.copartition_group} if topic.copartition_group else {}),
        }
    schemas.schemas["CloudEventHeaders"] = _headers_schema()
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Stepline events",
            "version": "v1",
            "description": (
                "Every Stepline topic, generated from stepline_runtime.topics.CATALOG and the "
                "stepline.v1 descriptor set by scripts/asyncapi.py; do not edit by hand. Values "
                "are protobuf (binary); schemas show the proto3 JSON mapping. Topics may carry a "
                "namespace prefix (STEPLINE_TOPIC_NAMESPACE)."
            ),
        },
        "defaultContentType": CONTENT_TYPE_PROTOBUF,
        "servers": {
            "local": {
                "host": "127.0.0.1:9092",
                "protocol": "kafka",
                "description": "The local broker of `make kafka-up`.",
            }
        },
        "channels": channels,
        "components": {
            "messages": dict(sorted(messages.items())),
            "schemas": dict(sorted(schemas.schemas.items())),
        },
    }


# --- a small deterministic YAML writer ------------------------------------------------------------

_PLAIN = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-/]*$")
_RESERVED = {"true", "false", "yes", "no", "on", "off", "null", "y", "n", "~"}


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    text = str(value)
    if _PLAIN.match(text) and text.lower() not in _RESERVED:
        return text
    # A JSON string is a valid YAML double-quoted scalar.
    return json.dumps(text, ensure_ascii=False)


def _lines(value: Any, indent: int) -> Iterable[str]:
    pad = "  " * indent
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, dict | list) and item:
                yield f"{pad}{_scalar(key)}:"
                yield from _lines(item, indent + 1)
            else:
                yield f"{pad}{_scalar(key)}: {_empty(item)}"
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict | list) and item:
                nested = list(_lines(item, indent + 1))
                yield f"{pad}- {nested[0].lstrip()}"
                yield from nested[1:]
            else:
                yield f"{pad}- {_empty(item)}"


def _empty(value: Any) -> str:
    if isinstance(value, dict):
        return "{}"
    if isinstance(value, list):
        return "[]"
    return _scalar(value)


def render(document: dict[str, Any]) -> str:
    """`document` as YAML text."""
    header = "# Generated by scripts/asyncapi.py from the topic catalog; do not edit.\n"
    return header + "\n".join(_lines(document, 0)) + "\n"


def generate_text(catalog: Sequence[Topic] = CATALOG, descriptor_set: Path = DESCRIPTOR_SET) -> str:
    """The document's YAML for `catalog`."""
    return render(build(catalog, descriptor_set.read_bytes()))


def check(output: Path, catalog: Sequence[Topic] = CATALOG) -> list[str]:
    """Problems (empty when `output` is up to date)."""
    if not output.is_file():
        return [f"{output} is missing; {REGENERATE_HINT}"]
    if output.read_text(encoding="utf-8") != generate_text(catalog):
        return [f"{output} is out of date with the topic catalog or the protos; {REGENERATE_HINT}"]
    return []


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: `generate` or `check`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("command", choices=("generate", "check"))
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    try:
        if args.command == "generate":
            args.output.write_text(generate_text(), encoding="utf-8")
            print(f"wrote {args.output}")
            return 0
        problems = check(args.output)
    except AsyncApiError as error:
        print(f"asyncapi: {error}", file=sys.stderr)
        return 1
    for problem in problems:
        print(f"asyncapi: {problem}", file=sys.stderr)
    if not problems:
        print(f"{args.output} is up to date")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

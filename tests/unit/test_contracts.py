"""Tests for the stepline.v1 protobuf contracts and for scripts/proto.py (generate/check/lint)."""

from __future__ import annotations

import importlib
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import cast

import pytest
from google.protobuf import descriptor_pb2, json_format
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor, FileDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

REPO_ROOT = Path(__file__).resolve().parents[2]
PROTO_DIR = REPO_ROOT / "proto"
OUT_DIR = REPO_ROOT / "libs" / "proto" / "src"
GENERATED_DIR = OUT_DIR / "stepline" / "v1"
SCRIPT = REPO_ROOT / "scripts" / "proto.py"
BUF = REPO_ROOT / ".local" / "node" / "node_modules" / ".bin" / "buf"

MODULES = sorted(p.stem for p in GENERATED_DIR.glob("*_pb2.py"))

# ARCHITECTURE.md section 2: topic -> payload message type(s).
TOPIC_PAYLOADS = {
    "stepline.goals.v1": ["GoalSubmitted"],
    "stepline.control.v1": ["ControlCommand", "ApprovalDecided", "RunCancelRequested"],
    "stepline.model.requests.v1": ["ModelCallRequested"],
    "stepline.model.results.v1": ["ModelCallResult"],
    "stepline.tool.requests.v1": ["ToolCallRequested", "ToolCallsCancelRequested"],
    "stepline.tool.results.v1": ["ToolCallResult"],
    "stepline.runs.v1": ["RunEvent"],
    "stepline.usage.v1": ["UsageRecorded"],
    "stepline.usage.rollups.v1": ["UsageRollup"],
    "stepline.budgets.v1": ["BudgetState"],
    "stepline.planner.state.v1": ["RunState"],
    "stepline.dlq.v1": ["DeadLetter"],
}

_T = FieldDescriptor


def _files() -> list[FileDescriptor]:
    """Every generated stepline.v1 file descriptor."""
    mods = [importlib.import_module(f"stepline.v1.{name}") for name in MODULES]
    return [mod.DESCRIPTOR for mod in mods]


def _walk_messages(messages: list[Descriptor]) -> Iterator[Descriptor]:
    for desc in messages:
        if desc.GetOptions().map_entry:
            continue
        yield desc
        yield from _walk_messages(list(desc.nested_types))


def all_messages() -> list[Descriptor]:
    """Every message (nested ones included, map entries excluded) of package stepline.v1."""
    return [m for f in _files() for m in _walk_messages(list(f.message_types_by_name.values()))]


def all_enums() -> list[EnumDescriptor]:
    """Every enum (nested ones included) of package stepline.v1."""
    enums: list[EnumDescriptor] = [e for f in _files() for e in f.enum_types_by_name.values()]
    enums += [e for m in all_messages() for e in m.enum_types]
    return enums


def _scalar(field: FieldDescriptor) -> object:
    """A non-default sample value for a scalar field."""
    if field.type == _T.TYPE_STRING:
        return f"{field.name}-value"
    if field.type == _T.TYPE_BYTES:
        return b"\x00\xffbytes"
    if field.type == _T.TYPE_BOOL:
        return True
    if field.type in (_T.TYPE_DOUBLE, _T.TYPE_FLOAT):
        return 0.5
    if field.type == _T.TYPE_ENUM:
        assert field.enum_type is not None
        return field.enum_type.values[-1].number
    return 7


def populate(msg: Message, depth: int = 0, oneof_pick: int = 0) -> Message:
    """Set every field of msg (one member per oneof, chosen by oneof_pick) to a sample value."""
    desc = cast(Descriptor, msg.DESCRIPTOR)  # the stubs also allow upb's twin class
    for field in desc.fields:
        oneof = field.containing_oneof
        if oneof is not None and not _is_synthetic(field):
            members = list(oneof.fields)
            if members[oneof_pick % len(members)] is not field:
                continue
        if field.message_type is not None and depth >= 3:
            continue
        _set_field(msg, field, depth)
    return msg


def _is_synthetic(field: FieldDescriptor) -> bool:
    """Tell whether field's oneof is the synthetic one proto3 `optional` creates."""
    oneof = field.containing_oneof
    return oneof is not None and len(oneof.fields) == 1 and oneof.name == f"_{field.name}"


def _set_field(msg: Message, field: FieldDescriptor, depth: int) -> None:
    container = getattr(msg, field.name)
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        key_field, value_field = field.message_type.fields
        key = _scalar(key_field)
        if value_field.message_type is not None:
            populate(container[key], depth + 1)
        else:
            container[key] = _scalar(value_field)
    elif field.is_repeated:
        if field.message_type is not None:
            populate(container.add(), depth + 1)
        else:
            container.append(_scalar(field))
    elif field.message_type is not None:
        populate(container, depth + 1)
    else:
        setattr(msg, field.name, _scalar(field))


def _oneof_variants(desc: Descriptor) -> int:
    """How many variants cover every oneof member of desc at least once."""
    real = [o for o in desc.oneofs if not (len(o.fields) == 1 and o.name.startswith("_"))]
    return max([len(o.fields) for o in real], default=1)


def _upper_snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).upper()


def test_modules_generated() -> None:
    """The generated package holds one module per .proto file."""
    protos = sorted(p.stem + "_pb2" for p in (PROTO_DIR / "stepline" / "v1").glob("*.proto"))
    assert protos == MODULES


@pytest.mark.parametrize("desc", all_messages(), ids=lambda d: d.full_name)
def test_message_round_trips(desc: Descriptor) -> None:
    """Every message survives binary and JSON encoding with every field (and oneof member) set."""
    cls = GetMessageClass(desc)
    for pick in range(_oneof_variants(desc)):
        original = populate(cls(), oneof_pick=pick)
        wire = original.SerializeToString(deterministic=True)
        assert bool(wire) == bool(desc.fields), "populate() left the message empty"
        decoded = cls.FromString(wire)
        assert decoded == original
        assert decoded.SerializeToString(deterministic=True) == wire
        assert json_format.Parse(json_format.MessageToJson(original), cls()) == original


@pytest.mark.parametrize("enum", all_enums(), ids=lambda e: e.full_name)
def test_enum_zero_value_is_unspecified(enum: EnumDescriptor) -> None:
    """Every enum's zero value is <ENUM_NAME>_UNSPECIFIED and every value carries the prefix."""
    prefix = _upper_snake(enum.name)
    assert enum.values_by_number[0].name == f"{prefix}_UNSPECIFIED"
    for value in enum.values:
        assert value.name.startswith(f"{prefix}_"), value.name


@pytest.mark.parametrize(("topic", "names"), sorted(TOPIC_PAYLOADS.items()))
def test_topic_payload_messages_exist(topic: str, names: list[str]) -> None:
    """Every topic of the catalog has its payload message(s) in stepline.v1."""
    known = {m.full_name for m in all_messages()}
    for name in names:
        assert f"stepline.v1.{name}" in known, f"{topic}: stepline.v1.{name} missing"


def _fields(desc: Descriptor) -> list[tuple[int, str, str]]:
    """(number, name, type) of each field, type being a message full name or a scalar kind."""
    out = []
    for f in desc.fields:
        kind = f.message_type.full_name if f.message_type else str(f.type)
        if f.is_repeated and not (f.message_type and f.message_type.GetOptions().map_entry):
            kind = f"repeated {kind}"
        out.append((f.number, f.name, kind))
    return sorted(out)


def test_goal_submitted_fields_are_pinned() -> None:
    """GoalSubmitted keeps the field numbers and types other code depends on."""
    from stepline.v1 import goals_pb2

    fields = _fields(goals_pb2.GoalSubmitted.DESCRIPTOR)
    s, ts = str(_T.TYPE_STRING), "google.protobuf.Timestamp"
    expected = [
        (1, "run_id", s),
        (2, "tenant_id", s),
        (3, "agent", s),
        (4, "goal", s),
        (5, "session_id", s),
        (6, "budget", "stepline.v1.Money"),
        (7, "deadline", ts),
        (8, "metadata", "stepline.v1.GoalSubmitted.MetadataEntry"),
        (9, "idempotency_key", s),
        (10, "submitted_at", ts),
        (11, "parent_run_id", s),
    ]
    assert fields[: len(expected)] == expected


def test_dead_letter_fields_are_pinned() -> None:
    """DeadLetter, KafkaHeader and DeadLetterCause match the contract exactly."""
    from stepline.v1 import dead_letter_pb2 as dl

    s, b = str(_T.TYPE_STRING), str(_T.TYPE_BYTES)
    assert _fields(dl.DeadLetter.DESCRIPTOR) == [
        (1, "reason", s),
        (2, "cause", str(_T.TYPE_ENUM)),
        (3, "source_topic", s),
        (4, "source_partition", str(_T.TYPE_INT32)),
        (5, "source_offset", str(_T.TYPE_INT64)),
        (6, "source_key", b),
        (7, "payload", b),
        (8, "headers", "repeated stepline.v1.KafkaHeader"),
        (9, "consumer", s),
        (10, "dead_lettered_at", "google.protobuf.Timestamp"),
    ]
    assert _fields(dl.KafkaHeader.DESCRIPTOR) == [(1, "key", s), (2, "value", b)]
    causes = {v.name: v.number for v in dl.DeadLetterCause.DESCRIPTOR.values}
    assert causes == {
        "DEAD_LETTER_CAUSE_UNSPECIFIED": 0,
        "DEAD_LETTER_CAUSE_UNDECODABLE": 1,
        "DEAD_LETTER_CAUSE_UNEXPECTED_TYPE": 2,
        "DEAD_LETTER_CAUSE_INVALID": 3,
        "DEAD_LETTER_CAUSE_HANDLER_FAILED": 4,
        "DEAD_LETTER_CAUSE_OVERSIZED": 5,
    }


def test_money_amount_is_an_exact_decimal_string() -> None:
    """Money keeps a decimal string exactly; Decimal parses it without float rounding."""
    from stepline.v1 import common_pb2

    money = common_pb2.Money(currency="USD", amount="0.000150")
    decoded = common_pb2.Money.FromString(money.SerializeToString())
    assert Decimal(decoded.amount) * 3 == Decimal("0.000450")


def test_services_follow_request_response_naming() -> None:
    """Each rpc takes <Rpc>Request and returns <Rpc>Response; the gRPC modules import."""
    services = {s.full_name: s for f in _files() for s in f.services_by_name.values()}
    assert set(services) == {
        "stepline.v1.ModelRouterService",
        "stepline.v1.BillingService",
        "stepline.v1.GatewayService",
    }
    for service in services.values():
        for method in service.methods:
            assert method.input_type.name == f"{method.name}Request"
            assert method.output_type.name == f"{method.name}Response"
    gateway = services["stepline.v1.GatewayService"]
    assert gateway.methods_by_name["WatchRun"].server_streaming
    for name in ("router_service", "billing_service", "gateway_service"):
        importlib.import_module(f"stepline.v1.{name}_pb2_grpc")


def test_descriptor_set_covers_every_file() -> None:
    """descriptor_set.binpb holds every stepline.v1 file plus its imports, with comments."""
    fds = descriptor_pb2.FileDescriptorSet.FromString(
        (GENERATED_DIR / "descriptor_set.binpb").read_bytes()
    )
    names = {f.name for f in fds.file}
    assert {f"stepline/v1/{m.removesuffix('_pb2')}.proto" for m in MODULES} <= names
    assert "google/protobuf/timestamp.proto" in names
    goals = next(f for f in fds.file if f.name == "stepline/v1/goals.proto")
    assert any(loc.leading_comments for loc in goals.source_code_info.location)


# --- scripts/proto.py -------------------------------------------------------------------------


def run_script(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run scripts/proto.py with this interpreter and capture its output."""
    cmd = [sys.executable, str(SCRIPT), *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=120)


@pytest.fixture
def workspace(tmp_path: Path) -> tuple[Path, Path]:
    """A copy of proto/ and libs/proto/src to break without touching the repository."""
    proto, out = tmp_path / "proto", tmp_path / "src"
    shutil.copytree(PROTO_DIR, proto)
    shutil.copytree(OUT_DIR, out, ignore=shutil.ignore_patterns("__pycache__"))
    return proto, out


def check(proto: Path, out: Path) -> subprocess.CompletedProcess[str]:
    """Run the drift check (without buf) on a workspace copy."""
    return run_script("check", "--skip-lint", "--proto-dir", proto, "--out-dir", out)


def test_check_passes_when_in_sync(workspace: tuple[Path, Path]) -> None:
    """The committed generated code matches the .proto files."""
    result = check(*workspace)
    assert result.returncode == 0, result.stderr


def test_check_fails_when_proto_changes_without_regenerating(
    workspace: tuple[Path, Path],
) -> None:
    """Editing a .proto without regenerating fails the check, naming the file and the fix."""
    proto, out = workspace
    goals = proto / "stepline" / "v1" / "goals.proto"
    text = goals.read_text(encoding="utf-8")
    goals.write_text(
        text.replace("int32 max_steps = 13;", "int32 max_steps = 13;\n  string x = 99;")
    )
    result = check(proto, out)
    assert result.returncode == 1
    assert "differs: stepline/v1/goals_pb2.py" in result.stderr
    assert "differs: stepline/v1/descriptor_set.binpb" in result.stderr
    assert "run `make proto`" in result.stderr

    regenerated = run_script("generate", "--proto-dir", proto, "--out-dir", out)
    assert regenerated.returncode == 0, regenerated.stderr
    assert check(proto, out).returncode == 0


def test_check_reports_missing_and_stale_files(workspace: tuple[Path, Path]) -> None:
    """A new .proto without code and code without a .proto both fail; generate fixes both."""
    proto, out = workspace
    (proto / "stepline" / "v1" / "extra.proto").write_text(
        'syntax = "proto3";\npackage stepline.v1;\nmessage Extra { string id = 1; }\n'
    )
    stale = out / "stepline" / "v1" / "removed_pb2.py"
    stale.write_text("# left over\n")
    result = check(proto, out)
    assert result.returncode == 1
    assert "missing: stepline/v1/extra_pb2.py" in result.stderr
    assert "stale (no .proto produces it): stepline/v1/removed_pb2.py" in result.stderr

    assert run_script("generate", "--proto-dir", proto, "--out-dir", out).returncode == 0
    assert not stale.exists()
    assert (out / "stepline" / "v1" / "extra_pb2.pyi").exists()
    assert (out / "stepline" / "v1" / "__init__.py").exists()
    assert check(proto, out).returncode == 0


def test_check_fails_on_invalid_proto(workspace: tuple[Path, Path]) -> None:
    """A .proto that does not compile fails with protoc's message, not a traceback."""
    proto, out = workspace
    (proto / "stepline" / "v1" / "broken.proto").write_text('syntax = "proto3";\nmessage {\n')
    result = check(proto, out)
    assert result.returncode == 1
    assert "proto.py: error: protoc failed" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.skipif(not BUF.exists(), reason="buf not installed; run `make proto-check` once")
def test_lint_rejects_a_badly_named_enum_value(workspace: tuple[Path, Path]) -> None:
    """buf lint (STANDARD) passes on the contracts and fails on a zero value without the suffix."""
    proto, _ = workspace
    assert run_script("lint", "--proto-dir", proto).returncode == 0
    control = proto / "stepline" / "v1" / "control.proto"
    text = control.read_text(encoding="utf-8")
    control.write_text(text.replace("APPROVAL_DECISION_UNSPECIFIED", "APPROVAL_DECISION_NONE"))
    result = run_script("lint", "--proto-dir", proto)
    assert result.returncode == 1
    assert '"APPROVAL_DECISION_NONE" should be suffixed with "_UNSPECIFIED"' in result.stdout

"""Every core enum and its proto enum cover each other, member by member (no silent drift)."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

import pytest

from stepline.v1 import (
    common_pb2,
    control_pb2,
    dead_letter_pb2,
    model_pb2,
    runs_pb2,
    tools_pb2,
    usage_pb2,
)
from stepline_billing import convert as billing
from stepline_billing.ledger import Kind
from stepline_billing.rollups import Granularity
from stepline_executor import wire as executor
from stepline_executor.model import ErrorKind as ToolErrorKind
from stepline_planner import convert as planner
from stepline_planner.state import Decision, IgnoredReason, Outcome, Reason, Status, StepKind
from stepline_router import convert as router
from stepline_router.errors import Outcome as AttemptOutcome
from stepline_router.router import ErrorKind as ModelErrorKind
from stepline_router.types import FinishReason, ToolChoice
from stepline_runtime.codec import Cause
from stepline_vocab import Role, wire

# Core enums mapped to proto enums by name: PREFIX + the member's value in upper case.
BY_NAME: list[tuple[type[StrEnum], Any, str]] = [
    (Status, runs_pb2.RunStatus, "RUN_STATUS_"),
    (Reason, runs_pb2.RunFailureReason, "RUN_FAILURE_REASON_"),
    (StepKind, runs_pb2.StepKind, "STEP_KIND_"),
    (Outcome, runs_pb2.StepOutcome, "STEP_OUTCOME_"),
    (IgnoredReason, runs_pb2.IgnoredResultReason, "IGNORED_RESULT_REASON_"),
    (Decision, control_pb2.ApprovalDecision, "APPROVAL_DECISION_"),
    (AttemptOutcome, model_pb2.ModelAttemptOutcome, "MODEL_ATTEMPT_OUTCOME_"),
    (ModelErrorKind, model_pb2.ModelCallErrorKind, "MODEL_CALL_ERROR_KIND_"),
    (FinishReason, model_pb2.FinishReason, "FINISH_REASON_"),
    (ToolErrorKind, tools_pb2.ToolCallErrorKind, "TOOL_CALL_ERROR_KIND_"),
    (Cause, dead_letter_pb2.DeadLetterCause, "DEAD_LETTER_CAUSE_"),
]


def _proto_names(proto_enum: Any, prefix: str) -> set[str]:
    names = {str(n).removeprefix(prefix) for n in proto_enum.DESCRIPTOR.values_by_name}
    return names - {"UNSPECIFIED"}


@pytest.mark.parametrize(
    ("core", "proto", "prefix"), BY_NAME, ids=lambda x: getattr(x, "__name__", "")
)
def test_name_mapped_enums_cover_each_other(core: type[StrEnum], proto: Any, prefix: str) -> None:
    mine = {m.value.upper() for m in core} - {"UNSPECIFIED"}
    assert mine == _proto_names(proto, prefix)
    for member in core:
        proto.Value(prefix + member.value.upper())  # every member encodes


def test_planner_round_trips_every_status_reason_and_kind() -> None:
    for reason in Reason:
        assert planner._reason_of(planner._reason(reason)) is reason
    for status in Status:
        name = runs_pb2.RunStatus.Name(planner._status(status))
        assert Status(name.removeprefix("RUN_STATUS_")) is status
    for kind in StepKind:
        assert runs_pb2.StepKind.Name(planner._kind(kind)) == f"STEP_KIND_{kind.value}"


def test_roles_cover_the_proto_enum_both_ways() -> None:
    assert set(wire.ROLES) == set(Role)
    proto_roles = set(common_pb2.ChatMessage.Role.values()) - {
        common_pb2.ChatMessage.ROLE_UNSPECIFIED
    }
    assert set(wire.ROLES.values()) == proto_roles
    for role in Role:
        assert wire.role_from_proto(wire.role_to_proto(role)) is role
    assert wire.role_from_proto(common_pb2.ChatMessage.ROLE_UNSPECIFIED) is None


def test_dict_mapped_enums_cover_every_member() -> None:
    assert set(billing._KINDS.values()) == set(Kind)
    assert set(billing._KINDS) == set(usage_pb2.UsageKind.values()) - {0}
    assert set(billing._GRANULARITIES.values()) == set(Granularity)
    assert set(billing._GRANULARITIES) == set(usage_pb2.RollupGranularity.values()) - {0}
    assert set(executor.KINDS) == set(ToolErrorKind)
    assert set(executor.KINDS.values()) == set(tools_pb2.ToolCallErrorKind.values()) - {0}
    # AUTO is the proto default (unspecified), every other mode is mapped explicitly.
    assert set(router._CHOICES.values()) | {ToolChoice.AUTO} == set(ToolChoice)
    assert set(router._CHOICES) | {model_pb2.TOOL_CHOICE_MODE_AUTO} == set(
        model_pb2.ToolChoiceMode.values()
    ) - {0}

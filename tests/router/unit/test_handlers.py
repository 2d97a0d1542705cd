"""The Kafka handler: ModelCallRequested in, UsageRecorded per attempt and ModelCallResult out."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from stepline.v1 import common_pb2, model_pb2, usage_pb2
from stepline_router.clock import ManualClock
from stepline_router.credentials import StaticCredentials
from stepline_router.errors import Outcome, ProviderError
from stepline_router.handlers import ModelCallHandler, Topics
from stepline_router.providers.local import LocalProvider
from stepline_router.providers.scripted import ScriptedProvider
from stepline_router.router import Router
from stepline_router.types import Completion
from stepline_runtime.codec import Cause, InvalidRecordError, encode
from stepline_runtime.records import InboundRecord, OutboundRecord
from tests.router.support import BOOK, routes

CONFIG = routes(
    """
[deployments.mystery]
provider = "scripted"
model = "not-in-the-price-book"
[deployments.local]
provider = "local"
model = "stepline-local-1"
[routes.default]
deployments = ["mystery", "local"]
"""
)


def _handler(scripted: ScriptedProvider) -> ModelCallHandler:
    clock = ManualClock()
    router = Router(
        routes=lambda: CONFIG,
        prices=lambda: BOOK,
        providers={"scripted": scripted, "local": LocalProvider()},
        credentials=StaticCredentials(),
        clock=clock,
        random=lambda: 0.0,
    )
    return ModelCallHandler(router, Topics("results", "usage"), clock, "model-router")


def _record(message: model_pb2.ModelCallRequested) -> InboundRecord:
    out = encode("requests", message.run_id, message, event_id="e1", source="planner")
    return InboundRecord("requests", 0, 5, out.key, out.value, out.headers)


def _request(**fields: object) -> model_pb2.ModelCallRequested:
    calc = common_pb2.ToolDefinition(
        name="calculator",
        description="Evaluate an arithmetic expression",
        parameters_json_schema=json.dumps(
            {
                "type": "object",
                "properties": {"expression": {"type": "string"}},
                "required": ["expression"],
            }
        ),
    )
    base: dict[str, object] = {
        "run_id": "run-7",
        "tenant_id": "acme",
        "step_id": "run-7:3",
        "call_id": "run-7:3:1",
        "route": "default",
        "agent": "analyst",
        "messages": [
            common_pb2.ChatMessage(role=common_pb2.ChatMessage.ROLE_USER, content="What is 6 * 7?")
        ],
        "tools": [calc],
    }
    base.update(fields)
    return model_pb2.ModelCallRequested(**base)  # type: ignore[arg-type]


def _split(
    outputs: list[OutboundRecord],
) -> tuple[list[usage_pb2.UsageRecorded], model_pb2.ModelCallResult]:
    usage = [
        usage_pb2.UsageRecorded.FromString(r.value or b"") for r in outputs if r.topic == "usage"
    ]
    [result] = [
        model_pb2.ModelCallResult.FromString(r.value or b"")
        for r in outputs
        if r.topic == "results"
    ]
    return usage, result


async def test_usage_per_attempt_with_deterministic_ids_and_unpriced_flag() -> None:
    scripted = ScriptedProvider(
        [ProviderError(Outcome.CONNECTION_FAILED, "refused")], default=Completion("x")
    )
    outputs = list(await _handler(scripted).on_model_call_requested(_record(_request())))
    usage, result = _split(outputs)
    assert [u.usage_id for u in usage] == ["run-7:3:1/attempt/1", "run-7:3:1/attempt/2"]
    assert [r.key for r in outputs if r.topic == "usage"] == [b"acme", b"acme"]
    failed, succeeded = usage
    assert not failed.priced  # unknown model: unpriced, not free
    assert not failed.HasField("cost")
    assert failed.outcome == model_pb2.MODEL_ATTEMPT_OUTCOME_CONNECTION_FAILED
    assert not failed.succeeded
    assert succeeded.priced
    assert succeeded.succeeded
    assert succeeded.price_book_version == "test-1"
    assert (succeeded.route, succeeded.agent, succeeded.step_id) == (
        "default",
        "analyst",
        "run-7:3",
    )
    assert Decimal(succeeded.cost.amount) > 0
    assert succeeded.usage.input_tokens > 0
    # the result: the local model called the calculator with the expression from the text
    assert result.call_id == "run-7:3:1"
    assert result.WhichOneof("outcome") == "completed"
    [call] = result.completed.tool_calls
    assert call.name == "calculator"
    assert json.loads(call.arguments_json) == {"expression": "6 * 7"}
    assert result.completed.finish_reason == model_pb2.FINISH_REASON_TOOL_CALLS
    assert [a.deployment for a in result.completed.attempts] == ["mystery", "local"]
    assert result.completed.cost.amount == succeeded.cost.amount
    # result event id is deterministic too (dedupe on redelivery)
    result_record = next(r for r in outputs if r.topic == "results")
    assert ("ce_id", b"run-7:3:1/result") in result_record.headers


async def test_failure_is_a_result_not_an_exception() -> None:
    outputs = list(
        await _handler(ScriptedProvider()).on_model_call_requested(_record(_request(route="nope")))
    )
    usage, result = _split(outputs)
    assert usage == []
    assert result.failed.kind == model_pb2.MODEL_CALL_ERROR_KIND_UNKNOWN_ROUTE
    assert "nope" in result.failed.message


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"messages": []}, "messages must not be empty"),
        ({"tenant_id": ""}, "tenant_id is required"),
        (
            {"tools": [common_pb2.ToolDefinition(name="t", parameters_json_schema="{nope")]},
            "not valid JSON",
        ),
        ({"max_cost": common_pb2.Money(currency="USD", amount="lots")}, "not a decimal"),
    ],
)
async def test_invalid_requests_are_refused_for_the_dlq(
    fields: dict[str, object], reason: str
) -> None:
    with pytest.raises(InvalidRecordError) as refused:
        await _handler(ScriptedProvider()).on_model_call_requested(_record(_request(**fields)))
    assert refused.value.cause is Cause.INVALID
    assert reason in refused.value.reason


async def test_grounded_answer_after_tool_results() -> None:
    request = _request(
        messages=[
            common_pb2.ChatMessage(role=common_pb2.ChatMessage.ROLE_USER, content="What is 6 * 7?"),
            common_pb2.ChatMessage(
                role=common_pb2.ChatMessage.ROLE_ASSISTANT,
                tool_calls=[
                    common_pb2.ToolCall(call_id="c1", name="calculator", arguments_json="{}")
                ],
            ),
            common_pb2.ChatMessage(
                role=common_pb2.ChatMessage.ROLE_TOOL, content="42", tool_call_id="c1"
            ),
        ]
    )
    scripted = ScriptedProvider(default=ProviderError(Outcome.AUTH_FAILED, "401"))
    _, result = _split(list(await _handler(scripted).on_model_call_requested(_record(request))))
    assert result.completed.tool_calls == []
    assert "According to calculator: 42" in result.completed.content
    assert result.completed.usage.output_tokens > 0

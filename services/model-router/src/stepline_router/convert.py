"""Protobuf ↔ core types; the only module besides the inbound ports that knows protobuf."""

from __future__ import annotations

import functools
import json
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from google.protobuf import duration_pb2, json_format

from stepline.v1 import common_pb2, model_pb2, usage_pb2
from stepline_router.errors import Outcome
from stepline_router.router import Attempt, CallFailed, CallOutcome, CallSucceeded
from stepline_router.types import (
    FinishReason,
    ModelRequest,
    Params,
    ResponseFormat,
    Role,
    ToolChoice,
    ToolSpec,
    Usage,
)
from stepline_vocab import BadInputError, MoneyError, format_amount, wire

__all__ = [
    "InvalidRequestError",
    "completed_message",
    "failed_message",
    "request_from_proto",
    "usage_records",
]

_CHOICES = {
    model_pb2.TOOL_CHOICE_MODE_NONE: ToolChoice.NONE,
    model_pb2.TOOL_CHOICE_MODE_REQUIRED: ToolChoice.REQUIRED,
}
_FORMATS = {
    model_pb2.RESPONSE_FORMAT_TYPE_JSON_OBJECT: "json_object",
    model_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA: "json_schema",
}


class InvalidRequestError(BadInputError):
    """The request is semantically invalid; the message says what to fix."""


def _json_object(text: str, what: str) -> dict[str, Any]:
    if not text:
        return {"type": "object", "properties": {}}
    try:
        value = json.loads(text)
    except ValueError as error:
        raise InvalidRequestError(f"{what} is not valid JSON: {error}") from error
    if not isinstance(value, dict):
        raise InvalidRequestError(f"{what} must be a JSON object")
    return value


@functools.lru_cache(maxsize=1024)
def _tool_spec(name: str, description: str, schema: str) -> ToolSpec:
    """The spec of one tool definition; cached by content, since an agent offers the same
    tools on every step: the schema is parsed once, and the instance shared (see `ToolSpec`)."""
    return ToolSpec(name, description, _json_object(schema, f"tool {name}"))


def _money(money: common_pb2.Money, what: str) -> Decimal | None:
    if not money.currency and not money.amount:
        return None
    try:
        return wire.amount_of(money, what=f"{what} amount")
    except MoneyError as error:
        raise InvalidRequestError(str(error)) from error


def request_from_proto(
    *,
    call_id: str,
    tenant_id: str,
    route: str,
    messages: Any,
    tools: Any,
    parameters: model_pb2.ModelParameters,
    deadline: datetime | None,
    max_cost: common_pb2.Money,
    stream: bool = False,
    run_id: str = "",
    step_id: str = "",
    agent: str = "",
    replay_of: str = "",
) -> ModelRequest:
    """A core `ModelRequest` from the fields shared by ModelCallRequested and CompleteRequest."""
    if not tenant_id:
        raise InvalidRequestError("tenant_id is required")
    if not route:
        raise InvalidRequestError("route is required")
    if not messages:
        raise InvalidRequestError("messages must not be empty")
    converted = []
    for i, m in enumerate(messages):
        role = wire.role_from_proto(m.role)
        if role is None:
            raise InvalidRequestError(f"messages[{i}] has no role")
        if role is Role.TOOL and not m.tool_call_id:
            raise InvalidRequestError(f"messages[{i}] is a tool result without tool_call_id")
        converted.append(wire.message_from_proto(m, role))
    specs = []
    for t in tools:
        if not t.name:
            raise InvalidRequestError("every tool needs a name")
        specs.append(_tool_spec(t.name, t.description, t.parameters_json_schema))
    return ModelRequest(
        call_id=call_id,
        tenant_id=tenant_id,
        route=route,
        messages=tuple(converted),
        tools=tuple(specs),
        params=_params(parameters.SerializeToString(deterministic=True)),
        deadline=deadline,
        max_cost=_money(max_cost, "max_cost"),
        stream=stream,
        run_id=run_id,
        step_id=step_id,
        agent=agent,
        replay_of=replay_of,
    )


@functools.lru_cache(maxsize=256)
def _params(encoded: bytes) -> Params:
    """The core parameters of encoded `ModelParameters`: cached by content, as an agent asks
    with the same ones on every step (the instance is shared, read-only like `ToolSpec`)."""
    p = model_pb2.ModelParameters.FromString(encoded)
    fmt = p.response_format
    return Params(
        temperature=p.temperature if p.HasField("temperature") else None,
        top_p=p.top_p if p.HasField("top_p") else None,
        max_output_tokens=max(0, p.max_output_tokens),
        stop=tuple(p.stop),
        tool_choice=_CHOICES.get(p.tool_choice.mode, ToolChoice.AUTO),
        tool_name=p.tool_choice.tool_name,
        response_format=ResponseFormat(
            type=_FORMATS.get(fmt.type, "text"),
            schema=_json_object(fmt.json_schema, "response_format.json_schema")
            if fmt.type == model_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA
            else None,
            name=fmt.schema_name,
            strict=fmt.strict,
        ),
        seed=p.seed if p.HasField("seed") else None,
        reasoning_effort=p.reasoning_effort,
        extra=json_format.MessageToDict(p.extra) if p.HasField("extra") else {},
    )


timestamp = wire.timestamp_to_proto


def _duration(seconds: float) -> duration_pb2.Duration:
    # What `Duration.FromTimedelta` stores (rounded to microseconds, as a timedelta is).
    span = timedelta(seconds=max(0.0, seconds))
    return duration_pb2.Duration(
        seconds=span.days * 86_400 + span.seconds, nanos=span.microseconds * 1_000
    )


@functools.cache
def _outcome(outcome: Outcome) -> model_pb2.ModelAttemptOutcome.ValueType:
    return model_pb2.ModelAttemptOutcome.Value(f"MODEL_ATTEMPT_OUTCOME_{outcome}")


@functools.cache
def _finish(reason: FinishReason) -> model_pb2.FinishReason.ValueType:
    return model_pb2.FinishReason.Value(f"FINISH_REASON_{reason.value.upper()}")


_usage = wire.tokens_to_proto


def _attempt(attempt: Attempt, currency: str) -> model_pb2.ModelAttempt:
    out = model_pb2.ModelAttempt(
        attempt=attempt.number,
        deployment=attempt.deployment,
        provider=attempt.provider,
        model=attempt.model,
        outcome=_outcome(attempt.outcome),
        status_code=attempt.status_code,
        error_message=attempt.error,
        latency=_duration(attempt.latency_s),
        usage=_usage(attempt.usage),
        started_at=timestamp(attempt.started_at),
        usage_estimated=attempt.usage_estimated,
    )
    if attempt.cost is not None:
        out.cost.CopyFrom(common_pb2.Money(currency=currency, amount=format_amount(attempt.cost)))
    if attempt.retry_after_s is not None:
        out.retry_after.CopyFrom(_duration(attempt.retry_after_s))
    return out


def _totals(outcome: CallOutcome) -> tuple[common_pb2.TokenUsage, common_pb2.Money]:
    attempts = outcome.attempts
    cost = sum((a.cost or Decimal(0) for a in attempts), Decimal(0))
    # Most calls take one attempt: its usage is the total (no sum of fresh objects).
    usage = attempts[0].usage if len(attempts) == 1 else sum((a.usage for a in attempts), Usage())
    return _usage(usage), common_pb2.Money(currency=outcome.currency, amount=format_amount(cost))


def completed_message(outcome: CallSucceeded) -> model_pb2.ModelCallCompleted:
    """`ModelCallCompleted` for an answered call."""
    answer = outcome.completion
    usage, cost = _totals(outcome)
    return model_pb2.ModelCallCompleted(
        content=answer.content,
        tool_calls=[wire.tool_call_to_proto(c) for c in answer.tool_calls],
        finish_reason=_finish(answer.finish_reason),
        usage=usage,
        cost=cost,
        provider=outcome.deployment.provider,
        model=outcome.deployment.model,
        deployment=outcome.deployment.name,
        attempts=[_attempt(a, outcome.currency) for a in outcome.attempts],
        incomplete=answer.incomplete,
        incomplete_reason=answer.incomplete_reason,
        latency=_duration(outcome.latency_s),
    )


def failed_message(outcome: CallFailed) -> model_pb2.ModelCallFailed:
    """`ModelCallFailed` for a call without an answer."""
    usage, cost = _totals(outcome)
    return model_pb2.ModelCallFailed(
        kind=model_pb2.ModelCallErrorKind.Value(f"MODEL_CALL_ERROR_KIND_{outcome.kind}"),
        message=outcome.message,
        retryable=outcome.retryable,
        attempts=[_attempt(a, outcome.currency) for a in outcome.attempts],
        usage=usage,
        cost=cost,
    )


def usage_id(call_id: str, attempt: int) -> str:
    """The deterministic usage id of one attempt: a redelivered call reuses it."""
    return f"{call_id}/attempt/{attempt}"


def usage_records(request: ModelRequest, outcome: CallOutcome) -> list[usage_pb2.UsageRecorded]:
    """One `UsageRecorded` per attempt, failed ones included.

    An attempt skipped because its circuit was open is recorded too (outcome CIRCUIT_OPEN, no
    tokens, nothing sent), so a call's attempt numbers have no gaps in the ledger.
    """
    records = []
    for attempt in outcome.attempts:
        record = usage_pb2.UsageRecorded(
            usage_id=usage_id(request.call_id, attempt.number),
            tenant_id=request.tenant_id,
            run_id=request.run_id,
            step_id=request.step_id,
            call_id=request.call_id,
            kind=usage_pb2.USAGE_KIND_MODEL_ATTEMPT,
            provider=attempt.provider,
            model=attempt.model,
            deployment=attempt.deployment,
            outcome=_outcome(attempt.outcome),
            succeeded=attempt.outcome.value == "SUCCEEDED",
            usage=_usage(attempt.usage),
            # An unknown price is flagged, never recorded as a zero cost.
            priced=attempt.cost is not None,
            price_book_version=outcome.price_book_version,
            latency=_duration(attempt.latency_s),
            occurred_at=timestamp(attempt.started_at),
            attempt=attempt.number,
            route=request.route,
            agent=request.agent,
            status_code=attempt.status_code,
            replay_of=request.replay_of,
            usage_estimated=attempt.usage_estimated,
        )
        if attempt.cost is not None:
            record.cost.CopyFrom(
                common_pb2.Money(currency=outcome.currency, amount=format_amount(attempt.cost))
            )
        records.append(record)
    return records

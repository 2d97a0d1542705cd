"""Each model attempt as an OpenTelemetry span with the GenAI semantic-convention attributes.

The GenAI conventions are still "Development" status: names may change between releases, so
the version followed is pinned here (`SEMCONV_VERSION`, also the tracer's schema URL) and a
test checks every `gen_ai.*` name below against the registry of the pinned
`opentelemetry-semantic-conventions` package. Stepline's own attributes (`stepline.*`) sit
beside them: the deployment, attempt number, outcome and cost the usage ledger records too.
Prompts and answers are never put on spans (they may hold personal data or secrets).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from urllib.parse import urlsplit

from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer, get_tracer

from stepline_router.errors import Outcome
from stepline_router.types import Completion, ModelRequest, Usage

__all__ = [
    "OPERATION",
    "OTEL_PROVIDER_NAMES",
    "SCHEMA_URL",
    "SEMCONV_VERSION",
    "AttemptSpan",
    "attempt_attributes",
    "default_tracer",
    "record_attempt",
]

# The GenAI attribute registry followed: as last published with the core conventions (schema
# 1.44.0, Python package opentelemetry-semantic-conventions 0.66b2) before the GenAI
# conventions moved to their own repository. Development status.
SEMCONV_VERSION = "1.44.0"
SCHEMA_URL = f"https://opentelemetry.io/schemas/{SEMCONV_VERSION}"
OPERATION = "chat"

# Stepline provider names → `gen_ai.provider.name` well-known values; any other provider
# (openai_compatible, a self-hosted server) is named as Stepline names it.
OTEL_PROVIDER_NAMES: Mapping[str, str] = {
    "openai": "openai",
    "anthropic": "anthropic",
    "gemini": "gcp.gemini",
    "azure_openai": "azure.ai.openai",
    "bedrock": "aws.bedrock",
    "openai_responses": "openai",
    "xai": "x_ai",
    "deepseek": "deepseek",
    "groq": "groq",
    "mistral": "mistral_ai",
}

_SUCCEEDED = (Outcome.SUCCEEDED,)


def default_tracer() -> Tracer:
    """The process's tracer for attempt spans (the provider `configure_tracing` installs)."""
    return get_tracer("stepline_router", schema_url=SCHEMA_URL)


@dataclass(frozen=True, slots=True)
class AttemptSpan:
    """What one finished attempt tells its span."""

    route: str
    deployment: str
    provider: str
    model: str
    base_url: str
    number: int
    outcome: Outcome
    started_at: datetime
    latency_s: float
    status_code: int
    usage: Usage
    cost: Decimal | None
    error: str
    answer: Completion | None


def attempt_attributes(
    request: ModelRequest, attempt: AttemptSpan
) -> dict[str, str | int | float | bool | list[str]]:
    """The span attributes of one attempt: GenAI conventions first, then Stepline's own."""
    params = request.params
    attributes: dict[str, str | int | float | bool | list[str]] = {
        "gen_ai.operation.name": OPERATION,
        "gen_ai.provider.name": OTEL_PROVIDER_NAMES.get(attempt.provider, attempt.provider),
        "gen_ai.request.model": attempt.model,
    }
    if params.temperature is not None:
        attributes["gen_ai.request.temperature"] = params.temperature
    if params.top_p is not None:
        attributes["gen_ai.request.top_p"] = params.top_p
    if params.max_output_tokens:
        attributes["gen_ai.request.max_tokens"] = params.max_output_tokens
    if params.stop:
        attributes["gen_ai.request.stop_sequences"] = list(params.stop)
    if params.seed is not None:
        attributes["gen_ai.request.seed"] = params.seed
    if request.stream:
        attributes["gen_ai.request.stream"] = True
    if request.params.response_format.type in ("json_object", "json_schema"):
        attributes["gen_ai.output.type"] = "json"
    if request.run_id:
        attributes["gen_ai.conversation.id"] = request.run_id
    if attempt.base_url:
        server = urlsplit(attempt.base_url)
        if server.hostname:
            attributes["server.address"] = server.hostname
        if server.port:
            attributes["server.port"] = server.port
    usage = attempt.usage
    if attempt.answer is not None or usage.input or usage.output:
        attributes["gen_ai.usage.input_tokens"] = usage.input
        attributes["gen_ai.usage.output_tokens"] = usage.output
        if usage.cached_input:
            attributes["gen_ai.usage.cache_read.input_tokens"] = usage.cached_input
        if usage.cache_write_input:
            attributes["gen_ai.usage.cache_creation.input_tokens"] = usage.cache_write_input
        if usage.reasoning:
            attributes["gen_ai.usage.reasoning.output_tokens"] = usage.reasoning
    if attempt.answer is not None:
        attributes["gen_ai.response.finish_reasons"] = [attempt.answer.finish_reason.value]
        if attempt.answer.model:
            attributes["gen_ai.response.model"] = attempt.answer.model
    if attempt.outcome not in _SUCCEEDED:
        # Low cardinality, as the convention asks: the outcome class, not the message.
        attributes["error.type"] = attempt.outcome.value
    if attempt.status_code:
        attributes["http.response.status_code"] = attempt.status_code
    attributes["stepline.route"] = attempt.route
    attributes["stepline.deployment"] = attempt.deployment
    attributes["stepline.attempt.number"] = attempt.number
    attributes["stepline.attempt.outcome"] = attempt.outcome.value
    # A string: money stays exact; absent when the model is unpriced (never zero).
    if attempt.cost is not None:
        attributes["stepline.attempt.cost"] = str(attempt.cost)
    return attributes


def _nanos(moment: datetime) -> int:
    return int(moment.timestamp() * 1_000_000_000)


def record_attempt(tracer: Tracer, request: ModelRequest, attempt: AttemptSpan) -> None:
    """Emit the finished attempt as a CLIENT span, child of the current span (if any)."""
    span = tracer.start_span(
        f"{OPERATION} {attempt.model}",
        kind=SpanKind.CLIENT,
        start_time=_nanos(attempt.started_at),
    )
    if span.is_recording():
        span.set_attributes(attempt_attributes(request, attempt))
        if attempt.outcome not in _SUCCEEDED:
            span.set_status(Status(StatusCode.ERROR, attempt.error[:200] or attempt.outcome.value))
    span.end(end_time=_nanos(attempt.started_at + timedelta(seconds=attempt.latency_s)))

"""Every model attempt is a span with the OpenTelemetry GenAI attributes, read back in memory."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal

import httpx
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.semconv._incubating.attributes import gen_ai_attributes
from opentelemetry.semconv.attributes import error_attributes
from opentelemetry.trace import SpanKind, StatusCode

from stepline_router.app import build_providers
from stepline_router.clock import SystemClock
from stepline_router.credentials import StaticCredentials
from stepline_router.errors import Outcome
from stepline_router.router import CallSucceeded, Router
from stepline_router.routes import parse_routes
from stepline_router.telemetry import SCHEMA_URL, AttemptSpan, attempt_attributes
from stepline_router.types import Completion, FinishReason, Params, ResponseFormat, Usage
from tests.router.cloud_fakes import azure_completion, gemini_error
from tests.router.fakes import FakeProvider, Reply
from tests.router.integration.test_gemini_azure import BOOK
from tests.router.support import request, weather_tool


async def test_each_attempt_is_a_genai_span(
    servers: tuple[FakeProvider, FakeProvider], client: httpx.AsyncClient
) -> None:
    gemini, azure = servers
    gemini.default = lambda _: gemini_error(503, "UNAVAILABLE", "overloaded")
    azure.queue(
        Reply(
            body=azure_completion(
                None, [("call_1", "get_weather", '{"city": "Oslo"}')], cached_tokens=4
            )
        )
    )
    config = parse_routes(
        "[defaults]\nbackoff_base_s = 0.01\nbackoff_cap_s = 0.02\n"
        f'[deployments.g]\nprovider = "gemini"\nmodel = "gemini-2.5-flash"\n'
        f'base_url = "{gemini.url}"\ncredential_env = "KEY"\n'
        f'[deployments.a]\nprovider = "azure_openai"\nmodel = "gpt-4o-mini"\n'
        f'base_url = "{azure.url}"\ncredential_env = "KEY"\n'
        '[routes.default]\ndeployments = ["g", "a"]\n',
        known_providers=("gemini", "azure_openai"),
    )
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test", schema_url=SCHEMA_URL)
    clock = SystemClock()
    router = Router(
        routes=lambda: config,
        prices=lambda: BOOK,
        providers=build_providers(client, clock),
        credentials=StaticCredentials({"KEY": "k"}),
        clock=clock,
        random=random.Random(3).random,
        tracer=tracer,
    )
    params = Params(temperature=0.2, max_output_tokens=100)
    with tracer.start_as_current_span("process stepline.model.requests.v1") as parent:
        outcome = await router.complete(request(tools=(weather_tool(),), params=params))
    assert isinstance(outcome, CallSucceeded)

    spans = [s for s in exporter.get_finished_spans() if s.name.startswith("chat ")]
    assert [s.name for s in spans] == ["chat gemini-2.5-flash"] * 2 + ["chat gpt-4o-mini"]
    for span in spans:
        assert span.kind is SpanKind.CLIENT
        assert span.parent is not None
        assert span.parent.span_id == parent.get_span_context().span_id
        attributes = dict(span.attributes or {})
        assert attributes["gen_ai.operation.name"] == "chat"
        assert attributes["gen_ai.request.temperature"] == 0.2
        assert attributes["gen_ai.request.max_tokens"] == 100
        assert attributes["gen_ai.conversation.id"] == "run-1"
        assert attributes["server.address"] == "127.0.0.1"
    failed = dict(spans[0].attributes or {})
    assert failed["gen_ai.provider.name"] == "gcp.gemini"
    assert failed["gen_ai.request.model"] == "gemini-2.5-flash"
    assert failed["error.type"] == "OVERLOADED"
    assert failed["http.response.status_code"] == 503
    assert "gen_ai.usage.input_tokens" not in failed  # nothing was counted
    assert spans[0].status.status_code is StatusCode.ERROR
    assert [dict(s.attributes or {})["stepline.attempt.number"] for s in spans] == [1, 2, 3]

    answered = dict(spans[2].attributes or {})
    assert spans[2].status.status_code is StatusCode.UNSET
    assert "error.type" not in answered
    assert answered["gen_ai.provider.name"] == "azure.ai.openai"
    assert answered["gen_ai.response.model"] == "gpt-4o-mini-2024-07-18"
    assert answered["gen_ai.response.finish_reasons"] == ("tool_calls",)
    assert answered["gen_ai.usage.input_tokens"] == 11
    assert answered["gen_ai.usage.output_tokens"] == 7
    assert answered["gen_ai.usage.cache_read.input_tokens"] == 4
    assert answered["stepline.deployment"] == "a"
    cost = outcome.attempts[-1].cost
    assert cost is not None
    assert Decimal(str(answered["stepline.attempt.cost"])) == cost
    assert spans[2].instrumentation_scope is not None
    assert spans[2].instrumentation_scope.schema_url == SCHEMA_URL


def test_genai_names_are_the_pinned_registrys() -> None:
    """Every gen_ai.* name the router writes exists in the pinned semantic-conventions package."""
    known = {
        value
        for name, value in vars(gen_ai_attributes).items()
        if name.startswith("GEN_AI_") and isinstance(value, str)
    }
    params = Params(
        temperature=0.1,
        top_p=0.5,
        max_output_tokens=9,
        stop=("x",),
        seed=1,
        response_format=ResponseFormat("json_object"),
    )
    attributes = attempt_attributes(
        replace(request(params=params), stream=True),
        AttemptSpan(
            route="default",
            deployment="d",
            provider="anthropic",
            model="claude-haiku-4-5",
            base_url="https://api.anthropic.com",
            number=1,
            outcome=Outcome.SUCCEEDED,
            started_at=datetime(2026, 12, 1, tzinfo=UTC),
            latency_s=0.5,
            status_code=200,
            usage=Usage(100, 20, cached_input=50, cache_write_input=10, reasoning=5),
            cost=Decimal("0.001"),
            error="",
            answer=Completion("hi", finish_reason=FinishReason.STOP, model="claude-haiku-4-5"),
        ),
    )
    used = {name for name in attributes if name.startswith("gen_ai.")}
    assert len(used) >= 17
    assert used <= known, used - known
    assert error_attributes.ERROR_TYPE == "error.type"

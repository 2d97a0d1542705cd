"""Gemini request bodies against the SDK's types, Gemini error mapping, Azure deployment URLs."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime

import httpx
import pytest
from google.genai import types as gtypes

from stepline_router.clock import SystemClock
from stepline_router.errors import Outcome, ProviderError, disposition
from stepline_router.providers.azure import AzureOpenAIProvider, azure_error, azure_url
from stepline_router.providers.gemini import gemini_body, gemini_error, parse_gemini_response
from stepline_router.routes import Deployment
from stepline_router.types import FinishReason, Params, ResponseFormat, ToolChoice
from tests.router.cloud_fakes import gemini_response
from tests.router.support import request, weather_tool

NOW = datetime(2026, 12, 1, tzinfo=UTC)
GEMINI = Deployment("g", "gemini", "gemini-2.5-flash")


def test_generation_config_json_schema_and_forced_tool_match_the_sdk() -> None:
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "string"}},
        "required": ["answer"],
        "additionalProperties": False,
    }
    params = Params(
        temperature=0.3,
        top_p=0.9,
        max_output_tokens=256,
        stop=("END",),
        seed=5,
        tool_choice=ToolChoice.REQUIRED,
        tool_name="get_weather",
        response_format=ResponseFormat("json_schema", schema, "answer", True),
    )
    body = gemini_body(GEMINI, request(tools=(weather_tool(),), params=params))
    config = gtypes.GenerationConfig.model_validate(body["generationConfig"])
    assert config.max_output_tokens == 256
    assert config.stop_sequences == ["END"]
    assert config.response_mime_type == "application/json"
    assert config.response_json_schema == schema
    calling = gtypes.ToolConfig.model_validate(body["toolConfig"]).function_calling_config
    assert calling is not None
    assert calling.mode == gtypes.FunctionCallingConfigMode.ANY
    assert calling.allowed_function_names == ["get_weather"]
    none = gemini_body(
        GEMINI, request(tools=(weather_tool(),), params=Params(tool_choice=ToolChoice.NONE))
    )
    assert none["toolConfig"]["functionCallingConfig"]["mode"] == "NONE"
    plain = gemini_body(GEMINI, request())
    assert "generationConfig" not in plain
    assert "tools" not in plain


def test_json_object_output_and_extra_params_pass_through() -> None:
    params = Params(
        response_format=ResponseFormat("json_object"),
        extra={"safetySettings": [{"category": "HARM_CATEGORY_HATE_SPEECH", "threshold": "OFF"}]},
    )
    body = gemini_body(GEMINI, replace(request(), params=params))
    assert body["generationConfig"] == {"responseMimeType": "application/json"}
    gtypes.SafetySetting.model_validate(body["safetySettings"][0])


def _body(status: int, rpc: str, message: str, **extra: object) -> bytes:
    return json.dumps(
        {"error": {"code": status, "message": message, "status": rpc, **extra}}
    ).encode()


@pytest.mark.parametrize(
    ("status", "rpc", "message", "outcome"),
    [
        (429, "RESOURCE_EXHAUSTED", "quota", Outcome.RATE_LIMITED),
        (503, "UNAVAILABLE", "overloaded", Outcome.OVERLOADED),
        (500, "INTERNAL", "oops", Outcome.SERVER_ERROR),
        (504, "DEADLINE_EXCEEDED", "slow", Outcome.TIMED_OUT),
        (403, "PERMISSION_DENIED", "key", Outcome.AUTH_FAILED),
        (400, "INVALID_ARGUMENT", "API key not valid", Outcome.BAD_REQUEST),
        (
            400,
            "INVALID_ARGUMENT",
            "The input token count (2000001) exceeds the maximum number of tokens allowed",
            Outcome.CONTEXT_TOO_LONG,
        ),
        (404, "NOT_FOUND", "models/x is not found", Outcome.BAD_REQUEST),
    ],
)
def test_gemini_errors_map_to_the_taxonomy(
    status: int, rpc: str, message: str, outcome: Outcome
) -> None:
    error = gemini_error(status, {}, _body(status, rpc, message), NOW)
    assert error.outcome is outcome
    assert rpc in error.message


def test_gemini_wait_prefers_the_header_then_retry_info() -> None:
    details = [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "17s"}]
    body = _body(429, "RESOURCE_EXHAUSTED", "quota", details=details)
    assert gemini_error(429, {}, body, NOW).retry_after_s == 17
    assert gemini_error(429, {"retry-after": "3"}, body, NOW).retry_after_s == 3
    # a list-wrapped body (as some Google front ends send) and a non-JSON one
    listed = json.dumps([json.loads(body)]).encode()
    assert gemini_error(429, {}, listed, NOW).retry_after_s == 17
    assert gemini_error(502, {}, b"<html>bad gateway</html>", NOW).outcome is Outcome.SERVER_ERROR


@pytest.mark.parametrize(
    ("base_url", "expected"),
    [
        (
            "https://res.openai.azure.com",
            "https://res.openai.azure.com/openai/deployments/gpt-4o/chat/completions"
            "?api-version=2024-10-21",
        ),
        (
            "https://res.openai.azure.com/openai/deployments/prod-4o?api-version=2025-01-01",
            "https://res.openai.azure.com/openai/deployments/prod-4o/chat/completions"
            "?api-version=2025-01-01",
        ),
    ],
)
def test_azure_deployment_urls(base_url: str, expected: str) -> None:
    assert azure_url(Deployment("a", "azure_openai", "gpt-4o", base_url=base_url)) == expected


def test_azure_errors_other_than_the_filter_keep_the_openai_mapping() -> None:
    body = json.dumps({"error": {"code": "DeploymentNotFound", "message": "no such"}}).encode()
    assert azure_error(404, {}, body, NOW).outcome is Outcome.BAD_REQUEST
    filtered = json.dumps(
        {"error": {"code": "content_filter", "message": "filtered", "innererror": {}}}
    ).encode()
    refused = azure_error(400, {}, filtered, NOW)
    assert refused.outcome is Outcome.CONTENT_REFUSED
    assert disposition(refused.outcome).value == "fail_now"


async def test_azure_sends_the_output_cap_its_api_version_knows() -> None:
    async with httpx.AsyncClient() as http:
        provider = AzureOpenAIProvider(http, SystemClock().now)
        capped = request(params=Params(max_output_tokens=50))
        for version, field in (
            ("2024-10-21", "max_completion_tokens"),
            ("2024-06-01", "max_tokens"),
        ):
            deployment = Deployment(
                "a", "azure_openai", "gpt-4o", base_url=f"https://r.example?api-version={version}"
            )
            _, _, body = provider._request(deployment, capped, "k", stream=False)
            assert body[field] == 50


def test_gemini_answers_map_to_completions_or_classified_failures() -> None:
    thinking = gemini_response("four", thoughts=9, finish="MAX_TOKENS")
    gtypes.GenerateContentResponse.model_validate(thinking)
    completion, _ = parse_gemini_response(thinking)
    assert completion.content == "four"  # the thought summary is not the answer
    assert completion.finish_reason is FinishReason.LENGTH
    assert completion.usage.reasoning == 9
    named = gemini_response(None, [("f", {"a": 1})], call_ids=["fc-7"], signature="c2ln")
    completion, signatures = parse_gemini_response(named)
    assert completion.tool_calls[0].call_id == "fc-7"  # Gemini's own id is kept
    assert signatures == {"fc-7": "c2ln"}
    blocked = {
        "promptFeedback": {"blockReason": "PROHIBITED_CONTENT"},
        "usageMetadata": {"promptTokenCount": 8, "totalTokenCount": 8},
    }
    gtypes.GenerateContentResponse.model_validate(blocked)
    with pytest.raises(ProviderError) as refused:
        parse_gemini_response(blocked)
    assert refused.value.outcome is Outcome.CONTENT_REFUSED
    assert "PROHIBITED_CONTENT" in refused.value.message
    assert refused.value.usage.input == 8
    with pytest.raises(ProviderError) as botched:
        parse_gemini_response(gemini_response(None, finish="MALFORMED_FUNCTION_CALL"))
    assert botched.value.outcome is Outcome.MALFORMED_RESPONSE
    with pytest.raises(ProviderError) as shapeless:
        parse_gemini_response({"candidates": "nope"})
    assert shapeless.value.outcome is Outcome.MALFORMED_RESPONSE


def test_a_google_key_echoed_in_an_error_is_redacted() -> None:
    key = "AIzaSyA-0123456789abcdefghijklmnopqrstu"
    body = _body(400, "INVALID_ARGUMENT", f"API key {key} not valid. Please pass a valid API key.")
    error = gemini_error(400, {}, body, NOW)
    assert key not in error.message
    assert "***" in error.message

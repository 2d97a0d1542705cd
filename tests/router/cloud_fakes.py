"""Gemini and Azure OpenAI wire bodies for the local provider servers of the router tests."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from tests.router.fakes import Reply, openai_chunks, openai_completion

__all__ = [
    "azure_completion",
    "azure_content_filter_error",
    "azure_filtered_chunks",
    "gemini_chunks",
    "gemini_error",
    "gemini_response",
]

_FILTERS_SAFE = {
    "hate": {"filtered": False, "severity": "safe"},
    "self_harm": {"filtered": False, "severity": "safe"},
    "sexual": {"filtered": False, "severity": "safe"},
    "violence": {"filtered": False, "severity": "safe"},
}


def _usage(prompt: int, output: int, cached: int, thoughts: int) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "promptTokenCount": prompt,
        "candidatesTokenCount": output,
        "totalTokenCount": prompt + output + thoughts,
    }
    if cached:
        usage["cachedContentTokenCount"] = cached
    if thoughts:
        usage["thoughtsTokenCount"] = thoughts
    return usage


def gemini_response(
    text: str | None = "hello",
    calls: Iterable[tuple[str, dict[str, Any]]] = (),
    *,
    finish: str = "STOP",
    prompt: int = 40,
    output: int = 12,
    cached: int = 0,
    thoughts: int = 0,
    signature: str | None = None,
    call_ids: Iterable[str] = (),
    model: str = "gemini-2.5-flash",
    ratings: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A `GenerateContentResponse` body (REST JSON, camelCase)."""
    parts: list[dict[str, Any]] = []
    if thoughts:
        parts.append({"text": "thinking about it", "thought": True})
    if text:
        parts.append({"text": text})
    ids = list(call_ids)
    for number, (name, args) in enumerate(calls):
        call: dict[str, Any] = {"name": name, "args": args}
        if number < len(ids):
            call["id"] = ids[number]
        part: dict[str, Any] = {"functionCall": call}
        if signature and number == 0:
            part["thoughtSignature"] = signature
        parts.append(part)
    candidate: dict[str, Any] = {
        "content": {"role": "model", "parts": parts},
        "finishReason": finish,
        "index": 0,
    }
    if ratings is not None:
        candidate["safetyRatings"] = ratings
    return {
        "candidates": [candidate],
        "usageMetadata": _usage(prompt, output, cached, thoughts),
        "modelVersion": model,
        "responseId": "resp-1",
    }


def gemini_chunks(
    text: Iterable[str] = (),
    calls: Iterable[tuple[str, dict[str, Any]]] = (),
    *,
    prompt: int = 40,
    output: int = 12,
    cached: int = 0,
    thoughts: int = 0,
    finish: str = "STOP",
    model: str = "gemini-2.5-flash",
) -> list[str]:
    """SSE events of `streamGenerateContent?alt=sse`: text pieces, calls, then the finish."""

    def chunk(parts: list[dict[str, Any]], **extra: Any) -> str:
        body = {
            "candidates": [{"content": {"role": "model", "parts": parts}, "index": 0, **extra}],
            "usageMetadata": _usage(prompt, 0, cached, 0),
            "modelVersion": model,
            "responseId": "resp-s",
        }
        return "data: " + json.dumps(body)

    events = [chunk([{"text": piece}]) for piece in text]
    events += [chunk([{"functionCall": {"name": n, "args": a}}]) for n, a in calls]
    last = json.loads(chunk([{"text": ""}], finishReason=finish)[6:])
    last["usageMetadata"] = _usage(prompt, output, cached, thoughts)
    events.append("data: " + json.dumps(last))
    return events


def gemini_error(
    status: int, rpc_status: str, message: str, *, retry_delay: str | None = None
) -> Reply:
    """A Gemini error answer (`{"error": {"code", "message", "status", "details"}}`)."""
    error: dict[str, Any] = {"code": status, "message": message, "status": rpc_status}
    if retry_delay is not None:
        error["details"] = [
            {
                "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                "violations": [{"quotaMetric": "generate_content_free_tier_requests"}],
            },
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": retry_delay},
        ]
    return Reply(status, {"error": error})


def azure_completion(
    content: str | None = "hello",
    tool_calls: Iterable[tuple[str, str, str]] = (),
    *,
    finish: str | None = None,
    filtered: dict[str, str] | None = None,
    cached_tokens: int = 0,
    reasoning_tokens: int = 0,
) -> dict[str, Any]:
    """An Azure chat completion: OpenAI's body plus content filter results."""
    body = openai_completion(content, tool_calls, cached_tokens=cached_tokens)
    body["model"] = "gpt-4o-mini-2024-07-18"
    body["usage"]["completion_tokens_details"]["reasoning_tokens"] = reasoning_tokens
    results: dict[str, Any] = {k: dict(v) for k, v in _FILTERS_SAFE.items()}
    for category, severity in (filtered or {}).items():
        results[category] = {"filtered": True, "severity": severity}
    choice = body["choices"][0]
    choice["content_filter_results"] = results
    if finish is not None:
        choice["finish_reason"] = finish
    body["prompt_filter_results"] = [
        {"prompt_index": 0, "content_filter_results": dict(_FILTERS_SAFE)}
    ]
    return body


def azure_content_filter_error(categories: dict[str, str]) -> Reply:
    """Azure's 400 for a prompt its content filter refused."""
    result: dict[str, Any] = {k: dict(v) for k, v in _FILTERS_SAFE.items()}
    for category, severity in categories.items():
        result[category] = {"filtered": True, "severity": severity}
    return Reply(
        400,
        {
            "error": {
                "message": "The response was filtered due to the prompt triggering Azure "
                "OpenAI's content management policy.",
                "type": None,
                "param": "prompt",
                "code": "content_filter",
                "status": 400,
                "innererror": {
                    "code": "ResponsibleAIPolicyViolation",
                    "content_filter_result": result,
                },
            }
        },
    )


def azure_filtered_chunks(text: Iterable[str], category: str) -> list[str]:
    """A streamed answer the content filter stops (finish_reason content_filter)."""
    events = openai_chunks(text)
    stop = json.loads(events[-3][6:])
    stop["choices"][0]["finish_reason"] = "content_filter"
    stop["choices"][0]["content_filter_results"] = {
        **_FILTERS_SAFE,
        category: {"filtered": True, "severity": "high"},
    }
    events[-3] = "data: " + json.dumps(stop)
    return events

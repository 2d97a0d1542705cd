"""OpenAI Responses API bodies and stream events for the loopback test servers."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

__all__ = ["response_body", "response_error_event", "response_events", "response_failed"]

_CREATED = 1_790_000_000


def _usage(
    input_tokens: int, output_tokens: int, cached: int, written: int, reasoning: int
) -> dict[str, Any]:
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": written},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": input_tokens + output_tokens,
    }


def _message(text: str, refusal: bool = False) -> dict[str, Any]:
    part = (
        {"type": "refusal", "refusal": text}
        if refusal
        else {"type": "output_text", "text": text, "annotations": []}
    )
    return {
        "type": "message",
        "id": "msg_1",
        "role": "assistant",
        "status": "completed",
        "content": [part],
    }


def _call(index: int, call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": f"fc_{index}",
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": "completed",
    }


def response_body(
    text: str = "hello",
    calls: Iterable[tuple[str, str, str]] = (),
    *,
    model: str = "gpt-4o-mini",
    status: str = "completed",
    incomplete: str | None = None,
    refusal: bool = False,
    input_tokens: int = 11,
    output_tokens: int = 7,
    cached: int = 0,
    written: int = 0,
    reasoning: int = 0,
) -> dict[str, Any]:
    """A Responses API response object."""
    output: list[dict[str, Any]] = []
    if reasoning:
        output.append({"type": "reasoning", "id": "rs_1", "summary": []})
    if text:
        output.append(_message(text, refusal))
    output += [_call(i, c, n, a) for i, (c, n, a) in enumerate(calls)]
    return {
        "id": "resp_1",
        "object": "response",
        "created_at": _CREATED,
        "model": model,
        "status": status,
        "error": None,
        "incomplete_details": {"reason": incomplete} if incomplete else None,
        "instructions": None,
        "output": output,
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "temperature": 1.0,
        "top_p": 1.0,
        "usage": _usage(input_tokens, output_tokens, cached, written, reasoning),
    }


def _event(kind: str, number: int, **fields: Any) -> str:
    body = {"type": kind, "sequence_number": number, **fields}
    return f"event: {kind}\ndata: " + json.dumps(body)


def response_events(
    text: Iterable[str] = (),
    call: tuple[str, str, list[str]] | None = None,
    *,
    status: str = "completed",
    incomplete: str | None = None,
    input_tokens: int = 11,
    output_tokens: int = 7,
    cached: int = 0,
    written: int = 0,
    reasoning: int = 0,
) -> list[str]:
    """SSE events of a streamed response: created … deltas … completed (or incomplete)."""
    pieces = list(text)
    final = response_body(
        "".join(pieces),
        [(call[0], call[1], "".join(call[2]))] if call else (),
        status=status,
        incomplete=incomplete,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cached=cached,
        written=written,
        reasoning=reasoning,
    )
    started = {**final, "status": "in_progress", "output": [], "usage": None}
    events = [_event("response.created", 0, response=started)]
    index = 0
    if pieces:
        added = {**_message(""), "status": "in_progress", "content": []}
        events.append(_event("response.output_item.added", len(events), output_index=0, item=added))
        events += [
            _event(
                "response.output_text.delta",
                len(events) + n,
                item_id="msg_1",
                output_index=0,
                content_index=0,
                delta=piece,
                logprobs=[],
            )
            for n, piece in enumerate(pieces)
        ]
        index = 1
    if call is not None:
        call_id, name, parts = call
        item = {**_call(index, call_id, name, ""), "status": "in_progress"}
        events.append(
            _event("response.output_item.added", len(events), output_index=index, item=item)
        )
        events += [
            _event(
                "response.function_call_arguments.delta",
                len(events) + n,
                item_id=item["id"],
                output_index=index,
                delta=part,
            )
            for n, part in enumerate(parts)
        ]
        events.append(
            _event(
                "response.function_call_arguments.done",
                len(events),
                item_id=item["id"],
                output_index=index,
                name=name,
                arguments="".join(parts),
            )
        )
    kind = "response.completed" if status == "completed" else f"response.{status}"
    events.append(_event(kind, len(events), response=final))
    return events


def response_failed(code: str, message: str) -> str:
    """A `response.failed` event."""
    failed = {
        **response_body(""),
        "status": "failed",
        "usage": None,
        "error": {"code": code, "message": message},
    }
    return _event("response.failed", 1, response=failed)


def response_error_event(code: str, message: str) -> str:
    """A top-level `error` event."""
    return _event("error", 1, code=code, message=message, param=None)

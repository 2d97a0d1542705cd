"""The OpenAI and Anthropic wire conversions at the gateway's door."""

from __future__ import annotations

import json
from typing import Any

import pytest

from stepline_router.anthropic_wire import EventWriter, parse_messages_request, version_supported
from stepline_router.openai_wire import ChunkWriter, parse_chat_request
from stepline_router.stream import TextDelta, ToolCallDelta
from stepline_router.types import Role, ToolChoice
from stepline_router.wire import WireError


def _events(raw: bytes) -> list[tuple[str, Any]]:
    out = []
    for block in raw.decode().strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        out.append((lines.get("event", ""), json.loads(lines["data"])))
    return out


def test_openai_request_with_tools_and_named_choice() -> None:
    parsed = parse_chat_request(
        {
            "model": "default",
            "messages": [
                {"role": "developer", "content": [{"type": "text", "text": "be brief"}]},
                {"role": "user", "content": "weather?"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "w", "arguments": '{"city":"Oslo"}'},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "c1", "content": "cold"},
            ],
            "tools": [{"type": "function", "function": {"name": "w", "parameters": {}}}],
            "tool_choice": {"type": "function", "function": {"name": "w"}},
            "max_completion_tokens": 64,
            "stop": "END",
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    )
    request = parsed.request
    assert [m.role for m in request.messages] == [Role.SYSTEM, Role.USER, Role.ASSISTANT, Role.TOOL]
    assert request.messages[2].tool_calls[0].arguments_json == '{"city":"Oslo"}'
    assert (request.params.tool_choice, request.params.tool_name) == (ToolChoice.REQUIRED, "w")
    assert (request.params.max_output_tokens, request.params.stop) == (64, ("END",))
    assert parsed.include_usage


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": [{"role": "user", "content": "x"}]}, "model"),
        ({"model": "m", "messages": []}, "messages"),
        ({"model": "m", "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        (
            {"model": "m", "messages": [{"role": "tool", "content": "x"}]},
            "messages[0].tool_call_id",
        ),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 2}, "n"),
        (
            {
                "model": "m",
                "messages": [{"role": "user", "content": [{"type": "input_audio"}]}],
            },
            "messages[0].content[0].type",
        ),
        (
            {
                "model": "m",
                "messages": [{"role": "user", "content": [{"type": "image_url"}]}],
            },
            "messages[0].content[0].image_url",
        ),
        (
            {
                "model": "m",
                "messages": [
                    {
                        "role": "assistant",
                        "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}],
                    }
                ],
            },
            "messages[0].content[0].type",
        ),
    ],
)
def test_openai_bad_requests_name_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(WireError) as error:
        parse_chat_request(body)
    assert error.value.param == param


def test_openai_stream_names_a_tool_call_once_then_streams_its_arguments() -> None:
    writer = ChunkWriter("chatcmpl-1", 0, "primary", include_usage=False)
    first = _events(writer.delta(ToolCallDelta(0, "c1", "w", "")))[0][1]
    later = _events(writer.delta(ToolCallDelta(0, arguments='{"a"')))[0][1]
    assert first["choices"][0]["delta"]["tool_calls"][0] == {
        "index": 0,
        "id": "c1",
        "type": "function",
        "function": {"name": "w", "arguments": ""},
    }
    assert later["choices"][0]["delta"]["tool_calls"][0] == {
        "index": 0,
        "function": {"arguments": '{"a"'},
    }


def test_anthropic_tool_results_come_before_new_user_text() -> None:
    request = parse_messages_request(
        {
            "model": "claude",
            "max_tokens": 10,
            "system": [{"type": "text", "text": "be brief"}],
            "messages": [
                {"role": "user", "content": "weather?"},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "thinking", "thinking": "…"},
                        {"type": "tool_use", "id": "t1", "name": "w", "input": {"city": "Oslo"}},
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "and tomorrow?"},
                        {"type": "tool_result", "tool_use_id": "t1", "content": "cold"},
                    ],
                },
            ],
            "tool_choice": {"type": "any"},
        }
    )
    assert [(m.role, m.content) for m in request.messages] == [
        (Role.SYSTEM, "be brief"),
        (Role.USER, "weather?"),
        (Role.ASSISTANT, ""),
        (Role.TOOL, "cold"),
        (Role.USER, "and tomorrow?"),
    ]
    assert json.loads(request.messages[2].tool_calls[0].arguments_json) == {"city": "Oslo"}
    assert request.params.tool_choice is ToolChoice.REQUIRED
    with pytest.raises(WireError, match="max_tokens"):
        parse_messages_request({"model": "claude", "messages": [{"role": "user", "content": "x"}]})


def test_anthropic_stream_opens_and_closes_one_block_per_kind_of_output() -> None:
    writer = EventWriter("msg_1", "claude")
    raw = (
        writer.opened()
        + writer.delta(TextDelta("Let me "))
        + writer.delta(TextDelta("check."))
        + writer.delta(ToolCallDelta(0, "t1", "w"))
        + writer.delta(ToolCallDelta(0, arguments='{"city":'))
    )
    kinds = [(name, data.get("index")) for name, data in _events(raw)]
    assert kinds == [
        ("message_start", None),
        ("content_block_start", 0),
        ("content_block_delta", 0),
        ("content_block_delta", 0),
        ("content_block_stop", 0),
        ("content_block_start", 1),
        ("content_block_delta", 1),
    ]


def test_anthropic_versions() -> None:
    assert version_supported("2023-06-01")
    assert version_supported("2026-10-21")
    assert not version_supported(None)
    assert not version_supported("2022-01-01")
    assert not version_supported("latest")

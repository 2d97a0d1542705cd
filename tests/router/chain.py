"""The failover chain across wire formats, shared by the chain tests: one hosted hop per
provider (how it fails, how it answers, how it carries the transcript's tool result)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from stepline_router.credentials import StaticCredentials
from stepline_router.types import Message, Role, ToolCall
from tests.router.bedrock_fakes import (
    KEY_ID,
    REGION,
    SECRET_KEY,
    bedrock_exception,
    converse_output,
    sigv4_guard,
)
from tests.router.cloud_fakes import gemini_error, gemini_response
from tests.router.fakes import (
    FakeProvider,
    Received,
    Reply,
    anthropic_error,
    anthropic_message,
    openai_completion,
    openai_error,
)
from tests.router.responses_fakes import response_body

__all__ = ["CALL", "CREDENTIALS", "HOPS", "NATIVE_RESULTS", "TRANSCRIPT", "Hop", "start_hops"]

CREDENTIALS = StaticCredentials(
    {
        "OPENAI_API_KEY": "sk-openai",
        "ANTHROPIC_API_KEY": "sk-ant",
        "GEMINI_API_KEY": "AIza-test",
        "AWS_ACCESS_KEY_ID": KEY_ID,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_REGION": REGION,
    }
)
CALL = ToolCall("call_7", "get_weather", '{"city": "Oslo"}')


@dataclass(frozen=True)
class Hop:
    """One deployment of the chain: its wire format, how it fails, how it answers."""

    provider: str
    model: str
    catalog_id: str
    credential: str
    down: Callable[[Received], Reply]
    answer: Reply
    # The tool result of the transcript, as this wire format carries it.
    tool_result: Callable[[Any], Any]


HOPS = (
    Hop(
        "openai",
        "gpt-4o-mini",
        "openai",
        "OPENAI_API_KEY",
        lambda _: openai_error(503, "overloaded", "server_error"),
        Reply(body=openai_completion(None, [(CALL.call_id, CALL.name, CALL.arguments_json)])),
        lambda body: body["messages"][-1],
    ),
    Hop(
        "anthropic",
        "claude-haiku-4-5",
        "anthropic",
        "ANTHROPIC_API_KEY",
        lambda _: anthropic_error(529, "overloaded_error", "Overloaded"),
        Reply(body=anthropic_message("", [(CALL.call_id, CALL.name, {"city": "Oslo"})])),
        lambda body: body["messages"][-1]["content"][0],
    ),
    Hop(
        "gemini",
        "gemini-2.5-flash",
        "google",
        "GEMINI_API_KEY",
        lambda _: gemini_error(503, "UNAVAILABLE", "The model is overloaded."),
        Reply(body=gemini_response(None, [(CALL.name, {"city": "Oslo"})], call_ids=[CALL.call_id])),
        lambda body: body["contents"][-1]["parts"][0],
    ),
    Hop(
        "bedrock",
        "amazon.nova-lite-v1:0",
        "aws",
        "AWS_SECRET_ACCESS_KEY",
        lambda _: bedrock_exception(503, "ServiceUnavailableException", "unavailable"),
        Reply(body=converse_output("", [(CALL.call_id, CALL.name, {"city": "Oslo"})])),
        lambda body: body["messages"][-1]["content"][0],
    ),
    Hop(
        "openai_responses",
        "o4-mini",
        "openai",
        "OPENAI_API_KEY",
        lambda _: openai_error(500, "boom", "server_error"),
        Reply(body=response_body("", [(CALL.call_id, CALL.name, CALL.arguments_json)])),
        lambda body: body["input"][-1],
    ),
)
NATIVE_RESULTS = (
    {"role": "tool", "tool_call_id": "call_0", "content": "rain"},
    {"type": "tool_result", "tool_use_id": "call_0", "content": "rain"},
    {"functionResponse": {"name": "get_weather", "response": {"output": "rain"}}},
    {"toolResult": {"toolUseId": "call_0", "content": [{"text": "rain"}]}},
    {"type": "function_call_output", "call_id": "call_0", "output": "rain"},
)


# The conversation every hop gets: a tool was called and answered; the model goes on.
TRANSCRIPT = (
    Message(Role.SYSTEM, "be brief"),
    Message(Role.USER, "weather in Rome, then Oslo?"),
    Message(Role.ASSISTANT, "", (ToolCall("call_0", "get_weather", '{"city":"Rome"}'),)),
    Message(Role.TOOL, "rain", tool_call_id="call_0"),
)


async def start_hops(hops: tuple[Hop, ...]) -> list[FakeProvider]:
    """One loopback server per hop; the Bedrock one checks signatures."""
    servers = [await FakeProvider().start() for _ in hops]
    for server, hop in zip(servers, hops, strict=True):
        if hop.provider == "bedrock":
            server.guard = sigv4_guard(server.url)
    return servers

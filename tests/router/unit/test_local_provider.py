"""The offline `local` provider: arguments lifted from text, lookups first, grounded replies."""

from __future__ import annotations

import json

from stepline_router.providers.local import respond
from stepline_router.types import Message, ModelRequest, Role, ToolCall, ToolSpec

FIND = ToolSpec(
    "crm_find_customer",
    "Find a customer in the CRM by e-mail address.",
    {
        "type": "object",
        "properties": {"email": {"type": "string"}},
        "required": ["email"],
    },
)
SEARCH = ToolSpec(
    "search_documents",
    "Search the knowledge base (past support tickets) by keywords.",
    {
        "type": "object",
        "properties": {
            "query": {"type": "string"},
            "top_k": {"type": "integer", "minimum": 1, "maximum": 20},
        },
        "required": ["query"],
    },
)
REPLY = ToolSpec(
    "send_reply",
    "Send a reply email to the customer of a support ticket.",
    {
        "type": "object",
        "properties": {
            "ticket_id": {"type": "string", "pattern": "^T-[0-9]+$"},
            "body": {"type": "string", "maxLength": 5000},
        },
        "required": ["ticket_id", "body"],
    },
)
GOAL = (
    'Ticket T-1012 from ops@acme.example: "My order O-5004 is stuck in processing." Find the '
    "customer in the CRM, search the knowledge base of support tickets, and send the reply."
)
CUSTOMER = json.dumps(
    {"columns": ["customer_id", "name", "email"], "rows": [[1, "Acme Corp", "ops@acme.example"]]}
)
TICKETS = json.dumps(
    {
        "query": "order stuck",
        "results": [
            {
                "source_id": "T-1012.md",
                "title": "T-1012: Order stuck in processing",
                "snippet": "The warehouse reported a stock shortage. Next step: offer the "
                "customer a partial shipment now or a full refund.",
            }
        ],
    }
)


def _request(*messages: Message) -> ModelRequest:
    return ModelRequest(
        "c1",
        "acme",
        "default",
        (Message(Role.SYSTEM, "support"), Message(Role.USER, GOAL), *messages),
        tools=(FIND, SEARCH, REPLY),
    )


def test_lookups_come_first_with_arguments_lifted_from_the_text() -> None:
    completion = respond(_request())
    calls = {c.name: json.loads(c.arguments_json) for c in completion.tool_calls}
    # The writing tool waits until the lookups are back.
    assert set(calls) == {"crm_find_customer", "search_documents"}
    assert calls["crm_find_customer"] == {"email": "ops@acme.example"}
    # 1012 and 5004 are ids, not a top_k the schema (maximum 20) would accept.
    assert "top_k" not in calls["search_documents"]


def test_the_reply_is_written_from_the_lookups_then_the_run_is_answered() -> None:
    first = respond(_request()).tool_calls
    results = [
        Message(
            Role.TOOL,
            CUSTOMER if c.name == "crm_find_customer" else TICKETS,
            tool_call_id=c.call_id,
        )
        for c in first
    ]
    turn = [Message(Role.ASSISTANT, "", tool_calls=first), *results]
    second = respond(_request(*turn))
    assert [c.name for c in second.tool_calls] == ["send_reply"]
    arguments = json.loads(second.tool_calls[0].arguments_json)
    assert arguments["ticket_id"] == "T-1012"
    body = arguments["body"]
    assert body.startswith("Hello Acme Corp,")
    assert "My order O-5004 is stuck in processing" in body
    assert "offer the customer a partial shipment now or a full refund" in body
    assert "T-1012" in body  # the source it is based on

    sent = Message(Role.TOOL, '{"status": "sent"}', tool_call_id=second.tool_calls[0].call_id)
    final = respond(
        _request(*turn, Message(Role.ASSISTANT, "", tool_calls=second.tool_calls), sent)
    )
    assert final.tool_calls == ()
    assert "Sent with send_reply" in final.content
    assert '{"status": "sent"}' in final.content


def test_a_writing_tool_alone_is_called_at_once_and_lengths_are_respected() -> None:
    short = ToolSpec(
        "send_reply",
        "Send a reply to a support ticket.",
        {
            "type": "object",
            "properties": {
                "ticket_id": {"type": "string", "pattern": "^T-[0-9]+$"},
                "body": {"type": "string", "maxLength": 40},
            },
            "required": ["ticket_id", "body"],
        },
    )
    request = ModelRequest(
        "c1",
        "acme",
        "default",
        (Message(Role.USER, "Send a reply on ticket T-7 saying we shipped it."),),
        tools=(short,),
    )
    (call,) = respond(request).tool_calls
    arguments = json.loads(call.arguments_json)
    assert arguments["ticket_id"] == "T-7"
    assert 0 < len(arguments["body"]) <= 40


def test_same_input_same_output() -> None:
    assert respond(_request()) == respond(_request())
    assert isinstance(respond(_request()).tool_calls[0], ToolCall)

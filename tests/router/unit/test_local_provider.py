"""The offline `local` provider: arguments lifted from text, lookups first, grounded replies."""

from __future__ import annotations

import json
from dataclasses import replace

from stepline_router.providers.local import respond
from stepline_router.types import (
    Message,
    ModelRequest,
    Role,
    ToolCall,
    ToolChoice,
    ToolSpec,
)

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


SUM = ToolSpec(
    "everything.get-sum",
    "Returns the sum of two numbers",
    {
        "type": "object",
        "properties": {
            "a": {"type": "number", "description": "First number"},
            "b": {"type": "number", "description": "Second number"},
        },
        "required": ["a", "b"],
    },
)
ECHO = ToolSpec(
    "everything.echo",
    "Echoes back the input string",
    {
        "type": "object",
        "properties": {"message": {"type": "string", "description": "Message to echo"}},
        "required": ["message"],
    },
)


def _ask(text: str, *tools: ToolSpec) -> ModelRequest:
    return ModelRequest("c1", "acme", "default", (Message(Role.USER, text),), tools=tools)


def _calls(text: str, *tools: ToolSpec) -> dict[str, dict[str, object]]:
    return {c.name: json.loads(c.arguments_json) for c in respond(_ask(text, *tools)).tool_calls}


def test_numbers_fill_numeric_parameters_in_order() -> None:
    assert _calls("What is the sum of 7 and 5?", SUM, ECHO) == {
        "everything.get-sum": {"a": 7, "b": 5}
    }
    assert _calls("Add -2.5 and 10 with get-sum", SUM) == {
        "everything.get-sum": {"a": -2.5, "b": 10}
    }


def test_an_optional_number_never_takes_what_a_required_one_needs() -> None:
    power = ToolSpec(
        "power",
        "Raise a base to an exponent.",
        {
            "type": "object",
            "properties": {
                "precision": {"type": "integer", "minimum": 0, "maximum": 10},
                "base": {"type": "number"},
                "exponent": {"type": "integer"},
            },
            "required": ["base", "exponent"],
        },
    )
    assert _calls("power: base 2, exponent 8", power) == {"power": {"base": 2, "exponent": 8}}
    last = ToolSpec(
        power.name,
        power.description,
        {
            **power.parameters,
            "properties": {
                k: power.parameters["properties"][k] for k in ("base", "exponent", "precision")
            },
        },
    )
    assert _calls("power: 2 to the 8, precision 3", last) == {
        "power": {"base": 2, "exponent": 8, "precision": 3}
    }


def test_quoted_strings_fill_string_parameters_in_order() -> None:
    rename = ToolSpec(
        "rename_file",
        "Rename a file.",
        {
            "type": "object",
            "properties": {"source": {"type": "string"}, "target": {"type": "string"}},
            "required": ["source", "target"],
        },
    )
    assert _calls('Rename the file "draft.md" to "final.md"', rename) == {
        "rename_file": {"source": "draft.md", "target": "final.md"}
    }


def test_identifiers_are_not_numbers() -> None:
    # 1012 belongs to T-1012, 2026-01-05 is a date: neither is an operand.
    assert _calls("On ticket T-1012 (2026-01-05): what is the sum?", SUM, ECHO) == {}


def test_no_fitting_tool_is_said_plainly_instead_of_calling_one() -> None:
    completion = respond(_ask("What is the sum of these numbers?", SUM))
    assert completion.tool_calls == ()
    assert "everything.get-sum" in completion.content
    assert "a, b" in completion.content  # what it would need
    assert "not an LLM" in completion.content
    # Even when a tool call is required, an unfillable tool is not called with made-up values.
    forced = _ask("Tell me a joke", SUM)
    forced = ModelRequest(
        forced.call_id,
        forced.tenant_id,
        forced.route,
        forced.messages,
        tools=forced.tools,
        params=replace(forced.params, tool_choice=ToolChoice.REQUIRED),
    )
    assert respond(forced).tool_calls == ()

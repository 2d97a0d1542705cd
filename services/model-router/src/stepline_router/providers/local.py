"""The offline `local` provider: a deterministic stand-in for a tool-calling model, NOT an LLM.

It lets the whole system run with no keys and no network. It behaves like a tool-calling model
in shape only: it scores the offered tools against the latest user turn (tool name, description,
parameter names), calls the relevant ones with arguments lifted from the text (URLs, numbers,
arithmetic expressions, quoted strings, enum values, the question itself), and once tool results
are in the transcript it writes an answer quoting them. Same input, same output, always.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from typing import Any

from stepline_router.providers.base import AttemptLimits
from stepline_router.routes import Deployment
from stepline_router.tokens import estimate_input_tokens, estimate_text_tokens
from stepline_router.types import (
    Completion,
    FinishReason,
    Message,
    ModelRequest,
    Role,
    ToolCall,
    ToolChoice,
    ToolSpec,
    Usage,
)

__all__ = ["LocalProvider", "respond"]

MODEL = "stepline-local-1"
_STOP = frozenset(
    {
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "by",
        "can",
        "do",
        "for",
        "from",
        "get",
        "how",
        "i",
        "in",
        "is",
        "it",
        "me",
        "my",
        "of",
        "on",
        "or",
        "please",
        "show",
        "tell",
        "the",
        "this",
        "to",
        "use",
        "using",
        "what",
        "when",
        "where",
        "which",
        "who",
        "why",
        "with",
        "you",
        "your",
    }
)
_WORD = re.compile(r"[a-z0-9]+")
_URL = re.compile(r"https?://[^\s\"'<>)]+")
_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?![\w.])")
_EXPRESSION = re.compile(r"[-+(]*\d[\d.\s]*(?:[-+*/^%x×÷][\s(]*-?\d[\d.\s)]*)+")
_QUOTED = re.compile(r"[\"“']([^\"”']{2,})[\"”']")
_URL_NAMES = frozenset({"url", "uri", "link", "href", "endpoint", "address"})
_EXPRESSION_NAMES = frozenset({"expression", "expr", "formula", "equation", "math"})
_ANSWER_CHARS = 600


def _words(text: str) -> set[str]:
    out = set()
    for word in _WORD.findall(text.lower()):
        if word in _STOP or len(word) < 2:
            continue
        out.add(word)
        # Crude stemming so "searching"/"searches"/"search" meet.
        for suffix in ("ing", "es", "ed", "s"):
            if word.endswith(suffix) and len(word) - len(suffix) >= 3:
                out.add(word[: -len(suffix)])
                break
    return out


def _properties(tool: ToolSpec) -> dict[str, dict[str, Any]]:
    props = tool.parameters.get("properties")
    return (
        {k: v for k, v in props.items() if isinstance(v, dict)} if isinstance(props, dict) else {}
    )


def _score(tool: ToolSpec, text: str) -> int:
    words = _words(text)
    name_words = _words(re.sub(r"([a-z])([A-Z])", r"\1 \2", tool.name).replace("_", " "))
    score = 3 * len(name_words & words) + len(_words(tool.description) & words)
    for name, schema in _properties(tool).items():
        score += 2 * len(_words(name.replace("_", " ")) & words)
        score += len(_words(str(schema.get("description", ""))) & words)
        if name.lower() in _URL_NAMES and _URL.search(text):
            score += 4
        if name.lower() in _EXPRESSION_NAMES and _expression(text):
            score += 4
    return score


def _expression(text: str) -> str | None:
    found = [m.group(0).strip() for m in _EXPRESSION.finditer(_URL.sub(" ", text))]
    found = [f for f in found if re.search(r"\d\s*[-+*/^%x×÷]\s*[-(]*\d", f)]
    if not found:
        return None
    best = max(found, key=len)
    return best.replace("×", "*").replace("÷", "/").replace("x", "*").replace("^", "**")


def _question(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().rstrip("?.! ")


def _value(name: str, schema: dict[str, Any], text: str, required: bool) -> Any:
    kind = schema.get("type", "string")
    lowered = name.lower()
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        for option in enum:
            if str(option).lower() in text.lower():
                return option
        return enum[0] if required else None
    if lowered in _URL_NAMES or schema.get("format") == "uri":
        url = _URL.search(text)
        return url.group(0).rstrip(".,;") if url else None
    if lowered in _EXPRESSION_NAMES:
        return _expression(text)
    if kind in ("integer", "number"):
        numbers = _NUMBER.findall(_URL.sub(" ", text))
        if numbers:
            return int(float(numbers[0])) if kind == "integer" else float(numbers[0])
        return schema.get("default") if required else None
    if kind == "boolean":
        return bool(_words(lowered) & _words(text)) if required else None
    if kind == "array":
        return [_question(text)] if required else None
    if kind == "object":
        return {} if required else None
    quoted = _QUOTED.search(text)
    if quoted and not _URL.fullmatch(quoted.group(1)):
        return quoted.group(1)
    return _question(text) if required or lowered in ("query", "q", "question", "text") else None


def _arguments(tool: ToolSpec, text: str) -> dict[str, Any]:
    required = tool.parameters.get("required")
    required_names = set(required) if isinstance(required, list) else set()
    args: dict[str, Any] = {}
    for name, schema in _properties(tool).items():
        value = _value(name, schema, text, name in required_names)
        if value is not None:
            args[name] = value
    return args


def _call_id(messages: tuple[Message, ...], tool: str, arguments: str, index: int) -> str:
    digest = hashlib.sha256(f"{len(messages)}|{index}|{tool}|{arguments}".encode()).hexdigest()
    return f"call_{digest[:16]}"


def _pick(tools: Iterable[ToolSpec], text: str, request: ModelRequest) -> list[ToolSpec]:
    tools = list(tools)
    params = request.params
    if params.tool_choice is ToolChoice.NONE or not tools:
        return []
    if params.tool_name:
        return [t for t in tools if t.name == params.tool_name][:1]
    scored = sorted(
        ((_score(t, text), i, t) for i, t in enumerate(tools)), key=lambda s: (-s[0], s[1])
    )
    best = scored[0][0]
    picked = [t for s, _, t in scored if s >= 3 and s * 2 >= best][:3]
    if not picked and params.tool_choice is ToolChoice.REQUIRED:
        picked = [scored[0][2]]
    return picked


def _answer(results: list[Message], calls: dict[str, str], question: str) -> str:
    if not results:
        return (
            "This is Stepline's offline local model (a deterministic stand-in, not an LLM). "
            f"No tool matched the request, so here it is restated: {question}."
        )
    lines = [f"Answer to: {question}."]
    for result in results:
        tool = calls.get(result.tool_call_id) or result.name or "tool"
        content = re.sub(r"\s+", " ", result.content).strip()
        if len(content) > _ANSWER_CHARS:
            content = content[:_ANSWER_CHARS] + "…"
        lines.append(f"According to {tool}: {content}")
    return "\n".join(lines)


def respond(request: ModelRequest) -> Completion:
    """The deterministic answer to `request`."""
    messages = request.messages
    last_user = max((i for i, m in enumerate(messages) if m.role is Role.USER), default=-1)
    text = messages[last_user].content if last_user >= 0 else ""
    turn = messages[last_user + 1 :]
    calls = {c.id: c.name for m in turn for c in m.tool_calls}
    results = [m for m in turn if m.role is Role.TOOL]
    already = set(calls.values())
    picked = [t for t in _pick(request.tools, text, request) if t.name not in already]
    if picked and not (results and request.params.tool_choice is not ToolChoice.REQUIRED):
        tool_calls = []
        for index, tool in enumerate(picked):
            arguments = json.dumps(_arguments(tool, text), sort_keys=True)
            tool_calls.append(
                ToolCall(_call_id(messages, tool.name, arguments, index), tool.name, arguments)
            )
        output = sum(estimate_text_tokens(c.name + c.arguments) for c in tool_calls)
        usage = Usage(estimate_input_tokens(messages, request.tools), output)
        return Completion("", tuple(tool_calls), FinishReason.TOOL_CALLS, usage)
    content = _answer(results, calls, _question(text))
    if request.params.response_format.type in ("json_object", "json_schema"):
        content = json.dumps({"answer": content})
    finish = FinishReason.STOP
    limit = request.params.max_output_tokens
    if limit and estimate_text_tokens(content) > limit:
        content, finish = content[: limit * 4], FinishReason.LENGTH
    usage = Usage(estimate_input_tokens(messages, request.tools), estimate_text_tokens(content))
    return Completion(content, (), finish, usage)


class LocalProvider:
    """Provider `local`, model `stepline-local-1`: answers in-process, no network."""

    async def complete(
        self,
        deployment: Deployment,
        request: ModelRequest,
        limits: AttemptLimits,
        credential: str | None,
    ) -> Completion:
        """`respond(request)`."""
        return respond(request)

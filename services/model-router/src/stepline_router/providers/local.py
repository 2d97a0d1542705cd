"""The offline `local` provider: a deterministic stand-in for a tool-calling model, NOT an LLM.

It lets the whole system run with no keys and no network. It behaves like a tool-calling model
in shape only: it scores the offered tools against the latest user turn (tool name, description,
parameter names), calls the relevant ones with arguments lifted from the text (URLs, e-mail
addresses, identifiers matching a parameter's `pattern`, numbers, arithmetic expressions, quoted
strings, enum values, the question itself), and once tool results are in the transcript it writes
an answer quoting them. Tools that write something (a parameter such as `body` or `message`) wait
until the lookups are back: their text is then composed from those results, so a reply is grounded
in what the other tools found. Same input, same output, always.
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
_EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")
# Sentences that say what was done or should be done weigh more when grounding a reply.
_ACTION = re.compile(r"\b(resolution|next step|solution|workaround|recommend\w*|offer\w*)\b", re.I)
_LABEL = re.compile(r"^(resolution|next step|solution|workaround)\s*:\s*", re.I)
_NAME_KEYS = ("name", "customer_name", "full_name", "company")
_SOURCE_KEYS = ("source_id", "id", "ticket_id")
_URL_NAMES = frozenset({"url", "uri", "link", "href", "endpoint", "address"})
_EXPRESSION_NAMES = frozenset({"expression", "expr", "formula", "equation", "math"})
# Parameters that carry text the model writes (a reply, a message): composed from tool results.
_COMPOSE_NAMES = frozenset({"body", "message", "reply", "email_body", "response", "letter"})
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
    if kind == "string" and ("email" in lowered or schema.get("format") == "email"):
        email = _EMAIL.search(text)
        return email.group(0).rstrip(".") if email else None
    pattern = schema.get("pattern")
    if kind == "string" and isinstance(pattern, str):
        return _matching(pattern, text)
    if kind in ("integer", "number"):
        # Only a number the schema accepts: an id's digits are no `top_k`.
        numbers = [float(n) for n in _NUMBER.findall(_URL.sub(" ", text))]
        fitting = [n for n in numbers if _fits(n, schema)]
        if fitting:
            return int(fitting[0]) if kind == "integer" else fitting[0]
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


def _fits(number: float, schema: dict[str, Any]) -> bool:
    """True when `number` is within the schema's minimum/maximum bounds."""
    low, high = schema.get("minimum"), schema.get("maximum")
    below, above = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
    return not (
        (isinstance(low, int | float) and number < low)
        or (isinstance(high, int | float) and number > high)
        or (isinstance(below, int | float) and number <= below)
        or (isinstance(above, int | float) and number >= above)
    )


def _matching(pattern: str, text: str) -> str | None:
    """The first word of `text` that matches `pattern` as a whole (anchors dropped)."""
    core = pattern.removeprefix("^").removesuffix("$")
    try:
        found = re.search(rf"(?<![\w-])(?:{core})(?![\w-])", text)
    except re.error:
        return None
    return found.group(0) if found else None


def _composes(tool: ToolSpec) -> bool:
    """True when the tool takes text the model writes (so it waits for the lookups)."""
    return any(
        name.lower() in _COMPOSE_NAMES and schema.get("type", "string") == "string"
        for name, schema in _properties(tool).items()
    )


def _arguments(tool: ToolSpec, text: str, results: list[Message]) -> dict[str, Any]:
    required = tool.parameters.get("required")
    required_names = set(required) if isinstance(required, list) else set()
    found = "\n".join(r.content for r in results)
    args: dict[str, Any] = {}
    for name, schema in _properties(tool).items():
        if name.lower() in _COMPOSE_NAMES and schema.get("type", "string") == "string":
            value: Any = _compose(text, results)
            limit = schema.get("maxLength")
            if isinstance(limit, int) and len(value) > limit:
                value = value[: max(limit - 1, 0)] + "…"
        else:
            value = _value(name, schema, text, name in required_names)
            if value is None and found and name in required_names:
                # Not in the request: an identifier a lookup returned will do (e.g. an id).
                value = _value(name, schema, found, False)
        if value is not None:
            args[name] = value
    return args


def _strings(value: Any) -> list[str]:
    """Every string inside a JSON value, depth first."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def _records(value: Any) -> list[dict[str, Any]]:
    """Row-like objects in a tool result: `{columns, rows}` tables and lists of objects."""
    if isinstance(value, dict):
        columns, rows = value.get("columns"), value.get("rows")
        if isinstance(columns, list) and isinstance(rows, list):
            return [dict(zip(columns, row, strict=False)) for row in rows if isinstance(row, list)]
        nested = [r for v in value.values() if isinstance(v, list | dict) for r in _records(v)]
        return nested or [value]
    if isinstance(value, list):
        return [r for v in value for r in _records(v)]
    return []


def _parsed(result: Message) -> Any:
    try:
        return json.loads(result.content)
    except ValueError:
        return result.content


def _compose(text: str, results: list[Message]) -> str:
    """A reply grounded in the tool results: who it is for, what was found, what to do next."""
    quoted = _QUOTED.search(text)
    about = (quoted.group(1) if quoted else text).strip().rstrip(".!? ")
    values = [_parsed(r) for r in results]
    records = [r for v in values for r in _records(v)]
    name = next(
        (str(r[k]) for r in records for k in _NAME_KEYS if isinstance(r.get(k), str) and r[k]),
        "",
    )
    wanted = _words(about)
    candidates: list[tuple[int, int, str, str]] = []
    for index, value in enumerate(values):
        for record in _records(value) or [{"text": value}]:
            source = next((str(record[k]) for k in _SOURCE_KEYS if record.get(k)), "")
            for chunk in _strings(record):
                for sentence in _SENTENCE.split(re.sub(r"\s+", " ", chunk).strip()):
                    sentence = sentence.strip(" …")
                    if len(sentence) < 20 or "@" in sentence:
                        continue
                    score = len(_words(sentence) & wanted) + (3 if _ACTION.search(sentence) else 0)
                    candidates.append((score, -index, sentence, source))
    candidates.sort(key=lambda c: (-c[0], -c[1]))
    chosen: list[tuple[str, str]] = []
    for score, _, sentence, source in candidates:
        if score <= 0 or len(chosen) == 2:
            break
        if all(sentence != seen for seen, _ in chosen):
            chosen.append((_LABEL.sub("", sentence), source))
    lines = [f"Hello {name}," if name else "Hello,", "", f'Thank you for your message: "{about}".']
    if chosen:
        cited = ", ".join(dict.fromkeys(s.removesuffix(".md") for _, s in chosen if s))
        lines += ["", "What we propose" + (f" (based on {cited})" if cited else "") + ":"]
        lines += [f"- {sentence}" for sentence, _ in chosen]
    lines += ["", "Best regards,", "Customer Support"]
    return "\n".join(lines)


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


def _answer(
    results: list[Message], calls: dict[str, ToolCall], composing: set[str], question: str
) -> str:
    if not results:
        return (
            "This is Stepline's offline local model (a deterministic stand-in, not an LLM). "
            f"No tool matched the request, so here it is restated: {question}."
        )
    lines = [f"Answer to: {question}."]
    for result in results:
        call = calls.get(result.tool_call_id)
        if call is None or call.name not in composing:
            continue
        # What was written on the user's behalf is the heart of the answer: show it whole.
        sent = f"Sent with {call.name} ({call.arguments_json})"
        lines.append(f"{sent}; it answered: {result.content}")
    for result in results:
        call = calls.get(result.tool_call_id)
        if call is not None and call.name in composing:
            continue
        tool = call.name if call is not None else result.name or "tool"
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
    calls = {c.call_id: c for m in turn for c in m.tool_calls}
    results = [m for m in turn if m.role is Role.TOOL]
    already = {c.name for c in calls.values()}
    picked = [t for t in _pick(request.tools, text, request) if t.name not in already]
    if results and request.params.tool_choice is not ToolChoice.REQUIRED:
        # The lookups are back: only the tools that write something from them are left.
        picked = [t for t in picked if _composes(t)]
    elif not results:
        lookups = [t for t in picked if not _composes(t)]
        picked = lookups or picked
    if picked:
        tool_calls = []
        for index, tool in enumerate(picked):
            arguments = json.dumps(_arguments(tool, text, results), sort_keys=True)
            tool_calls.append(
                ToolCall(_call_id(messages, tool.name, arguments, index), tool.name, arguments)
            )
        output = sum(estimate_text_tokens(c.name + c.arguments_json) for c in tool_calls)
        usage = Usage(estimate_input_tokens(messages, request.tools), output)
        return Completion("", tuple(tool_calls), FinishReason.TOOL_CALLS, usage)
    composing = {t.name for t in request.tools if _composes(t)}
    content = _answer(results, calls, composing, _question(text))
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

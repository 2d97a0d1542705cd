"""The offline `local` provider: a deterministic stand-in for a tool-calling model, NOT an LLM.

It lets the whole system run with no keys and no network. It behaves like a tool-calling model
in shape only: it scores the offered tools against the latest user turn (tool name, description,
parameter names), calls the relevant ones with arguments lifted from the text (URLs, e-mail
addresses, identifiers matching a parameter's `pattern`, numbers, arithmetic expressions, quoted
strings, enum values, the question itself; numbers and quoted strings go to parameters in order,
each used once), and once tool results are in the transcript it writes an answer quoting them. A
tool is called only when every required argument was found; when none fits, the answer says so.
Tools that write something (a parameter such as `body` or `message`) wait until the lookups are
back: their text is then composed from those results, so a reply is grounded in what the other
tools found. Same input, same output, always.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import AsyncGenerator, Iterable
from dataclasses import dataclass
from typing import Any

from stepline_router.providers.base import AttemptLimits
from stepline_router.routes import Deployment
from stepline_router.stream import Delta, completion_deltas
from stepline_router.tokens import (
    estimate_embedding_tokens,
    estimate_input_tokens,
    estimate_text_tokens,
)
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

__all__ = ["EMBEDDING_DIMENSIONS", "LocalProvider", "embed_text", "respond"]

# Vector size of the offline embeddings when the caller names none.
EMBEDDING_DIMENSIONS = 256

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
# A number standing alone: not the digits of an id (T-1012), a date, a time or a version.
_NUMBER = re.compile(r"(?<![\w.:/-])-?\d+(?:\.\d+)?(?!\w|[.:/-]\w)")
_EXPRESSION = re.compile(r"[-+(]*\d[\d.\s]*(?:[-+*/^%x×÷][\s(]*-?\d[\d.\s)]*)+")
_QUOTED = re.compile(r"[\"“']([^\"”']{2,})[\"”']")
_EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
_SPACES = re.compile(r"\s+")
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


# The offline model sees the same tool names, descriptions and prompts on every step of every
# run: their word sets and expressions are computed once (bounded caches; same answers).
@functools.lru_cache(maxsize=8192)
def _words(text: str) -> frozenset[str]:
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
    return frozenset(out)


@functools.lru_cache(maxsize=1024)
def _name_words(name: str) -> frozenset[str]:
    """The words of a tool name, camelCase and snake_case split."""
    return _words(re.sub(r"([a-z])([A-Z])", r"\1 \2", name).replace("_", " "))


def _properties(tool: ToolSpec) -> dict[str, dict[str, Any]]:
    return tool.derived("local.properties", _object_properties)


def _object_properties(tool: ToolSpec) -> dict[str, dict[str, Any]]:
    props = tool.parameters.get("properties")
    return (
        {k: v for k, v in props.items() if isinstance(v, dict)} if isinstance(props, dict) else {}
    )


@dataclass(frozen=True, slots=True)
class _View:
    """What the model reads in one tool definition, whatever the request (worked out once)."""

    # (weight, words) whose overlap with the request's words scores the tool.
    weighted: tuple[tuple[int, frozenset[str]], ...]
    # Parameters that take a URL / an expression: each scores when the request has one.
    url_params: int
    expression_params: int
    properties: tuple[tuple[str, dict[str, Any]], ...]
    required: frozenset[str]
    # Per parameter: its slot (see `_slot`) and how many later required ones share it.
    slots: tuple[tuple[str, int], ...]


def _view(tool: ToolSpec) -> _View:
    return tool.derived("local.view", _read)


def _read(tool: ToolSpec) -> _View:
    properties = tuple(_properties(tool).items())
    weighted = [(3, _name_words(tool.name)), (1, _words(tool.description))]
    for name, schema in properties:
        weighted.append((2, _words(name.replace("_", " "))))
        weighted.append((1, _words(str(schema.get("description", "")))))
    required = tool.parameters.get("required")
    required_names = frozenset(required) if isinstance(required, list) else frozenset()
    slots = []
    for index, (name, schema) in enumerate(properties):
        slot = _slot(name, schema)
        # An optional parameter never takes a value a later required one needs.
        keep = (
            sum(
                1
                for later, s in properties[index + 1 :]
                if later in required_names and _slot(later, s) == slot
            )
            if slot
            else 0
        )
        slots.append((slot, keep))
    return _View(
        weighted=tuple(weighted),
        url_params=sum(1 for name, _ in properties if name.lower() in _URL_NAMES),
        expression_params=sum(1 for name, _ in properties if name.lower() in _EXPRESSION_NAMES),
        properties=properties,
        required=required_names,
        slots=tuple(slots),
    )


def _score(tool: ToolSpec, text: str) -> int:
    view = _view(tool)
    words = _words(text)
    score = sum(weight * len(found & words) for weight, found in view.weighted)
    if view.url_params and _URL.search(text):
        score += 4 * view.url_params
    if view.expression_params and _expression(text):
        score += 4 * view.expression_params
    return score


@functools.lru_cache(maxsize=1024)
def _expression(text: str) -> str | None:
    found = [m.group(0).strip() for m in _EXPRESSION.finditer(_URL.sub(" ", text))]
    found = [f for f in found if re.search(r"\d\s*[-+*/^%x×÷]\s*[-(]*\d", f)]
    if not found:
        return None
    best = max(found, key=len)
    return best.replace("×", "*").replace("÷", "/").replace("x", "*").replace("^", "**")


@functools.lru_cache(maxsize=1024)
def _question(text: str) -> str:
    return _SPACES.sub(" ", text).strip().rstrip("?.! ")


@dataclass(slots=True)
class _Offer:
    """The values a text offers, taken in order as parameters are filled (each used once)."""

    numbers: list[float]
    quoted: list[str]
    question: str
    question_taken: bool = False

    @classmethod
    def of(cls, text: str) -> _Offer:
        """Numbers and quoted strings of `text` in order (none taken from quotes or URLs)."""
        numbers, quoted = _offered(text)
        return cls(list(numbers), list(quoted), _question(text))

    def take_number(self, schema: dict[str, Any], integer: bool, keep: int) -> float | None:
        """The first number the schema accepts, unless fewer than `keep` would remain."""
        if len(self.numbers) <= keep:
            return None
        for index, number in enumerate(self.numbers):
            if _fits(number, schema) and (number.is_integer() or not integer):
                return self.numbers.pop(index)
        return None

    def take_quoted(self, keep: int) -> str | None:
        """The next quoted string, unless fewer than `keep` would remain."""
        return self.quoted.pop(0) if len(self.quoted) > keep else None


@functools.lru_cache(maxsize=1024)
def _offered(text: str) -> tuple[tuple[float, ...], tuple[str, ...]]:
    """Numbers and quoted strings of `text` in order (none taken from quotes or URLs)."""
    quoted = tuple(q for q in _QUOTED.findall(text) if not _URL.fullmatch(q))
    bare = _QUOTED.sub(" ", _URL.sub(" ", text))
    return tuple(float(n) for n in _NUMBER.findall(bare)), quoted


def _slot(name: str, schema: dict[str, Any]) -> str:
    """Which pool of the offer a parameter draws from: "number", "text", or "" (its own rule)."""
    kind = schema.get("type", "string")
    lowered = name.lower()
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return ""
    if kind in ("integer", "number"):
        return "number"
    special = (
        lowered in _URL_NAMES
        or lowered in _EXPRESSION_NAMES
        or lowered in _COMPOSE_NAMES
        or "email" in lowered
        or schema.get("format") in ("uri", "email")
        or "pattern" in schema
    )
    return "text" if kind == "string" and not special else ""


def _value(
    name: str, schema: dict[str, Any], text: str, required: bool, offer: _Offer, keep: int
) -> Any:
    """The value of one parameter from `text`, or None; `keep` values are left for later ones."""
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
        # In order, and only a number the schema accepts: an id's digits are no `top_k`.
        number = offer.take_number(schema, kind == "integer", 0 if required else keep)
        if number is None:
            return schema.get("default") if required else None
        return int(number) if number.is_integer() else number
    if kind == "boolean":
        return bool(_words(lowered) & _words(text)) if required else None
    if kind == "array":
        return [offer.question] if required else None
    if kind == "object":
        return {} if required else None
    quoted = offer.take_quoted(0 if required else keep)
    if quoted is not None:
        return quoted
    if (required or lowered in ("query", "q", "question", "text")) and not offer.question_taken:
        # The request itself fills one free-text parameter, never two.
        offer.question_taken = True
        return offer.question
    return None


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
    return tool.derived("local.composes", _writes_text)


def _writes_text(tool: ToolSpec) -> bool:
    return any(
        name.lower() in _COMPOSE_NAMES and schema.get("type", "string") == "string"
        for name, schema in _properties(tool).items()
    )


def _arguments(
    tool: ToolSpec, text: str, results: list[Message]
) -> tuple[dict[str, Any], list[str]]:
    """The arguments lifted for `tool`, and its required parameters nothing could fill."""
    view = _view(tool)
    required_names = view.required
    found = "\n".join(r.content for r in results)
    offer = _Offer.of(text)
    properties = view.properties
    args: dict[str, Any] = {}
    for (name, schema), (_, keep) in zip(properties, view.slots, strict=True):
        if name.lower() in _COMPOSE_NAMES and schema.get("type", "string") == "string":
            value: Any = _compose(text, results)
            limit = schema.get("maxLength")
            if isinstance(limit, int) and len(value) > limit:
                value = value[: max(limit - 1, 0)] + "…"
        else:
            value = _value(name, schema, text, name in required_names, offer, keep)
            if value is None and found and name in required_names:
                # Not in the request: an identifier a lookup returned will do (e.g. an id).
                value = _value(name, schema, found, False, _Offer.of(found), 0)
        if value is not None:
            args[name] = value
    missing = [name for name, _ in properties if name in required_names and name not in args]
    return args, missing


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
                for sentence in _SENTENCE.split(_SPACES.sub(" ", chunk).strip()):
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


def _candidates(
    tools: Iterable[ToolSpec], text: str, request: ModelRequest
) -> tuple[list[ToolSpec], int]:
    """The tools worth calling for `text`, best first, and how many of them to call at most."""
    tools = list(tools)
    params = request.params
    if params.tool_choice is ToolChoice.NONE or not tools:
        return [], 0
    if params.tool_name:
        return [t for t in tools if t.name == params.tool_name][:1], 1
    scored = sorted(
        ((_score(t, text), i, t) for i, t in enumerate(tools)), key=lambda s: (-s[0], s[1])
    )
    best = scored[0][0]
    relevant = [t for s, _, t in scored if s >= 3 and s * 2 >= best]
    if relevant:
        return relevant, 3
    if params.tool_choice is ToolChoice.REQUIRED:
        # A call is required: the best-matching tool whose arguments the request gives.
        return [t for _, _, t in scored], 1
    return [], 0


def _answer(
    results: list[Message], calls: dict[str, ToolCall], composing: set[str], question: str
) -> str:
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
        content = _SPACES.sub(" ", result.content).strip()
        if len(content) > _ANSWER_CHARS:
            content = content[:_ANSWER_CHARS] + "…"
        lines.append(f"According to {tool}: {content}")
    return "\n".join(lines)


def _no_fit(question: str, offered: int, unfilled: list[tuple[ToolSpec, list[str]]]) -> str:
    """The plain answer when no tool fits: what was asked, and what a tool would have needed."""
    if not offered:
        why = "No tools were offered"
    elif unfilled:
        needs = "; ".join(f"{t.name} needs {', '.join(missing)}" for t, missing in unfilled)
        why = f"No offered tool fits this request ({needs}, which the request does not give)"
    else:
        why = f"None of the {offered} offered tools fits this request"
    return (
        "This is Stepline's offline local model, a deterministic stand-in, not an LLM: it cannot "
        f"answer from knowledge of its own. {why}. The request was: {question}."
    )


def respond(request: ModelRequest) -> Completion:
    """The deterministic answer to `request`."""
    messages = request.messages
    last_user = len(messages) - 1
    while last_user >= 0 and messages[last_user].role is not Role.USER:
        last_user -= 1
    text = messages[last_user].content if last_user >= 0 else ""
    turn = messages[last_user + 1 :]
    calls = {c.call_id: c for m in turn for c in m.tool_calls}
    results = [m for m in turn if m.role is Role.TOOL]
    already = {c.name for c in calls.values()}
    candidates, most = _candidates(request.tools, text, request)
    filled = [(t, *_arguments(t, text, results)) for t in candidates if t.name not in already]
    # A tool is called only with every required argument found: never with made-up values.
    fitting = [(t, args) for t, args, missing in filled if not missing]
    if results and request.params.tool_choice is not ToolChoice.REQUIRED:
        # The lookups are back: only the tools that write something from them are left.
        fitting = [(t, a) for t, a in fitting if _composes(t)]
    elif not results:
        lookups = [(t, a) for t, a in fitting if not _composes(t)]
        fitting = lookups or fitting
    if fitting:
        tool_calls = []
        for index, (tool, args) in enumerate(fitting[:most]):
            arguments = json.dumps(args, sort_keys=True)
            tool_calls.append(
                ToolCall(_call_id(messages, tool.name, arguments, index), tool.name, arguments)
            )
        output = sum(estimate_text_tokens(c.name + c.arguments_json) for c in tool_calls)
        usage = Usage(estimate_input_tokens(messages, request.tools), output)
        return Completion("", tuple(tool_calls), FinishReason.TOOL_CALLS, usage)
    if results:
        composing = {t.name for t in request.tools if _composes(t)}
        content = _answer(results, calls, composing, _question(text))
    else:
        unfilled = [(t, missing) for t, _, missing in filled if missing][:3]
        content = _no_fit(_question(text), len(request.tools), unfilled)
    if request.params.response_format.type in ("json_object", "json_schema"):
        content = json.dumps({"answer": content})
    finish = FinishReason.STOP
    limit = request.params.max_output_tokens
    if limit and estimate_text_tokens(content) > limit:
        content, finish = content[: limit * 4], FinishReason.LENGTH
    usage = Usage(estimate_input_tokens(messages, request.tools), estimate_text_tokens(content))
    return Completion(content, (), finish, usage)


def embed_text(item: str | tuple[int, ...], dimensions: int) -> tuple[float, ...]:
    """A deterministic embedding: hashed bag of words (or token ids), L2-normalised.

    Texts sharing words get close vectors, so similarity search behaves sensibly offline.
    """
    vector = [0.0] * dimensions
    words = _WORD.findall(item.lower()) if isinstance(item, str) else [str(t) for t in item]
    for word in words:
        digest = hashlib.blake2b(word.encode(), digest_size=8).digest()
        slot = int.from_bytes(digest[:4], "big") % dimensions
        # A signed hash keeps unrelated words from all adding up in the same direction.
        vector[slot] += 1.0 if digest[4] & 1 else -1.0
    norm = sum(x * x for x in vector) ** 0.5
    return tuple(x / norm for x in vector) if norm else tuple(vector)


class LocalProvider:
    """Provider `local`, model `stepline-local-1`: answers in-process, no network."""

    # The offline stand-in starts every answer anew.
    continues_answers = False
    # It answers in this process without awaiting anything (the router arms no timer for it).
    in_process = True

    async def complete(
        self,
        deployment: Deployment,
        request: ModelRequest,
        limits: AttemptLimits,
        credential: str | None,
    ) -> Completion:
        """`respond(request)`."""
        return respond(request)

    async def stream(
        self,
        deployment: Deployment,
        request: ModelRequest,
        limits: AttemptLimits,
        credential: str | None,
    ) -> AsyncGenerator[Delta, None]:
        """`respond(request)` as deltas, word by word."""
        for delta in completion_deltas(respond(request)):
            yield delta

    async def embed(
        self,
        deployment: Deployment,
        request: ModelRequest,
        limits: AttemptLimits,
        credential: str | None,
    ) -> Completion:
        """`embed_text` of every input, at the dimensions asked for (default 256)."""
        assert request.embedding is not None
        dimensions = request.embedding.dimensions or EMBEDDING_DIMENSIONS
        return Completion(
            "",
            usage=Usage(input=estimate_embedding_tokens(request.embedding)),
            embeddings=tuple(embed_text(item, dimensions) for item in request.embedding.inputs),
        )

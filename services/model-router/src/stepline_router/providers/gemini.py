"""Google Gemini's native API over httpx: `generateContent` and `streamGenerateContent?alt=sse`.

Wire facts this adapter is built on (checked against the `google-genai` SDK's types):
- Turns are `contents` of `user`/`model` role with `parts`; the system prompt is
  `systemInstruction`; tools are `functionDeclarations` (JSON Schema in
  `parametersJsonSchema`), calls come back as `functionCall` parts with `args` as an object,
  and results go back as `functionResponse` parts (in a user turn) matched by name and order.
- Gemini gives a call an `id` only sometimes: a call without one gets a synthesized, stable
  id (a digest of the response id, the turn, the call's place, name and arguments), and ids
  are never sent back (the API pairs responses with calls by name and order, and some Gemini
  front ends refuse ids they did not issue).
- Thinking models sign function calls (`thoughtSignature`) and Gemini 3 refuses a replayed call
  without its signature. Signatures this adapter saw are kept (bounded, per process) under the
  call's id and sent back; a call it never saw (another provider's, or an evicted one) is sent
  with Google's documented `skip_thought_signature_validator` stand-in.
- The stream has no end marker: it ends when the server closes it, after a chunk carrying
  `finishReason`. Usage (`usageMetadata`) is cumulative per chunk; `promptTokenCount` includes
  `cachedContentTokenCount`, and output is `candidatesTokenCount` plus `thoughtsTokenCount`.
- Errors are `{"error": {"code", "message", "status", "details"}}`; a 429's wait may be in
  `details[].retryDelay` (google.rpc.RetryInfo) rather than a `Retry-After` header.
- Images are `inlineData {mimeType, data}` parts (base64) or `fileData {mimeType, fileUri}`
  for an https URL whose type shows in its path; other URLs are fetched first (`images`).
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import httpx

from stepline_router.errors import Outcome, ProviderError, classify_status
from stepline_router.providers.adapter import HttpAdapter, request_headers
from stepline_router.providers.events import SHAPE_ERRORS, decoded_object, not_a, wrong_shape
from stepline_router.providers.fields import object_arguments, sampling
from stepline_router.providers.http import ChunkParser, NowFn, safe_text
from stepline_router.providers.images import url_media_type
from stepline_router.retryafter import parse_duration, retry_after_seconds
from stepline_router.routes import Deployment
from stepline_router.stream import Delta, Finished, TextDelta, ToolCallDelta, UsageDelta
from stepline_router.types import (
    Completion,
    FinishReason,
    Message,
    ModelRequest,
    Role,
    ToolCall,
    ToolChoice,
    Usage,
)
from stepline_vocab import split_data_uri

__all__ = [
    "GeminiProvider",
    "gemini_body",
    "gemini_error",
    "parse_gemini_response",
    "synthesized_call_id",
]

DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com"
API_VERSION = "v1beta"
# Google's documented stand-in for a function call whose real signature is not known.
SKIP_SIGNATURE = base64.b64encode(b"skip_thought_signature_validator").decode()
_SIGNATURES_KEPT = 10_000

# Generation settings by their `generationConfig` names.
_SAMPLING = {
    "temperature": "temperature",
    "top_p": "topP",
    "max_output_tokens": "maxOutputTokens",
    "stop": "stopSequences",
    "seed": "seed",
}

_FINISH = {
    "STOP": FinishReason.STOP,
    "MAX_TOKENS": FinishReason.LENGTH,
    "FINISH_REASON_UNSPECIFIED": FinishReason.STOP,
    "OTHER": FinishReason.STOP,
}
# Finish reasons that mean the answer was withheld: a content refusal, never retried.
_REFUSED = frozenset(
    {
        "SAFETY",
        "RECITATION",
        "LANGUAGE",
        "BLOCKLIST",
        "PROHIBITED_CONTENT",
        "SPII",
        "IMAGE_SAFETY",
        "IMAGE_PROHIBITED_CONTENT",
        "IMAGE_RECITATION",
        "MODEL_ARMOR",
    }
)
# The model botched its own tool call: another try may well succeed.
_MALFORMED = frozenset({"MALFORMED_FUNCTION_CALL", "UNEXPECTED_TOOL_CALL", "TOO_MANY_TOOL_CALLS"})
# google.rpc status → outcome, where the status says more than the HTTP code.
_STATUS_OUTCOMES = {
    "RESOURCE_EXHAUSTED": Outcome.RATE_LIMITED,
    "UNAVAILABLE": Outcome.OVERLOADED,
    "INTERNAL": Outcome.SERVER_ERROR,
    "UNKNOWN": Outcome.SERVER_ERROR,
    "DEADLINE_EXCEEDED": Outcome.TIMED_OUT,
    "UNAUTHENTICATED": Outcome.AUTH_FAILED,
    "PERMISSION_DENIED": Outcome.AUTH_FAILED,
}
# How Gemini words a prompt over the model's window (400 INVALID_ARGUMENT).
_CONTEXT_MARKERS = ("input token count", "exceeds the maximum number of tokens")


def synthesized_call_id(response_id: str, turn: int, index: int, name: str, args: str) -> str:
    """A stable id for a call Gemini gave none: same response, same id; unique per call."""
    digest = hashlib.sha256(f"{response_id}\x1f{turn}\x1f{index}\x1f{name}\x1f{args}".encode())
    return f"gcall_{digest.hexdigest()[:24]}"


def _model_path(model: str) -> str:
    return model if model.startswith(("models/", "tunedModels/")) else f"models/{model}"


def _response_value(content: str) -> dict[str, Any]:
    """A tool result as the object `functionResponse.response` must be (`output` by convention)."""
    try:
        value = json.loads(content)
    except ValueError:
        value = content
    return {"output": value}


def _image_part(ref: str) -> dict[str, Any]:
    """A data URI inline (`inlineData`); an image URL by reference (`fileData`) when its type
    shows in it (other URLs are fetched into data URIs before, see `needs_bytes`)."""
    split = split_data_uri(ref)
    if split is not None:
        return {"inlineData": {"mimeType": split[0], "data": split[1]}}
    return {"fileData": {"mimeType": url_media_type(ref), "fileUri": ref}}


def _contents(messages: tuple[Message, ...], signatures: Mapping[str, str]) -> list[dict[str, Any]]:
    """User/model turns; tool results ride in user turns in the order of their calls."""
    names: dict[str, str] = {}
    order: dict[str, int] = {}
    # Response part (by identity) → the place of its call in the model turn it answers.
    rank: dict[int, int] = {}
    out: list[dict[str, Any]] = []
    for message in messages:
        if message.role is Role.SYSTEM:
            continue
        parts: list[dict[str, Any]] = []
        if message.role is Role.TOOL:
            name = names.get(message.tool_call_id) or message.name
            response = {
                "functionResponse": {
                    "name": name or "unknown_tool",
                    "response": _response_value(message.content),
                }
            }
            rank[id(response)] = order.get(message.tool_call_id, len(order))
            parts.append(response)
        else:
            # Images first: Gemini reads a single image best before the text about it.
            parts.extend(_image_part(ref) for ref in message.images)
            if message.content:
                parts.append({"text": message.content})
            signed = False
            for number, call in enumerate(message.tool_calls):
                names[call.call_id] = call.name
                order[call.call_id] = number
                part: dict[str, Any] = {
                    "functionCall": {
                        "name": call.name,
                        "args": object_arguments(call.arguments_json),
                    }
                }
                signature = signatures.get(call.call_id)
                if signature is None and not signed:
                    # Only the first call of a turn carries a signature (parallel calls).
                    signature = SKIP_SIGNATURE
                if signature is not None:
                    part["thoughtSignature"] = signature
                    signed = True
                parts.append(part)
        if not parts:
            continue
        role = "model" if message.role is Role.ASSISTANT else "user"
        if out and out[-1]["role"] == role:
            out[-1]["parts"].extend(parts)
        else:
            out.append({"role": role, "parts": parts})
    for turn in out:
        # Gemini pairs results with calls by position: put them back in call order.
        responses = [p for p in turn["parts"] if "functionResponse" in p]
        if len(responses) > 1:
            others = [p for p in turn["parts"] if "functionResponse" not in p]
            turn["parts"] = sorted(responses, key=lambda p: rank.get(id(p), 0)) + others
    return out


def gemini_body(
    deployment: Deployment, request: ModelRequest, signatures: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The `generateContent` request body for `request` (the model goes in the URL)."""
    del deployment  # the model is named by the URL, not the body
    params = request.params
    body: dict[str, Any] = {"contents": _contents(request.messages, signatures or {})}
    system = "\n\n".join(m.content for m in request.messages if m.role is Role.SYSTEM)
    if system:
        body["systemInstruction"] = {"parts": [{"text": system}]}
    if request.tools:
        body["tools"] = [
            {
                "functionDeclarations": [
                    {
                        "name": tool.name,
                        "description": tool.description,
                        "parametersJsonSchema": tool.parameters,
                    }
                    for tool in request.tools
                ]
            }
        ]
        mode = {
            ToolChoice.AUTO: "AUTO",
            ToolChoice.NONE: "NONE",
            ToolChoice.REQUIRED: "ANY",
        }[params.tool_choice]
        calling: dict[str, Any] = {"mode": mode}
        if params.tool_choice is ToolChoice.REQUIRED and params.tool_name:
            calling["allowedFunctionNames"] = [params.tool_name]
        body["toolConfig"] = {"functionCallingConfig": calling}
    config = sampling(params, _SAMPLING)
    fmt = params.response_format
    if fmt.type in ("json_object", "json_schema"):
        config["responseMimeType"] = "application/json"
    if fmt.type == "json_schema" and fmt.schema is not None:
        # JSON Schema as given (`responseSchema` takes only an OpenAPI subset).
        config["responseJsonSchema"] = fmt.schema
    if config:
        body["generationConfig"] = config
    body.update(params.extra)
    return body


def _usage(data: Any) -> Usage:
    if not isinstance(data, dict):
        return Usage()
    thoughts = int(data.get("thoughtsTokenCount") or 0)
    return Usage(
        input=int(data.get("promptTokenCount") or 0)
        + int(data.get("toolUsePromptTokenCount") or 0),
        output=int(data.get("candidatesTokenCount") or 0) + thoughts,
        cached_input=int(data.get("cachedContentTokenCount") or 0),
        reasoning=thoughts,
    )


def _refused(reason: str, detail: str, status: int, usage: Usage) -> ProviderError:
    return ProviderError(
        Outcome.CONTENT_REFUSED,
        safe_text(f"content refused by Gemini ({reason}){': ' + detail if detail else ''}"),
        status_code=status,
        usage=usage,
    )


def _blocked_categories(candidate: Mapping[str, Any]) -> str:
    ratings = candidate.get("safetyRatings") or ()
    blocked = [str(r.get("category", "")) for r in ratings if r.get("blocked")]
    return ", ".join(c for c in blocked if c)


def _finish(reason: str, candidate: Mapping[str, Any], status: int, usage: Usage) -> FinishReason:
    """Our finish reason for Gemini's; a withheld or botched answer raises instead."""
    if reason in _REFUSED:
        detail = _blocked_categories(candidate) or str(candidate.get("finishMessage") or "")
        raise _refused(reason, detail, status, usage)
    if reason in _MALFORMED:
        raise ProviderError(
            Outcome.MALFORMED_RESPONSE,
            safe_text(f"Gemini ended with {reason}: {candidate.get('finishMessage') or ''}"),
            status_code=status,
            usage=usage,
        )
    if reason == "MISSING_THOUGHT_SIGNATURE":
        raise ProviderError(
            Outcome.BAD_REQUEST,
            "Gemini refused a replayed tool call without its thought signature",
            status_code=status,
            usage=usage,
        )
    return _FINISH.get(reason, FinishReason.STOP)


def _prompt_blocked(data: Mapping[str, Any], status: int, usage: Usage) -> None:
    feedback = data.get("promptFeedback") or {}
    reason = feedback.get("blockReason")
    if reason and not data.get("candidates"):
        detail = str(feedback.get("blockReasonMessage") or "") or _blocked_categories(feedback)
        raise _refused(f"prompt {reason}", detail, status, usage)


@dataclass
class _Calls:
    """Numbers calls in answer order and keeps their ids stable; collects thought signatures."""

    turn: int
    count: int = 0
    signatures: dict[str, str] = field(default_factory=dict)

    def call(self, response_id: str, part: Mapping[str, Any]) -> tuple[int, ToolCall]:
        function = part["functionCall"]
        name = str(function["name"])
        arguments = json.dumps(function.get("args") or {})
        number = self.count
        self.count += 1
        call_id = str(function.get("id") or "") or synthesized_call_id(
            response_id, self.turn, number, name, arguments
        )
        if part.get("thoughtSignature"):
            self.signatures[call_id] = str(part["thoughtSignature"])
        return number, ToolCall(call_id, name, arguments)


def _texts_and_calls(
    data: Mapping[str, Any], calls: _Calls
) -> tuple[list[str], list[tuple[int, ToolCall]], Mapping[str, Any] | None]:
    candidates = data.get("candidates") or []
    if not candidates:
        return [], [], None
    candidate = candidates[0]
    texts: list[str] = []
    found: list[tuple[int, ToolCall]] = []
    response_id = str(data.get("responseId") or "")
    for part in (candidate.get("content") or {}).get("parts") or ():
        if "functionCall" in part:
            found.append(calls.call(response_id, part))
        elif "text" in part and not part.get("thought"):
            # Thought summaries (`thought: true`) are reasoning, not the answer.
            texts.append(str(part["text"]))
    return texts, found, candidate


def _parse(data: Any, status: int, turn: int) -> tuple[Completion, dict[str, str]]:
    if not isinstance(data, dict):
        raise TypeError("response is not an object")
    usage = _usage(data.get("usageMetadata"))
    _prompt_blocked(data, status, usage)
    calls = _Calls(turn)
    texts, found, candidate = _texts_and_calls(data, calls)
    if candidate is None:
        raise KeyError("candidates")
    finish = _finish(str(candidate.get("finishReason") or "STOP"), candidate, status, usage)
    tool_calls = tuple(call for _, call in found)
    if tool_calls and finish is FinishReason.STOP:
        finish = FinishReason.TOOL_CALLS
    completion = Completion(
        "".join(texts),
        tool_calls,
        finish,
        usage,
        status,
        model=str(data.get("modelVersion") or ""),
    )
    return completion, calls.signatures


def parse_gemini_response(
    data: Any, status: int = 200, turn: int = 0
) -> tuple[Completion, dict[str, str]]:
    """A `Completion` (and the calls' thought signatures) from a `GenerateContentResponse`.

    `turn` (the request's message count) keeps synthesized call ids unique across turns.
    """
    try:
        return _parse(data, status, turn)
    except (KeyError, IndexError, TypeError, AttributeError) as error:
        raise not_a("a GenerateContentResponse", error, status) from error


def _retry_delay(details: Any) -> float | None:
    """`retryDelay` of a google.rpc.RetryInfo detail (a Duration like "17s" or "1.5s")."""
    for detail in details if isinstance(details, list) else ():
        if isinstance(detail, dict) and "retryDelay" in detail:
            return parse_duration(str(detail["retryDelay"]))
    return None


def _classify(status: int, rpc_status: str, message: str) -> Outcome:
    outcome = _STATUS_OUTCOMES.get(rpc_status)
    if outcome is not None:
        return outcome
    lowered = message.lower()
    if status == 400 and any(marker in lowered for marker in _CONTEXT_MARKERS):
        return Outcome.CONTEXT_TOO_LONG
    return classify_status(status, rpc_status, message)


def _fields(body: bytes) -> tuple[int, str, str, Any]:
    """(code, status, message, details) of a Gemini error body (also a one-element list)."""
    try:
        data = json.loads(body)
    except ValueError:
        return 0, "", body.decode("utf-8", errors="replace"), None
    if isinstance(data, list) and data:
        data = data[0]
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict):
        return 0, "", body.decode("utf-8", errors="replace"), None
    code = error.get("code")
    return (
        code if isinstance(code, int) else 0,
        str(error.get("status") or ""),
        str(error.get("message") or ""),
        error.get("details"),
    )


def gemini_error(
    status: int, headers: Mapping[str, str], body: bytes, now: datetime
) -> ProviderError:
    """A classified error for a non-2xx Gemini answer, with its wait (header or RetryInfo)."""
    _, rpc_status, message, details = _fields(body)
    outcome = _classify(status, rpc_status, message)
    wait = retry_after_seconds(headers, now)
    if wait is None:
        wait = _retry_delay(details)
    text = safe_text(f"HTTP {status} {rpc_status}: {message}".replace("  ", " "))
    return ProviderError(outcome, text, status_code=status, retry_after_s=wait)


def _stream_error(payload: Any, status: int) -> ProviderError:
    """An error object inside a 200 stream: classified by its own code and status."""
    body = json.dumps({"error": payload}).encode()
    code, rpc_status, message, details = _fields(body)
    outcome = _classify(code or 500, rpc_status, message)
    return ProviderError(
        outcome,
        safe_text(f"stream error {rpc_status or code}: {message}"),
        status_code=status,
        retry_after_s=_retry_delay(details),
    )


class _ChunkParser:
    """Streamed `GenerateContentResponse` chunks → deltas; whole once a finish reason came."""

    end_marker = "a chunk with finishReason"

    def __init__(self, turn: int) -> None:
        self.finished = False
        self.calls = _Calls(turn)
        self._usage = Usage()

    @property
    def ended(self) -> bool:
        """Never: Gemini has no end-of-stream event, the stream is read until it closes."""
        return False

    @property
    def complete(self) -> bool:
        """Whole once a chunk carried a finish reason."""
        return self.finished

    def feed(self, event: str, data: str, status: int) -> list[Delta]:
        """The deltas of one chunk; `ProviderError` for a malformed or error chunk."""
        chunk = decoded_object(data, status, "stream chunk")
        if "error" in chunk:
            raise _stream_error(chunk["error"], status)
        try:
            return self._deltas(chunk, status)
        except SHAPE_ERRORS as error:
            raise wrong_shape("stream chunk", error, status) from error

    def _deltas(self, chunk: dict[str, Any], status: int) -> list[Delta]:
        out: list[Delta] = []
        if chunk.get("usageMetadata"):
            self._usage = _usage(chunk["usageMetadata"])
            out.append(UsageDelta(self._usage))
        _prompt_blocked(chunk, status, self._usage)
        texts, found, candidate = _texts_and_calls(chunk, self.calls)
        out.extend(TextDelta(text) for text in texts if text)
        for number, call in found:
            out.append(ToolCallDelta(number, call.call_id, call.name, call.arguments_json))
        if candidate is not None and candidate.get("finishReason"):
            finish = _finish(str(candidate["finishReason"]), candidate, status, self._usage)
            if self.calls.count and finish is FinishReason.STOP:
                finish = FinishReason.TOOL_CALLS
            self.finished = True
            out.append(Finished(finish, str(chunk.get("modelVersion") or "")))
        return out


class GeminiProvider(HttpAdapter):
    """Adapter for Gemini's `generateContent` wire format (Google AI Studio / Gemini API)."""

    # Not every Gemini model continues a trailing model turn: never ask it to.
    continues_answers = False
    errors = staticmethod(gemini_error)
    fetches_images = True

    def __init__(
        self, client: httpx.AsyncClient, now: NowFn, *, private_images: bool = False
    ) -> None:
        super().__init__(client, now, private_images=private_images)
        # Thought signatures of calls this process saw, by call id (oldest evicted first).
        self._signatures: OrderedDict[str, str] = OrderedDict()

    def _keep(self, signatures: Mapping[str, str]) -> None:
        for call_id, signature in signatures.items():
            self._signatures[call_id] = signature
            self._signatures.move_to_end(call_id)
        while len(self._signatures) > _SIGNATURES_KEPT:
            self._signatures.popitem(last=False)

    def needs_bytes(self, ref: str) -> bool:
        """An https URL is sent by reference when its image type shows in it; any other is
        fetched (as LiteLLM does)."""
        return not ref.startswith("https://") or url_media_type(ref) is None

    def _request(
        self, deployment: Deployment, request: ModelRequest, credential: str | None, stream: bool
    ) -> tuple[str, dict[str, str], dict[str, Any]]:
        base = deployment.base_url or DEFAULT_BASE_URL
        method = "streamGenerateContent?alt=sse" if stream else "generateContent"
        url = f"{base}/{API_VERSION}/{_model_path(deployment.model)}:{method}"
        headers = request_headers(deployment, credential, "x-goog-api-key", "")
        body = gemini_body(deployment, replace(request, stream=stream), self._signatures)
        return url, headers, body

    def parse(self, data: Any, status: int, request: ModelRequest) -> Completion:
        """The answer of a response body; its calls' thought signatures are kept."""
        completion, signatures = parse_gemini_response(data, status, len(request.messages))
        self._keep(signatures)
        return completion

    def chunk_parser(self, request: ModelRequest) -> ChunkParser:
        """A fresh parser for one streamed response (synthesized ids unique to this turn)."""
        return _ChunkParser(len(request.messages))

    def _stream_ended(self, parser: ChunkParser) -> None:
        """Keep the thought signatures the stream carried, whole or not."""
        assert isinstance(parser, _ChunkParser)
        self._keep(parser.calls.signatures)

"""AWS Bedrock Converse over httpx: botocore's SigV4 signer and its event-stream decoder.

`POST /model/{modelId}/converse` answers one JSON body; `/converse-stream` answers an AWS
event stream (binary frames with CRCs, each an event, an exception or an error). A deployment
whose `credential_env` ends in `SECRET_ACCESS_KEY` is signed with SigV4 from that secret and its
siblings (`…ACCESS_KEY_ID`, optional `…SESSION_TOKEN`, `…REGION`, then `AWS_REGION` /
`AWS_DEFAULT_REGION`): `credential_env = "AWS_SECRET_ACCESS_KEY"` reads the usual AWS variables,
`PROD_AWS_SECRET_ACCESS_KEY` a second account's. Any other `credential_env` is a Bedrock API
key, sent as a bearer token. The region comes from `base_url` when it is a Bedrock host.
Images are `image {format, source: {bytes}}` blocks: Converse takes no URL, so image URLs are
fetched first (`images`).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any
from urllib.parse import quote

import httpx
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials as AwsCredentials
from botocore.eventstream import EventStreamBuffer, EventStreamMessage, ParserError

from stepline_router.credentials import Credentials
from stepline_router.errors import Outcome, ProviderError, classify_status
from stepline_router.providers.adapter import HttpAdapter, request_headers
from stepline_router.providers.events import EventParser, not_a
from stepline_router.providers.fields import object_arguments, sampling, schema_fields
from stepline_router.providers.http import ChunkParser, NowFn, json_or_malformed, safe_text
from stepline_router.providers.turns import block_turns
from stepline_router.retryafter import retry_after_seconds
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
    "BedrockProvider",
    "aws_event_frames",
    "bedrock_error",
    "converse_body",
    "converse_path",
    "parse_converse",
]

# botocore's name for Bedrock Runtime in SigV4 credential scopes.
SIGNING_NAME = "bedrock"
_SECRET_SUFFIX = "SECRET_ACCESS_KEY"
_HOST_REGION = re.compile(r"^https://bedrock-runtime(?:-fips)?\.([a-z0-9-]+)\.amazonaws\.com$")

# Generation settings by their `inferenceConfig` names (Converse has no seed).
_SAMPLING = {
    "max_output_tokens": "maxTokens",
    "temperature": "temperature",
    "top_p": "topP",
    "stop": "stopSequences",
}

_FINISH = {
    "end_turn": FinishReason.STOP,
    "stop_sequence": FinishReason.STOP,
    "tool_use": FinishReason.TOOL_CALLS,
    "max_tokens": FinishReason.LENGTH,
    "model_context_window_exceeded": FinishReason.LENGTH,
    "guardrail_intervened": FinishReason.CONTENT_FILTER,
    "content_filtered": FinishReason.CONTENT_FILTER,
}
# Converse's image formats (`ImageBlock.format`) by media type.
_IMAGE_FORMATS = {
    "image/png": "png",
    "image/jpeg": "jpeg",
    "image/gif": "gif",
    "image/webp": "webp",
}
# The model produced output Bedrock could not parse: a retry may well succeed.
_MALFORMED_STOPS = frozenset({"malformed_model_output", "malformed_tool_use"})

# Bedrock's exception names say more than its statuses (ModelNotReady is a 429 that is no
# throttle, ModelError a 424, a service quota a 400); names not here fall back to the status.
_EXCEPTIONS = {
    "ThrottlingException": Outcome.RATE_LIMITED,
    "ServiceQuotaExceededException": Outcome.RATE_LIMITED,
    "ModelNotReadyException": Outcome.OVERLOADED,
    "ServiceUnavailableException": Outcome.OVERLOADED,
    "InternalServerException": Outcome.SERVER_ERROR,
    "ModelErrorException": Outcome.SERVER_ERROR,
    "ModelStreamErrorException": Outcome.SERVER_ERROR,
    "ModelTimeoutException": Outcome.TIMED_OUT,
    "AccessDeniedException": Outcome.AUTH_FAILED,
    "UnrecognizedClientException": Outcome.AUTH_FAILED,
    "InvalidSignatureException": Outcome.AUTH_FAILED,
    "ExpiredTokenException": Outcome.AUTH_FAILED,
    "ValidationException": Outcome.BAD_REQUEST,
    "ResourceNotFoundException": Outcome.BAD_REQUEST,
}


def _outcome(kind: str, status: int, message: str) -> Outcome:
    outcome = _EXCEPTIONS.get(kind)
    if outcome is Outcome.BAD_REQUEST:
        # "Input is too long for requested model": no retry on this model, another may fit it.
        text = message.lower()
        if "too long" in text or classify_status(400, "", text) is Outcome.CONTEXT_TOO_LONG:
            return Outcome.CONTEXT_TOO_LONG
        if "guardrail" in text or "content filter" in text:
            return Outcome.CONTENT_REFUSED
    return outcome or classify_status(status, kind, message)


def _error_type(headers: Mapping[str, str], data: Any) -> str:
    """`ThrottlingException` from `x-amzn-ErrorType` or the body's `__type` (prefixes cut)."""
    raw = {k.lower(): v for k, v in headers.items()}.get("x-amzn-errortype", "")
    if not raw and isinstance(data, dict):
        raw = str(data.get("__type") or data.get("code") or "")
    return raw.split(":", 1)[0].rsplit("#", 1)[-1].strip()


def bedrock_error(
    status: int, headers: Mapping[str, str], body: bytes, now: datetime
) -> ProviderError:
    """A non-2xx Bedrock answer classified by its exception name, with its Retry-After."""
    try:
        data: Any = json.loads(body)
    except ValueError:
        data = None
    kind = _error_type(headers, data)
    message = ""
    if isinstance(data, dict):
        message = str(data.get("message") or data.get("Message") or "")
    elif not data:
        message = body.decode("utf-8", errors="replace")
    # AWS support asks for the request id; it is no secret.
    request_id = {k.lower(): v for k, v in headers.items()}.get("x-amzn-requestid")
    suffix = f" (request {request_id})" if request_id else ""
    return ProviderError(
        _outcome(kind, status, message),
        safe_text(f"HTTP {status} {kind}: {message}".replace("  ", " ") + suffix),
        status_code=status,
        retry_after_s=retry_after_seconds(headers, now),
    )


def _image_block(ref: str) -> dict[str, Any]:
    """An image's bytes (base64 in JSON) and format; URLs are fetched before (`needs_bytes`)."""
    split = split_data_uri(ref)
    if split is None:
        raise ProviderError(Outcome.BAD_REQUEST, "Bedrock takes image bytes, not a URL")
    media_type, data = split
    image_format = _IMAGE_FORMATS.get(media_type.lower())
    if image_format is None:
        raise ProviderError(
            Outcome.BAD_REQUEST, f"Bedrock reads png, jpeg, gif or webp images, not {media_type}"
        )
    return {"image": {"format": image_format, "source": {"bytes": data}}}


def _blocks(message: Message) -> list[dict[str, Any]]:
    if message.role is Role.TOOL:
        result = {"toolUseId": message.tool_call_id, "content": [{"text": message.content}]}
        return [{"toolResult": result}]
    # Images first, as the Anthropic models on Bedrock read them best.
    blocks: list[dict[str, Any]] = [_image_block(ref) for ref in message.images]
    if message.content:
        blocks.append({"text": message.content})
    for call in message.tool_calls:
        use = {
            "toolUseId": call.call_id,
            "name": call.name,
            "input": object_arguments(call.arguments_json),
        }
        blocks.append({"toolUse": use})
    return blocks


def _tool_config(request: ModelRequest) -> dict[str, Any] | None:
    params = request.params
    uses_tools = any(m.tool_calls or m.role is Role.TOOL for m in request.messages)
    # Converse has no "none" choice; it still needs the tools to read a transcript using them.
    if not request.tools or (params.tool_choice is ToolChoice.NONE and not uses_tools):
        return None
    tools = []
    for tool in request.tools:
        spec: dict[str, Any] = {"name": tool.name, "inputSchema": {"json": tool.parameters}}
        if tool.description:
            spec["description"] = tool.description
        tools.append({"toolSpec": spec})
    config: dict[str, Any] = {"tools": tools}
    if params.tool_choice is ToolChoice.REQUIRED:
        config["toolChoice"] = (
            {"tool": {"name": params.tool_name}} if params.tool_name else {"any": {}}
        )
    elif params.tool_choice is ToolChoice.AUTO:
        config["toolChoice"] = {"auto": {}}
    return config


def converse_body(deployment: Deployment, request: ModelRequest) -> dict[str, Any]:
    """The Converse request body for `request` (the model id travels in the URL)."""
    del deployment  # the model is in the path; kept for the adapters' common shape
    params = request.params
    body: dict[str, Any] = {"messages": block_turns(request.messages, _blocks)}
    system = [{"text": m.content} for m in request.messages if m.role is Role.SYSTEM and m.content]
    if system:
        body["system"] = system
    inference = sampling(params, _SAMPLING)
    if inference:
        body["inferenceConfig"] = inference
    tools = _tool_config(request)
    if tools is not None:
        body["toolConfig"] = tools
    fmt = params.response_format
    if fmt.type == "json_schema":
        named = schema_fields(fmt)
        schema = {"schema": json.dumps(named["schema"]), "name": named["name"]}
        body["outputConfig"] = {
            "textFormat": {"type": "json_schema", "structure": {"jsonSchema": schema}}
        }
    body.update(params.extra)
    return body


# RFC 3986 path characters besides unreserved ones: left as they are, since HTTP clients
# normalise them (aiohttp sends `%3A` as `:`) and the path sent must be the path signed.
_PATH_SAFE = ":@!$&'()*+,;="


def converse_path(model: str, stream: bool) -> str:
    """`/model/{modelId}/converse[-stream]`; `/` in an ARN model id is escaped, `:` is not."""
    return f"/model/{quote(model, safe=_PATH_SAFE)}/{'converse-stream' if stream else 'converse'}"


def _usage(data: Any) -> Usage:
    """Our input counts every input token; Bedrock's `inputTokens` leaves out cached ones."""
    if not isinstance(data, dict):
        return Usage()
    read = int(data.get("cacheReadInputTokens") or 0)
    written = int(data.get("cacheWriteInputTokens") or 0)
    return Usage(
        input=int(data.get("inputTokens") or 0) + read + written,
        output=int(data.get("outputTokens") or 0),
        cached_input=read,
        cache_write_input=written,
    )


def _finish(reason: Any, status: int) -> FinishReason:
    if reason in _MALFORMED_STOPS:
        raise ProviderError(
            Outcome.MALFORMED_RESPONSE, f"model output was malformed ({reason})", status_code=status
        )
    return _FINISH.get(str(reason or "end_turn"), FinishReason.STOP)


def parse_converse(data: Any, status: int = 200) -> Completion:
    """A `Completion` from a Converse response body (raises on a wrong shape)."""
    try:
        text: list[str] = []
        calls: list[ToolCall] = []
        for block in data["output"]["message"]["content"]:
            if "text" in block:
                text.append(str(block["text"]))
            elif "toolUse" in block:
                use = block["toolUse"]
                calls.append(ToolCall(use["toolUseId"], use["name"], json.dumps(use["input"])))
        finish = _finish(data.get("stopReason"), status)
        return Completion("".join(text), tuple(calls), finish, _usage(data.get("usage")), status)
    except (KeyError, TypeError, AttributeError) as error:
        raise not_a("a Converse output", error, status) from error


def _frame(message: EventStreamMessage) -> tuple[str, str]:
    # The typed view (botocore-stubs mistypes `.headers`).
    parts = message.to_response_dict()
    headers: dict[str, Any] = parts["headers"]
    payload: bytes = parts["body"]
    kind = headers.get(":message-type")
    if kind == "event":
        return str(headers.get(":event-type", "")), payload.decode("utf-8")
    if kind == "exception":
        return f"exception:{headers.get(':exception-type', '')}", payload.decode("utf-8")
    if kind == "error":
        detail = {"message": str(headers.get(":error-message", ""))}
        return f"exception:{headers.get(':error-code', '')}", json.dumps(detail)
    return f"unknown:{kind}", ""


async def aws_event_frames(response: httpx.Response) -> AsyncIterator[tuple[str, str]]:
    """An AWS event stream as (event name, JSON payload); exceptions named `exception:<type>`.

    botocore's decoder checks each frame's prelude and message CRCs; a bad frame is a
    MALFORMED_RESPONSE (retried), never a silently shortened answer.
    """
    buffer = EventStreamBuffer()
    async for chunk in response.aiter_bytes():
        buffer.add_data(chunk)
        while True:
            try:
                frame = _frame(next(buffer))
            except StopIteration:
                break
            except (ParserError, UnicodeDecodeError) as error:
                raise ProviderError(
                    Outcome.MALFORMED_RESPONSE,
                    f"event stream frame is malformed ({type(error).__name__})",
                    status_code=response.status_code,
                ) from error
            yield frame


class _EventParser(EventParser):
    """ConverseStream events → deltas; the stream ends with `metadata` (usage) after the stop."""

    end_marker = "metadata"

    def _kind(self, event: str, payload: dict[str, Any]) -> str:
        """The event type header: Converse payloads do not name themselves."""
        return event

    def feed(self, event: str, data: str, status: int) -> list[Delta]:
        """The deltas of one event; an exception frame raises its classified error."""
        if event.startswith("exception:"):
            kind = event.removeprefix("exception:")
            payload = json_or_malformed(data or "{}", status, kind)
            message = str(payload.get("message", "")) if isinstance(payload, dict) else ""
            # Stream exceptions are named as members (`throttlingException`).
            name = kind[:1].upper() + kind[1:]
            outcome = _outcome(name, 500, message)
            raise ProviderError(outcome, safe_text(f"stream {name}: {message}"), status_code=status)
        return super().feed(event, data, status)

    def _number(self, data: dict[str, Any]) -> int:
        return self.calls.number(int(data.get("contentBlockIndex", 0)))

    def _deltas(self, event: str, data: dict[str, Any], status: int) -> list[Delta]:
        if event == "contentBlockStart":
            use = (data.get("start") or {}).get("toolUse")
            if use is not None:
                return [ToolCallDelta(self._number(data), use["toolUseId"], use["name"])]
            return []
        if event == "contentBlockDelta":
            delta = data["delta"]
            if "text" in delta:
                return [TextDelta(str(delta["text"]))]
            if "toolUse" in delta:
                arguments = str(delta["toolUse"].get("input", ""))
                return [ToolCallDelta(self._number(data), arguments=arguments)]
            # Reasoning text, citations: not part of the answer.
            return []
        if event == "messageStop":
            return [Finished(_finish(data.get("stopReason"), status))]
        if event == "metadata":
            self.done = True
            return [UsageDelta(_usage(data.get("usage")))]
        # messageStart, contentBlockStop and events newer than this adapter carry no output.
        return []


class BedrockProvider(HttpAdapter):
    """Adapter for the Bedrock Converse wire format, signed per request."""

    # Converse continues a trailing assistant turn (prefill) for the models that allow it,
    # but not all do: answers are not handed to it to finish.
    continues_answers = False
    errors = staticmethod(bedrock_error)
    frames = staticmethod(aws_event_frames)
    fetches_images = True

    def __init__(
        self,
        client: httpx.AsyncClient,
        now: NowFn,
        credentials: Credentials,
        *,
        private_images: bool = False,
    ) -> None:
        super().__init__(client, now, private_images=private_images)
        self._credentials = credentials
        # botocore logs canonical requests at DEBUG, session token header included.
        logging.getLogger("botocore.auth").setLevel(logging.INFO)

    def needs_bytes(self, ref: str) -> bool:
        """Every image URL is fetched: Converse takes bytes only (as LiteLLM does)."""
        return True

    def _region(self, deployment: Deployment, prefix: str) -> str:
        match = _HOST_REGION.match(deployment.base_url)
        if match:
            return match.group(1)
        for name in (f"{prefix}REGION", "AWS_REGION", "AWS_DEFAULT_REGION"):
            region = self._credentials.get(name)
            if region:
                return region
        raise ProviderError(
            Outcome.AUTH_FAILED,
            f"{deployment.name}: no AWS region; set AWS_REGION or a Bedrock base_url",
        )

    def _request(
        self, deployment: Deployment, request: ModelRequest, credential: str | None, stream: bool
    ) -> tuple[str, dict[str, str], bytes]:
        env = deployment.credential_env
        if not credential:
            raise ProviderError(
                Outcome.AUTH_FAILED,
                f"{deployment.name}: set credential_env (AWS_SECRET_ACCESS_KEY or an API key)",
            )
        sigv4 = env.endswith(_SECRET_SUFFIX)
        prefix = env.removesuffix(_SECRET_SUFFIX) if sigv4 else "AWS_"
        # A region names the default endpoint and scopes a signature; an API key sent to a
        # given base_url needs neither.
        region = self._region(deployment, prefix) if sigv4 or not deployment.base_url else ""
        base = deployment.base_url or f"https://bedrock-runtime.{region}.amazonaws.com"
        url = base + converse_path(deployment.model, stream)
        body = json.dumps(converse_body(deployment, replace(request, stream=stream))).encode()
        fixed = {"accept": "application/vnd.amazon.eventstream"} if stream else None
        if not sigv4:
            return url, request_headers(deployment, credential, fixed=fixed), body
        key_id = self._credentials.get(f"{prefix}ACCESS_KEY_ID")
        if not key_id:
            raise ProviderError(
                Outcome.AUTH_FAILED, f"{deployment.name}: {prefix}ACCESS_KEY_ID is not set"
            )
        token = self._credentials.get(f"{prefix}SESSION_TOKEN")
        headers = request_headers(deployment, None, fixed=fixed)
        signed = AWSRequest(method="POST", url=url, data=body, headers=headers)
        SigV4Auth(AwsCredentials(key_id, credential, token), SIGNING_NAME, region).add_auth(signed)
        return url, dict(signed.headers.items()), body

    def parse(self, data: Any, status: int, request: ModelRequest) -> Completion:
        """The answer of a Converse response body."""
        return parse_converse(data, status)

    def chunk_parser(self, request: ModelRequest) -> ChunkParser:
        """A fresh parser for one ConverseStream response."""
        return _EventParser()

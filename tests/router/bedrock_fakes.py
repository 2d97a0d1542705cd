"""A Bedrock Converse server for tests: SigV4 checked with botocore, AWS event-stream frames.

botocore decodes event streams but has no encoder, so `frame` is a small test-only one written
from the format (prelude with its CRC32, string headers, payload, message CRC32); the tests
check it by decoding its output with botocore's own parser.
"""

from __future__ import annotations

import binascii
import json
import struct
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import unquote

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from tests.router.fakes import Received, Reply

__all__ = [
    "KEY_ID",
    "REGION",
    "SECRET_KEY",
    "SESSION_TOKEN",
    "bedrock_exception",
    "converse_frames",
    "converse_output",
    "exception_frame",
    "frame",
    "sigv4_guard",
]

KEY_ID = "AKIDEXAMPLESTEPLINE1"
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYSTEPLINEKEY"
SESSION_TOKEN = "IQoJb3JpZ2luX2VjEXAMPLESESSIONTOKEN"
REGION = "eu-central-1"

_STRING = 7


def frame(headers: Mapping[str, str], payload: bytes) -> bytes:
    """One event-stream message with string headers, CRC32 over prelude and whole message."""
    encoded = b"".join(
        struct.pack(">B", len(name))
        + name.encode()
        + struct.pack(">BH", _STRING, len(value.encode()))
        + value.encode()
        for name, value in headers.items()
    )
    total = 12 + len(encoded) + len(payload) + 4
    prelude = struct.pack(">II", total, len(encoded))
    prelude += struct.pack(">I", binascii.crc32(prelude))
    body = prelude + encoded + payload
    return body + struct.pack(">I", binascii.crc32(body))


def _event(kind: str, payload: Mapping[str, Any]) -> bytes:
    headers = {":event-type": kind, ":content-type": "application/json", ":message-type": "event"}
    return frame(headers, json.dumps(payload).encode())


def exception_frame(kind: str, message: str) -> bytes:
    """A stream exception (`throttlingException`, `validationException`, …)."""
    headers = {
        ":exception-type": kind,
        ":content-type": "application/json",
        ":message-type": "exception",
    }
    return frame(headers, json.dumps({"message": message}).encode())


def _usage(input_tokens: int, output_tokens: int, cache_read: int, cache_write: int) -> Any:
    return {
        "inputTokens": input_tokens,
        "outputTokens": output_tokens,
        "totalTokens": input_tokens + output_tokens + cache_read + cache_write,
        "cacheReadInputTokens": cache_read,
        "cacheWriteInputTokens": cache_write,
    }


def converse_output(
    text: str = "hello",
    tool_uses: Iterable[tuple[str, str, dict[str, Any]]] = (),
    *,
    stop: str | None = None,
    input_tokens: int = 20,
    output_tokens: int = 9,
    cache_read: int = 0,
    cache_write: int = 0,
) -> dict[str, Any]:
    """A Converse response body."""
    content: list[dict[str, Any]] = [{"text": text}] if text else []
    content += [{"toolUse": {"toolUseId": i, "name": n, "input": a}} for i, n, a in tool_uses]
    reason = stop or ("tool_use" if any("toolUse" in c for c in content) else "end_turn")
    return {
        "output": {"message": {"role": "assistant", "content": content}},
        "stopReason": reason,
        "usage": _usage(input_tokens, output_tokens, cache_read, cache_write),
        "metrics": {"latencyMs": 120},
    }


def converse_frames(
    text: Iterable[str] = (),
    tool_use: tuple[str, str, list[str]] | None = None,
    *,
    stop: str | None = None,
    input_tokens: int = 20,
    output_tokens: int = 9,
    cache_read: int = 0,
    cache_write: int = 0,
) -> list[bytes]:
    """The frames of a ConverseStream answer: messageStart … messageStop, metadata."""
    frames = [_event("messageStart", {"role": "assistant"})]
    index = 0
    pieces = list(text)
    if pieces:
        frames += [
            _event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": p}})
            for p in pieces
        ]
        frames.append(_event("contentBlockStop", {"contentBlockIndex": 0}))
        index = 1
    if tool_use is not None:
        call_id, name, parts = tool_use
        start = {"toolUse": {"toolUseId": call_id, "name": name}}
        frames.append(_event("contentBlockStart", {"contentBlockIndex": index, "start": start}))
        frames += [
            _event(
                "contentBlockDelta",
                {"contentBlockIndex": index, "delta": {"toolUse": {"input": p}}},
            )
            for p in parts
        ]
        frames.append(_event("contentBlockStop", {"contentBlockIndex": index}))
    reason = stop or ("tool_use" if tool_use else "end_turn")
    frames.append(_event("messageStop", {"stopReason": reason}))
    usage = _usage(input_tokens, output_tokens, cache_read, cache_write)
    frames.append(_event("metadata", {"usage": usage, "metrics": {"latencyMs": 80}}))
    return frames


def bedrock_exception(
    status: int, kind: str, message: str, headers: Mapping[str, str] | None = None
) -> Reply:
    """A Bedrock error answer: `x-amzn-ErrorType` and a `{"message"}` body, as AWS sends."""
    return Reply(
        status,
        {"message": message},
        {
            "x-amzn-ErrorType": f"{kind}:http://internal.amazon.com/coral/com.amazon.bedrock/",
            **(headers or {}),
        },
    )


def _signature_error(message: str) -> Reply:
    return bedrock_exception(403, "InvalidSignatureException", message)


def sigv4_guard(base_url: str, *, secret: str = SECRET_KEY) -> Any:
    """A `FakeProvider.guard` that recomputes the SigV4 signature with botocore, as AWS does.

    The canonical request is rebuilt from what arrived (method, path, the signed headers, the
    body bytes) with the request's own `x-amz-date`; any mismatch answers 403.
    """

    def guard(request: Received) -> Reply | None:
        auth = request.headers.get("authorization", "")
        if not auth.startswith("AWS4-HMAC-SHA256 "):
            return _signature_error("missing SigV4 Authorization")
        fields = dict(
            part.strip().split("=", 1) for part in auth.removeprefix("AWS4-HMAC-SHA256 ").split(",")
        )
        key_id, day, region, service, _ = fields["Credential"].split("/")
        if key_id != KEY_ID or service != "bedrock" or region != REGION:
            return _signature_error(f"wrong credential scope {fields['Credential']!r}")
        signed = fields["SignedHeaders"].split(";")
        if "host" not in signed or "x-amz-date" not in signed:
            return _signature_error("host and x-amz-date must be signed")
        headers = {name: request.headers[name] for name in signed if name in request.headers}
        aws = AWSRequest(
            method=request.method, url=base_url + request.path, data=request.raw, headers=headers
        )
        aws.context["timestamp"] = request.headers["x-amz-date"]
        token = request.headers.get("x-amz-security-token")
        signer = SigV4Auth(Credentials(KEY_ID, secret, token), service, region)
        canonical = signer.canonical_request(aws)
        expected = signer.signature(signer.string_to_sign(aws, canonical), aws)
        if expected != fields["Signature"] or not request.headers["x-amz-date"].startswith(day):
            return _signature_error("The request signature we calculated does not match")
        return None

    return guard


def model_of(request: Received) -> str:
    """The model id of a Converse request path (`/model/{id}/converse…`)."""
    return unquote(request.path.split("/")[2])

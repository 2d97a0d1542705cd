"""OpenAI Embeddings wire format at the gateway's door: parse `POST /v1/embeddings`, write answers.

Only the HTTP port uses this module; the core sees a `GatewayRequest` with its `EmbeddingInput`
and answers with a `CallSucceeded` whose completion carries the vectors.
"""

from __future__ import annotations

import base64
import struct
from dataclasses import dataclass
from typing import Any

from stepline_router.gateway import GatewayRequest
from stepline_router.router import CallSucceeded
from stepline_router.types import EmbeddingInput
from stepline_router.wire import WireError, as_object

__all__ = ["ENCODINGS", "EmbeddingsRequest", "embeddings_body", "parse_embeddings_request"]

ENCODINGS = ("float", "base64")
# OpenAI's own bound on the inputs of one call.
_MAX_INPUTS = 2048


@dataclass(frozen=True, slots=True)
class EmbeddingsRequest:
    """A parsed embeddings request: the core request plus how the caller wants the vectors."""

    request: GatewayRequest
    encoding_format: str = "float"


def _tokens(value: list[Any], where: str) -> tuple[int, ...]:
    if not value or not all(isinstance(t, int) and not isinstance(t, bool) for t in value):
        raise WireError(f"{where} must be a non-empty array of token ids (integers)", "input")
    if any(t < 0 for t in value):
        raise WireError(f"{where}: token ids are non-negative", "input")
    return tuple(value)


def _inputs(raw: Any) -> tuple[str | tuple[int, ...], ...]:
    """`input`: a string, an array of strings, an array of token ids, or an array of those."""
    if isinstance(raw, str):
        items: list[Any] = [raw]
    elif isinstance(raw, list) and raw and all(isinstance(t, int) for t in raw):
        return (_tokens(raw, "input"),)
    elif isinstance(raw, list) and raw:
        items = raw
    else:
        raise WireError(
            "input must be a string, an array of strings or an array of token arrays", "input"
        )
    if len(items) > _MAX_INPUTS:
        raise WireError(f"input has {len(items)} items; at most {_MAX_INPUTS}", "input")
    out: list[str | tuple[int, ...]] = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            if not item:
                raise WireError(f"input[{i}] must not be empty", "input")
            out.append(item)
        elif isinstance(item, list):
            out.append(_tokens(item, f"input[{i}]"))
        else:
            raise WireError(f"input[{i}] must be a string or an array of token ids", "input")
    return tuple(out)


def parse_embeddings_request(raw: Any) -> EmbeddingsRequest:
    """The core request an embeddings body asks for; `WireError` names what to fix."""
    data = as_object(raw, "body")
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise WireError("model is required (a route or a deployment serving embeddings)", "model")
    encoding = data.get("encoding_format") or "float"
    if encoding not in ENCODINGS:
        raise WireError(f"encoding_format must be one of {list(ENCODINGS)}", "encoding_format")
    dimensions = data.get("dimensions")
    if dimensions is not None and (
        not isinstance(dimensions, int) or isinstance(dimensions, bool) or dimensions < 1
    ):
        raise WireError("dimensions must be a positive integer", "dimensions")
    user = data.get("user")
    if user is not None and not isinstance(user, str):
        raise WireError("user must be a string", "user")
    return EmbeddingsRequest(
        GatewayRequest(
            model=model,
            messages=(),
            user=user or "",
            embedding=EmbeddingInput(_inputs(data.get("input")), dimensions),
        ),
        encoding,
    )


def _encoded(vector: tuple[float, ...], encoding: str) -> list[float] | str:
    if encoding == "base64":
        # What OpenAI sends (and its SDK decodes): little-endian float32, base64.
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
    return list(vector)


def embeddings_body(outcome: CallSucceeded, encoding: str) -> dict[str, Any]:
    """The embeddings response for an answered call (`model` = deployment)."""
    tokens = outcome.completion.usage.input
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": _encoded(vector, encoding)}
            for i, vector in enumerate(outcome.completion.embeddings)
        ],
        "model": outcome.deployment.name,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }

"""Request fields several wire formats share, each under its own names."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from stepline_router.types import Params, ResponseFormat

__all__ = ["object_arguments", "sampling", "schema_fields"]


def sampling(params: Params, names: Mapping[str, str]) -> dict[str, Any]:
    """The set generation settings of `params` under a wire format's `names`, in their order.

    `names` maps `Params` attributes (max_output_tokens, temperature, top_p, stop, seed) to
    the provider's field names; settings a format lacks are left out of `names`. An unset
    value (None, 0 tokens, no stop sequences) is not sent.
    """
    out: dict[str, Any] = {}
    for ours, theirs in names.items():
        value = getattr(params, ours)
        if ours == "stop":
            if value:
                out[theirs] = list(value)
        elif ours == "max_output_tokens":
            if value:
                out[theirs] = value
        elif value is not None:
            out[theirs] = value
    return out


def object_arguments(text: str) -> dict[str, Any]:
    """A tool call's argument text as the JSON object Anthropic, Bedrock and Gemini require."""
    try:
        value = json.loads(text or "{}")
    except ValueError:
        value = None
    # An object is required; keep what the model produced so the transcript stays honest.
    return value if isinstance(value, dict) else {"_unparsed_arguments": text}


def schema_fields(fmt: ResponseFormat) -> dict[str, Any]:
    """Name, schema and strictness of a JSON schema output format (OpenAI's two APIs)."""
    return {"name": fmt.name or "response", "schema": fmt.schema or {}, "strict": fmt.strict}

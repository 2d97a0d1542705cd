"""Deterministic token estimates: for capability and price pre-filters and the local provider."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable

from stepline_router.types import EmbeddingInput, Message, ToolSpec

__all__ = ["estimate_embedding_tokens", "estimate_input_tokens", "estimate_text_tokens"]

# ~4 characters per token is the usual rule of thumb for English with BPE tokenizers.
_CHARS_PER_TOKEN = 4
# Role markers and separators each message costs on chat-formatted models.
_PER_MESSAGE = 4
# An image input, at the large end of what providers bill for one (Anthropic ~1,600 tokens for a
# full-size image; OpenAI 765 at high detail for 1024×1024): windows and caps are not undercut.
_PER_IMAGE = 1_600


def estimate_text_tokens(text: str) -> int:
    """Tokens in `text`, estimated from its length."""
    return math.ceil(len(text) / _CHARS_PER_TOKEN)


# The last estimate and what it was of (see `estimate_input_tokens`).
_last: tuple[tuple[Message, ...], tuple[ToolSpec, ...], int] | None = None


def estimate_input_tokens(messages: Iterable[Message], tools: Iterable[ToolSpec] = ()) -> int:
    """Prompt tokens of a transcript plus its tool definitions."""
    # The router plans with this estimate and the offline provider bills it, for the same
    # request: the last answer is kept for the same (immutable) tuples. They are held here,
    # so their identities cannot be reused by other objects while they are compared.
    global _last
    last = _last
    if last is not None and last[0] is messages and last[1] is tools:
        return last[2]
    total = _estimate(messages, tools)
    if isinstance(messages, tuple) and isinstance(tools, tuple):
        _last = (messages, tools, total)
    return total


def _estimate(messages: Iterable[Message], tools: Iterable[ToolSpec]) -> int:
    total = 0
    for message in messages:
        total += _PER_MESSAGE + estimate_text_tokens(message.content)
        total += _PER_IMAGE * len(message.images)
        for call in message.tool_calls:
            total += estimate_text_tokens(call.name) + estimate_text_tokens(call.arguments_json)
    for tool in tools:
        total += tool.derived("tokens", _tool_tokens)
    return total


def _tool_tokens(tool: ToolSpec) -> int:
    """Tokens of one tool definition."""
    schema = json.dumps(tool.parameters, sort_keys=True, separators=(",", ":"))
    return estimate_text_tokens(f"{tool.name} {tool.description} {schema}")


def estimate_embedding_tokens(embedding: EmbeddingInput) -> int:
    """Tokens of an embeddings call's inputs (a token array counts its own length)."""
    return sum(
        estimate_text_tokens(item) if isinstance(item, str) else len(item)
        for item in embedding.inputs
    )

"""Transcripts as alternating user/assistant turns of content blocks (Anthropic, Bedrock)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from stepline_router.types import Message, Role

__all__ = ["block_turns"]


def block_turns(
    messages: tuple[Message, ...], blocks: Callable[[Message], list[dict[str, Any]]]
) -> list[dict[str, Any]]:
    """User/assistant turns; tool results ride in user turns; same-role neighbours merge.

    System messages are left out (both APIs take them apart); `blocks` renders one message.
    """
    out: list[dict[str, Any]] = []
    for message in messages:
        if message.role is Role.SYSTEM:
            continue
        role = "assistant" if message.role is Role.ASSISTANT else "user"
        rendered = blocks(message)
        if not rendered:
            continue
        if out and out[-1]["role"] == role:
            out[-1]["content"].extend(rendered)
        else:
            out.append({"role": role, "content": rendered})
    return out

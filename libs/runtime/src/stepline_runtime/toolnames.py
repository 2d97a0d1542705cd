"""What a tool name offered to a model may look like (OpenAI and Anthropic accept the same).

The executor publishes every tool under such a name (`stepline_executor.names`); the planner
refuses agent profiles that name a tool no model could be offered.
"""

from __future__ import annotations

import re

__all__ = ["MAX_TOOL_NAME_LENGTH", "SAFE_TOOL_NAME", "is_safe_tool_name"]

MAX_TOOL_NAME_LENGTH = 64
SAFE_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


def is_safe_tool_name(name: str) -> bool:
    """Whether providers accept `name` as a tool name as it is."""
    return SAFE_TOOL_NAME.fullmatch(name) is not None

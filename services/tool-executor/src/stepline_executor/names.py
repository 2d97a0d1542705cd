"""Provider-safe tool names: the one place where a tool's own name becomes its public name.

OpenAI and Anthropic accept tool names matching `^[a-zA-Z0-9_-]{1,64}$`. An MCP tool is known
as `<server>.<tool>` and its tool part may hold any character, so the registry publishes every
tool under a public name derived here, and dispatches a public name back to its tool. Only
public names reach `stepline.tools.v1`, so the planner, the models and the executor's dispatch
agree by construction. The mapping depends only on the set of names registered, never on the
order in which they arrived.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from collections.abc import Iterable

from stepline_runtime.toolnames import MAX_TOOL_NAME_LENGTH as MAX_NAME_LENGTH
from stepline_runtime.toolnames import SAFE_TOOL_NAME as SAFE_NAME
from stepline_runtime.toolnames import is_safe_tool_name as is_safe

__all__ = ["MAX_NAME_LENGTH", "SAFE_NAME", "is_safe", "public_names", "sanitize"]

_UNSAFE_RUN = re.compile(r"[^a-zA-Z0-9_-]+")
# An MCP server and its tool are joined by "__" (a single "." is not accepted by providers).
_SEPARATOR = "__"
_HASH_CHARS = 8


def sanitize(name: str) -> str:
    """`name` with "." as "__", other unsafe runs as "_", cut to 64 characters with a hash."""
    if is_safe(name):
        return name
    # "server.tool" reads "server__tool"; any other unsafe run becomes one "_".
    server, dot, rest = name.partition(".")
    parts = (server, rest) if dot else (name,)
    joined = _SEPARATOR.join(_UNSAFE_RUN.sub("_", part) for part in parts)
    joined = joined or "tool"
    if len(joined) > MAX_NAME_LENGTH:
        return _with_hash(joined, name)
    return joined


def public_names(names: Iterable[str]) -> dict[str, str]:
    """Public name of every tool name given; collisions resolved the same way in any order.

    A name that is already safe keeps it. A changed name that collides with another tool's
    name gets a short hash of its own name as suffix, so two changed names never share one.
    """
    wanted: dict[str, list[str]] = defaultdict(list)
    unique = sorted(set(names))
    for name in unique:
        wanted[sanitize(name)].append(name)
    result: dict[str, str] = {}
    for public, owners in wanted.items():
        for owner in owners:
            if owner == public or len(owners) == 1:
                result[owner] = public
            else:
                result[owner] = _with_hash(public, owner)
    return result


def _with_hash(public: str, original: str) -> str:
    digest = hashlib.sha256(original.encode("utf-8")).hexdigest()[:_HASH_CHARS]
    keep = MAX_NAME_LENGTH - _HASH_CHARS - 1
    return f"{public[:keep].rstrip('_-') or 'tool'}_{digest}"

"""The tool registry and the agent/tenant allowlists (pure, no I/O)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

from stepline_executor.model import Tool, ToolSpec

__all__ = ["Access", "Registry"]


class Registry:
    """Tools by name. Every change bumps `version`, so the publisher knows to re-announce."""

    def __init__(self, tools: Iterable[Tool] = ()) -> None:
        self._tools: dict[str, Tool] = {}
        self.version = 0
        for tool in tools:
            self.add(tool)

    def add(self, tool: Tool) -> None:
        """Register (or replace) a tool."""
        self._tools[tool.spec.name] = tool
        self.version += 1

    def remove_source(self, source: str) -> None:
        """Drop every tool that came from `source` (e.g. an MCP server that went away)."""
        names = [name for name, tool in self._tools.items() if tool.spec.source == source]
        for name in names:
            del self._tools[name]
        if names:
            self.version += 1

    def get(self, name: str) -> Tool | None:
        """The tool called `name`, if registered."""
        return self._tools.get(name)

    def specs(self) -> list[ToolSpec]:
        """Every registered tool's spec, sorted by name."""
        return [self._tools[name].spec for name in sorted(self._tools)]

    def names(self) -> list[str]:
        """Registered tool names, sorted."""
        return sorted(self._tools)


@dataclass(frozen=True, slots=True)
class Access:
    """Tool allowlists per tenant and per agent (glob patterns; key `*` is the fallback).

    A call is allowed only when both the tenant's and the agent's lists allow the tool; a tenant
    or agent with no entry and no `*` fallback may use no tool at all.
    """

    tenants: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    agents: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def refusal(self, tenant_id: str, agent: str, tool: str) -> str | None:
        """Why `tool` is not allowed for this tenant and agent, or None when it is."""
        tenant_rules = self.tenants.get(tenant_id, self.tenants.get("*"))
        if not tenant_rules or not _matches(tool, tenant_rules):
            return f"tool {tool!r} is not allowed for tenant {tenant_id!r}"
        agent_rules = self.agents.get(agent, self.agents.get("*"))
        if not agent_rules or not _matches(tool, agent_rules):
            return f"tool {tool!r} is not allowed for agent {agent or '(none)'!r}"
        return None

    def allowed(self, tenant_id: str, agent: str, names: Iterable[str]) -> list[str]:
        """The subset of `names` this tenant and agent may call."""
        return [n for n in names if self.refusal(tenant_id, agent, n) is None]


def _matches(tool: str, patterns: Iterable[str]) -> bool:
    return any(fnmatchcase(tool, pattern) for pattern in patterns)

"""The tool registry and the agent/tenant allowlists (pure, no I/O)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from fnmatch import fnmatchcase
from typing import Any

from stepline_executor.model import CallContext, Tool, ToolOutput, ToolSpec
from stepline_executor.names import public_names

__all__ = ["Access", "PublicTool", "Registry"]


class Registry:
    """Tools by public name. Every change bumps `version`, so the publisher knows to re-announce.

    Tools are added under their own name (`ToolSpec.name`, e.g. MCP's `server.tool`) and served
    under the provider-safe public name `names.public_names` gives them.
    """

    def __init__(self, tools: Iterable[Tool] = ()) -> None:
        self._tools: dict[str, Tool] = {}
        self._public: dict[str, PublicTool] = {}
        self.version = 0
        for tool in tools:
            self._tools[tool.spec.name] = tool
        self._republish()

    def add(self, tool: Tool) -> None:
        """Register (or replace) a tool under its own name."""
        self._tools[tool.spec.name] = tool
        self._republish()

    def replace_source(self, source: str, tools: Iterable[Tool]) -> None:
        """Make `tools` the whole set from `source` (e.g. an MCP server that (re)connected)."""
        for name in [n for n, t in self._tools.items() if t.spec.source == source]:
            del self._tools[name]
        for tool in tools:
            self._tools[tool.spec.name] = tool
        self._republish()

    def remove_source(self, source: str) -> None:
        """Drop every tool that came from `source` (e.g. an MCP server that went away)."""
        self.replace_source(source, ())

    def get(self, name: str) -> PublicTool | None:
        """The tool whose public name is `name`, if registered."""
        return self._public.get(name)

    def specs(self) -> list[ToolSpec]:
        """Every registered tool's public spec, sorted by public name."""
        return [self._public[name].spec for name in sorted(self._public)]

    def names(self) -> list[str]:
        """Registered public names, sorted."""
        return sorted(self._public)

    def tools(self) -> list[PublicTool]:
        """Every registered tool, sorted by public name."""
        return [self._public[name] for name in sorted(self._public)]

    def _republish(self) -> None:
        mapping = public_names(self._tools)
        public = {
            mapping[own]: PublicTool(tool, replace(tool.spec, name=mapping[own]), own)
            for own, tool in self._tools.items()
        }
        if public != self._public:
            self._public = public
            self.version += 1


@dataclass(frozen=True, slots=True)
class PublicTool:
    """A registered tool under its public name; `original` is the name the tool gave itself."""

    tool: Tool
    spec: ToolSpec
    original: str

    def parse(self, arguments: dict[str, Any]) -> Any:
        """Validate `arguments` (the tool's own rules)."""
        return self.tool.parse(arguments)

    async def run(self, parsed: Any, context: CallContext) -> ToolOutput:
        """Run the tool itself."""
        return await self.tool.run(parsed, context)


@dataclass(frozen=True, slots=True)
class Access:
    """Tool allowlists per tenant and per agent (glob patterns; key `*` is the fallback).

    A call is allowed only when both the tenant's and the agent's lists allow the tool; a tenant
    or agent with no entry and no `*` fallback may use no tool at all.
    """

    tenants: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    agents: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # Answers already worked out (glob matching on every call was a sixth of the executor's
    # per-call CPU); the lists never change, so neither do the answers. Bounded.
    _answers: dict[tuple[str, str, str, str], str | None] = field(
        default_factory=dict, init=False, compare=False, repr=False
    )

    def refusal(self, tenant_id: str, agent: str, tool: str, original: str = "") -> str | None:
        """Why `tool` is not allowed for this tenant and agent, or None when it is.

        Patterns may name a tool by its public name or by its own (`everything.*`).
        """
        key = (tenant_id, agent, tool, original)
        try:
            return self._answers[key]
        except KeyError:
            pass
        if len(self._answers) >= _MAX_ANSWERS:
            self._answers.clear()
        answer = self._answers[key] = self._refusal(tenant_id, agent, tool, original)
        return answer

    def _refusal(self, tenant_id: str, agent: str, tool: str, original: str) -> str | None:
        names = (tool, original) if original and original != tool else (tool,)
        tenant_rules = self.tenants.get(tenant_id, self.tenants.get("*"))
        if not tenant_rules or not _matches(names, tenant_rules):
            return f"tool {tool!r} is not allowed for tenant {tenant_id!r}"
        agent_rules = self.agents.get(agent, self.agents.get("*"))
        if not agent_rules or not _matches(names, agent_rules):
            return f"tool {tool!r} is not allowed for agent {agent or '(none)'!r}"
        return None

    def allowed(self, tenant_id: str, agent: str, tools: Iterable[PublicTool]) -> list[str]:
        """The public names of `tools` this tenant and agent may call."""
        return [
            t.spec.name
            for t in tools
            if self.refusal(tenant_id, agent, t.spec.name, t.original) is None
        ]


_MAX_ANSWERS = 4096


def _matches(names: Iterable[str], patterns: Iterable[str]) -> bool:
    return any(fnmatchcase(name, pattern) for name in names for pattern in patterns)

"""Agent profiles and planner policy from `deploy/config/agents.toml`; routes from the router's.

What a route may cost and hold is not typed here again: it is derived from the router's own
routes file and the price book (`stepline_routes.route_economics`), so a reservation always
covers the dearest deployment the router may fail over to.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from pathlib import Path
from typing import Any

from stepline_pricebook import ModelPrice, PriceBook
from stepline_routes import RoutesConfig, load_routes, route_economics
from stepline_runtime.toolnames import SAFE_TOOL_NAME, is_safe_tool_name
from stepline_vocab import ConfigurationError

__all__ = [
    "AgentProfile",
    "BudgetPolicy",
    "DeadlinePolicy",
    "Profiles",
    "ProfilesError",
    "Route",
    "SessionBusyPolicy",
    "StepTimeoutPolicy",
    "default_path",
    "load",
    "parse",
]


class ProfilesError(ConfigurationError):
    """agents.toml is malformed; the message names the entry and what to fix."""


class BudgetPolicy(StrEnum):
    """What to do when the next model call's worst-case cost does not fit."""

    WRAP_UP = "wrap_up"
    FAIL = "fail"


class DeadlinePolicy(StrEnum):
    """What to do when the run's deadline passes."""

    WRAP_UP = "wrap_up"
    FAIL = "fail"


class StepTimeoutPolicy(StrEnum):
    """What to do when a tool step times out."""

    CONTINUE = "continue"  # the model sees a timeout result and carries on
    FAIL = "fail"


class SessionBusyPolicy(StrEnum):
    """What to do with a goal on a session that has a run in progress."""

    QUEUE = "queue"
    REJECT = "reject"


@dataclass(frozen=True, slots=True)
class Route:
    """What the planner must know about a model route: its price ceiling and context window."""

    name: str
    price: ModelPrice
    context_window_tokens: int
    # The route asks for streamed model calls (routes.toml `stream = true`).
    stream: bool = False


@dataclass(frozen=True, slots=True)
class AgentProfile:
    """One agent: prompt, route, tools and limits."""

    name: str
    system_prompt: str
    route: str
    tools: tuple[str, ...] = ()
    delegates: tuple[str, ...] = ()
    approvals: Mapping[str, bool] = field(default_factory=dict)
    max_steps: int = 20
    max_parallel_tool_calls: int = 4
    run_deadline_s: float = 600.0
    model_step_deadline_s: float = 120.0
    tool_step_deadline_s: float = 60.0
    approval_timeout_s: float = 3600.0
    wrap_up_grace_s: float = 30.0
    max_cost: Decimal | None = None
    max_output_tokens: int = 1024
    wrap_up_max_output_tokens: int = 256
    max_tool_output_chars: int = 8000
    on_budget_exceeded: BudgetPolicy = BudgetPolicy.WRAP_UP
    on_deadline: DeadlinePolicy = DeadlinePolicy.FAIL
    on_tool_timeout: StepTimeoutPolicy = StepTimeoutPolicy.CONTINUE
    # Ask the router for streamed model calls (a route may ask for it too).
    stream: bool = False


@dataclass(frozen=True, slots=True)
class Profiles:
    """Every agent and route, plus planner-wide policy."""

    agents: Mapping[str, AgentProfile]
    routes: Mapping[str, Route]
    currency: str = "USD"
    session_busy: SessionBusyPolicy = SessionBusyPolicy.QUEUE
    session_memory_messages: int = 50
    finished_retention_s: float = 7 * 24 * 3600.0
    # tenant -> tools it may use; a tenant not listed may use every tool its agents name.
    tenant_tools: Mapping[str, frozenset[str]] = field(default_factory=dict)


_AGENT_KEYS = {f for f in AgentProfile.__dataclass_fields__ if f != "name"}


def default_path() -> Path:
    """`STEPLINE_AGENTS`, else `deploy/config/agents.toml` of this checkout."""
    configured = os.environ.get("STEPLINE_AGENTS")
    if configured:
        return Path(configured)
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "deploy" / "config" / "agents.toml"
        if candidate.is_file():
            return candidate
    raise ProfilesError("no agents.toml found: set STEPLINE_AGENTS to its path")


def load(
    prices: PriceBook, path: Path | None = None, routes: RoutesConfig | None = None
) -> Profiles:
    """Read an agents file; routes from `routes` (default: the router's routes file)."""
    source = path or default_path()
    try:
        text = source.read_text(encoding="utf-8")
    except OSError as error:
        raise ProfilesError(f"cannot read {source}: {error.strerror}") from error
    return parse(text, prices, routes or load_routes(), origin=str(source))


def parse(text: str, prices: PriceBook, routes: RoutesConfig, origin: str = "<agents>") -> Profiles:
    """Parse TOML text; every route an agent uses must be priced so reservations are bounds."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ProfilesError(f"{origin}: not valid TOML: {error}") from error
    if "routes" in data:
        raise ProfilesError(
            f"{origin}: [routes] is not read here any more: a route's price and context window "
            "come from the router's routes file (STEPLINE_ROUTES) and the price book"
        )
    priced: dict[str, Route] = {}
    unpriced: dict[str, tuple[str, ...]] = {}
    # A deployment's name is a route of that one deployment too (the router's `route_for`), so
    # a replay may name a model (`--model`) as well as a route.
    singles = {n: routes.route_for(n) for n in routes.deployments if n not in routes.routes}
    for name, route in [*routes.routes.items(), *singles.items()]:
        if route is None:
            continue
        economics = route_economics(route, prices)
        if economics.price is None:
            unpriced[name] = economics.unpriced
        else:
            priced[name] = Route(
                name, economics.price, economics.context_window_tokens, economics.stream
            )
    agents: dict[str, AgentProfile] = {}
    for name, entry in data.get("agents", {}).items():
        where = f"{origin}: agents.{name}"
        agent = _agent(name, entry, where)
        if agent.route in unpriced:
            raise ProfilesError(
                f"{where}: route {agent.route!r} may go to {list(unpriced[agent.route])}, which "
                "the price book does not price; price them so a step's cost can be reserved"
            )
        agents[name] = agent
    for agent in agents.values():
        for delegate in agent.delegates:
            if delegate not in agents:
                raise ProfilesError(
                    f"{origin}: agents.{agent.name} delegates to unknown {delegate}"
                )
    planner = data.get("planner", {})
    tenants = {
        tenant: frozenset(entry.get("allowed_tools", []))
        for tenant, entry in data.get("tenants", {}).items()
    }
    try:
        return Profiles(
            agents=agents,
            routes=priced,
            currency=prices.currency,
            session_busy=SessionBusyPolicy(planner.get("session_busy", "queue")),
            session_memory_messages=int(planner.get("session_memory_messages", 50)),
            finished_retention_s=float(planner.get("finished_retention_s", 7 * 24 * 3600)),
            tenant_tools=tenants,
        )
    except ValueError as error:
        raise ProfilesError(f"{origin}: planner: {error}") from error


def _agent(name: str, entry: dict[str, Any], where: str) -> AgentProfile:
    unknown = set(entry) - _AGENT_KEYS
    if unknown:
        raise ProfilesError(f"{where}: unknown keys {sorted(unknown)}")
    # A route missing from the routes file is not an error here: that agent's goals fail with
    # a clear reason, the others run (a trimmed routes file, e.g. the demo's, stays usable).
    _str(entry, "route", where)
    if not isinstance(entry.get("stream", False), bool):
        raise ProfilesError(f"{where}: `stream` must be true or false")
    values = dict(entry)
    values["tools"] = tuple(entry.get("tools", ()))
    unsafe = [t for t in values["tools"] if not is_safe_tool_name(str(t))]
    if unsafe:
        raise ProfilesError(
            f"{where}: tools {unsafe} cannot be offered to a model (names must match"
            f" {SAFE_TOOL_NAME.pattern}); an MCP tool <server>.<tool> is offered as"
            " <server>__<tool> (e.g. everything__get-sum)"
        )
    values["delegates"] = tuple(entry.get("delegates", ()))
    values["approvals"] = {str(k): bool(v) for k, v in entry.get("approvals", {}).items()}
    if "max_cost" in entry:
        try:
            values["max_cost"] = Decimal(str(entry["max_cost"]))
        except InvalidOperation as error:
            raise ProfilesError(f"{where}: max_cost must be a decimal string") from error
    try:
        profile = AgentProfile(name=name, **values)
        for enum, key in (
            (BudgetPolicy, "on_budget_exceeded"),
            (DeadlinePolicy, "on_deadline"),
            (StepTimeoutPolicy, "on_tool_timeout"),
        ):
            enum(getattr(profile, key))
    except (TypeError, ValueError) as error:
        raise ProfilesError(f"{where}: {error}") from error
    if profile.max_steps < 2 or profile.max_parallel_tool_calls < 1:
        raise ProfilesError(f"{where}: max_steps must be >= 2 and max_parallel_tool_calls >= 1")
    return AgentProfile(
        **{
            **{k: getattr(profile, k) for k in AgentProfile.__dataclass_fields__},
            "on_budget_exceeded": BudgetPolicy(profile.on_budget_exceeded),
            "on_deadline": DeadlinePolicy(profile.on_deadline),
            "on_tool_timeout": StepTimeoutPolicy(profile.on_tool_timeout),
        }
    )


def _str(entry: dict[str, Any], key: str, where: str) -> str:
    value = entry.get(key)
    if not isinstance(value, str) or not value:
        raise ProfilesError(f"{where}: `{key}` is required (a non-empty string)")
    return value

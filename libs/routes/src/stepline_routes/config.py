"""Routes and deployments from TOML: what a route name means, validated before it is used.

Credentials are referred to by environment variable (or secret file) *name* only; a routes
file that carries a secret value is refused. Prices are not here: they come from the price book.
The router routes by this file; the planner reads the same file for what a route may cost.
"""

from __future__ import annotations

import hashlib
import os
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from stepline_routes.presets import PRESETS
from stepline_vocab import ConfigurationError

__all__ = [
    "BreakerPolicy",
    "Capabilities",
    "Deployment",
    "RateLimits",
    "RetryPolicy",
    "Route",
    "RoutesConfig",
    "RoutesError",
    "SchemaStyle",
    "Strategy",
    "Timeouts",
    "ToolMode",
    "default_path",
    "load_routes",
    "parse_routes",
]

# Keys that would put a secret into the file; refused with a pointer to `credential_env`.
_SECRET_KEYS = frozenset({"api_key", "apikey", "key", "token", "secret", "password", "auth"})


class RoutesError(ConfigurationError):
    """The routes file is invalid; the message names the entry and what to fix."""


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    """Open after `failure_threshold` failures within `window_s`; probe after `cooldown_s`."""

    failure_threshold: int = 5
    window_s: float = 30.0
    cooldown_s: float = 15.0


class Strategy(StrEnum):
    """How a route orders its eligible deployments."""

    PRIORITY = "priority"
    LOWEST_COST = "lowest_cost"
    LOWEST_LATENCY = "lowest_latency"
    WEIGHTED = "weighted"


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a deployment can do; requests needing more are never sent to it.

    `stated` names the keys the routes file set: the others may be filled from the model
    catalog (`with_catalog`), and fall back to these defaults when the catalog does not know.
    """

    tools: bool = True
    streaming: bool = True
    context_window: int = 128_000
    max_output_tokens: int = 4_096
    # What the deployment serves: chat calls, embeddings calls, or both (never the wrong kind).
    chat: bool = True
    embeddings: bool = False
    # Image parts in the input.
    vision: bool = False
    # `response_format` with a JSON schema (constrained output).
    json_schema: bool = True
    stated: frozenset[str] = frozenset()

    def with_catalog(self, context_window: int | None, features: frozenset[str]) -> Capabilities:
        """These capabilities with what the catalog knows filled in where the file is silent.

        The catalog knows a model's context window and, from its prices, whether it reads
        images ("image-in"); a local price-book entry may also declare "tools", "json-schema"
        or "vision". The routes file always wins: it describes the deployment actually run.
        """
        known: dict[str, object] = {}
        if context_window and "context_window" not in self.stated:
            known["context_window"] = context_window
        for key, feature in _FEATURES.items():
            if key not in self.stated and any(f in features for f in feature):
                known[key] = True
        return replace(self, **known) if known else self  # type: ignore[arg-type]


# Catalog or price-book features that show a capability.
_FEATURES = {"vision": ("image-in", "vision"), "tools": ("tools",), "json_schema": ("json-schema",)}


class SchemaStyle(StrEnum):
    """How an OpenAI-compatible server takes a JSON schema for constrained output.

    `openai`: `response_format = {"type": "json_schema", "json_schema": {...}}` (OpenAI, vLLM,
    Ollama, llama.cpp's llama-server). `json_object`: `{"type": "json_object", "schema": ...}`,
    the only form llama-cpp-python's server accepts.
    """

    OPENAI = "openai"
    JSON_OBJECT = "json_object"


class ToolMode(StrEnum):
    """How tools reach a deployment's model.

    `native`: the provider's own tool calling. `json`: for a model without it, the tools are
    described in the prompt and the model answers through constrained JSON output (a JSON
    schema `response_format`) from which the router parses the tool call.
    """

    NATIVE = "native"
    JSON = "json"


@dataclass(frozen=True, slots=True)
class RateLimits:
    """Requests and tokens per minute this router may send to a deployment; 0: unlimited."""

    rpm: int = 0
    tpm: int = 0


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Per-attempt timeouts in seconds.

    `first_token_s` bounds a streamed attempt until its first content token (a provider that
    sends headers and then nothing is failed over); `idle_s` bounds the gap between deltas
    once output flows (a stalled stream is ended).
    """

    connect_s: float = 5.0
    first_byte_s: float = 60.0
    total_s: float = 120.0
    first_token_s: float = 15.0
    idle_s: float = 30.0


_DEFAULT_TIMEOUTS = Timeouts()


@dataclass(frozen=True, slots=True)
class Deployment:
    """One provider + model + credential alias, with capabilities, limits and timeouts."""

    name: str
    provider: str
    model: str
    base_url: str = ""
    credential_env: str = ""
    capabilities: Capabilities = field(default_factory=Capabilities)
    rate_limits: RateLimits = field(default_factory=RateLimits)
    timeouts: Timeouts = field(default_factory=Timeouts)
    weight: float = 1.0
    headers: Mapping[str, str] = field(default_factory=dict)
    tool_mode: ToolMode = ToolMode.NATIVE
    schema_style: SchemaStyle = SchemaStyle.OPENAI

    def serves_tools(self) -> bool:
        """Whether a request with tools can go here: natively, or through JSON output."""
        caps = self.capabilities
        if self.tool_mode is ToolMode.JSON:
            return caps.json_schema
        return caps.tools


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Retries on one deployment before failing over, and the backoff between them."""

    retries_per_deployment: int = 1
    max_attempts: int = 8
    backoff_base_s: float = 0.25
    backoff_cap_s: float = 8.0
    # A Retry-After longer than this is not waited for: fail over instead.
    max_retry_after_s: float = 30.0


@dataclass(frozen=True, slots=True)
class Route:
    """A logical model name mapped to deployments and a strategy."""

    name: str
    deployments: tuple[Deployment, ...]
    strategy: Strategy = Strategy.PRIORITY
    # A fallback may cost at most this many times the first eligible deployment's estimate.
    max_fallback_price_ratio: Decimal | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    # Callers that do not say otherwise (e.g. the planner's agents) ask for streamed calls.
    stream: bool = False


@dataclass(frozen=True, slots=True)
class RoutesConfig:
    """One validated version of the routes file."""

    routes: Mapping[str, Route]
    deployments: Mapping[str, Deployment]
    breaker: BreakerPolicy = field(default_factory=BreakerPolicy)
    default_deadline_s: float = 120.0
    digest: str = ""
    # The file's [defaults] retry policy, for calls that name a deployment instead of a route.
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    def route_for(self, model: str) -> Route | None:
        """The route `model` names, or a one-deployment route when it names a deployment."""
        route = self.routes.get(model)
        if route is not None:
            return route
        deployment = self.deployments.get(model)
        if deployment is None:
            return None
        return Route(name=model, deployments=(deployment,), retry=self.retry)


def default_path() -> Path:
    """`STEPLINE_ROUTES`, else `deploy/config/routes.toml` of this checkout."""
    configured = os.environ.get("STEPLINE_ROUTES")
    if configured:
        return Path(configured)
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "deploy" / "config" / "routes.toml"
        if candidate.is_file():
            return candidate
    raise RoutesError("no routes file found: set STEPLINE_ROUTES to a routes.toml")


def load_routes(
    path: Path | None = None, *, known_providers: Iterable[str] | None = None
) -> RoutesConfig:
    """Read and validate a routes file (default: `default_path()`)."""
    source = path or default_path()
    try:
        text = source.read_text(encoding="utf-8")
    except OSError as error:
        raise RoutesError(f"cannot read routes file {source}: {error.strerror}") from error
    return parse_routes(text, known_providers=known_providers, origin=str(source))


def parse_routes(
    text: str, *, known_providers: Iterable[str] | None = None, origin: str = "<routes>"
) -> RoutesConfig:
    """Parse and validate a routes TOML document.

    `known_providers` is the router's adapter registry; None (a reader that sends no calls,
    like the planner) leaves provider names unchecked.
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise RoutesError(f"{origin}: not valid TOML: {error}") from error
    providers = None if known_providers is None else frozenset(known_providers)
    defaults = _table(data, "defaults", origin)
    retry = _retry(defaults, RetryPolicy(), f"{origin}: [defaults]")
    deployments: dict[str, Deployment] = {}
    for name, entry in _table(data, "deployments", origin).items():
        where = f"{origin}: [deployments.{name}]"
        deployments[name] = _with_preset(_deployment(name, entry, providers, where))
    routes: dict[str, Route] = {}
    for name, entry in _table(data, "routes", origin).items():
        where = f"{origin}: [routes.{name}]"
        if not isinstance(entry, dict):
            raise RoutesError(f"{where}: must be a table")
        names = entry.get("deployments")
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise RoutesError(f"{where}: `deployments` must be a non-empty list of names")
        missing = [n for n in names if n not in deployments]
        if missing:
            raise RoutesError(f"{where}: unknown deployments {missing}; define [deployments.X]")
        try:
            strategy = Strategy(entry.get("strategy", "priority"))
        except ValueError as error:
            choices = ", ".join(s.value for s in Strategy)
            raise RoutesError(f"{where}: `strategy` must be one of {choices}") from error
        stream = _bool(entry, "stream", False, where)
        unstreamed = [n for n in names if stream and not deployments[n].capabilities.streaming]
        if unstreamed:
            raise RoutesError(f"{where}: `stream = true` but {unstreamed} cannot stream")
        routes[name] = Route(
            name=name,
            deployments=tuple(deployments[n] for n in names),
            strategy=strategy,
            max_fallback_price_ratio=_ratio(entry, where),
            retry=_retry(entry, retry, where),
            stream=stream,
        )
    if not routes:
        raise RoutesError(f"{origin}: no [routes.*] defined")
    breaker_table = _table(data, "breaker", origin)
    breaker = BreakerPolicy(
        failure_threshold=_int(breaker_table, "failure_threshold", 5, origin, minimum=1),
        window_s=_number(breaker_table, "window_s", 30.0, origin),
        cooldown_s=_number(breaker_table, "cooldown_s", 15.0, origin),
    )
    return RoutesConfig(
        routes=routes,
        deployments=deployments,
        breaker=breaker,
        default_deadline_s=_number(defaults, "deadline_s", 120.0, origin),
        digest=hashlib.sha256(text.encode()).hexdigest()[:12],
        retry=retry,
    )


def _table(data: Mapping[str, Any], name: str, where: str) -> dict[str, Any]:
    value = data.get(name, {})
    if not isinstance(value, dict):
        raise RoutesError(f"{where}: [{name}] must be a table")
    return value


def _deployment(name: str, entry: Any, providers: frozenset[str] | None, where: str) -> Deployment:
    if not isinstance(entry, dict):
        raise RoutesError(f"{where}: must be a table")
    leaked = sorted(k for k in entry if k.lower() in _SECRET_KEYS)
    if leaked:
        raise RoutesError(
            f"{where}: {leaked} would put a secret in the routes file; set `credential_env` "
            "to the NAME of an environment variable (or secret file) holding it"
        )
    provider = _string(entry, "provider", where, required=True)
    if providers is not None and provider not in providers:
        raise RoutesError(f"{where}: unknown provider {provider!r}; one of {sorted(providers)}")
    model = _string(entry, "model", where, required=True)
    credential_env = _string(entry, "credential_env", where)
    if credential_env and not credential_env.replace("_", "").isalnum():
        raise RoutesError(f"{where}: `credential_env` must be a variable name like OPENAI_API_KEY")
    caps = _table(entry, "capabilities", where)
    limits = _table(entry, "rate_limits", where)
    timeouts = _table(entry, "timeouts", where)
    headers = _table(entry, "headers", where)
    if not all(isinstance(v, str) for v in headers.values()):
        raise RoutesError(f"{where}: [headers] values must be strings")
    if any(k.lower() in ("authorization", "x-api-key", "api-key") for k in headers):
        raise RoutesError(f"{where}: credentials go in `credential_env`, not in [headers]")
    if not _bool(caps, "chat", True, where) and not _bool(caps, "embeddings", False, where):
        raise RoutesError(f"{where}: serves neither chat nor embeddings; set one to true")
    weight = _number(entry, "weight", 1.0, where)
    if weight <= 0:
        raise RoutesError(f"{where}: `weight` must be positive")
    tool_mode = _choice(entry, "tool_mode", ToolMode, ToolMode.NATIVE, where)
    schema_style = _choice(entry, "schema_style", SchemaStyle, SchemaStyle.OPENAI, where)
    unknown = sorted(set(caps) - set(_CAPABILITY_KEYS))
    if unknown:
        raise RoutesError(f"{where}: unknown capabilities {unknown}; known: {_CAPABILITY_KEYS}")
    return Deployment(
        name=name,
        provider=provider,
        model=model,
        base_url=_string(entry, "base_url", where).rstrip("/"),
        credential_env=credential_env,
        capabilities=Capabilities(
            tools=_bool(caps, "tools", True, where),
            streaming=_bool(caps, "streaming", True, where),
            context_window=_int(caps, "context_window", 128_000, where, minimum=1),
            max_output_tokens=_int(caps, "max_output_tokens", 4_096, where, minimum=1),
            chat=_bool(caps, "chat", True, where),
            embeddings=_bool(caps, "embeddings", False, where),
            vision=_bool(caps, "vision", False, where),
            json_schema=_bool(caps, "json_schema", True, where),
            stated=frozenset(caps),
        ),
        rate_limits=RateLimits(
            rpm=_int(limits, "rpm", 0, where), tpm=_int(limits, "tpm", 0, where)
        ),
        timeouts=Timeouts(
            connect_s=_number(timeouts, "connect_s", 5.0, where),
            first_byte_s=_number(timeouts, "first_byte_s", 60.0, where),
            total_s=_number(timeouts, "total_s", 120.0, where),
            first_token_s=_number(
                timeouts, "first_token_s", _DEFAULT_TIMEOUTS.first_token_s, where
            ),
            idle_s=_number(timeouts, "idle_s", _DEFAULT_TIMEOUTS.idle_s, where),
        ),
        weight=weight,
        headers=dict(headers),
        tool_mode=tool_mode,
        schema_style=schema_style,
    )


def _with_preset(deployment: Deployment) -> Deployment:
    """A preset's base URL and key variable where the deployment named a preset and set none."""
    preset = PRESETS.get(deployment.provider)
    if preset is None:
        return deployment
    return replace(
        deployment,
        base_url=deployment.base_url or preset.base_url,
        credential_env=deployment.credential_env or preset.key_env,
    )


_CAPABILITY_KEYS = [
    "tools",
    "streaming",
    "context_window",
    "max_output_tokens",
    "chat",
    "embeddings",
    "vision",
    "json_schema",
]


def _retry(entry: Mapping[str, Any], base: RetryPolicy, where: str) -> RetryPolicy:
    return RetryPolicy(
        retries_per_deployment=_int(
            entry, "retries_per_deployment", base.retries_per_deployment, where
        ),
        max_attempts=_int(entry, "max_attempts", base.max_attempts, where, minimum=1),
        backoff_base_s=_number(entry, "backoff_base_s", base.backoff_base_s, where),
        backoff_cap_s=_number(entry, "backoff_cap_s", base.backoff_cap_s, where),
        max_retry_after_s=_number(entry, "max_retry_after_s", base.max_retry_after_s, where),
    )


def _ratio(entry: Mapping[str, Any], where: str) -> Decimal | None:
    raw = entry.get("max_fallback_price_ratio")
    if raw is None:
        return None
    if not isinstance(raw, str | int):
        raise RoutesError(f'{where}: `max_fallback_price_ratio` must be a decimal string ("3")')
    try:
        value = Decimal(str(raw))
    except InvalidOperation as error:
        raise RoutesError(f"{where}: `max_fallback_price_ratio` is not a number") from error
    if not value.is_finite() or value < 1:
        raise RoutesError(f"{where}: `max_fallback_price_ratio` must be at least 1")
    return value


_E = TypeVar("_E", bound=StrEnum)


def _choice(entry: Mapping[str, Any], key: str, kind: type[_E], default: _E, where: str) -> _E:
    try:
        return kind(entry.get(key, default.value))
    except ValueError as error:
        choices = ", ".join(m.value for m in kind)
        raise RoutesError(f"{where}: `{key}` must be one of {choices}") from error


def _string(entry: Mapping[str, Any], key: str, where: str, *, required: bool = False) -> str:
    value = entry.get(key, "")
    if not isinstance(value, str) or (required and not value):
        raise RoutesError(f"{where}: `{key}` must be a {'non-empty ' if required else ''}string")
    return value


def _bool(entry: Mapping[str, Any], key: str, default: bool, where: str) -> bool:
    value = entry.get(key, default)
    if not isinstance(value, bool):
        raise RoutesError(f"{where}: `{key}` must be true or false")
    return value


def _int(entry: Mapping[str, Any], key: str, default: int, where: str, minimum: int = 0) -> int:
    value = entry.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise RoutesError(f"{where}: `{key}` must be an integer >= {minimum}")
    return value


def _number(entry: Mapping[str, Any], key: str, default: float, where: str) -> float:
    value = entry.get(key, default)
    if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
        raise RoutesError(f"{where}: `{key}` must be a non-negative number")
    return float(value)

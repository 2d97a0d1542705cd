"""Builders shared by the router tests."""

from __future__ import annotations

import random
import socket
import subprocess
import sys
from collections.abc import Mapping
from datetime import date
from decimal import Decimal
from pathlib import Path

import httpx
from genai_prices import Usage as CatalogUsage
from genai_prices import calc_price

from stepline_pricebook import PriceBook
from stepline_router.app import PROVIDER_NAMES, build_providers
from stepline_router.clock import SystemClock
from stepline_router.credentials import Credentials
from stepline_router.router import Router
from stepline_router.routes import RoutesConfig, parse_routes
from stepline_router.types import Message, ModelRequest, Params, Role, ToolCall, ToolSpec

__all__ = [
    "BOOK",
    "PROVIDERS",
    "QUICK",
    "ROOT",
    "TOOL_TRANSCRIPT",
    "catalog_cost",
    "free_port",
    "http_router",
    "pair_routes",
    "request",
    "routes",
    "shipped_book",
    "spawn",
    "weather_tool",
]

ROOT = Path(__file__).resolve().parents[2]

# Every adapter of the router, and the scripted twin of the unit tests.
PROVIDERS = (*PROVIDER_NAMES, "scripted")

BOOK = PriceBook.parse(
    """
version = "test-1"
currency = "USD"
[[models]]
provider = "scripted"
model = "cheap"
input_per_mtok = "1.00"
output_per_mtok = "2.00"
[[models]]
provider = "scripted"
model = "dear"
input_per_mtok = "10.00"
output_per_mtok = "20.00"
[[models]]
provider = "openai"
model = "gpt-4o-mini"
input_per_mtok = "0.15"
output_per_mtok = "0.60"
cached_input_per_mtok = "0.075"
[[models]]
provider = "anthropic"
model = "claude-haiku-4-5"
input_per_mtok = "1.00"
output_per_mtok = "5.00"
cached_input_per_mtok = "0.10"
cache_write_per_mtok = "1.25"
[[models]]
provider = "local"
model = "stepline-local-1"
input_per_mtok = "0.10"
output_per_mtok = "0.40"
"""
)


def shipped_book() -> PriceBook:
    """The shipped price book (its local layer over the catalog) resolved for a fixed day."""
    return PriceBook.load(ROOT / "deploy" / "config" / "pricebook.toml", as_of=date(2026, 12, 1))


# A conversation that used a tool: each wire format must carry the call and its result.
TOOL_TRANSCRIPT = (
    Message(Role.SYSTEM, "be brief"),
    Message(Role.USER, "weather in Oslo?"),
    Message(Role.ASSISTANT, "checking", (ToolCall("call_1", "get_weather", '{"city":"Oslo"}'),)),
    Message(Role.TOOL, "sunny", tool_call_id="call_1"),
    Message(Role.USER, "and Rome?"),
)


def http_router(
    config: RoutesConfig,
    client: httpx.AsyncClient,
    credentials: Credentials,
    prices: PriceBook = BOOK,
    *,
    private_images: bool = False,
) -> Router:
    """A router over every real HTTP adapter, with seeded jitter."""
    clock = SystemClock()
    return Router(
        routes=lambda: config,
        prices=lambda: prices,
        providers=build_providers(client, clock, credentials, private_images=private_images),
        credentials=credentials,
        clock=clock,
        random=random.Random(7).random,
    )


def routes(body: str, *, defaults: str = "", breaker: str = "") -> RoutesConfig:
    """A routes config from TOML fragments (deployments and routes tables)."""
    text = (
        f"[defaults]\nbackoff_base_s = 0.01\nbackoff_cap_s = 0.05\n{defaults}\n"
        f"[breaker]\n{breaker}\n{body}"
    )
    return parse_routes(text, known_providers=PROVIDERS)


# Attempt timeouts of the loopback provider tests: a fault shows within seconds.
QUICK = "{ connect_s = 1, first_byte_s = 1, total_s = 3 }"


def pair_routes(
    primary: str,
    fallback: str,
    provider: str,
    model: str,
    *,
    fallback_provider: str = "",
    fallback_model: str = "",
    credential: str = "KEY",
    timeouts: str = QUICK,
    defaults: str = "",
    breaker: str = "",
    extra: str = "",
) -> RoutesConfig:
    """Route `default` over deployment `primary` (at URL `primary`), then `fallback`; `extra`
    lines go into both deployment tables."""
    body = ""
    for name, url, kind, named in (
        ("primary", primary, provider, model),
        ("fallback", fallback, fallback_provider or provider, fallback_model or model),
    ):
        body += (
            f'[deployments.{name}]\nprovider = "{kind}"\nmodel = "{named}"\n'
            f'base_url = "{url}"\ncredential_env = "{credential}"\ntimeouts = {timeouts}\n'
            f"{extra}"
        )
    body += '[routes.default]\ndeployments = ["primary", "fallback"]\n'
    return routes(body, defaults=defaults, breaker=breaker)


def catalog_cost(
    model: str, provider_id: str, input_tokens: int, output: int, read: int = 0, write: int = 0
) -> Decimal:
    """What the maintained catalog (genai-prices) charges for these tokens."""
    usage = CatalogUsage(
        input_tokens=input_tokens,
        output_tokens=output,
        cache_read_tokens=read,
        cache_write_tokens=write,
    )
    return calc_price(usage, model, provider_id=provider_id).total_price


def weather_tool() -> ToolSpec:
    """A tool definition."""
    return ToolSpec(
        "get_weather",
        "Current weather for a city",
        {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    )


def request(
    *,
    route: str = "default",
    text: str = "hello",
    tools: tuple[ToolSpec, ...] = (),
    stream: bool = False,
    max_cost: Decimal | None = None,
    params: Params | None = None,
    call_id: str = "run-1:1:1",
) -> ModelRequest:
    """A model request on `route`."""
    return ModelRequest(
        call_id=call_id,
        tenant_id="tenant-a",
        route=route,
        messages=(Message(Role.SYSTEM, "be brief"), Message(Role.USER, text)),
        tools=tools,
        params=params or Params(),
        max_cost=max_cost,
        stream=stream,
        run_id="run-1",
        step_id="run-1:1",
        agent="helper",
    )


def free_port() -> int:
    """A loopback port free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def spawn(module: str, env: Mapping[str, str], log: Path) -> subprocess.Popen[bytes]:
    """`python -m module` from the repository root, its output to `log`."""
    with log.open("wb") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", module], cwd=ROOT, stdout=sink, stderr=sink, env=dict(env)
        )

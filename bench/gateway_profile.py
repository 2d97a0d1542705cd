"""The gateway's CPU per request, in one process: where it goes, and the A/B of the provider path.

The gateway app (as `stepline_router.app` builds it: dev key, one route on the instant upstream
of `bench.router` in its own process, usage encoded to `UsageRecorded` records and dropped) and
an aiohttp client share this process, so `cProfile` sees every Python call of a request and
`time.process_time` its CPU, client included. `--via-httpx` sends the provider POST through
httpx over the aiohttp transport (the path before the shared helpers went straight to aiohttp),
for an A/B on the same machine. Latencies are wall time and move with the machine's load; the
call counts do not.

`python -m bench.gateway_profile [N] [--stream] [--via-httpx] [--profile]` (not part of
`make bench`; BENCHMARKS.md §6 quotes it).
"""

from __future__ import annotations

import asyncio
import cProfile
import io
import pstats
import sys
import time
import uuid
from collections.abc import Sequence
from typing import Any

import aiohttp
import httpx
from aiohttp import web

import stepline_router.providers.http as provider_http
from bench.router import MESSAGES, MODEL, Upstream
from stepline_pricebook import PriceBook
from stepline_router.app import PROVIDER_NAMES, build_providers
from stepline_router.clock import SystemClock
from stepline_router.credentials import StaticCredentials
from stepline_router.devkey import DevKeyAuthenticator, UnmeteredQuotas
from stepline_router.gateway import Gateway
from stepline_router.handlers import ModelCallHandler
from stepline_router.handlers import Topics as OutputTopics
from stepline_router.http_api import build_app
from stepline_router.providers.transport import FastTransport
from stepline_router.router import CallOutcome, Router
from stepline_router.routes import parse_routes
from stepline_router.types import ModelRequest

__all__ = ["main"]

KEY = "sk-profile-not-a-secret"
WARMUP = 200


async def main(count: int, *, stream: bool, via_httpx: bool, profile: bool) -> None:
    """Time `count` requests direct and through the gateway; print CPU and, asked, the profile."""
    if via_httpx:
        # The helpers then take their httpx path: the same requests, through httpx's machinery.
        vars(provider_http)["session_of"] = lambda client: None
    kind = "sse" if stream else "ok"
    async with Upstream() as upstream:
        config = parse_routes(
            f'[deployments.up]\nprovider = "openai_compatible"\nmodel = "{MODEL}"\n'
            f'base_url = "{upstream}/{kind}"\n[routes.default]\ndeployments = ["up"]\n',
            known_providers=PROVIDER_NAMES,
        )
        book = PriceBook.load()
        clock = SystemClock()
        limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
        async with httpx.AsyncClient(transport=FastTransport(limits), limits=limits) as client:
            router = Router(
                routes=lambda: config,
                prices=lambda: book,
                providers=build_providers(client, clock),
                credentials=StaticCredentials({}),
                clock=clock,
                random=lambda: 0.5,
            )
            handler = ModelCallHandler(router, OutputTopics("results", "usage"), clock, source="p")

            async def publish(calls: Sequence[tuple[ModelRequest, CallOutcome]]) -> None:
                for call in calls:
                    handler.usage_outputs(*call)  # encoded as in production, then dropped

            gateway = Gateway(
                router=router,
                routes=lambda: config,
                prices=lambda: book,
                authenticator=DevKeyAuthenticator(KEY, "dev"),
                quotas=UnmeteredQuotas(),
                publish_usage=publish,
            )
            runner = web.AppRunner(build_app(gateway, clock, lambda: uuid.uuid4().hex))
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            address = runner.addresses[0]
            try:
                await _run(address[1], upstream, kind, count, stream, profile)
            finally:
                await runner.cleanup()


async def _run(
    port: int, upstream: str, kind: str, count: int, stream: bool, profile: bool
) -> None:
    body: dict[str, Any] = {"model": "default", "messages": MESSAGES, "stream": stream}
    direct_body = {**body, "model": MODEL}
    async with aiohttp.ClientSession() as session:

        async def through() -> None:
            async with session.post(
                f"http://127.0.0.1:{port}/v1/chat/completions",
                json=body,
                headers={"authorization": f"Bearer {KEY}"},
            ) as response:
                await response.read()
                assert response.status == 200, response.status

        async def direct() -> None:
            url = f"{upstream}/{kind}/chat/completions"
            async with session.post(url, json=direct_body) as response:
                await response.read()

        for _ in range(WARMUP):
            await through()
            await direct()
        started = time.perf_counter()
        for _ in range(count):
            await direct()
        floor = (time.perf_counter() - started) / count
        cpu, started = time.process_time(), time.perf_counter()
        for _ in range(count):
            await through()
        wall = (time.perf_counter() - started) / count
        cpu = (time.process_time() - cpu) / count
        print(
            f"direct {floor * 1e3:.3f} ms  gateway {wall * 1e3:.3f} ms  "
            f"overhead {(wall - floor) * 1e3:.3f} ms  CPU/request (client+gateway) "
            f"{cpu * 1e3:.3f} ms"
        )
        if profile:
            profiler = cProfile.Profile()
            profiler.enable()
            for _ in range(count):
                await through()
            profiler.disable()
            out = io.StringIO()
            stats = pstats.Stats(profiler, stream=out)
            print(f"{stats.total_calls / count:.0f} Python function calls per request")  # type: ignore[attr-defined]
            stats.sort_stats("tottime").print_stats(40)
            print(out.getvalue())


if __name__ == "__main__":
    args = sys.argv[1:]
    numbers = [int(a) for a in args if a.isdigit()]
    asyncio.run(
        main(
            numbers[0] if numbers else 2_000,
            stream="--stream" in args,
            via_httpx="--via-httpx" in args,
            profile="--profile" in args,
        )
    )

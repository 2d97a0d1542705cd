"""Failover figures for the Stepline router: a primary that fails, a healthy fallback.

For each way the primary fails — (a) it refuses connections, (b) it answers 503, (c) it hangs
past its timeout — two figures: the time to the first successful answer with a fresh router
(no circuit state yet, so the primary is tried first), and the latency of the next 100
requests once the primary's circuit is open (they should go straight to the fallback and
contact the primary zero times, which the upstream's request counter checks).

The route uses the router's shipped defaults (retries, backoff with full jitter, breaker
threshold and cooldown) and, for both deployments, the attempt timeouts in `TIMEOUTS`.
"""

from __future__ import annotations

import random
import socket
import time
from typing import Any

import httpx

from stepline_pricebook import PriceBook
from stepline_router.breaker import BreakerState
from stepline_router.clock import SystemClock
from stepline_router.credentials import StaticCredentials
from stepline_router.providers.openai import OpenAIProvider
from stepline_router.router import CallSucceeded, Router
from stepline_router.routes import RoutesConfig, parse_routes
from stepline_router.types import Message, ModelRequest, Role

__all__ = ["TIMEOUTS", "measure_failover"]

TIMEOUTS = {"connect_s": 1.0, "first_byte_s": 0.5, "total_s": 1.0}
TRIALS = {"refused": 20, "503": 20, "hang": 5}
NEXT = 100
MAX_TO_OPEN = 50


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _config(primary: str, fallback: str) -> RoutesConfig:
    timeouts = ", ".join(f"{k} = {v}" for k, v in TIMEOUTS.items())
    body = ""
    for name, url in (("primary", primary), ("fallback", fallback)):
        body += (
            f'[deployments.{name}]\nprovider = "openai"\nmodel = "gpt-4o-mini"\n'
            f'base_url = "{url}"\ncredential_env = "BENCH_KEY"\ntimeouts = {{ {timeouts} }}\n'
        )
    body += '[routes.bench]\ndeployments = ["primary", "fallback"]\n'
    return parse_routes(body, known_providers=["openai"])


class _Bench:
    def __init__(self, upstream: str, client: httpx.AsyncClient) -> None:
        self.upstream = upstream
        self.client = client
        self.book = PriceBook.load()
        self.clock = SystemClock()
        self.seq = 0

    def router(self, config: RoutesConfig) -> Router:
        return Router(
            routes=lambda: config,
            prices=lambda: self.book,
            providers={"openai": OpenAIProvider(self.client, self.clock.now)},
            credentials=StaticCredentials({"BENCH_KEY": "sk-bench-not-a-secret"}),
            clock=self.clock,
            random=random.SystemRandom().random,
        )

    async def call(self, router: Router) -> tuple[float, CallSucceeded]:
        self.seq += 1
        request = ModelRequest(
            call_id=f"failover:{self.seq}",
            tenant_id="bench",
            route="bench",
            messages=(Message(Role.USER, "Say hello."),),
        )
        started = time.perf_counter()
        outcome = await router.complete(request)
        elapsed = (time.perf_counter() - started) * 1000
        if not isinstance(outcome, CallSucceeded):
            raise RuntimeError(f"failover bench: the call failed: {outcome.message}")
        return elapsed, outcome

    async def hits(self, kind: str) -> int:
        response = await self.client.get(f"{self.upstream}/_stats")
        response.raise_for_status()
        count: int = response.json().get(kind, 0)
        return count

    async def scenario(self, kind: str, primary: str) -> dict[str, Any]:
        config = _config(primary, f"{self.upstream}/ok/v1")
        firsts: list[float] = []
        trail: list[str] = []
        for _ in range(TRIALS[kind]):
            elapsed, outcome = await self.call(self.router(config))
            if outcome.deployment.name != "fallback":
                raise RuntimeError(f"{kind}: the first answer did not come from the fallback")
            firsts.append(elapsed)
            trail = [f"{a.deployment}:{a.outcome.value}" for a in outcome.attempts]
        router = self.router(config)
        breaker = router.breaker("primary")
        to_open = 0
        while breaker.state(self.clock.monotonic()) is not BreakerState.OPEN:
            to_open += 1
            if to_open > MAX_TO_OPEN:
                raise RuntimeError(f"{kind}: the circuit did not open in {MAX_TO_OPEN} requests")
            await self.call(router)
        before = await self.hits(kind)
        latencies: list[float] = []
        by_fallback = 0
        for _ in range(NEXT):
            elapsed, outcome = await self.call(router)
            latencies.append(elapsed)
            by_fallback += outcome.deployment.name == "fallback"
        contacted = None if kind == "refused" else await self.hits(kind) - before
        return {
            "primary": {"refused": "closed port", "503": "HTTP 503", "hang": "never answers"}[kind],
            "time_to_first_answer_ms": {
                "trials": len(firsts),
                "p50": round(_percentile(firsts, 0.5), 3),
                "min": round(min(firsts), 3),
                "max": round(max(firsts), 3),
                "attempts": trail,
            },
            "requests_to_open": to_open,
            "after_circuit_open_ms": {
                "requests": NEXT,
                "p50": round(_percentile(latencies, 0.5), 3),
                "p99": round(_percentile(latencies, 0.99), 3),
                "max": round(max(latencies), 3),
                "answered_by_fallback": by_fallback,
                # None: a refused port cannot count connection attempts.
                "primary_contacted": contacted,
            },
        }

    async def healthy(self) -> dict[str, Any]:
        router = self.router(_config(f"{self.upstream}/ok/v1", f"{self.upstream}/ok/v1"))
        await self.call(router)
        latencies = [(await self.call(router))[0] for _ in range(NEXT)]
        return {
            "requests": NEXT,
            "p50": round(_percentile(latencies, 0.5), 3),
            "p99": round(_percentile(latencies, 0.99), 3),
        }


async def measure_failover(upstream: str, client: httpx.AsyncClient) -> dict[str, Any]:
    """Failover figures against the benchmark upstream at `upstream` (paths /ok, /503, /hang)."""
    bench = _Bench(upstream, client)
    config = _config("http://127.0.0.1:1", "http://127.0.0.1:1")
    route = config.routes["bench"]
    scenarios = {
        "refused": await bench.scenario("refused", f"http://127.0.0.1:{_closed_port()}/v1"),
        "503": await bench.scenario("503", f"{upstream}/503/v1"),
        "hang": await bench.scenario("hang", f"{upstream}/hang/v1"),
    }
    return {
        "method": (__doc__ or "").strip(),
        "timeouts_s": TIMEOUTS,
        "retry": {
            "retries_per_deployment": route.retry.retries_per_deployment,
            "backoff_base_s": route.retry.backoff_base_s,
            "backoff_cap_s": route.retry.backoff_cap_s,
        },
        "breaker": {
            "failure_threshold": config.breaker.failure_threshold,
            "window_s": config.breaker.window_s,
            "cooldown_s": config.breaker.cooldown_s,
        },
        "scenarios": scenarios,
        "healthy_primary_ms": await bench.healthy(),
    }

"""Router overhead per request against an instant local upstream, side by side with LiteLLM.

Method: a raw asyncio HTTP/1.1 server in a separate process answers every Chat Completions
request at once with a fixed body (so client and server never share an event loop). Four
clients send the same request to it, each with `concurrency` workers issuing requests back to
back: (1) direct, raw HTTP/1.1 on pooled keep-alive sockets with the JSON parsed, the floor;
(2) a bare httpx POST, the HTTP client the router uses; (3) Stepline's `Router` engine
in-process with its real OpenAI adapter over httpx; (4) LiteLLM's `Router` with one `openai/`
deployment whose `api_base` is the same upstream, default settings. The clients run in
rotating rounds so drift hits them alike, after a warm-up each. Overhead = a percentile of the
latency through a router − the same percentile of the direct latency, for p50 and p99 (the
difference of percentiles, not a percentile of paired differences). Stepline's figure minus
bare httpx isolates the router engine from its HTTP client. Failover figures come from
`bench.failover` against the same upstream.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import platform
import random
import statistics
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench.failover import measure_failover
from stepline_pricebook import PriceBook
from stepline_router.clock import SystemClock
from stepline_router.credentials import StaticCredentials
from stepline_router.providers.openai import OpenAIProvider
from stepline_router.providers.transport import FastTransport
from stepline_router.router import CallSucceeded, Router
from stepline_router.routes import parse_routes
from stepline_router.types import Message, ModelRequest, Role

__all__ = ["MESSAGES", "MODEL", "Upstream", "main", "percentile", "serve"]

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parent.parent
# Requests per client and concurrency (split over ROUNDS rounds), and warm-up requests.
REQUESTS = {1: 1_000, 16: 1_600, 64: 2_560}
ROUNDS = 4
WARMUP = 128
MODEL = "gpt-4o-mini"
KEY = "sk-bench-not-a-secret"
CLIENTS = {
    "direct": "raw HTTP/1.1 on pooled keep-alive sockets (the floor; overheads are against it)",
    "direct_httpx": "a bare httpx.AsyncClient POST, the HTTP client the Stepline router uses",
    "stepline": "stepline_router.Router + OpenAI adapter over httpx-aiohttp, in-process",
    "litellm": "litellm.Router, one openai/ deployment with api_base = the upstream, defaults",
}
MESSAGES = [
    {"role": "system", "content": "You are a terse assistant."},
    {"role": "user", "content": "Say hello."},
]

_COMPLETION = {
    "id": "chatcmpl-bench",
    "object": "chat.completion",
    "created": 1_790_000_000,
    "model": MODEL,
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello.", "refusal": None},
            "finish_reason": "stop",
            "logprobs": None,
        }
    ],
    "usage": {"prompt_tokens": 14, "completion_tokens": 2, "total_tokens": 16},
}
_OVERLOADED = {
    "error": {"message": "The server is overloaded", "type": "server_error", "code": None}
}


def _http(status: str, body: bytes) -> bytes:
    head = f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}"
    return (head + "\r\n\r\n").encode() + body


_OK = _http("200 OK", json.dumps(_COMPLETION).encode())


def _sse_body() -> bytes:
    """A streamed Chat Completion: role, three text pieces, finish, usage, [DONE]."""

    def chunk(choices: list[dict[str, Any]], **extra: Any) -> str:
        body = {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": 1_790_000_000,
            "model": MODEL,
            "choices": choices,
            **extra,
        }
        return f"data: {json.dumps(body)}\n\n"

    def delta(content: dict[str, Any], finish: str | None = None) -> str:
        return chunk([{"index": 0, "delta": content, "finish_reason": finish}])

    events = [delta({"role": "assistant", "content": ""})]
    events += [delta({"content": piece}) for piece in ("Hel", "lo", ".")]
    events.append(delta({}, "stop"))
    events.append(
        chunk([], usage={"prompt_tokens": 14, "completion_tokens": 3, "total_tokens": 17})
    )
    events.append("data: [DONE]\n\n")
    return "".join(events).encode()


_SSE = _http("200 OK", _sse_body()).replace(b"application/json", b"text/event-stream")
_503 = _http("503 Service Unavailable", json.dumps(_OVERLOADED).encode())
_404 = _http("404 Not Found", b'{"error": {"message": "unknown path", "type": "not_found"}}')


def percentile(samples: list[float], q: float) -> float:
    """Nearest-rank percentile `q` (0..1) of `samples`."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# --- the upstream: runs in its own process -------------------------------------------------


class _Server:
    """Answers by the first path segment: /ok → 200 at once, /sse → a 200 stream at once,
    /503 → 503, /hang → never."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await self._one(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            # A client that hangs up, or the server shutting down, ends the connection quietly.
            pass
        finally:
            writer.transport.abort()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        line = await reader.readline()
        if not line:
            return False
        target = line.split(b" ", 2)[1].decode("latin-1")
        length, chunked = 0, False
        while (header := await reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = header.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
        if chunked:
            while size := int((await reader.readline()).split(b";")[0], 16):
                await reader.readexactly(size + 2)
            await reader.readline()
        elif length:
            await reader.readexactly(length)
        kind = target.split("/", 2)[1]
        self.counts[kind] += 1
        if kind == "ok":
            writer.write(_OK)
        elif kind == "sse":
            writer.write(_SSE)
        elif kind == "503":
            writer.write(_503)
        elif kind == "hang":
            await reader.read()  # hold the request until the client gives up and closes
            return False
        elif kind == "_stats":
            writer.write(_http("200 OK", json.dumps(self.counts).encode()))
        else:
            writer.write(_404)
        await writer.drain()
        return True


async def serve() -> None:
    """Run the upstream on an ephemeral loopback port (printed) until stdin closes."""
    server = _Server()
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0, backlog=1024)
    print(listener.sockets[0].getsockname()[1], flush=True)
    loop = asyncio.get_running_loop()
    # The parent holds our stdin: when it exits, however it exits, we stop too.
    await loop.run_in_executor(None, sys.stdin.buffer.read)
    listener.close()


class Upstream:
    """The upstream subprocess, as an async context manager yielding its base URL."""

    def __init__(self) -> None:
        self._process: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> str:
        self._process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.router",
            "--serve",
            cwd=ROOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert self._process.stdout is not None
        line = await asyncio.wait_for(self._process.stdout.readline(), 30)
        if not line.strip().isdigit():
            raise RuntimeError(f"the upstream did not start: {line!r}")
        return f"http://127.0.0.1:{int(line)}"

    async def __aexit__(self, *_: object) -> None:
        process = self._process
        if process is None:
            return
        assert process.stdin is not None
        process.stdin.close()
        try:
            await asyncio.wait_for(process.wait(), 5)
        except TimeoutError:
            process.kill()
            await process.wait()


# --- the three clients ----------------------------------------------------------------------

Call = Callable[[], Awaitable[None]]


class _Floor:
    """The most direct client: raw HTTP/1.1 over pooled keep-alive sockets, JSON parsed."""

    def __init__(self, url: str) -> None:
        authority, path = url.split("//", 1)[1].split("/", 1)
        host, port = authority.split(":")
        self._host, self._port = host, int(port)
        body = json.dumps({"model": MODEL, "messages": MESSAGES}).encode()
        head = (
            f"POST /{path}/chat/completions HTTP/1.1\r\nhost: {authority}\r\n"
            f"content-type: application/json\r\nauthorization: Bearer {KEY}\r\n"
            f"content-length: {len(body)}\r\n\r\n"
        )
        self._request = head.encode() + body
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def __call__(self) -> None:
        """One request on an idle connection (or a new one)."""
        if self._idle:
            reader, writer = self._idle.pop()
        else:
            reader, writer = await asyncio.open_connection(self._host, self._port)
        writer.write(self._request)
        status = await reader.readline()
        length = 0
        while (header := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = header.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        data = json.loads(await reader.readexactly(length))
        if b" 200 " not in status or not data["choices"]:
            raise RuntimeError(f"unexpected upstream answer {status!r}")
        self._idle.append((reader, writer))

    def close(self) -> None:
        """Close the pooled connections."""
        for _, writer in self._idle:
            writer.close()
        self._idle.clear()


def _direct(client: httpx.AsyncClient, url: str) -> Call:
    """A bare httpx POST: what the router's own HTTP client costs without the router."""
    body = {"model": MODEL, "messages": MESSAGES}
    headers = {"authorization": f"Bearer {KEY}"}

    async def call() -> None:
        response = await client.post(f"{url}/chat/completions", json=body, headers=headers)
        response.raise_for_status()
        if not response.json()["choices"]:
            raise RuntimeError("empty completion")

    return call


def _stepline(client: httpx.AsyncClient, url: str) -> Call:
    clock = SystemClock()
    config = parse_routes(
        f"""
[routes.bench]
deployments = ["upstream"]
[deployments.upstream]
provider = "openai"
model = "{MODEL}"
base_url = "{url}"
credential_env = "BENCH_KEY"
timeouts = {{ connect_s = 5, first_byte_s = 30, total_s = 30 }}
""",
        known_providers=["openai"],
    )
    book = PriceBook.load()
    router = Router(
        routes=lambda: config,
        prices=lambda: book,
        providers={"openai": OpenAIProvider(client, clock.now)},
        credentials=StaticCredentials({"BENCH_KEY": KEY}),
        clock=clock,
        random=random.Random(1).random,
    )
    messages = tuple(Message(Role(m["role"]), m["content"]) for m in MESSAGES)
    counter = iter(range(1 << 62))

    async def call() -> None:
        request = ModelRequest(
            call_id=f"bench:{next(counter)}",
            tenant_id="bench",
            route="bench",
            messages=messages,
            run_id="bench",
            step_id="bench:1",
        )
        outcome = await router.complete(request)
        if not isinstance(outcome, CallSucceeded):
            raise RuntimeError(f"stepline router failed: {outcome.message}")

    return call


def _litellm_module() -> Any:
    # Never fetch LiteLLM's cost map from the internet: use the copy inside the package.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    os.environ.setdefault("LITELLM_OFFLINE_MODE", "true")
    try:
        # importlib keeps mypy out of LiteLLM's sources (and works without the bench group).
        module: Any = importlib.import_module("litellm")
    except ImportError as error:
        raise SystemExit(
            "bench.router needs LiteLLM for the side-by-side figures: "
            "install the bench dependency group (uv sync --all-packages --group bench)"
        ) from error
    module.suppress_debug_info = True
    return module


def _litellm(litellm: Any, url: str) -> Call:
    router = litellm.Router(
        model_list=[
            {
                "model_name": "bench",
                "litellm_params": {"model": f"openai/{MODEL}", "api_base": url, "api_key": KEY},
            }
        ]
    )

    async def call() -> None:
        response = await router.acompletion(model="bench", messages=MESSAGES)
        if not response.choices:
            raise RuntimeError("empty completion")

    return call


# --- load generation ------------------------------------------------------------------------


async def _load(call: Call, concurrency: int, total: int) -> tuple[list[float], float]:
    """`total` requests from `concurrency` back-to-back workers: latencies (ms), wall time (s)."""
    latencies: list[float] = []
    left = [total]

    async def worker() -> None:
        while left[0] > 0:
            left[0] -= 1
            started = time.perf_counter()
            await call()
            latencies.append((time.perf_counter() - started) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, time.perf_counter() - started


def _summary(latencies: list[float], wall_s: float) -> dict[str, float]:
    return {
        "p50_ms": round(percentile(latencies, 0.50), 3),
        "p99_ms": round(percentile(latencies, 0.99), 3),
        "mean_ms": round(statistics.fmean(latencies), 3),
        "requests_per_s": round(len(latencies) / wall_s, 1),
    }


async def _overhead(clients: dict[str, Call]) -> list[dict[str, Any]]:
    """Per concurrency: warm every client up, then pooled samples from rotating rounds."""
    rows = []
    names = list(clients)
    for concurrency, total in REQUESTS.items():
        for call in clients.values():
            await _load(call, concurrency, WARMUP)
        samples: dict[str, list[float]] = {name: [] for name in names}
        walls = dict.fromkeys(names, 0.0)
        for round_ in range(ROUNDS):
            # Rotate the order every round so no client always runs first (or last).
            shift = round_ % len(names)
            for name in names[shift:] + names[:shift]:
                latencies, wall = await _load(clients[name], concurrency, total // ROUNDS)
                samples[name] += latencies
                walls[name] += wall
        row: dict[str, Any] = {"concurrency": concurrency, "requests_per_client": total}
        for name in names:
            row[name] = _summary(samples[name], walls[name])
        for name in names[1:]:
            for q in ("p50", "p99"):
                row[name][f"overhead_{q}_ms"] = round(
                    row[name][f"{q}_ms"] - row["direct"][f"{q}_ms"], 3
                )
        for q in ("p50", "p99"):
            # The part of Stepline's overhead that is not its HTTP client (httpx).
            row["stepline"][f"overhead_vs_httpx_{q}_ms"] = round(
                row["stepline"][f"{q}_ms"] - row["direct_httpx"][f"{q}_ms"], 3
            )
        rows.append(row)
        print(f"  concurrency {concurrency}: done", flush=True)
    return rows


def _machine(litellm: Any) -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "httpx": httpx.__version__,
        "litellm": getattr(litellm, "__version__", None) or _dist_version("litellm"),
        "note": "client and upstream processes share the same cores",
    }


def _dist_version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


def _pair(figures: dict[str, float], key: str = "") -> str:
    return f"{figures[f'{key}p50_ms']:8.3f} {figures[f'{key}p99_ms']:9.3f}"


def _print(result: dict[str, Any]) -> None:
    print("\nrouter overhead per request: latency via a client − latency direct (raw HTTP), ms")
    print(
        f"{'conc':>4} | {'direct p50':>10} {'p99':>9} | {'httpx p50':>10} {'p99':>9} | "
        f"{'stepline +p50':>13} {'+p99':>9} | {'litellm +p50':>13} {'+p99':>9}"
    )
    for row in result["overhead"]:
        print(
            f"{row['concurrency']:>4} | {_pair(row['direct'])}  | {_pair(row['direct_httpx'])}  | "
            f"{_pair(row['stepline'], 'overhead_')}      | {_pair(row['litellm'], 'overhead_')}"
        )
    print("stepline minus bare httpx (the router engine alone), ms p50 / p99:")
    for row in result["overhead"]:
        s = row["stepline"]
        print(
            f"  concurrency {row['concurrency']:>2}: {s['overhead_vs_httpx_p50_ms']:.3f} / "
            f"{s['overhead_vs_httpx_p99_ms']:.3f}"
        )
    print("requests/s (direct, httpx, stepline, litellm):")
    for row in result["overhead"]:
        rates = ", ".join(f"{row[n]['requests_per_s']:.0f}" for n in CLIENTS)
        print(f"  concurrency {row['concurrency']:>2}: {rates}")
    failover = result["failover"]
    print(
        "\nfailover, Stepline router, primary → fallback "
        f"(attempt timeouts {failover['timeouts_s']}, breaker {failover['breaker']}), ms"
    )
    for name, case in failover["scenarios"].items():
        first, after = case["time_to_first_answer_ms"], case["after_circuit_open_ms"]
        contacted = after["primary_contacted"]
        print(
            f"  {name:<7} first answer p50 {first['p50']:7.1f} max {first['max']:7.1f} "
            f"(n={first['trials']}) | circuit open after {case['requests_to_open']} requests | "
            f"next {after['requests']}: p50 {after['p50']:.3f} p99 {after['p99']:.3f}, "
            f"primary contacted {'n/a' if contacted is None else contacted}"
        )
    healthy = failover["healthy_primary_ms"]
    print(f"  healthy primary, same route: p50 {healthy['p50']:.3f} p99 {healthy['p99']:.3f}")


async def main() -> None:
    """Run the router benchmarks, print a table, write bench/results/router.json."""
    litellm = _litellm_module()
    started = time.perf_counter()
    print("router benchmark: starting the local upstream", flush=True)
    async with Upstream() as upstream:
        url = f"{upstream}/ok/v1"
        # The router service's own pool size (STEPLINE_MAX_CONNECTIONS default).
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
        floor = _Floor(url)
        async with (
            httpx.AsyncClient(limits=limits) as direct_client,
            # The router's own transport (aiohttp under httpx), as `stepline_router.app` builds it.
            httpx.AsyncClient(transport=FastTransport(limits), limits=limits) as router_client,
        ):
            clients: dict[str, Call] = {
                "direct": floor,
                "direct_httpx": _direct(direct_client, url),
                "stepline": _stepline(router_client, url),
                "litellm": _litellm(litellm, url),
            }
            assert list(clients) == list(CLIENTS)
            try:
                overhead = await _overhead(clients)
            finally:
                floor.close()
            print("  failover scenarios", flush=True)
            failover = await measure_failover(upstream, router_client)
    result: dict[str, Any] = {
        "benchmark": "router_overhead",
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "method": (__doc__ or "").strip(),
        "clients": CLIENTS,
        "machine": _machine(litellm),
        "request": {"messages": MESSAGES, "model": MODEL, "stream": False},
        "rounds": ROUNDS,
        "warmup_requests_per_client": WARMUP,
        "overhead": overhead,
        "failover": failover,
        "duration_s": round(time.perf_counter() - started, 1),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "router.json").write_text(json.dumps(result, indent=2) + "\n")
    _print(result)
    print(f"written to {RESULTS / 'router.json'} ({result['duration_s']} s)")


if __name__ == "__main__":
    asyncio.run(serve() if sys.argv[1:] == ["--serve"] else main())

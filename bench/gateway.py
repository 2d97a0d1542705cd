"""Gateway overhead: Stepline's HTTP gateway vs the LiteLLM proxy, on one instant upstream.

Method: the upstream of `bench.router` (its own process) answers Chat Completions at once, as
JSON (`/ok`) or as a stream (`/sse`). Three targets get the same requests from a load generator
in this process, raw HTTP/1.1 on keep-alive sockets with `concurrency` workers: (1) the
upstream directly, the floor; (2) the model-router process (`python -m stepline_router`) with
its HTTP gateway, a dev key and a route of one deployment on the upstream — every request is
authenticated, routed and its usage published to Kafka as in production; (3) the LiteLLM proxy
(`litellm --config`, one `openai/` deployment on the upstream, a master key, no database).
Targets run in rotating rounds after a warm-up each. Overhead = a percentile through the
gateway − the same percentile direct. Time to first token (streams) is the time until the first
text piece arrives. CPU per request is the gateway process's CPU time over its requests.

`python -m bench.gateway` (needs the bench group and a broker); `--quick` for a smoke run.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
from aiokafka.admin import AIOKafkaAdminClient

from bench.router import MESSAGES, MODEL, ROOT, Upstream, percentile
from stepline_runtime.settings import KafkaSettings

__all__ = ["main"]

RESULTS = Path(__file__).parent / "results"
CONCURRENCY = (1, 16, 64, 256)
FULL = {1: 200, 16: 640, 64: 1_280, 256: 2_560}
QUICK = {1: 60, 16: 160, 64: 256, 256: 512}
ROUNDS = 2
WARMUP = 64
MODES = ("json", "stream")
FIRST_PIECE = b'"Hel'
# Failed requests of the current measurement (reported per row, then cleared).
_ERRORS: list[str] = []


@dataclass(frozen=True, slots=True)
class Target:
    """Where requests go: host, port, path, key, model name and the process serving it."""

    name: str
    port: int
    path: str
    key: str
    model: str
    pid: int | None = None


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


class _Client:
    """Raw HTTP/1.1 over pooled keep-alive sockets; reads JSON or chunked/length streams."""

    def __init__(self, target: Target, stream: bool) -> None:
        self._port = target.port
        body: dict[str, Any] = {"model": target.model, "messages": MESSAGES}
        if stream:
            body["stream"] = True
        raw = json.dumps(body).encode()
        head = (
            f"POST {target.path} HTTP/1.1\r\nhost: 127.0.0.1:{target.port}\r\n"
            f"content-type: application/json\r\nauthorization: Bearer {target.key}\r\n"
            f"content-length: {len(raw)}\r\n\r\n"
        )
        self._request = head.encode() + raw
        self._stream = stream
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def __call__(self) -> float:
        """One request; returns the time to the first text piece (streams) or 0."""
        if self._idle:
            reader, writer = self._idle.pop()
        else:
            reader, writer = await asyncio.open_connection("127.0.0.1", self._port)
        started = time.perf_counter()
        writer.write(self._request)
        status = await reader.readline()
        length, chunked, close = -1, False, False
        while (header := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = header.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
            elif name == b"connection" and b"close" in value.lower():
                close = True
        first = 0.0
        body = b""
        if chunked:
            while size := int((await reader.readline()).split(b";")[0], 16):
                body += await reader.readexactly(size + 2)
                if not first and FIRST_PIECE in body:
                    first = time.perf_counter() - started
            await reader.readline()
        elif length >= 0:
            body = await reader.readexactly(length)
            first = time.perf_counter() - started
        else:
            body, close = await reader.read(), True  # no length: the body ends at EOF
            first = time.perf_counter() - started
        if b" 200 " not in status:
            writer.close()
            raise RuntimeError(f"{status!r}: {body[:300]!r}")
        if self._stream and (b"[DONE]" not in body or FIRST_PIECE not in body):
            raise RuntimeError(f"incomplete stream: {body[-200:]!r}")
        if not self._stream and b'"choices"' not in body:
            raise RuntimeError(f"no completion: {body[:200]!r}")
        if close:
            writer.close()
        else:
            self._idle.append((reader, writer))
        return first if self._stream else 0.0

    def close(self) -> None:
        """Close the pooled connections."""
        for _, writer in self._idle:
            writer.close()
        self._idle.clear()


async def _load(
    call: Callable[[], Awaitable[float]], concurrency: int, total: int
) -> tuple[list[float], list[float], float]:
    latencies: list[float] = []
    firsts: list[float] = []
    left = iter(range(total))
    errors = _ERRORS

    async def worker() -> None:
        for _ in left:
            started = time.perf_counter()
            try:
                first = await call()
            except (RuntimeError, OSError, asyncio.IncompleteReadError) as error:
                # A failed request counts against the target, and is never a fast sample.
                errors.append(str(error)[:200])
                continue
            latencies.append(time.perf_counter() - started)
            firsts.append(first)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, firsts, time.perf_counter() - started


def _cpu(pid: int | None) -> float:
    if pid is None:
        return 0.0
    process = psutil.Process(pid)
    total = 0.0
    for p in [process, *process.children(recursive=True)]:
        times = p.cpu_times()
        total += times.user + times.system
    return total


async def _measure(
    targets: list[Target], counts: dict[int, int], mode: str
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for concurrency in CONCURRENCY:
        clients = {t.name: _Client(t, mode == "stream") for t in targets}
        for target in targets:
            await _load(clients[target.name], min(concurrency, 16), WARMUP)
        samples: dict[str, tuple[list[float], list[float], float, float]] = {
            t.name: ([], [], 0.0, 0.0) for t in targets
        }
        per_round = max(1, counts[concurrency] // ROUNDS)
        for round_ in range(ROUNDS):
            order = targets[round_ % len(targets) :] + targets[: round_ % len(targets)]
            for target in order:
                cpu = _cpu(target.pid)
                lat, first, wall = await _load(clients[target.name], concurrency, per_round)
                spent = _cpu(target.pid) - cpu
                old = samples[target.name]
                samples[target.name] = (old[0] + lat, old[1] + first, old[2] + wall, old[3] + spent)
        for client in clients.values():
            client.close()
        direct = samples["direct"]
        for name, (lat, first, wall, cpu) in samples.items():
            row = {
                "mode": mode,
                "concurrency": concurrency,
                "target": name,
                "requests": len(lat),
                "rps": len(lat) / wall,
                "p50_ms": percentile(lat, 0.5) * 1e3,
                "p99_ms": percentile(lat, 0.99) * 1e3,
                "overhead_p50_ms": (percentile(lat, 0.5) - percentile(direct[0], 0.5)) * 1e3,
                "overhead_p99_ms": (percentile(lat, 0.99) - percentile(direct[0], 0.99)) * 1e3,
                "cpu_ms_per_request": cpu / len(lat) * 1e3 if name != "direct" else None,
            }
            if mode == "stream":
                row["ttft_p50_ms"] = percentile(first, 0.5) * 1e3
                row["ttft_over_direct_p50_ms"] = (
                    percentile(first, 0.5) - percentile(direct[1], 0.5)
                ) * 1e3
            rows.append(row)
            _print_row(row)
    return rows


def _print_row(row: dict[str, Any]) -> None:
    extra = ""
    if "ttft_p50_ms" in row:
        extra = f" ttft p50 {row['ttft_p50_ms']:.2f} ms (+{row['ttft_over_direct_p50_ms']:.2f})"
    cpu = row["cpu_ms_per_request"]
    print(
        f"{row['mode']:6} c={row['concurrency']:<3} {row['target']:8} "
        f"{row['rps']:8.0f} req/s  p50 {row['p50_ms']:7.2f} ms (+{row['overhead_p50_ms']:.2f})  "
        f"p99 {row['p99_ms']:7.2f} ms (+{row['overhead_p99_ms']:.2f})"
        + (f"  cpu {cpu:.2f} ms/req" if cpu is not None else "")
        + extra,
        flush=True,
    )


async def _wait_ready(port: int, key: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"exited; see {log}")
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(
                f"GET /v1/models HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {key}\r\n"
                "connection: close\r\n\r\n".encode()
            )
            status = await reader.readline()
            writer.close()
            if b" 200 " in status:
                return
        except OSError:
            pass
        await asyncio.sleep(0.5)
    raise RuntimeError(f"not ready after 180 s; see {log}")


def _spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as sink:
        return subprocess.Popen(args, cwd=ROOT, stdout=sink, stderr=sink, env=env)


async def _stepline(upstream: str, work: Path, namespace: str) -> tuple[Target, Any]:
    key = f"sk-{secrets.token_hex(16)}"
    port = _free_port()
    routes = work / "routes.toml"
    quick = "{ connect_s = 5, first_byte_s = 30, total_s = 30 }"
    routes.write_text(
        f'[deployments.json]\nprovider = "openai"\nmodel = "{MODEL}"\n'
        f'base_url = "{upstream}/ok"\ntimeouts = {quick}\n'
        f'[deployments.stream]\nprovider = "openai"\nmodel = "{MODEL}"\n'
        f'base_url = "{upstream}/sse"\ntimeouts = {quick}\n'
        '[routes.bench]\ndeployments = ["json"]\n[routes.bench-stream]\ndeployments = ["stream"]\n',
        encoding="utf-8",
    )
    env = {
        **os.environ,
        "STEPLINE_ROUTES": str(routes),
        "STEPLINE_TOPIC_NAMESPACE": namespace,
        "STEPLINE_PARTITIONS": "1",
        "STEPLINE_HTTP_PORT": str(port),
        "STEPLINE_DEV_API_KEY": key,
        "STEPLINE_GRPC_ENABLED": "false",
        "STEPLINE_METRICS_PORT": "0",
        "STEPLINE_LOG_LEVEL": "WARNING",
    }
    log = work / "stepline.log"
    process = _spawn([sys.executable, "-m", "stepline_router"], env, log)
    await _wait_ready(port, key, process, log)
    return Target("stepline", port, "/v1/chat/completions", key, "bench", process.pid), process


async def _litellm(upstream: str, work: Path) -> tuple[Target, Any]:
    binary = shutil.which("litellm", path=str(Path(sys.executable).parent))
    if binary is None:
        raise SystemExit("bench.gateway needs the LiteLLM proxy: uv sync --group bench")
    key = f"sk-{secrets.token_hex(16)}"
    port = _free_port()
    config = work / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        + "".join(
            f"  - model_name: {name}\n    litellm_params:\n      model: openai/{MODEL}\n"
            f"      api_base: {upstream}/{path}\n      api_key: sk-upstream\n"
            for name, path in (("bench", "ok"), ("bench-stream", "sse"))
        ),
        encoding="utf-8",
    )
    env = {
        **os.environ,
        "LITELLM_MASTER_KEY": key,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_LOG": "ERROR",
    }
    log = work / "litellm.log"
    process = _spawn(
        [binary, "--config", str(config), "--host", "127.0.0.1", "--port", str(port)], env, log
    )
    await _wait_ready(port, key, process, log)
    return Target("litellm", port, "/v1/chat/completions", key, "bench", process.pid), process


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


async def _drop_topics(namespace: str) -> None:
    admin = AIOKafkaAdminClient(**KafkaSettings().client_kwargs("bench-gateway-admin"))
    await admin.start()
    try:
        mine = [t for t in await admin.list_topics() if t.startswith(f"{namespace}.")]
        if mine:
            await admin.delete_topics(mine)
    finally:
        await admin.close()


def _by_mode(targets: list[Target], mode: str) -> list[Target]:
    suffix = "-stream" if mode == "stream" else ""
    return [
        Target(t.name, t.port, t.path, t.key, t.model + suffix if t.model else "", t.pid)
        for t in targets
    ]


async def main(quick: bool = False) -> dict[str, Any]:
    """Measure, print, and write bench/results/gateway.json."""
    counts = QUICK if quick else FULL
    namespace = f"bench-gw-{uuid.uuid4().hex[:8]}"
    # Kept after the run: the services' logs explain a failed one.
    work = ROOT / ".local" / "bench-gateway"
    work.mkdir(parents=True, exist_ok=True)
    async with Upstream() as upstream:
        stepline, stepline_process = await _stepline(upstream, work, namespace)
        litellm, litellm_process = await _litellm(upstream, work)
        try:
            rows: list[dict[str, Any]] = []
            for mode in MODES:
                direct = Target(
                    "direct",
                    int(upstream.rsplit(":", 1)[1]),
                    f"/{'sse' if mode == 'stream' else 'ok'}/chat/completions",
                    "sk-upstream",
                    MODEL,
                )
                targets = [direct, *_by_mode([stepline, litellm], mode)]
                rows += await _measure(targets, counts, mode)
        finally:
            _stop(stepline_process)
            _stop(litellm_process)
            await _drop_topics(namespace)
    result = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": quick,
        "cpus": os.cpu_count(),
        "litellm": _version("litellm"),
        "rows": rows,
    }
    RESULTS.mkdir(exist_ok=True)
    name = "gateway-quick.json" if quick else "gateway.json"
    (RESULTS / name).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


def _version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


if __name__ == "__main__":
    asyncio.run(main(quick="--quick" in sys.argv[1:]))

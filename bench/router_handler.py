"""CPU of the model-router per Kafka model request, in process: the real handler path, no broker.

Method: the records the planner sends for the full-stack benchmark's four-step agent (§9) on
route `local` — a system prompt, the user goal and the executor's real `calculator` and
`search_documents` definitions; then the same transcript with the model's two tool calls and
the tools' real results (run in process) — are encoded as the planner encodes them. Each round
hands every record to the router's `AtLeastOnce` processor (decode, route, the offline model,
usage and result encoding, tracing ids, metrics, the JSON log line to /dev/null) with an
in-memory publisher, and divides the process CPU time by the records handled. Kafka I/O is
left out: it is the same per record whatever the handler does.

`--base REV` compares with the router's sources at REV (`git archive`, put first on the
import path of a child process): before and after run alternately, and the median per side is
reported with the load average. `--profile` prints the top of a cProfile of one round.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import logging
import os
import pickle
import pstats
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from stepline.v1 import common_pb2, model_pb2
from stepline_executor.model import CallContext
from stepline_executor.tools.calculator import Calculator
from stepline_executor.tools.search import SearchDocuments
from stepline_pricebook import PriceBook
from stepline_router.app import build_providers
from stepline_router.clock import SystemClock
from stepline_router.config import Settings
from stepline_router.handlers import ModelCallHandler, Topics
from stepline_router.reload import ConfigFile
from stepline_router.router import Router
from stepline_router.routes import parse_routes
from stepline_runtime import tracing
from stepline_runtime.atleastonce import AtLeastOnce, InMemoryPublisher
from stepline_runtime.codec import decode, encode
from stepline_runtime.logs import configure_logging
from stepline_runtime.records import InboundRecord, OutboundRecord
from stepline_vocab import Message, Role, wire

__all__ = ["main"]

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
SYSTEM = "You are a support agent. Use the tools, then answer briefly."
# The full-stack benchmark's goal, with a number of its own per run: caches keyed by a text
# must not make one run's first step cheaper than it is when every goal differs.
GOAL = "What is {} * 5678, and what do the support tickets say about refunds?"
RUNS = 100
ROUNDS = 7
REQUESTS_TOPIC = "stepline.model.requests.v1"


def _tools() -> tuple[Calculator, SearchDocuments]:
    folder = ROOT / "deploy" / "config" / "demo" / "support-tickets"
    return Calculator.build(), SearchDocuments.build(folder)


def _definitions(tools: tuple[Calculator, SearchDocuments]) -> list[common_pb2.ToolDefinition]:
    # As the executor registers them and the planner forwards them.
    return [
        common_pb2.ToolDefinition(
            name=t.spec.name,
            description=t.spec.description,
            parameters_json_schema=json.dumps(t.spec.parameters, sort_keys=True),
            idempotent=t.spec.idempotent,
        )
        for t in tools
    ]


def _record(run: int, step: int, messages: list[Message], tools: Any, offset: int) -> InboundRecord:
    run_id = f"bench-run-{run:04d}"
    now = datetime(2026, 12, 1, tzinfo=UTC)
    request = model_pb2.ModelCallRequested(
        run_id=run_id,
        tenant_id="bench",
        step_id=f"{run_id}:{step}",
        call_id=f"{run_id}:{step}:0",
        route="local",
        messages=[wire.message_to_proto(m) for m in messages],
        tools=tools,
        parameters=model_pb2.ModelParameters(
            max_output_tokens=200,
            tool_choice=model_pb2.ToolChoice(mode=model_pb2.TOOL_CHOICE_MODE_AUTO),
        ),
        agent="stack",
        stream=False,
    )
    # Far in the future: the router must not see the deadline passed.
    request.deadline.FromDatetime(datetime.now(UTC) + timedelta(days=365))
    request.requested_at.FromDatetime(now)
    out = encode(
        REQUESTS_TOPIC,
        run_id,
        request,
        event_id=request.call_id,
        source="planner",
        tenant_id="bench",
        traceparent=f"00-{run + 1:032x}-{step + 1:016x}-01",
    )
    return InboundRecord(REQUESTS_TOPIC, run % 12, offset, out.key, out.value, out.headers)


def _result(outputs: Any) -> model_pb2.ModelCallResult:
    last: OutboundRecord = outputs[-1]
    inbound = InboundRecord(last.topic, 0, 0, last.key, last.value, last.headers)
    return decode(inbound, [model_pb2.ModelCallResult]).message


def _router() -> tuple[Router, ModelCallHandler]:
    settings = Settings(service_name="model-router")
    routes = ConfigFile(
        settings.routes_path(),
        lambda text, origin: parse_routes(text, origin=origin),
        "routes",
    )
    prices = ConfigFile(
        settings.pricebook_path(), lambda text, origin: PriceBook.parse(text, origin), "prices"
    )
    clock = SystemClock()
    router = Router(
        routes=routes.current,
        prices=prices.current,
        providers=build_providers(httpx.AsyncClient(), clock),
        credentials=_NoCredentials(),
        clock=clock,
        random=lambda: 0.5,
    )
    handler = ModelCallHandler(
        router,
        Topics(results="stepline.model.results.v1", usage="stepline.usage.v1"),
        clock,
        source="model-router",
    )
    return router, handler


class _NoCredentials:
    def get(self, name: str) -> str | None:
        return None


async def _requests(handler: ModelCallHandler, first: int) -> list[InboundRecord]:
    """Both model requests of RUNS runs of the four-step agent (runs `first`…), as the planner
    sends them."""
    tools = _tools()
    definitions = _definitions(tools)
    by_name: dict[str, Any] = {t.spec.name: t for t in tools}
    records: list[InboundRecord] = []
    for run in range(first, first + RUNS):
        transcript = [Message(Role.SYSTEM, SYSTEM), Message(Role.USER, GOAL.format(1234 + run))]
        asked = _record(run, 0, transcript, definitions, len(records))
        records.append(asked)
        answer = _result(await handler.on_model_call_requested(asked)).completed
        calls = wire.tool_calls_from_proto(answer.tool_calls)
        assert {c.name for c in calls} == set(by_name), f"unexpected tool calls {calls}"
        transcript.append(Message(Role.ASSISTANT, answer.content, calls))
        for call in calls:
            tool = by_name[call.name]
            parsed = tool.parse(json.loads(call.arguments_json))
            context = CallContext("bench", f"bench-run-{run:04d}", call.call_id, call.call_id, 5)
            output = await tool.run(parsed, context)
            transcript.append(
                Message(Role.TOOL, output.text, tool_call_id=call.call_id, name=call.name)
            )
        records.append(_record(run, 3, transcript, definitions, len(records)))
    return records


async def _record_sets(count: int) -> list[list[InboundRecord]]:
    """`count` sets of requests, each of other runs (other goals)."""
    _, handler = _router()
    return [await _requests(handler, index * RUNS) for index in range(count)]


def _save(sets: list[list[InboundRecord]], path: Path) -> None:
    rows = [[(r.topic, r.partition, r.offset, r.key, r.value, r.headers) for r in s] for s in sets]
    path.write_bytes(pickle.dumps(rows))


def _load(path: Path) -> list[list[InboundRecord]]:
    return [[InboundRecord(*row) for row in rows] for rows in pickle.loads(path.read_bytes())]


async def _measure(rounds: int, profile: bool, sets: Path | None) -> dict[str, Any]:
    configure_logging("model-router")
    # The service's JSON log line per call is formatted and written, here to /dev/null.
    devnull = Path(os.devnull).open("w")  # noqa: SIM115, ASYNC230 - kept for the process
    for sink in logging.getLogger().handlers:
        if isinstance(sink, logging.StreamHandler):
            sink.setStream(devnull)
    tracing.configure_tracing("model-router", environ={})
    # Made by another process (the parent) when given: this one has seen none of their texts,
    # as a router has not seen a new run's goal.
    record_sets = _load(sets) if sets is not None else await _record_sets(rounds + 1)
    assert len(record_sets) > rounds, "a set of requests per round, and one to warm up"
    _, handler = _router()
    publisher = InMemoryPublisher()
    processor = AtLeastOnce("model-router", handler.on_model_call_requested, publisher)
    for record in record_sets[0]:  # warm-up: imports, lazy protobuf classes, tool definitions
        await processor.process(record)
    per_request: list[float] = []
    profiler = cProfile.Profile(time.process_time) if profile else None
    for records in record_sets[1 : rounds + 1]:
        publisher.records.clear()
        if profiler is not None:
            profiler.enable()
        started = time.process_time()
        for record in records:
            await processor.process(record)
        spent = time.process_time() - started
        if profiler is not None:
            profiler.disable()
        per_request.append(spent / len(records) * 1e6)
        assert len(publisher.records) == 2 * len(records), "one usage record and one result each"
    if profiler is not None:
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(40)
        print(out.getvalue())
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(60)
        print(out.getvalue())
    return {"requests": RUNS * 2, "us_per_request": [round(v, 1) for v in per_request]}


def _base_sources(rev: str, into: Path) -> Path:
    """The router's sources at `rev`, extracted under `into`."""
    archive = subprocess.run(
        ["git", "archive", rev, "services/model-router/src"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into / "services" / "model-router" / "src"


def _child(pythonpath: str | None, rounds: int, sets: Path) -> tuple[float, float]:
    """One measuring process: the median and the best of its rounds, in µs per request."""
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [pythonpath, env.get("PYTHONPATH")]))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.router_handler",
            "--child",
            "--rounds",
            str(rounds),
            "--sets",
            str(sets),
        ],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    return float(measured["median_us"]), min(measured["us_per_request"])


def _side(runs: list[tuple[float, float]]) -> dict[str, Any]:
    return {
        "median_us": round(statistics.median(m for m, _ in runs), 1),
        "median_of_best_us": round(statistics.median(b for _, b in runs), 1),
        "runs": [{"median_us": m, "best_us": b} for m, b in runs],
    }


def main() -> None:
    """Measure (or compare with `--base`); print and write bench/results/router_handler.json."""
    parser = argparse.ArgumentParser(prog="python -m bench.router_handler")
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--base", help="git revision to compare with, alternately")
    parser.add_argument("--pairs", type=int, default=5, help="alternating runs per side")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--sets", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child or args.profile:
        measured = asyncio.run(_measure(args.rounds, args.profile, args.sets))
        measured["median_us"] = round(statistics.median(measured["us_per_request"]), 1)
        print(json.dumps(measured))
        return
    load_before = os.getloadavg()
    result: dict[str, Any] = {"runs": RUNS, "requests_per_round": 2 * RUNS, "rounds": args.rounds}
    with tempfile.TemporaryDirectory(prefix="bench-router-") as tmp:
        sets = Path(tmp) / "requests.pickle"
        _save(asyncio.run(_record_sets(args.rounds + 1)), sets)
        if args.base is None:
            result["after"] = _side([_child(None, args.rounds, sets) for _ in range(args.pairs)])
        else:
            base = str(_base_sources(args.base, Path(tmp)))
            before, after = [], []
            for _ in range(args.pairs):
                before.append(_child(base, args.rounds, sets))
                after.append(_child(None, args.rounds, sets))
            result["base"] = args.base
            result["before"] = _side(before)
            result["after"] = _side(after)
    result["loadavg_1_5_15_start_end"] = [round(v, 2) for v in (*load_before, *os.getloadavg())]
    result["measured_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "router_handler.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

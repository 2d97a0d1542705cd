"""Agent step overhead: the real planner driving runs against an instant model and tool.

Method: a fresh namespace with 12-partition topics; the real planner (`python -m
stepline_planner`) and an instant responder process (`bench.apps.responder`, standing in for the
model router and the tool executor: it answers each ModelCallRequested / ToolCallRequested at
once and records its own handling time per call). The tool `bench_echo` is registered on
stepline.tools.v1 as ToolRegistered; the agent profile (route priced from the price book as
local/stepline-local-1) is a file of the benchmark's own. Every run has 10 steps: model turns ask
for 1, 1, 1 and 2 tool calls, then answer (5 model + 5 tool steps).

For each concurrency level, runs are kept in flight by a closed loop (a new goal as soon as a run
ends) until the level's run count has ended. Step latency is the planner's own StepCompleted
duration (StepStarted → result handled: the request's transaction commit, the responder's
consume + handling + produce, and the result's consume); step overhead = step latency − the
responder's handling time for that call (paired by call id). Steps per second = steps of the
level / (first goal submitted → last run ended, as seen by the driver). CPU = user+system
seconds per process during the level; peak RSS = VmHWM after the level (cumulative).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.apps.stack import (
    ClosedLoop,
    CpuMeter,
    Namespace,
    RunWatcher,
    broker_process,
    machine,
    percentile,
    tool_registered,
)
from stepline.v1 import goals_pb2, runs_pb2
from stepline_planner.spec import SPEC as PLANNER
from stepline_runtime.settings import KafkaSettings, namespaced
from stepline_runtime.topics import Topics

__all__ = ["main"]

RESULTS = Path(__file__).parent / "results"
PARTITIONS = 12
TOOL = "bench_echo"
TOOLS_PER_TURN = "1,1,1,2"
STEPS_PER_RUN = 10
# (concurrent runs, runs in total at that level)
LEVELS = [(1, 20), (10, 60), (100, 300), (1_000, 1_000)]
WARMUP_RUNS = 20


def _goal(run_id: str) -> goals_pb2.GoalSubmitted:
    return goals_pb2.GoalSubmitted(
        run_id=run_id, tenant_id="bench", agent="bench", goal="benchmark goal"
    )


def _raw_round_trip_ms() -> float | None:
    path = RESULTS / "raw_kafka.json"
    if not path.exists():
        return None
    return float(json.loads(path.read_text())["round_trip_ms"]["p50"])


def _ms(value: float) -> float:
    return round(value, 3)


async def main() -> None:
    """Run the step-overhead benchmark, print figures, write bench/results/steps.json."""
    kafka = KafkaSettings()
    with tempfile.TemporaryDirectory(prefix="bench-steps-") as tmp:
        workdir = Path(tmp)
        ns = Namespace(kafka, workdir, PARTITIONS)
        await ns.start()
        watcher = RunWatcher(kafka, ns.topic(Topics.RUNS))
        try:
            result = await _measure(ns, watcher, workdir)
        finally:
            await watcher.stop()
            await ns.stop()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "steps.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {RESULTS / 'steps.json'}")


async def _measure(ns: Namespace, watcher: RunWatcher, workdir: Path) -> dict[str, Any]:
    await watcher.start()
    await (await ns.send(Topics.TOOLS, TOOL, tool_registered(TOOL)))
    timings = workdir / "timings.json"
    responder = ns.spawn(
        "responder", "bench.apps.responder", "--tool", TOOL, "--tools", TOOLS_PER_TURN,
        "--timings", str(timings),
    )  # fmt: skip
    planner = ns.spawn(PLANNER.name, PLANNER.module)
    services = [planner, responder]
    broker = broker_process()
    # Warm-up: process start, topic metadata, partition assignment, producers per task.
    await ClosedLoop(ns, watcher, WARMUP_RUNS, WARMUP_RUNS, _goal).run(timeout_s=180)
    levels: list[dict[str, Any]] = []
    per_level_steps: list[list[runs_pb2.StepCompleted]] = []
    for concurrency, total in LEVELS:
        meter = CpuMeter(services, broker)
        meter.start()
        level = ClosedLoop(ns, watcher, concurrency, total, _goal)
        wall = await level.run(timeout_s=240)
        usage = meter.usage(wall)
        steps = [s for r in level.submitted for s in watcher.steps.get(r, [])]
        outcomes = [watcher.ended[r][0] for r in level.submitted]
        run_ms = [(watcher.ended[r][1] - t) * 1000 for r, t in level.submitted.items()]
        per_level_steps.append(steps)
        levels.append(
            {
                "concurrent_runs": concurrency,
                "runs": total,
                "completed_runs": outcomes.count("completed"),
                "steps": len(steps),
                "wall_s": round(wall, 2),
                "steps_per_s": round(len(steps) / wall, 1),
                "runs_per_s": round(total / wall, 1),
                "run_latency_ms": {
                    "p50": _ms(percentile(run_ms, 0.5)),
                    "p99": _ms(percentile(run_ms, 0.99)),
                },
                "usage": usage,
            }
        )
        print(
            f"steps: {concurrency:>5} concurrent, {total} runs: {len(steps) / wall:.0f} steps/s, "
            f"run p50 {percentile(run_ms, 0.5):.0f} ms"
        )
    responder.stop()
    handling: dict[str, float] = json.loads(timings.read_text())
    raw_rtt = _raw_round_trip_ms()
    for entry, steps in zip(levels, per_level_steps, strict=True):
        latency = [s.duration.seconds * 1000 + s.duration.nanos / 1e6 for s in steps]
        model_tool = [handling.get(s.call_id, 0.0) / 1000 for s in steps]
        overhead = [lat - mt for lat, mt in zip(latency, model_tool, strict=True)]
        by_kind = {
            kind: [o for o, s in zip(overhead, steps, strict=True) if s.kind == value]
            for kind, value in (
                ("model", runs_pb2.STEP_KIND_MODEL),
                ("tool", runs_pb2.STEP_KIND_TOOL),
            )
        }
        entry["step_latency_ms"] = {
            "p50": _ms(percentile(latency, 0.5)),
            "p99": _ms(percentile(latency, 0.99)),
        }
        entry["model_tool_time_ms"] = {
            "mean": _ms(statistics.fmean(model_tool) if model_tool else 0.0),
            "p99": _ms(percentile(model_tool, 0.99)),
        }
        entry["step_overhead_ms"] = {
            "p50": _ms(percentile(overhead, 0.5)),
            "p99": _ms(percentile(overhead, 0.99)),
            "mean": _ms(statistics.fmean(overhead) if overhead else 0.0),
            **{f"{k}_p50": _ms(percentile(v, 0.5)) for k, v in by_kind.items()},
        }
        if raw_rtt:
            entry["overhead_p50_over_4_raw_round_trips"] = round(
                percentile(overhead, 0.5) / (4 * raw_rtt), 2
            )
        print(
            f"steps: {entry['concurrent_runs']:>5} concurrent: step overhead "
            f"p50 {entry['step_overhead_ms']['p50']} ms, p99 {entry['step_overhead_ms']['p99']} ms"
            + (
                f", {entry['overhead_p50_over_4_raw_round_trips']}× four raw round trips"
                if raw_rtt
                else ""
            )
        )
    return {
        "benchmark": "agent_step_overhead",
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "method": __doc__,
        "machine": machine(),
        "partitions": PARTITIONS,
        "steps_per_run": STEPS_PER_RUN,
        "step_mix": "model turns ask for 1, 1, 1, 2 tool calls then answer: 5 model + 5 tool",
        "planner_group": namespaced(PLANNER.name, ns.ns),
        "raw_round_trip_p50_ms": raw_rtt,
        "four_raw_round_trips_ms": round(4 * raw_rtt, 3) if raw_rtt else None,
        "levels": levels,
    }


if __name__ == "__main__":
    asyncio.run(main())

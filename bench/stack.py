"""The whole stack as users run it: planner, model-router, tool-executor and billing.

Method: a fresh namespace with 12-partition topics and the four real services (`python -m …`),
the router on route `local` (the offline stand-in model, in-process, no network) and the executor
running its real built-in tools. Every run is the same four-step agent: a model turn that calls
`calculator` and `search_documents` in parallel, the two tool steps, and a model turn that answers
from their results. Billing records every model attempt and tool execution in its SQLite ledger.

For each concurrency level (1, 10, 100 and 1,000 runs in flight) a closed loop submits a new goal
as soon as a run ends, until the level's run count has ended. Step latency is the planner's own
StepCompleted duration per step kind; steps/s = steps of the level / (first goal → last run end).
CPU = user+system seconds of every process (broker included) during the level, per step.
Log entries per step = records appended to every topic of the namespace (transaction markers
included: they are log entries too) during the level ÷ its steps. The Kafka ceiling is the raw
pipelined produce rate measured by `bench/raw_kafka.py` in the same `make bench` run ÷ log entries
per step: the steps/s the broker alone could carry.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from bench.apps.agent import AGENTS, GOAL
from bench.apps.stack import (
    ROOT,
    ClosedLoop,
    CpuMeter,
    Namespace,
    RunWatcher,
    broker_process,
    machine,
    percentile,
)
from stepline.v1 import goals_pb2, runs_pb2
from stepline_billing.spec import SPEC as BILLING
from stepline_executor.spec import SPEC as EXECUTOR
from stepline_planner.spec import SPEC as PLANNER
from stepline_router.spec import SPEC as ROUTER
from stepline_runtime.settings import KafkaSettings
from stepline_runtime.topics import CATALOG, Topics

__all__ = ["main"]

RESULTS = Path(__file__).parent / "results"
PARTITIONS = 12
SERVICES = (PLANNER, ROUTER, EXECUTOR, BILLING)
# (concurrent runs, runs in total at that level)
LEVELS = [(1, 20), (10, 60), (100, 300), (1_000, 1_000)]
QUICK_LEVELS = [(1, 5), (10, 20), (100, 100)]
WARMUP_RUNS = 10

TOOLS = f"""
[defaults]
timeout_s = 30
max_concurrency = 64
max_output_bytes = 16384

[calculator]
timeout_s = 2

[search_documents]
folder = "{ROOT / "deploy" / "config" / "demo" / "support-tickets"}"
timeout_s = 5
"""


def _goal(run_id: str) -> goals_pb2.GoalSubmitted:
    return goals_pb2.GoalSubmitted(run_id=run_id, tenant_id="bench", agent="stack", goal=GOAL)


async def _log_end(ns: Namespace) -> int:
    """The sum of the end offsets of every partition of every topic of the namespace."""
    consumer = AIOKafkaConsumer(**ns.kafka.client_kwargs("bench-offsets"))
    await consumer.start()
    try:
        partitions = [
            TopicPartition(ns.topic(t.name), p) for t in CATALOG for p in range(ns.partitions)
        ]
        ends = await consumer.end_offsets(partitions)
        return sum(ends.values())
    finally:
        await consumer.stop()


def _raw_records_per_s() -> float | None:
    path = RESULTS / "raw_kafka.json"
    if not path.exists():
        return None
    return float(json.loads(path.read_text())["messages_per_second"])


def _ms(value: float) -> float:
    return round(value, 2)


def _step_ms(step: runs_pb2.StepCompleted) -> float:
    return step.duration.seconds * 1000 + step.duration.nanos / 1e6


async def main(quick: bool = False) -> None:
    """Run the full-stack benchmark, print figures, write bench/results/stack.json."""
    kafka = KafkaSettings()
    with tempfile.TemporaryDirectory(prefix="bench-stack-") as tmp:
        workdir = Path(tmp)
        ns = Namespace(kafka, workdir, PARTITIONS, agents=AGENTS)
        await ns.start()
        watcher = RunWatcher(kafka, ns.topic(Topics.RUNS))
        try:
            result = await _measure(ns, watcher, workdir, QUICK_LEVELS if quick else LEVELS)
        finally:
            await watcher.stop()
            await ns.stop()
    RESULTS.mkdir(exist_ok=True)
    name = "stack-quick.json" if quick else "stack.json"
    (RESULTS / name).write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {RESULTS / name}")


async def _measure(
    ns: Namespace, watcher: RunWatcher, workdir: Path, levels: list[tuple[int, int]]
) -> dict[str, Any]:
    (workdir / "tools.toml").write_text(TOOLS)
    env = {
        "STEPLINE_TOOLS_CONFIG": str(workdir / "tools.toml"),
        "STEPLINE_EXECUTOR_DATA_DIR": str(workdir / "executor"),
        "STEPLINE_BILLING_DATA_DIR": str(workdir / "billing"),
    }
    await watcher.start()
    services = [ns.spawn(s.name, s.module, env=env) for s in SERVICES]
    meter = CpuMeter(services, broker_process())
    # Warm-up: process start, the tool registry, partition assignment, producers per task.
    await ClosedLoop(ns, watcher, WARMUP_RUNS, WARMUP_RUNS, _goal).run(timeout_s=240)
    raw = _raw_records_per_s()
    results: list[dict[str, Any]] = []
    for concurrency, total in levels:
        entries_before = await _log_end(ns)
        meter.start()
        loop = ClosedLoop(ns, watcher, concurrency, total, _goal)
        wall = await loop.run(timeout_s=600)
        usage = meter.usage(wall)
        entries = await _log_end(ns) - entries_before
        steps = [s for r in loop.submitted for s in watcher.steps.get(r, [])]
        outcomes = [watcher.ended[r][0] for r in loop.submitted]
        run_ms = [(watcher.ended[r][1] - t) * 1000 for r, t in loop.submitted.items()]
        kinds = {"model": runs_pb2.STEP_KIND_MODEL, "tool": runs_pb2.STEP_KIND_TOOL}
        by_kind = {k: [_step_ms(s) for s in steps if s.kind == v] for k, v in kinds.items()}
        cpu_s = sum(u["cpu_s"] for u in usage.values())
        steps_per_s = len(steps) / wall
        per_step = entries / max(1, len(steps))
        entry: dict[str, Any] = {
            "concurrent_runs": concurrency,
            "runs": total,
            "completed_runs": outcomes.count("completed"),
            "steps": len(steps),
            "wall_s": round(wall, 2),
            "steps_per_s": round(steps_per_s, 1),
            "run_latency_ms": {
                "p50": _ms(percentile(run_ms, 0.5)),
                "p99": _ms(percentile(run_ms, 0.99)),
            },
            "step_latency_ms": {
                kind: {"p50": _ms(percentile(v, 0.5)), "p99": _ms(percentile(v, 0.99))}
                for kind, v in by_kind.items()
            },
            "cpu_ms_per_step": {
                **{
                    name: round(1000 * u["cpu_s"] / max(1, len(steps)), 3)
                    for name, u in usage.items()
                },
                "total": round(1000 * cpu_s / max(1, len(steps)), 3),
            },
            "log_entries_per_step": round(per_step, 2),
            "usage": usage,
        }
        if raw:
            ceiling = raw / per_step
            entry["kafka_ceiling_steps_per_s"] = round(ceiling, 1)
            entry["share_of_kafka_ceiling"] = round(steps_per_s / ceiling, 3)
        results.append(entry)
        print(
            f"stack: {concurrency:>5} concurrent, {total} runs "
            f"({entry['completed_runs']} completed): {steps_per_s:.0f} steps/s, "
            f"{entry['cpu_ms_per_step']['total']} ms CPU/step, "
            f"model p50 {entry['step_latency_ms']['model']['p50']} ms, "
            f"tool p50 {entry['step_latency_ms']['tool']['p50']} ms, "
            f"run p50 {entry['run_latency_ms']['p50']:.0f} ms, "
            f"{per_step:.1f} log entries/step"
        )
    return {
        "benchmark": "full_stack",
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "method": __doc__,
        "machine": machine(),
        "partitions": PARTITIONS,
        "services": [s.name for s in SERVICES],
        "goal": GOAL,
        "raw_kafka_records_per_s": raw,
        "levels": results,
    }


if __name__ == "__main__":
    asyncio.run(main(quick="--quick" in sys.argv[1:]))

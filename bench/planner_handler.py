"""The planner's handler CPU per step, in-process: no Kafka, no processor, no other service.

Method: the real `PlannerHandler` (profiles from an agents file on route `local`, the price
book, in-memory tool and budget tables) is driven with the records the other services would
send: for each run a goal, the router's answer with two parallel tool calls (`calculator`,
`search_documents`), the executor's two results, and the router's final answer, i.e. the
four-step agent of `bench/stack.py`. `RUNS_IN_FLIGHT` runs advance together, phase by phase, so
caches see many live transcripts as under load. The records answering a phase are built from
the handler's own outputs before the phase is timed; only `handle` is timed, in CPU time of
the process (`time.process_time_ns`: other processes on a shared machine do not count).
µs/step = time in `handle` (goal and results) ÷ steps.

`python -m bench.planner_handler` prints µs per step and writes
`bench/results/planner_handler.json`; `--profile` prints the top frames (cProfile) instead;
`--rounds N` repeats the measurement N times and reports each and the median.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import statistics
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from stepline.v1 import common_pb2, goals_pb2, model_pb2, runs_pb2, tools_pb2
from stepline_planner import profiles as profiles_module
from stepline_planner.handlers import PlannerHandler, PlannerTopics
from stepline_planner.outputs import ToolSpec
from stepline_planner.tables import InMemoryTables
from stepline_pricebook import PriceBook
from stepline_routes import load_routes
from stepline_runtime.codec import encode
from stepline_runtime.records import InboundRecord, OutboundRecord

__all__ = ["main", "measure"]

from bench.apps.agent import AGENTS, GOAL

RESULTS = Path(__file__).parent / "results" / "planner_handler.json"
RUNS_IN_FLIGHT = 100
RUNS = 2_000
STEPS_PER_RUN = 4
TENANT = "acme"

_SCHEMA_CALC = json.dumps(
    {
        "type": "object",
        "properties": {
            "expression": {
                "type": "string",
                "description": "Arithmetic expression, e.g. '(12.5 * 3 + 4) / 2'.",
            }
        },
        "required": ["expression"],
    }
)
_SCHEMA_SEARCH = json.dumps(
    {
        "type": "object",
        "properties": {
            "query": {"type": "string", "description": "What to look for, in words."},
            "top_k": {"type": "integer", "default": 5, "description": "How many documents."},
        },
        "required": ["query"],
    }
)
TOOLS = {
    "calculator": ToolSpec(
        "calculator",
        "Evaluate an arithmetic expression exactly as written and return the result.",
        _SCHEMA_CALC,
        idempotent=True,
        source="builtin",
    ),
    "search_documents": ToolSpec(
        "search_documents",
        "Search the knowledge base (past support tickets and notes) by keywords.",
        _SCHEMA_SEARCH,
        idempotent=True,
        source="builtin",
    ),
}
# What the executor's search answers: a few documents of a few hundred characters each.
SEARCH_OUTPUT = json.dumps(
    [
        {
            "id": f"ticket-{n}",
            "title": f"Refund request {n}",
            "text": "Customer asked for a refund of an annual plan within 30 days; refunded in "
            "full to the original payment method after confirming the account owner. " * 2,
            "score": round(1 - n / 10, 2),
        }
        for n in range(5)
    ]
)

TOPICS = PlannerTopics(
    goals="stepline.goals.v1",
    control="stepline.control.v1",
    model_requests="stepline.model.requests.v1",
    model_results="stepline.model.results.v1",
    tool_requests="stepline.tool.requests.v1",
    tool_results="stepline.tool.results.v1",
    runs="stepline.runs.v1",
    state="stepline.planner.state.v1",
)
T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


class _Clock:
    """A clock that moves a millisecond per reading: deterministic and always forward."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        self.now += timedelta(milliseconds=1)
        return self.now


def _handler() -> PlannerHandler:
    prices = PriceBook.load()
    profiles = profiles_module.parse(AGENTS, prices, load_routes(), origin="<bench>")
    tables = InMemoryTables(TOOLS)
    return PlannerHandler(TOPICS, profiles, tables, prices.tools, clock=_Clock())


def _inbound(out: OutboundRecord, topic: str, offset: int) -> InboundRecord:
    return InboundRecord(topic, 0, offset, out.key, out.value, out.headers)


def _goal(index: int) -> InboundRecord:
    run_id = f"bench-{index:06d}"
    goal = goals_pb2.GoalSubmitted(run_id=run_id, tenant_id=TENANT, agent="stack", goal=GOAL)
    out = encode(TOPICS.goals, run_id, goal, event_id=f"goal/{run_id}", source="bench")
    return _inbound(out, TOPICS.goals, index)


def _model_answer(request: model_pb2.ModelCallRequested, final: bool) -> InboundRecord:
    done = model_pb2.ModelCallCompleted(
        usage=common_pb2.TokenUsage(input_tokens=420, output_tokens=60),
        cost=common_pb2.Money(amount="0.000420", currency="USD"),
        provider="local",
        model="local-tools",
        deployment="local",
    )
    if final:
        done.content = "1234 * 5678 = 7006652. Refunds within 30 days are paid back in full."
        done.finish_reason = model_pb2.FINISH_REASON_STOP
    else:
        done.finish_reason = model_pb2.FINISH_REASON_TOOL_CALLS
        done.tool_calls.add(
            call_id=f"{request.call_id}/c1",
            name="calculator",
            arguments_json='{"expression": "1234 * 5678"}',
        )
        done.tool_calls.add(
            call_id=f"{request.call_id}/c2",
            name="search_documents",
            arguments_json='{"query": "refunds", "top_k": 5}',
        )
    result = model_pb2.ModelCallResult(
        run_id=request.run_id,
        tenant_id=request.tenant_id,
        step_id=request.step_id,
        call_id=request.call_id,
        completed=done,
    )
    out = encode(
        TOPICS.model_results, request.run_id, result, event_id=request.call_id, source="bench"
    )
    return _inbound(out, TOPICS.model_results, 0)


def _tool_answer(request: tools_pb2.ToolCallRequested) -> InboundRecord:
    output = "7006652" if request.tool == "calculator" else SEARCH_OUTPUT
    result = tools_pb2.ToolCallResult(
        run_id=request.run_id,
        tenant_id=request.tenant_id,
        step_id=request.step_id,
        call_id=request.call_id,
        tool=request.tool,
        completed=tools_pb2.ToolCallCompleted(output=output),
    )
    out = encode(
        TOPICS.tool_results, request.run_id, result, event_id=request.call_id, source="bench"
    )
    return _inbound(out, TOPICS.tool_results, 0)


def _answers(outputs: Sequence[OutboundRecord], final: bool) -> list[InboundRecord]:
    """What the router and the executor would send back for `outputs`."""
    answers = []
    for out in outputs:
        assert out.value is not None
        if out.topic == TOPICS.model_requests:
            request = model_pb2.ModelCallRequested.FromString(out.value)
            answers.append(_model_answer(request, final))
        elif out.topic == TOPICS.tool_requests:
            treq = tools_pb2.ToolCallRequested()
            treq.ParseFromString(out.value)
            if treq.step_id:  # a cancellation has no step: not expected here
                answers.append(_tool_answer(treq))
    return answers


async def _timed(
    handler: PlannerHandler, records: Sequence[InboundRecord]
) -> tuple[int, list[OutboundRecord]]:
    """Handle `records`; the nanoseconds spent in `handle` and every output."""
    spent = 0
    outputs: list[OutboundRecord] = []
    clock = time.process_time_ns  # CPU of this process: less sensitive to a shared machine
    for record in records:
        started = clock()
        out = await handler.handle(record)
        spent += clock() - started
        outputs.extend(out)
    return spent, outputs


async def measure(runs: int = RUNS, in_flight: int = RUNS_IN_FLIGHT) -> dict[str, Any]:
    """Drive `runs` four-step runs through a fresh handler; µs per step and record counts."""
    handler = _handler()
    spent = 0
    records_out = 0
    completed = 0
    for first in range(0, runs, in_flight):
        batch = [_goal(i) for i in range(first, min(first + in_flight, runs))]
        ns, outputs = await _timed(handler, batch)
        spent += ns
        records_out += len(outputs)
        # model turn with two tool calls → two tool results → final model turn
        for final in (False, None, True):
            inputs = _answers(outputs, bool(final))
            ns, outputs = await _timed(handler, inputs)
            spent += ns
            records_out += len(outputs)
        completed += sum(
            1
            for out in outputs
            if out.topic == TOPICS.runs
            and out.value is not None
            and runs_pb2.RunEvent.FromString(out.value).HasField("completed")
        )
    if completed != runs:
        raise RuntimeError(f"{runs - completed} of {runs} runs did not complete")
    steps = runs * STEPS_PER_RUN
    return {
        "runs": runs,
        "in_flight": in_flight,
        "steps": steps,
        "us_per_step": round(spent / 1_000 / steps, 1),
        "records_out_per_step": round(records_out / steps, 2),
    }


def _profile(runs: int) -> None:
    profiler = cProfile.Profile()
    profiler.enable()
    asyncio.run(measure(runs))
    profiler.disable()
    stats = pstats.Stats(profiler, stream=sys.stdout).strip_dirs()
    stats.sort_stats("tottime").print_stats(30)
    stats.sort_stats("cumulative").print_stats(45)


def main() -> None:
    """Measure (or profile) the handler and keep the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=RUNS)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args()
    if args.profile:
        _profile(args.runs)
        return
    asyncio.run(measure(200))  # warm-up: imports, caches, first-call paths
    rounds = [asyncio.run(measure(args.runs)) for _ in range(args.rounds)]
    figures = [r["us_per_step"] for r in rounds]
    result = {
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "method": "in-process PlannerHandler.handle, four-step runs, 100 in flight",
        "us_per_step_rounds": figures,
        "us_per_step_median": statistics.median(figures),
        "records_out_per_step": rounds[0]["records_out_per_step"],
        "runs_per_round": args.runs,
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    print(json.dumps(result, indent=2))
    if not args.no_save:
        RESULTS.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

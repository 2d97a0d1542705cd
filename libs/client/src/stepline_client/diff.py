"""Compare two recorded runs (typically an original and its replay): steps side by side, tool
calls same / different arguments / new / missing, answers, tokens, cost, latency, outcome."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from decimal import Decimal
from typing import Any, TextIO

from stepline.v1 import replay_pb2, runs_pb2
from stepline_client.record import RecordedRun
from stepline_vocab import canonical_arguments, format_amount, wire

__all__ = ["compare", "outcome_of", "print_diff", "run_facts"]


def outcome_of(record: RecordedRun) -> str:
    """completed / failed (reason) / cancelled."""
    final = record.terminal
    if final is None:
        return "running"
    kind = final.WhichOneof("event") or "unknown"
    if kind == "failed":
        name = runs_pb2.RunFailureReason.Name(final.failed.reason)
        reason = name.removeprefix("RUN_FAILURE_REASON_").lower().replace("_", " ")
        return f"failed ({reason})"
    return kind


def run_facts(record: RecordedRun) -> dict[str, Any]:
    """The figures of one run: outcome, answer, steps, tokens, cost, latency."""
    final = record.terminal
    body = getattr(final, final.WhichOneof("event") or "") if final is not None else None
    cost = wire.amount_of(body.cost, negative=True) if body is not None and body.cost.amount else 0
    started = record.started
    origin = started.replay if started.HasField("replay") else None
    return {
        "run_id": record.run_id,
        "outcome": outcome_of(record),
        "answer": body.answer if isinstance(body, runs_pb2.RunCompleted) else "",
        "steps": body.steps if body is not None else 0,
        "tokens_in": body.usage.input_tokens if body is not None else 0,
        "tokens_out": body.usage.output_tokens if body is not None else 0,
        "cost": format_amount(Decimal(cost)),
        "latency_s": round(body.duration.ToTimedelta().total_seconds(), 3) if body else 0.0,
        "route": origin.route if origin is not None and origin.route else started.route,
        "replay_of": origin.original_run_id if origin is not None else "",
    }


def _step_line(done: runs_pb2.StepCompleted, begun: runs_pb2.StepStarted) -> str:
    outcome = runs_pb2.StepOutcome.Name(done.outcome).removeprefix("STEP_OUTCOME_").lower()
    if done.kind == runs_pb2.STEP_KIND_MODEL:
        wants = ", ".join(c.name for c in done.tool_calls) or "answer"
        return f"model {done.model or done.route}: {outcome} → {wants}"
    served = ""
    if done.replay_served != replay_pb2.REPLAY_SERVED_UNSPECIFIED:
        name = replay_pb2.ReplayServed.Name(done.replay_served)
        served = f"[{name.removeprefix('REPLAY_SERVED_').lower()}] "
    return f"{served}{done.tool}({canonical_arguments(begun.arguments_json)}): {outcome}"


def _calls(record: RecordedRun) -> list[tuple[str, str]]:
    return [
        (done.tool, canonical_arguments(begun.arguments_json))
        for begun, done in record.steps()
        if done.kind == runs_pb2.STEP_KIND_TOOL
    ]


def _classify(a: list[tuple[str, str]], b: list[tuple[str, str]]) -> dict[str, list[Any]]:
    """Same calls, same tool with other arguments, calls only B made, calls only A made."""
    left, right = Counter(a), Counter(b)
    same = left & right
    only_a, only_b = list((left - same).elements()), list((right - same).elements())
    different: list[dict[str, str]] = []
    for tool, args in list(only_b):
        match = next((x for x in only_a if x[0] == tool), None)
        if match is not None:
            only_a.remove(match)
            only_b.remove((tool, args))
            different.append({"tool": tool, "a": match[1], "b": args})
    return {
        "same": [{"tool": t, "arguments": x} for t, x in same.elements()],
        "different_arguments": different,
        "new": [{"tool": t, "arguments": x} for t, x in only_b],
        "missing": [{"tool": t, "arguments": x} for t, x in only_a],
    }


def compare(a: RecordedRun, b: RecordedRun) -> dict[str, Any]:
    """The JSON report of A against B."""
    steps_a = {s[1].step_id.rsplit(":", 1)[-1]: s for s in a.steps()}
    steps_b = {s[1].step_id.rsplit(":", 1)[-1]: s for s in b.steps()}
    ordinals = sorted({*steps_a, *steps_b}, key=lambda n: int(n) if n.isdigit() else 0)
    origin = b.started.replay if b.started.HasField("replay") else None
    forked = origin.steps_forked if origin is not None else 0
    side_by_side = []
    for n in ordinals:
        left = steps_a.get(n)
        right = steps_b.get(n)
        side_by_side.append(
            {
                "step": int(n) if n.isdigit() else n,
                "a": _step_line(left[1], left[0]) if left else "",
                "b": _step_line(right[1], right[0])
                if right
                else ("(forked from A)" if n.isdigit() and int(n) <= forked else ""),
            }
        )
    facts_a, facts_b = run_facts(a), run_facts(b)
    served = sum(
        1 for _, done in b.steps() if done.replay_served == replay_pb2.REPLAY_SERVED_RECORDED
    )
    return {
        "a": facts_a,
        "b": facts_b,
        "steps": side_by_side,
        "tool_calls": _classify(_calls(a), _calls(b)),
        "served_from_record": served,
        "same_answer": facts_a["answer"] == facts_b["answer"],
        "delta": {
            "cost": format_amount(Decimal(facts_b["cost"]) - Decimal(facts_a["cost"])),
            "latency_s": round(facts_b["latency_s"] - facts_a["latency_s"], 3),
            "tokens_in": facts_b["tokens_in"] - facts_a["tokens_in"],
            "tokens_out": facts_b["tokens_out"] - facts_a["tokens_out"],
        },
    }


def _short(text: str, width: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def print_diff(report: dict[str, Any], out: TextIO) -> None:
    """The report as text: figures, steps side by side, tool-call classes, answers."""
    a, b = report["a"], report["b"]
    rows = [("", "A", "B", "delta")]
    for key in ("outcome", "route", "steps", "tokens_in", "tokens_out", "cost", "latency_s"):
        delta = report["delta"].get(key, "")
        rows.append((key, str(a[key]), str(b[key]), str(delta)))
    print(f"A {a['run_id']}\nB {b['run_id']}\n", file=out)
    _table(rows, out)
    print("\nsteps:", file=out)
    _table(
        [("#", "A", "B")]
        + [(str(s["step"]), _short(s["a"], 60), _short(s["b"], 60)) for s in report["steps"]],
        out,
    )
    calls = report["tool_calls"]
    print(
        f"\ntool calls: {len(calls['same'])} same, {len(calls['different_arguments'])} with "
        f"different arguments, {len(calls['new'])} new, {len(calls['missing'])} missing; "
        f"{report['served_from_record']} served from the record",
        file=out,
    )
    for d in calls["different_arguments"]:
        print(f"  ~ {d['tool']}: {_short(d['a'], 50)} → {_short(d['b'], 50)}", file=out)
    for label, sign in (("new", "+"), ("missing", "-")):
        for c in calls[label]:
            print(f"  {sign} {c['tool']}({_short(c['arguments'], 80)})", file=out)
    same = "same answer" if report["same_answer"] else "answers differ"
    print(f"\nanswers ({same}):\n  A: {_short(a['answer'], 200)}", file=out)
    print(f"  B: {_short(b['answer'], 200)}", file=out)


def _table(rows: Sequence[Sequence[str]], out: TextIO) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip(), file=out)

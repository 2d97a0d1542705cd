"""`stepline runs replay|fork|diff` and the batch `stepline replay`: re-drive recorded runs with
another route or prompt, never repeating their side effects, and compare the outcomes."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import tomllib
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, TextIO

from stepline.v1 import common_pb2, replay_pb2, runs_pb2
from stepline_client.client import Stepline
from stepline_client.diff import compare, print_diff, run_facts
from stepline_client.record import RecordedRun, RecordError, ReplaySettings, replay_goal
from stepline_runtime.ids import tenant_id_problem
from stepline_runtime.settings import ServiceSettings
from stepline_runtime.topics import Topics
from stepline_vocab import format_amount

__all__ = [
    "Launched",
    "ReplayCliError",
    "add_batch_parser",
    "add_runs_parsers",
    "batch",
    "commands",
    "diff",
    "fork",
    "launch",
    "read_record",
    "replay",
]

_POLICIES = {
    "stop": replay_pb2.DIVERGENCE_POLICY_STOP,
    "stub": replay_pb2.DIVERGENCE_POLICY_STUB,
    "execute": replay_pb2.DIVERGENCE_POLICY_EXECUTE,
}
_APPROVALS = {
    "deny": replay_pb2.REPLAY_APPROVALS_DENY,
    "request": replay_pb2.REPLAY_APPROVALS_REQUEST,
}
_PROFILE_KEYS = frozenset({"system_prompt", "route"})
# A batch replay may spend this many times what its original cost (unless --run-budget).
_RUN_BUDGET_FACTOR = 3


class ReplayCliError(RecordError):
    """A replay command the user can fix; the message says how."""


# --- reading records ------------------------------------------------------------------------


async def read_record(
    client: Stepline, settings: ServiceSettings, run_id: str, tenant: str | None
) -> RecordedRun:
    """The finished run `run_id` of `tenant`; refused for another tenant's run."""
    events = [e async for e in client.events(run_id, follow=False)]
    if not events:
        namespace = settings.topic(Topics.RUNS)
        raise ReplayCliError(
            f"no events of run {run_id} on {namespace}: the id is wrong, or the run is older "
            "than the topic's retention and its events were deleted — it cannot be replayed"
        )
    if tenant is not None and events[0].tenant_id != tenant:
        # Said like a missing run's refusal elsewhere: another tenant's run is not shown.
        raise ReplayCliError(f"run {run_id} does not belong to tenant {tenant!r}")
    return RecordedRun.of(run_id, events)


def _tenant(value: str) -> str:
    problem = tenant_id_problem(value)
    if problem is not None:
        raise ReplayCliError(f"--tenant: {problem}")
    return value


def _settings(args: argparse.Namespace, mode: replay_pb2.ReplayMode.ValueType) -> ReplaySettings:
    route, prompt = args.route or args.model or "", ""
    if args.agent_profile:
        try:
            profile = tomllib.loads(Path(args.agent_profile).read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as error:
            raise ReplayCliError(f"--agent-profile {args.agent_profile}: {error}") from error
        unknown = sorted(set(profile) - _PROFILE_KEYS)
        if unknown:
            raise ReplayCliError(
                f"--agent-profile: a replay can override only {', '.join(sorted(_PROFILE_KEYS))}"
                f" (the recorded run fixes the tools); not {', '.join(unknown)}"
            )
        route = route or str(profile.get("route", ""))
        prompt = str(profile.get("system_prompt", ""))
    if args.prompt_file:
        try:
            prompt = Path(args.prompt_file).read_text(encoding="utf-8").strip()
        except OSError as error:
            raise ReplayCliError(f"--prompt-file {args.prompt_file}: {error}") from error
    default_approvals = "request" if mode == replay_pb2.REPLAY_MODE_FORK else "deny"
    return ReplaySettings(
        mode=mode,
        from_step=getattr(args, "from_step", 0) or 0,
        route=route,
        system_prompt=prompt,
        divergence=_POLICIES[args.policy],
        execute_tools=tuple(sorted(set(args.allow_tool or ()))),
        approvals=_APPROVALS[args.approvals or default_approvals],
    )


# --- one replay -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Launched:
    """A replay submitted (or found already there) and its goal's budget."""

    run_id: str
    existed: bool


async def launch(
    client: Stepline,
    record: RecordedRun,
    settings: ReplaySettings,
    budget: Decimal | None = None,
) -> Launched:
    """Submit the replay of `record` unless the same replay exists (its id is deterministic)."""
    goal = replay_goal(record, settings, os.environ.get("USER", ""))
    if budget is not None:
        # In the original's currency (the planner's): "" lets the planner use its own.
        currency = record.started.budget.currency
        goal.budget.CopyFrom(common_pb2.Money(currency=currency, amount=format_amount(budget)))
    async for _ in client.events(goal.run_id, follow=False):
        return Launched(goal.run_id, True)  # replaying twice with the same settings: one run
    await client.submit_message(goal)
    return Launched(goal.run_id, False)


async def _one(
    args: argparse.Namespace,
    settings: ServiceSettings,
    out: TextIO,
    mode: replay_pb2.ReplayMode.ValueType,
) -> int:
    chosen = _settings(args, mode)
    verb = "fork" if mode == replay_pb2.REPLAY_MODE_FORK else "replay"
    async with Stepline(settings) as client:
        record = await read_record(client, settings, args.run_id, _tenant(args.tenant))
        launched = await launch(client, record, chosen)
        said = "already exists" if launched.existed else "submitted"
        if not args.json:
            print(f"{verb} {launched.run_id} of {record.run_id} {said}", file=out, flush=True)
        if args.no_wait:
            if args.json:
                print(
                    json.dumps({"run_id": launched.run_id, "existed": launched.existed}), file=out
                )
            return 0
        await client.wait(launched.run_id, timeout_s=args.timeout)
        replayed = await read_record(client, settings, launched.run_id, record.tenant_id)
    report = compare(record, replayed)
    if args.json:
        print(
            json.dumps({"run_id": launched.run_id, "existed": launched.existed, **report}), file=out
        )
    else:
        print_diff(report, out)
    return 0 if replayed.terminal and replayed.terminal.HasField("completed") else 1


async def replay(args: argparse.Namespace, settings: ServiceSettings, out: TextIO) -> int:
    """`stepline runs replay RUN_ID`."""
    return await _one(args, settings, out, replay_pb2.REPLAY_MODE_REPLAY)


async def fork(args: argparse.Namespace, settings: ServiceSettings, out: TextIO) -> int:
    """`stepline runs fork RUN_ID --from-step N`."""
    if args.from_step < 1:
        raise ReplayCliError("--from-step must be at least 1 (the first step of the run)")
    return await _one(args, settings, out, replay_pb2.REPLAY_MODE_FORK)


async def diff(args: argparse.Namespace, settings: ServiceSettings, out: TextIO) -> int:
    """`stepline runs diff A B`."""
    tenant = _tenant(args.tenant) if args.tenant else None
    async with Stepline(settings) as client:
        a = await read_record(client, settings, args.a, tenant)
        b = await read_record(client, settings, args.b, tenant or a.tenant_id)
    report = compare(a, b)
    if args.json:
        print(json.dumps(report, ensure_ascii=False), file=out)
    else:
        print_diff(report, out)
    return 0


# --- batch ----------------------------------------------------------------------------------


def _since(text: str) -> timedelta:
    found = re.fullmatch(r"(\d+)([dhm])", text.strip())
    if not found:
        raise ReplayCliError(f"--since {text!r}: say e.g. 7d, 12h or 30m")
    unit = {"d": "days", "h": "hours", "m": "minutes"}[found.group(2)]
    return timedelta(**{unit: int(found.group(1))})


def _amount(text: str | None, option: str = "--spend-limit") -> Decimal | None:
    if text is None:
        return None
    try:
        value = Decimal(text)
    except InvalidOperation as error:
        raise ReplayCliError(f"{option} {text!r} is not an amount") from error
    if value <= 0:
        raise ReplayCliError(f"{option} must be more than 0")
    return value


async def _candidates(
    client: Stepline, tenant: str, agent: str | None, since: datetime
) -> list[RecordedRun]:
    """The finished, non-replay runs of `tenant` (and `agent`) started since `since`, oldest
    first."""
    by_run: dict[str, dict[int, runs_pb2.RunEvent]] = {}
    async for event in client.all_events():
        if event.tenant_id == tenant:
            by_run.setdefault(event.run_id, {})[event.sequence] = event
    found = []
    for run_id, events in by_run.items():
        ordered = [events[n] for n in sorted(events)]
        try:
            record = RecordedRun.of(run_id, ordered)
        except RecordError:
            continue  # running, or its start expired: not a candidate
        started = record.started
        if started.HasField("replay") or started.parent_run_id:
            continue  # replays and child runs are not replayed on their own
        if agent and record.agent != agent:
            continue
        if record.events[0].occurred_at.ToDatetime(UTC) < since:
            continue
        found.append(record)
    found.sort(key=lambda r: (r.events[0].occurred_at.seconds, r.run_id))
    return found


@dataclass
class _Spend:
    """Money a batch spent and has reserved (budgets of replays in flight)."""

    limit: Decimal | None
    spent: Decimal = Decimal(0)
    reserved: Decimal = Decimal(0)
    stopped: bool = False


async def batch(args: argparse.Namespace, settings: ServiceSettings, out: TextIO) -> int:
    """`stepline replay --tenant T --agent A --since 7d --route R`: replay finished runs with
    bounded concurrency under a spend limit; a JSON summary and a table."""
    tenant = _tenant(args.tenant)
    chosen = _settings(args, replay_pb2.REPLAY_MODE_REPLAY)
    limit = _amount(args.spend_limit)
    concurrency = max(1, args.concurrency)
    since = datetime.now(UTC) - _since(args.since)
    run_budget = _amount(args.run_budget, "--run-budget")
    spend = _Spend(limit)
    rows: list[dict[str, Any]] = []

    def budget_of(record: RecordedRun) -> Decimal | None:
        """What one replay may spend: --run-budget, else 3× what its original cost (a share
        of the limit for an original without a cost); None without a limit (agent default)."""
        if run_budget is not None:
            return run_budget
        if limit is None:
            return None
        original = Decimal(run_facts(record)["cost"])
        return original * _RUN_BUDGET_FACTOR if original > 0 else limit / concurrency

    async with Stepline(settings) as client:
        records = await _candidates(client, tenant, args.agent, since)
        if args.limit:
            records = records[-args.limit :]
        gate = asyncio.Semaphore(concurrency)
        lock = asyncio.Lock()

        async def one(record: RecordedRun) -> None:
            budget = budget_of(record)
            async with gate:
                async with lock:
                    # Budgets of replays in flight are reserved: the batch never overruns.
                    if spend.limit is not None and budget is not None:
                        left = spend.limit - spend.spent - spend.reserved
                        if spend.stopped or left < budget:
                            spend.stopped = True
                            rows.append({"original": run_facts(record), "skipped": "spend limit"})
                            return
                        spend.reserved += budget
                launched = await launch(client, record, chosen, budget)
                try:
                    await client.wait(launched.run_id, timeout_s=args.timeout)
                    replayed = await read_record(client, settings, launched.run_id, tenant)
                finally:
                    if spend.limit is not None and budget is not None:
                        async with lock:
                            spend.reserved -= budget
                report = compare(record, replayed)
                async with lock:
                    spend.spent += Decimal(report["b"]["cost"])
                    rows.append(
                        {
                            "original": report["a"],
                            "replay": report["b"],
                            "existed": launched.existed,
                            "diverged": "replay diverged" in report["b"]["outcome"],
                            "same_answer": report["same_answer"],
                            "served_from_record": report["served_from_record"],
                            "tool_calls": {k: len(v) for k, v in report["tool_calls"].items()},
                            "delta": report["delta"],
                        }
                    )

        await asyncio.gather(*(one(r) for r in records))
    summary = _summarize(rows, args, limit, spend)
    if args.out:
        text = json.dumps(summary, indent=2, ensure_ascii=False) + "\n"
        await asyncio.to_thread(Path(args.out).write_text, text, "utf-8")
    if args.json:
        print(json.dumps(summary, ensure_ascii=False), file=out)
    else:
        _print_batch(summary, out)
        if args.out:
            print(f"\nJSON summary: {args.out}", file=out)
    return 0


def _rate(part: int, whole: int) -> float:
    return round(part / whole, 3) if whole else 0.0


def _summarize(
    rows: list[dict[str, Any]], args: argparse.Namespace, limit: Decimal | None, spend: _Spend
) -> dict[str, Any]:
    done = [r for r in rows if "replay" in r]
    skipped = [r for r in rows if "skipped" in r]
    done.sort(key=lambda r: r["original"]["run_id"])
    cost_a = sum((Decimal(r["original"]["cost"]) for r in done), Decimal(0))
    cost_b = sum((Decimal(r["replay"]["cost"]) for r in done), Decimal(0))
    lat_a = sum(r["original"]["latency_s"] for r in done)
    lat_b = sum(r["replay"]["latency_s"] for r in done)
    return {
        "tenant": args.tenant,
        "agent": args.agent or "",
        "since": args.since,
        "route": args.route or "",
        "policy": args.policy,
        "runs_selected": len(rows),
        "runs_replayed": len(done),
        "runs_skipped_spend_limit": len(skipped),
        "stopped_at_spend_limit": spend.stopped,
        "spend_limit": format_amount(limit) if limit is not None else None,
        "completion_rate": {
            "original": _rate(
                sum(r["original"]["outcome"] == "completed" for r in done), len(done)
            ),
            "replay": _rate(sum(r["replay"]["outcome"] == "completed" for r in done), len(done)),
        },
        "divergence_rate": _rate(sum(bool(r["diverged"]) for r in done), len(done)),
        "same_answer_rate": _rate(sum(bool(r["same_answer"]) for r in done), len(done)),
        "cost": {
            "original": format_amount(cost_a),
            "replay": format_amount(cost_b),
            "delta": format_amount(cost_b - cost_a),
        },
        "latency_s": {
            "original_mean": round(lat_a / len(done), 3) if done else 0.0,
            "replay_mean": round(lat_b / len(done), 3) if done else 0.0,
            "delta_mean": round((lat_b - lat_a) / len(done), 3) if done else 0.0,
        },
        "runs": done,
        "skipped": [r["original"]["run_id"] for r in skipped],
    }


def _print_batch(summary: dict[str, Any], out: TextIO) -> None:
    rows = [("original", "replay", "outcome A → B", "cost A → B", "latency A → B", "served")]
    for r in summary["runs"]:
        a, b = r["original"], r["replay"]
        rows.append(
            (
                a["run_id"],
                b["run_id"],
                f"{a['outcome']} → {b['outcome']}",
                f"{a['cost']} → {b['cost']}",
                f"{a['latency_s']:.1f}s → {b['latency_s']:.1f}s",
                str(r["served_from_record"]),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip(), file=out)
    c, lat = summary["cost"], summary["latency_s"]
    done = summary["runs_replayed"]
    route = summary["route"] or "(the agents' own)"
    print(
        f"\n{done} of {summary['runs_selected']} runs replayed on route {route}"
        + (
            f"; stopped at the spend limit {summary['spend_limit']}: "
            f"{summary['runs_skipped_spend_limit']} not replayed"
            if summary["stopped_at_spend_limit"]
            else ""
        ),
        file=out,
    )
    rate = summary["completion_rate"]
    print(
        f"completion {rate['original']:.0%} → {rate['replay']:.0%}, divergence "
        f"{summary['divergence_rate']:.0%}, same answer {summary['same_answer_rate']:.0%}",
        file=out,
    )
    print(
        f"cost {c['original']} → {c['replay']} (delta {c['delta']}); mean latency "
        f"{lat['original_mean']:.2f}s → {lat['replay_mean']:.2f}s",
        file=out,
    )


# --- wiring ---------------------------------------------------------------------------------


def _overrides(parser: argparse.ArgumentParser) -> None:
    route = parser.add_mutually_exclusive_group()
    route.add_argument("--route", help="model route for the replay's model steps")
    route.add_argument(
        "--model", help="one deployment of the routes file for them instead (no failover)"
    )
    route.add_argument(
        "--agent-profile",
        help="TOML file overriding system_prompt and/or route of the recorded agent",
    )
    parser.add_argument("--prompt-file", help="a file whose text replaces the system prompt")
    parser.add_argument(
        "--policy",
        choices=sorted(_POLICIES),
        default="stop",
        help="a tool call matching no recorded call: stop the replay (default), answer it "
        "with a not-executed stub, or execute it when the tool is read-only or --allow-tool",
    )
    parser.add_argument(
        "--allow-tool",
        action="append",
        metavar="TOOL",
        help="with --policy execute: run this tool for real even if it has side effects",
    )
    parser.add_argument(
        "--approvals",
        choices=sorted(_APPROVALS),
        help="executed calls that need approval: deny (replay default) or request (fork default)",
    )
    parser.add_argument("--timeout", type=float, default=300, help="seconds to wait per replay")


def add_runs_parsers(runs: Any) -> None:
    """`runs replay`, `runs fork` and `runs diff` on the `stepline runs` subparsers."""
    one = runs.add_parser(
        "replay", help="re-drive a finished run: new route/prompt, no side effects"
    )
    one.add_argument("run_id")
    one.add_argument("--tenant", required=True, help="your tenant: only its runs are replayed")
    _overrides(one)
    one.add_argument("--no-wait", action="store_true", help="submit and return its run id")
    one.add_argument("--json", action="store_true")
    forked = runs.add_parser("fork", help="continue a run live from its step N (steps 1..N reused)")
    forked.add_argument("run_id")
    forked.add_argument("--from-step", type=int, required=True, help="last step taken as recorded")
    forked.add_argument("--tenant", required=True, help="your tenant: only its runs are forked")
    _overrides(forked)
    forked.add_argument("--no-wait", action="store_true")
    forked.add_argument("--json", action="store_true")
    compared = runs.add_parser(
        "diff", help="two runs side by side (e.g. an original and its replay)"
    )
    compared.add_argument("a")
    compared.add_argument("b")
    compared.add_argument("--tenant", help="refuse runs of any other tenant")
    compared.add_argument("--json", action="store_true", help="the report as one JSON document")


def add_batch_parser(sub: Any) -> None:
    """The batch `stepline replay` command."""
    many = sub.add_parser("replay", help="replay a tenant's finished runs on another route")
    many.add_argument("--tenant", required=True)
    many.add_argument("--agent", help="only this agent's runs")
    many.add_argument("--since", default="7d", help="runs started within this window (7d, 12h)")
    _overrides(many)
    many.add_argument("--concurrency", type=int, default=4, help="replays in flight at once")
    many.add_argument("--spend-limit", help="stop before the replays could spend more (USD)")
    many.add_argument(
        "--run-budget",
        help="what one replay may spend (USD); default with --spend-limit: 3× its original's cost",
    )
    many.add_argument("--limit", type=int, default=0, help="at most the newest N runs (0: all)")
    many.add_argument("--out", help="also write the JSON summary to this file")
    many.add_argument("--json", action="store_true", help="print the JSON summary instead")


Command = Callable[[argparse.Namespace, ServiceSettings, TextIO], Coroutine[Any, Any, int]]


def commands() -> dict[str, Command]:
    """The `runs` subcommands this module serves."""
    return {"replay": replay, "fork": fork, "diff": diff}

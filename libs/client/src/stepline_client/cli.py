"""`stepline`: run the local stack, submit goals, watch runs, approve, cancel, inspect topics."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TextIO

import grpc
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError
from google.protobuf import json_format
from pydantic import ValidationError

from stepline.v1 import billing_service_pb2, billing_service_pb2_grpc, model_pb2, runs_pb2
from stepline.v1.gateway_service_pb2 import RunSummary
from stepline_client import keys_cli, models_cli, replay_cli
from stepline_client.client import BrokerUnavailableError, Goal, RunTimeoutError, Stepline
from stepline_client.demo import main as demo
from stepline_client.events import describe, describe_attempt, is_terminal, money
from stepline_client.offline import ROUTES_FILE, choose_routes
from stepline_client.record import RecordError
from stepline_client.summary import summarize
from stepline_client.supervisor import (
    SERVICES,
    ScaleError,
    Supervisor,
    instance_of_client,
    parse_scale,
)
from stepline_localkafka import LocalKafka, LocalKafkaError, find_repo_root
from stepline_runtime.groups import describe_group
from stepline_runtime.ids import tenant_id_problem
from stepline_runtime.jsonlines import tail
from stepline_runtime.observe import group_lag, lag_reader
from stepline_runtime.settings import ServiceSettings
from stepline_runtime.topics import CATALOG, Topics
from stepline_vocab import SteplineError

__all__ = ["main"]

EXIT_USAGE = 2
EXIT_PIPE = 128 + signal.SIGPIPE


class CliError(SteplineError):
    """A failure the user can fix; the message says how."""


def _state_dir() -> Path:
    configured = os.environ.get("STEPLINE_STATE_DIR")
    if configured:
        return Path(configured)
    try:
        return find_repo_root() / ".local" / "stepline"
    except LocalKafkaError:
        return Path.home() / ".local" / "state" / "stepline"


def _print_event(
    event: runs_pb2.RunEvent,
    as_json: bool,
    out: TextIO,
    attempts: Sequence[model_pb2.ModelAttempt] = (),
) -> None:
    """One event; a model step with the provider attempts behind it (failovers included)."""
    if as_json:
        line = json_format.MessageToDict(event, preserving_proto_field_name=True)
        if attempts:
            line["attempts"] = [
                json_format.MessageToDict(a, preserving_proto_field_name=True) for a in attempts
            ]
        print(json.dumps(line, ensure_ascii=False), file=out, flush=True)
        return
    when = (
        event.occurred_at.ToDatetime(UTC).strftime("%H:%M:%S") if event.occurred_at.seconds else ""
    )
    print(f"{when} #{event.sequence:<3} {describe(event)}", file=out, flush=True)
    for i, attempt in enumerate(attempts):
        print(describe_attempt(attempt, i == len(attempts) - 1), file=out, flush=True)


def _print_outcome(event: runs_pb2.RunEvent, out: TextIO) -> int:
    kind = event.WhichOneof("event")
    if kind == "completed":
        print(f"\nanswer:\n{event.completed.answer}\n", file=out)
        print(f"cost: {money(event.completed.cost)}", file=out)
        return 0
    return 1


# --- local stack --------------------------------------------------------------------------


def _local_grpc(service: str) -> str:
    """The loopback gRPC address `service` listens on by default (its spec's port)."""
    ports = {spec.name: spec.ports for spec in SERVICES}
    return f"127.0.0.1:{ports[service]['grpc']}" if "grpc" in ports.get(service, {}) else ""


def cmd_up(args: argparse.Namespace, settings: ServiceSettings, out: TextIO) -> int:
    """Start the local broker (unless one is configured) and every service instance."""
    env = dict(os.environ)
    try:
        supervisor = Supervisor(_state_dir(), scale=parse_scale(args.scale or ""))
        supervisor.check(env)
    except ScaleError as error:
        raise CliError(str(error)) from error
    if not os.environ.get("STEPLINE_KAFKA_BOOTSTRAP"):
        local = LocalKafka()
        local.up()
        env["STEPLINE_KAFKA_BOOTSTRAP"] = local.bootstrap
        print(f"kafka: {local.bootstrap}", file=out)
    elif not asyncio.run(_answers(settings)):
        # Before any service starts: they would only retry against nothing.
        raise CliError(
            f"no broker answers at STEPLINE_KAFKA_BOOTSTRAP={settings.kafka.bootstrap} — start "
            "it, or unset STEPLINE_KAFKA_BOOTSTRAP to let `stepline up` start a local one"
        )
    env.setdefault("STEPLINE_KAFKA_BOOTSTRAP", settings.kafka.bootstrap)
    shipped = find_repo_root(Path(__file__).parent) / ROUTES_FILE
    routes = choose_routes(env, shipped=shipped, state_dir=_state_dir())
    env.update(routes.env)
    print(routes.note, file=out)
    try:
        statuses = supervisor.up(env)
    except ScaleError as error:
        raise CliError(str(error)) from error
    failed = [s for s in statuses if not s.running]
    for status in statuses:
        state = "running" if status.running else f"NOT RUNNING — see {status.log}"
        print(f"{status.instance:<14} pid {status.pid or '-':<8} {state}", file=out)
    if failed:
        return 1
    # Processes being alive is not enough: wait until a goal submitted now would be served.
    kafka = settings.kafka.model_copy(update={"bootstrap": env["STEPLINE_KAFKA_BOOTSTRAP"]})
    ready_settings = settings.model_copy(update={"kafka": kafka})
    asyncio.run(keys_cli.ensure_bootstrap_key(ready_settings, _state_dir(), out))
    if not asyncio.run(_wait_ready(ready_settings, args.timeout)):
        print(
            f"services did not become ready within {args.timeout:g}s — see the logs in "
            f"{_state_dir() / 'logs'}",
            file=out,
        )
        return 1
    print("ready", file=out)
    return 0


async def _answers(settings: ServiceSettings) -> bool:
    """True when the configured broker accepts a connection and answers a metadata request."""
    admin = AIOKafkaAdminClient(**settings.kafka.client_kwargs("stepline-cli-ready"))
    try:
        await admin.start()
        await admin.list_topics()
    except KafkaError:
        return False
    finally:
        with contextlib.suppress(KafkaError):
            await admin.close()
    return True


async def _wait_ready(settings: ServiceSettings, timeout_s: float) -> bool:
    """True once the run topic exists and the executor has registered its tools."""
    admin = AIOKafkaAdminClient(**settings.kafka.client_kwargs("stepline-cli-ready"))
    consumer = AIOKafkaConsumer(**settings.kafka.client_kwargs("stepline-cli-ready"))
    await admin.start()
    await consumer.start()
    deadline = asyncio.get_running_loop().time() + timeout_s
    try:
        while asyncio.get_running_loop().time() < deadline:
            topics = set(await admin.list_topics())
            runs, tools = settings.topic(Topics.RUNS), settings.topic(Topics.TOOLS)
            if runs in topics and tools in topics:
                described = await admin.describe_topics([tools])
                tps = [TopicPartition(tools, p["partition"]) for p in described[0]["partitions"]]
                if tps and sum((await consumer.end_offsets(tps)).values()) > 0:
                    return True
            await asyncio.sleep(0.5)
        return False
    finally:
        await consumer.stop()
        await admin.close()


def cmd_down(args: argparse.Namespace, settings: ServiceSettings, out: TextIO) -> int:
    """Stop the services and the local broker this machine started."""
    stopped = Supervisor(_state_dir()).down()
    print(f"stopped: {', '.join(stopped) or 'nothing was running'}", file=out)
    if not args.keep_kafka and not os.environ.get("STEPLINE_KAFKA_BOOTSTRAP"):
        LocalKafka().down()
    return 0


def cmd_status(args: argparse.Namespace, settings: ServiceSettings, out: TextIO) -> int:
    """Show every service instance: pid, readiness, its partitions and their lag, its log."""
    statuses = Supervisor(_state_dir()).status()
    groups: dict[tuple[str, int], tuple[str, int]] = {}
    others: list[tuple[str, str, str, int]] = []
    note = ""
    if any(s.running for s in statuses):
        try:
            groups, others = asyncio.run(asyncio.wait_for(_assignments(settings), 15))
        except (KafkaError, OSError, TimeoutError) as error:
            note = (
                f"(partitions and lag unknown: {settings.kafka.bootstrap} did not answer: "
                f"{type(error).__name__})"
            )
    rows = []
    for status in statuses:
        state = ("ready" if status.ready else "running") if status.running else "stopped"
        partitions, lag = groups.get((status.name, status.number), ("-", -1))
        rows.append(
            (
                status.name,
                status.instance,
                state,
                str(status.pid or "-"),
                partitions if status.running else "-",
                str(lag) if lag >= 0 and status.running else "-",
                str(status.log),
            )
        )
    for service, client, partitions, lag in others:
        rows.append((service, f"({client})", "member", "-", partitions, str(lag), "-"))
    _table(("service", "instance", "state", "pid", "partitions", "lag", "log"), rows, out)
    if note:
        print(note, file=out)
    return 0 if all(s.running for s in statuses) else 3


async def _assignments(
    settings: ServiceSettings,
) -> tuple[dict[tuple[str, int], tuple[str, int]], list[tuple[str, str, str, int]]]:
    """Per local instance (service, number): its partitions and their lag, from the broker.

    Members of the groups that are no instance of this machine (other hosts, pods) come back
    apart, by client id.
    """
    held: dict[tuple[str, int], list[TopicPartition]] = {}
    lags: dict[tuple[str, int], int] = {}
    others: list[tuple[str, str, str, int]] = []
    async with contextlib.AsyncExitStack() as stack:
        admin = AIOKafkaAdminClient(**settings.kafka.client_kwargs("stepline-cli-status"))
        await admin.start()
        stack.push_async_callback(admin.close)
        reader = lag_reader(settings.kafka, "stepline-cli-status-offsets")
        await reader.start()
        stack.push_async_callback(reader.stop)
        for spec in SERVICES:
            if spec.group is None:
                continue
            group = settings.group(spec.group)
            _state, members = await describe_group(admin, group)
            # One lag query per group, split by member below.
            lags_of = await group_lag(
                admin, reader, group, [tp for m in members for tp in m.partitions]
            )
            for member in members:
                lag = sum(lags_of[tp] for tp in member.partitions)
                number = instance_of_client(member.client_id, os.environ)
                if number is None:
                    shown = _partitions(member.partitions, settings)
                    others.append((spec.name, member.client_id, shown, lag))
                    continue
                # An instance may be several members (the router's and executor's workers).
                held.setdefault((spec.name, number), []).extend(member.partitions)
                lags[(spec.name, number)] = lags.get((spec.name, number), 0) + lag
    mine = {key: (_partitions(tps, settings), lags[key]) for key, tps in held.items()}
    return mine, others


def _partitions(partitions: Sequence[TopicPartition], settings: ServiceSettings) -> str:
    """`goals.v1:0,1 control.v1:0,1` — topics without namespace and `stepline.` prefix."""
    by_topic: dict[str, list[int]] = {}
    for tp in sorted(partitions):
        name = tp.topic.removeprefix(settings.topic("")).removeprefix("stepline.")
        by_topic.setdefault(name, []).append(tp.partition)
    return " ".join(f"{t}:{','.join(map(str, sorted(p)))}" for t, p in by_topic.items()) or "none"


# --- runs -----------------------------------------------------------------------------------


def _budget(text: str | None) -> Decimal | None:
    if text is None:
        return None
    try:
        value = Decimal(text)
    except InvalidOperation as error:
        raise CliError(f"--budget {text!r} is not an amount; use e.g. --budget 0.50") from error
    if value <= 0:
        raise CliError("--budget must be positive")
    return value


def _deadline(seconds: float | None, now: datetime) -> datetime | None:
    if seconds is None:
        return None
    if not seconds > 0:  # also refuses NaN
        raise CliError(f"--deadline-s must be a positive number of seconds, got {seconds:g}")
    return now + timedelta(seconds=seconds)


def _tenant(tenant_id: str) -> str:
    problem = tenant_id_problem(tenant_id)
    if problem is not None:
        raise CliError(f"--tenant: {problem}")
    return tenant_id


async def _await_planner(client: Stepline, settings: ServiceSettings, grace_s: float) -> None:
    """Return once a planner consumes the goals topic; CliError after `grace_s` without one."""
    deadline = time.monotonic() + grace_s
    while not await client.goal_consumers():
        if time.monotonic() >= deadline:
            raise CliError(
                f"no planner is consuming {settings.topic(Topics.GOALS)} (no consumer group "
                "has a live member on it). The goal is stored and runs once a planner starts: "
                "`stepline up` starts one, `stepline status` shows what runs"
            )
        await asyncio.sleep(0.5)


async def _submit(args: argparse.Namespace, settings: ServiceSettings, out: TextIO) -> int:
    submitted_at = datetime.now(UTC)
    goal = Goal(
        goal=args.goal,
        tenant_id=_tenant(args.tenant),
        agent=args.agent,
        session_id=args.session or "",
        budget=_budget(args.budget),
        deadline=_deadline(args.deadline_s, submitted_at),
        idempotency_key=args.idempotency_key or "",
        submitted_by=os.environ.get("USER", ""),
    )
    async with Stepline(settings) as client:
        run_id = await client.submit(goal)
        if args.json:
            print(json.dumps({"run_id": run_id}), file=out, flush=True)
        else:
            print(f"run {run_id} submitted", file=out, flush=True)
        if not args.watch:
            return 0
        await _await_planner(client, settings, args.planner_wait_s)
        async for event in client.events(run_id, since=submitted_at):
            _print_event(event, args.json, out)
            if is_terminal(event):
                return 0 if args.json else _print_outcome(event, out)
    return 1


async def _show(args: argparse.Namespace, settings: ServiceSettings, out: TextIO) -> int:
    async with Stepline(settings) as client:
        found = False
        attempts: dict[str, list[model_pb2.ModelAttempt]] = {}
        since: datetime | None = None
        async for event in client.events(args.run_id, follow=args.follow):
            if not found and event.occurred_at.seconds:
                since = event.occurred_at.ToDatetime(UTC)
            found = True
            step = event.step_completed if event.HasField("step_completed") else None
            if step is None or step.kind != runs_pb2.STEP_KIND_MODEL:
                _print_event(event, args.json, out)
                continue
            if step.step_id not in attempts:  # the router's result precedes the step event
                attempts = await client.attempts(args.run_id, since=since)
            trail = attempts.get(step.step_id, [])
            _print_event(event, args.json, out, trail)
        if not found:
            raise CliError(_no_run(args.run_id, settings))
    return 0


def _no_run(run_id: str, settings: ServiceSettings) -> str:
    namespace = f" (namespace {settings.topic_namespace!r})" if settings.topic_namespace else ""
    return (
        f"no run {run_id} on {settings.topic(Topics.RUNS)}{namespace} — check the id "
        "(`stepline runs list`) and STEPLINE_TOPIC_NAMESPACE; a goal submitted moments ago has "
        "no run until a planner starts it"
    )


def _status_name(status: runs_pb2.RunStatus.ValueType) -> str:
    return runs_pb2.RunStatus.Name(status).removeprefix("RUN_STATUS_").lower()


_RUN_STATUSES = [
    _status_name(value)
    for value in runs_pb2.RunStatus.values()
    if value != runs_pb2.RUN_STATUS_UNSPECIFIED
]


async def _summary(client: Stepline, run_id: str, settings: ServiceSettings) -> RunSummary:
    """The run as its events leave it; CliError when it has none."""
    events = [event async for event in client.events(run_id, follow=False)]
    if not events:
        raise CliError(_no_run(run_id, settings))
    return summarize(events)


def _open_run(run: RunSummary, run_id: str, tenant: str | None, doing: str) -> str:
    """The tenant to act for; CliError when the run has ended or belongs to another tenant."""
    if tenant is not None and tenant != run.tenant_id:
        raise CliError(f"run {run_id} does not belong to tenant {tenant!r}")
    if run.status in _ENDED:
        raise CliError(
            f"run {run_id} has already ended ({_status_name(run.status)}); nothing to {doing}"
        )
    return run.tenant_id


_ENDED = frozenset(
    {runs_pb2.RUN_STATUS_COMPLETED, runs_pb2.RUN_STATUS_FAILED, runs_pb2.RUN_STATUS_CANCELLED}
)


async def _decide(args: argparse.Namespace, settings: ServiceSettings, out: TextIO) -> int:
    approve = args.command == "approve"
    if not approve and not args.reason:
        raise CliError("deny needs --reason: the model is told why")
    async with Stepline(settings) as client:
        run = await _summary(client, args.run_id, settings)
        tenant = _open_run(run, args.run_id, args.tenant, args.command)
        pending = [a.approval_id for a in run.pending_approvals]
        if args.approval_id not in pending:
            waiting = ", ".join(pending) or "none"
            raise CliError(
                f"run {args.run_id} has no pending approval {args.approval_id} "
                f"(pending: {waiting}; `stepline runs show {args.run_id}` lists them)"
            )
        await client.decide(
            args.run_id,
            tenant,
            args.approval_id,
            approve=approve,
            reason=args.reason or "",
            edited_arguments_json=getattr(args, "arguments", None) or "",
            decided_by=os.environ.get("USER", ""),
        )
    print(f"{'approved' if approve else 'denied'} {args.approval_id}", file=out)
    return 0


async def _cancel(args: argparse.Namespace, settings: ServiceSettings, out: TextIO) -> int:
    async with Stepline(settings) as client:
        run = await _summary(client, args.run_id, settings)
        tenant = _open_run(run, args.run_id, args.tenant, "cancel")
        await client.cancel(
            args.run_id,
            tenant,
            reason=args.reason,
            requested_by=os.environ.get("USER", ""),
            keep_children=args.keep_children,
        )
    print(f"cancellation of {args.run_id} requested", file=out)
    return 0


async def _list(args: argparse.Namespace, settings: ServiceSettings, out: TextIO) -> int:
    if args.tenant is not None:
        _tenant(args.tenant)
    by_run: dict[str, dict[int, runs_pb2.RunEvent]] = {}
    async with Stepline(settings) as client:
        async for event in client.all_events():
            # Keyed by sequence: a replayed duplicate is the same event.
            by_run.setdefault(event.run_id, {})[event.sequence] = event
    runs = [summarize(events[n] for n in sorted(events)) for events in by_run.values()]
    selected = [
        run
        for run in runs
        if (args.tenant is None or run.tenant_id == args.tenant)
        and (args.agent is None or run.agent == args.agent)
        and (args.status is None or _status_name(run.status) == args.status)
    ]
    selected.sort(key=lambda run: (run.started_at.seconds, run.started_at.nanos), reverse=True)
    shown = selected[: args.limit] if args.limit else selected
    if args.json:
        for run in shown:
            print(json.dumps(_run_json(run), ensure_ascii=False), file=out, flush=True)
        return 0
    rows = [
        (
            run.started_at.ToDatetime(UTC).strftime("%Y-%m-%d %H:%M:%S")
            if run.started_at.seconds
            else "-",
            run.run_id,
            run.tenant_id,
            run.agent,
            _status_name(run.status),
            str(run.steps),
            money(run.cost),
            _short(run.goal, 40),
        )
        for run in shown
    ]
    _table(("started", "run", "tenant", "agent", "status", "steps", "cost", "goal"), rows, out)
    if len(shown) < len(selected):
        print(f"({len(selected) - len(shown)} older runs not shown; --limit 0 shows all)", file=out)
    return 0


def _run_json(run: RunSummary) -> dict[str, object]:
    found = json_format.MessageToDict(run, preserving_proto_field_name=True)
    found["status"] = _status_name(run.status)
    return found


def _short(text: str, width: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


# --- usage, topics, tail --------------------------------------------------------------------


async def _usage(args: argparse.Namespace, settings: ServiceSettings, out: TextIO) -> int:
    if args.tenant:  # else the API key's tenant
        _tenant(args.tenant)
    async with grpc.aio.insecure_channel(args.billing) as channel:
        stub = billing_service_pb2_grpc.BillingServiceStub(channel)
        try:
            response = await stub.GetUsage(
                billing_service_pb2.GetUsageRequest(tenant_id=args.tenant, run_id=args.run or ""),
                timeout=10,
                metadata=keys_cli.key_metadata(_state_dir()),
            )
        except grpc.aio.AioRpcError as error:
            if error.code() in keys_cli.REFUSALS:
                raise CliError(keys_cli.refusal_text(error)) from error
            raise CliError(
                f"billing at {args.billing} did not answer ({error.code().name}) — "
                "run `stepline up` or pass --billing HOST:PORT"
            ) from error
    rows = [
        (
            r.window_start.ToDatetime(UTC).strftime("%Y-%m-%d %H:%M"),
            r.provider or "-",
            r.model or r.tool or "-",
            str(r.calls),
            str(r.failures),
            f"{r.usage.input_tokens}/{r.usage.output_tokens}",
            money(r.cost)
            if r.unpriced_calls == 0
            else f"{money(r.cost)} +{r.unpriced_calls} unpriced",
        )
        for r in response.rollups
    ]
    _table(
        ("window", "provider", "model/tool", "calls", "fail", "tokens in/out", "cost"), rows, out
    )
    print(
        f"total: {response.total_calls} calls, {money(response.total_cost)}"
        + (f", {response.total_unpriced_calls} unpriced" if response.total_unpriced_calls else ""),
        file=out,
    )
    return 0


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], out: TextIO) -> None:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=False)]
    for row in (header, *rows):
        line = "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=False))
        print(line.rstrip(), file=out)


async def _topics(args: argparse.Namespace, settings: ServiceSettings, out: TextIO) -> int:
    async with contextlib.AsyncExitStack() as stack:
        admin = AIOKafkaAdminClient(**settings.kafka.client_kwargs("stepline-cli"))
        await admin.start()
        stack.push_async_callback(admin.close)
        reader = lag_reader(settings.kafka, "stepline-cli-offsets")
        await reader.start()
        stack.push_async_callback(reader.stop)
        names = {settings.topic(t.name): t for t in CATALOG}
        described = {d["topic"]: d for d in await admin.describe_topics(list(names))}
        partitions = [
            TopicPartition(name, p["partition"])
            for name, info in described.items()
            for p in info.get("partitions", [])
        ]
        ends = await reader.end_offsets(partitions) if partitions else {}
        lag: dict[str, dict[str, int]] = {}
        for group, _protocol in await admin.list_consumer_groups():
            committed = await admin.list_consumer_group_offsets(group)
            read = [tp for tp, meta in committed.items() if tp in ends and meta.offset >= 0]
            for tp, records in (await group_lag(admin, reader, group, read)).items():
                lag.setdefault(tp.topic, {}).setdefault(group, 0)
                lag[tp.topic][group] += records
        rows = []
        for name, topic in names.items():
            count = len(described.get(name, {}).get("partitions", []))
            records = sum(o for tp, o in ends.items() if tp.topic == name)
            groups = ", ".join(f"{g}={n}" for g, n in sorted(lag.get(name, {}).items())) or "-"
            rows.append(
                (
                    name,
                    str(count) if count else "missing",
                    topic.cleanup.value,
                    str(records),
                    groups,
                )
            )
        _table(("topic", "partitions", "cleanup", "end offsets", "consumer lag"), rows, out)
    return 0


async def _tail(args: argparse.Namespace, settings: ServiceSettings, out: TextIO) -> int:
    topic = settings.topic(args.topic)
    admin = AIOKafkaAdminClient(**settings.kafka.client_kwargs("stepline-cli"))
    await admin.start()
    try:
        exists = topic in await admin.list_topics()
    finally:
        await admin.close()
    if not exists:
        raise CliError(
            f"topic {topic} does not exist — check the name (`stepline topics` lists the "
            "catalog) and STEPLINE_TOPIC_NAMESPACE; services create their topics when they start"
        )
    await tail(
        settings.kafka,
        topic,
        out,
        from_beginning=args.from_beginning,
        max_records=args.max,
        idle_timeout_s=args.idle_timeout,
    )
    return 0


# --- wiring ---------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    """The `stepline` command line."""
    root = argparse.ArgumentParser(prog="stepline", description=__doc__)
    sub = root.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser("demo", help="run the support demo end to end (as `make demo`)", add_help=False)
    up = sub.add_parser("up", help="start the local broker and all services")
    up.add_argument("--timeout", type=float, default=90, help="seconds to wait for readiness")
    up.add_argument(
        "--scale",
        metavar="SERVICE=N,…",
        help="instances per service, e.g. planner=2,billing=2 (default 1 each; an instance "
        "beyond a topic's partition count idles; billing>1 needs STEPLINE_BILLING_DSN)",
    )
    down = sub.add_parser("down", help="stop the services and the local broker")
    down.add_argument("--keep-kafka", action="store_true", help="leave the broker running")
    sub.add_parser("status", help="every service instance, its partitions and lag")

    submit = sub.add_parser("submit", help="submit a goal")
    submit.add_argument("goal")
    submit.add_argument("--agent", required=True, help="agent profile, e.g. assistant")
    submit.add_argument("--tenant", required=True, help="tenant id (a-z 0-9 . _ -, ≤ 64)")
    submit.add_argument("--session", help="continue this session's conversation")
    submit.add_argument("--budget", help="spending cap for the run, e.g. 0.50")
    submit.add_argument("--deadline-s", type=float, help="the run must end within this time")
    submit.add_argument("--idempotency-key", help="resubmitting with the same key is a no-op")
    submit.add_argument("--watch", action="store_true", help="stream the run's steps live")
    submit.add_argument("--json", action="store_true", help="JSON lines for machines")
    submit.add_argument(
        "--planner-wait-s",
        type=float,
        default=5.0,
        help="with --watch: how long to wait for a planner to consume goals before giving up",
    )

    runs = sub.add_parser("runs", help="inspect runs").add_subparsers(dest="runs", required=True)
    listing = runs.add_parser("list", help="runs from stepline.runs.v1, newest first")
    listing.add_argument("--tenant")
    listing.add_argument("--agent")
    listing.add_argument("--status", choices=_RUN_STATUSES)
    listing.add_argument("--limit", type=int, default=50, help="at most this many (0: all)")
    listing.add_argument("--json", action="store_true", help="one JSON object per run")
    show = runs.add_parser("show", help="a run's timeline, every model attempt included")
    show.add_argument("run_id")
    show.add_argument("--follow", action="store_true", help="keep waiting for new events")
    show.add_argument("--json", action="store_true")
    replay_cli.add_runs_parsers(runs)

    for name, help_text in (("approve", "approve a tool call"), ("deny", "deny a tool call")):
        decide = sub.add_parser(name, help=help_text)
        decide.add_argument("run_id")
        decide.add_argument("approval_id")
        decide.add_argument("--tenant", help="default: the run's tenant")
        decide.add_argument("--reason", help="shown to the model (required for deny)")
        if name == "approve":
            decide.add_argument("--arguments", help="edited arguments as a JSON object")

    cancel = sub.add_parser("cancel", help="cancel a run (and its child runs)")
    cancel.add_argument("run_id")
    cancel.add_argument("--tenant", help="default: the run's tenant")
    cancel.add_argument("--reason", default="cancelled from the CLI")
    cancel.add_argument("--keep-children", action="store_true")

    usage = sub.add_parser("usage", help="usage and cost per window, model and tool")
    usage.add_argument("--tenant", default="", help="default: the API key's tenant")
    usage.add_argument("--run", help="only this run")
    usage.add_argument(
        "--billing",
        default=os.environ.get("STEPLINE_BILLING_GRPC_ADDRESS", _local_grpc("billing")),
        help="billing gRPC address",
    )

    sub.add_parser("topics", help="the topic catalog with consumer lag per group")

    tail = sub.add_parser("tail", help="print a topic's records as decoded JSON lines")
    tail.add_argument("topic", help="e.g. stepline.usage.v1")
    tail.add_argument("--from-beginning", action="store_true")
    tail.add_argument("--max", type=int, help="stop after this many records")
    tail.add_argument("--idle-timeout", type=int, help="stop after this many idle seconds")
    models_cli.add_parser(sub)
    keys_cli.register(sub)
    replay_cli.add_batch_parser(sub)
    return root


_ASYNC = {
    "submit": _submit,
    "approve": _decide,
    "deny": _decide,
    "cancel": _cancel,
    "usage": _usage,
    "topics": _topics,
    "tail": _tail,
    "keys": keys_cli.run,
    "replay": replay_cli.batch,
}
_RUNS = {"list": _list, "show": _show, **replay_cli.commands()}
_SYNC = {"up": cmd_up, "down": cmd_down, "status": cmd_status, "models": models_cli.run}


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout) -> int:
    """Run one command; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["demo"]:
        return demo(argv[1:])
    args = parser().parse_args(argv)
    # The CLI reports connection problems itself, once, with what to do about them.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    try:
        settings = ServiceSettings()
    except ValidationError as error:
        print(f"stepline: a STEPLINE_* setting is invalid:\n{error}", file=sys.stderr)
        return EXIT_USAGE
    try:
        if args.command in _SYNC:
            return _SYNC[args.command](args, settings, out)
        command = _RUNS[args.runs] if args.command == "runs" else _ASYNC[args.command]
        return asyncio.run(command(args, settings, out))
    except (CliError, BrokerUnavailableError, LocalKafkaError, RecordError) as error:
        print(f"stepline: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KafkaConnectionError:
        print(
            f"stepline: no broker at {settings.kafka.bootstrap} — run `stepline up` or set "
            "STEPLINE_KAFKA_BOOTSTRAP",
            file=sys.stderr,
        )
        return EXIT_USAGE
    except RunTimeoutError as error:
        print(f"stepline: {error}", file=sys.stderr)
        return 1
    except KafkaTimeoutError:
        print(
            f"stepline: the broker at {settings.kafka.bootstrap} did not answer in time — "
            "check it runs (`stepline status`, `make kafka-status`) and try again",
            file=sys.stderr,
        )
        return 1
    except KafkaError as error:
        print(f"stepline: Kafka error: {error}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader went away (`stepline tail … | head -1`): stop quietly, like `cat` does.
        # Python would flush stdout again at exit and fail; point it at /dev/null first.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_PIPE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

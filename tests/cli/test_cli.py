"""Every `stepline` command as a subprocess against a stack that `stepline up` started.

One stack per module (its own topic namespace, state dir, free ports, test broker): `up`, then
status, submit (--watch, --json), runs list/show, approve, deny, cancel, usage, topics, tail and
finally `down`, which must leave no service process behind. Route `default` (the support
agent's) leads with a provider that answers 503, so its model steps fail over.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import time
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from stepline_client.demo import (
    FailingProvider,
    ReplyReceiver,
    demo_prices,
    demo_tools,
    render_toml,
)
from stepline_client.offline import ROUTES_FILE, offline_routes
from stepline_client.supervisor import SERVICES
from stepline_planner.spec import SPEC as PLANNER
from stepline_runtime.settings import KafkaSettings
from stepline_runtime.topics import CATALOG
from tests.cli.stack import (
    ROOT,
    Stack,
    free_port,
    pid_alive,
    stack_env,
    tools_registered,
    topics_created,
    wait_until,
)
from tests.kafkatools import create_topics


def _failing_primary_routes(failing_port: int) -> dict[str, Any]:
    """The shipped routes served offline (as `stepline up` does without keys), with the demo's
    503 primary leading route `default`; no retries on it and a circuit that never opens, so
    every model call there shows one failover."""
    routes = offline_routes(tomllib.loads((ROOT / ROUTES_FILE).read_text()))
    demo = tomllib.loads((ROOT / "deploy/config/demo/routes.toml").read_text())
    primary = demo["deployments"]["demo-primary"]
    routes["deployments"]["demo-primary"] = {
        **primary,
        "base_url": f"http://127.0.0.1:{failing_port}/v1",
    }
    routes["routes"]["default"]["deployments"].insert(0, "demo-primary")
    routes["defaults"]["retries_per_deployment"] = 0
    routes["breaker"]["failure_threshold"] = 1000
    return routes


@pytest.fixture(scope="module")
def stack(kafka: KafkaSettings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """`stepline up` in its own namespace and state dir; `stepline down` at the end."""
    state = tmp_path_factory.mktemp("stepline")
    with ReplyReceiver() as receiver, FailingProvider() as failing:
        tools = state / "tools.toml"
        tools.write_text(render_toml(demo_tools(ROOT / "deploy/config/tools.toml", receiver.port)))
        routes = _failing_primary_routes(failing.port)
        (state / "routes.toml").write_text(render_toml(routes))
        prices = demo_prices(ROOT / "deploy/config/pricebook.toml", routes)
        (state / "pricebook.toml").write_text(render_toml(prices))
        billing = f"127.0.0.1:{free_port()}"
        env = stack_env(
            kafka,
            state,
            tools,
            billing,
            os.environ,
            routes=state / "routes.toml",
            pricebook=state / "pricebook.toml",
        )
        tenant = f"cli-{uuid.uuid4().hex[:6]}"
        # `up` issues its bootstrap key (read by `usage`) for the tenant the tests use.
        env["STEPLINE_BOOTSTRAP_TENANT"] = tenant
        env.pop("STEPLINE_API_KEY", None)
        cli = Stack(env, state, tenant, billing, receiver)
        try:
            up = cli.ok("up")
            assert "kafka:" not in up  # the configured broker, not a local one of its own
            # The routes given are the ones used (without them: tests/cli/test_readme.py).
            assert f"routes: {state / 'routes.toml'} (STEPLINE_ROUTES)" in up, up
            for service in SERVICES:
                assert re.search(rf"^{service.name}\s+pid \d+\s+running$", up, re.M), up
            # `up` returns once the processes live; ready means topics made and tools announced.
            wait_until(lambda: topics_created(cli), 60, "the services' topics")
            wait_until(lambda: tools_registered(cli), 60, "the executor's tool registry")
            yield cli
        finally:
            for follower in cli.followers:
                follower.close()
            cli.run("down", timeout_s=60)


# --- tests, in the order a user would go -----------------------------------------------------


def test_status_lists_every_service_running(stack: Stack) -> None:
    out = stack.ok("status")
    assert out.split()[:7] == ["service", "instance", "state", "pid", "partitions", "lag", "log"]
    for service in SERVICES:
        # One instance each: service, instance, ready, pid, partitions (with lag), log.
        name = re.escape(service.name)
        line = re.search(rf"^{name}\s+{name}\s+(\w+)\s+(\d+)\s+(.+?)\s+(\S+)$", out, re.M)
        assert line, out
        assert line.group(1) == "ready"
        assert Path(line.group(4)) == stack.state / "logs" / f"{service.name}.log"
        if service.group is None:
            assert line.group(3).split() == ["-", "-"], out


def test_submit_watch_streams_the_steps_to_the_answer_and_cost(stack: Stack) -> None:
    out = stack.ok(
        "submit", "What is 2+2?", "--agent", "local", "--tenant", stack.tenant, "--watch"
    )
    lines = out.splitlines()
    run_id = re.fullmatch(r"run (\S+) submitted", lines[0])
    assert run_id, out
    assert any("started: 'What is 2+2?' (agent local" in line for line in lines), out
    assert any(re.search(r"#\d+\s+step 1 done: ", line) for line in lines), out
    assert any(re.search(r"#\d+\s+completed in \d+ steps", line) for line in lines), out
    assert "\nanswer:\n" in out
    assert re.search(r"^cost: \$\d", out, re.M), out


def test_submit_json_prints_the_run_id_and_watch_json_the_events(stack: Stack) -> None:
    out = stack.ok("submit", "Hello", "--agent", "local", "--tenant", stack.tenant, "--json")
    assert set(json.loads(out)) == {"run_id"}
    key = uuid.uuid4().hex
    args = ("submit", "Hi", "--agent", "local", "--tenant", stack.tenant, "--json")
    watched = stack.ok(*args, "--idempotency-key", key, "--watch").splitlines()
    lines = [json.loads(line) for line in watched]
    run_id = lines[0]["run_id"]
    assert [e["run_id"] for e in lines[1:]] == [run_id] * (len(lines) - 1)
    assert "started" in lines[1]
    assert "completed" in lines[-1]
    sequences = [int(e["sequence"]) for e in lines[1:]]  # uint64: a JSON string
    assert sequences == sorted(sequences)
    assert sequences[0] == 1
    # The same idempotency key names the same run: resubmitting starts no second one.
    again = stack.ok(*args, "--idempotency-key", key)
    assert json.loads(again)["run_id"] == run_id


def test_runs_show_prints_a_finished_runs_timeline(stack: Stack) -> None:
    args = ("submit", "Timeline", "--agent", "local", "--tenant", stack.tenant, "--json")
    run_id = json.loads(stack.ok(*args, "--watch").splitlines()[0])["run_id"]
    timeline = stack.ok("runs", "show", run_id)
    assert "started: 'Timeline'" in timeline.splitlines()[0]
    assert re.search(r"completed in \d+ steps", timeline.splitlines()[-1]), timeline
    events = [
        json.loads(line) for line in stack.ok("runs", "show", run_id, "--json").split("\n") if line
    ]
    assert int(events[0]["sequence"]) == 1
    assert "completed" in events[-1]
    missing = stack.run("runs", "show", "run-does-not-exist")
    assert missing.returncode == 2
    assert "no run run-does-not-exist on " in missing.stderr


def test_approve_lets_the_tool_run_and_the_run_complete(stack: Stack) -> None:
    run_id = stack.submit_support()
    follow = stack.follow(run_id)
    request = follow.until("approval_requested")["approval_requested"]
    assert request["tool"] == "send_reply"
    replies = len(stack.receiver.replies)
    out = stack.ok("approve", run_id, request["approval_id"])
    assert out.strip() == f"approved {request['approval_id']}"
    assert "completed" in follow.terminal()
    resolved = follow.until("approval_resolved")["approval_resolved"]
    assert resolved["decision"] == "APPROVAL_DECISION_APPROVED", resolved
    assert len(stack.receiver.replies) == replies + 1
    assert stack.receiver.replies[-1]["ticket_id"] == "T-1012"


def test_deny_needs_a_reason_and_keeps_the_tool_from_running(stack: Stack) -> None:
    run_id = stack.submit_support()
    follow = stack.follow(run_id)
    request = follow.until("approval_requested")["approval_requested"]
    refused = stack.run("deny", run_id, request["approval_id"])
    assert refused.returncode == 2
    assert "deny needs --reason" in refused.stderr
    replies = len(stack.receiver.replies)
    out = stack.ok("deny", run_id, request["approval_id"], "--reason", "not this week")
    assert out.strip() == f"denied {request['approval_id']}"
    follow.terminal()
    resolved = follow.until("approval_resolved")["approval_resolved"]
    assert resolved["decision"] == "APPROVAL_DECISION_DENIED", resolved
    assert "not this week" in resolved.get("reason", ""), resolved
    assert len(stack.receiver.replies) == replies  # send_reply never ran


def test_cancel_ends_a_waiting_run_as_cancelled(stack: Stack) -> None:
    run_id = stack.submit_support()
    follow = stack.follow(run_id)
    follow.until("approval_requested")
    out = stack.ok("cancel", run_id, "--reason", "customer withdrew")
    assert out.strip() == f"cancellation of {run_id} requested"
    last = follow.terminal()
    assert "customer withdrew" in last["cancelled"].get("reason", ""), last


def _usage_records(stack: Stack) -> int:
    out = stack.ok("tail", "stepline.usage.v1", "--from-beginning", "--idle-timeout", "2")
    return sum(1 for line in out.splitlines() if json.loads(line)["key"] == stack.tenant)


def test_usage_totals_every_usage_record_of_the_tenant(stack: Stack) -> None:
    recorded = _usage_records(stack)
    assert recorded > 0
    totals: list[str] = []

    def billed() -> bool:
        out = stack.ok("usage", "--tenant", stack.tenant, "--billing", stack.billing)
        totals.append(out.splitlines()[-1])
        return out.splitlines()[-1].startswith(f"total: {recorded} calls, $")

    # Billing consumes usage asynchronously: wait until it has charged every record.
    wait_until(billed, 30, f"billing to charge {recorded} records (saw {totals[-1:]})")
    out = stack.ok("usage", "--tenant", stack.tenant, "--billing", stack.billing)
    assert out.splitlines()[0].split()[:4] == ["window", "provider", "model/tool", "calls"]
    assert "local" in out
    wrong = stack.run("usage", "--tenant", stack.tenant, "--billing", f"127.0.0.1:{free_port()}")
    assert wrong.returncode == 2
    assert "did not answer" in wrong.stderr
    assert "--billing" in wrong.stderr


def test_topics_lists_the_catalog_with_partitions_and_consumer_lag(stack: Stack) -> None:
    namespace = stack.env["STEPLINE_TOPIC_NAMESPACE"]
    out = stack.ok("topics")
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:]}
    assert set(rows) == {f"{namespace}.{t.name}" for t in CATALOG}
    assert all(row[1] == "2" for row in rows.values()), out
    goals = rows[f"{namespace}.stepline.goals.v1"]
    assert int(goals[3]) > 0  # end offsets: the goals this module submitted
    assert f"{namespace}.{PLANNER.name}=" in " ".join(goals[4:]), out

    def requests_lag() -> list[int]:
        row = " ".join(stack.ok("topics").split(f"{namespace}.stepline.model.requests.v1")[1:2])
        return [int(n) for n in re.findall(r"=(\d+)", row.splitlines()[0])]

    # The planner writes model requests in transactions: each leaves a commit marker, which is
    # no record to consume. Once the router has read them all, its lag is 0, not 1.
    wait_until(lambda: requests_lag() == [0], 30, "the router's lag on model requests to be 0")


def test_tail_max_prints_that_many_decoded_records(stack: Stack) -> None:
    out = stack.ok("tail", "stepline.runs.v1", "--from-beginning", "--max", "3")
    records = [json.loads(line) for line in out.splitlines()]
    assert len(records) == 3
    namespace = stack.env["STEPLINE_TOPIC_NAMESPACE"]
    for record in records:
        assert record["topic"] == f"{namespace}.stepline.runs.v1"
        assert record["headers"]["ce_type"] == "stepline.v1.RunEvent"
        assert record["value"]["run_id"] == record["key"]


def test_runs_show_lists_every_attempt_of_a_model_step_including_failovers(stack: Stack) -> None:
    run_id = stack.submit_support()
    follow = stack.follow(run_id)
    follow.until("approval_requested")
    timeline = stack.ok("runs", "show", run_id)
    # The 503 primary fails, the next deployment answers: both attempts under the step.
    failed_over = re.search(
        r"step \d+ done: model \S+: succeeded.*\n"
        r"\s+↳ attempt 1 demo-primary \(openai_compatible/demo-primary-unavailable\): "
        r"\S.*HTTP 503 → failed over\n"
        r"\s+↳ attempt 2 \S+ \(\S+\): succeeded",
        timeline,
    )
    assert failed_over, timeline
    events = [json.loads(line) for line in stack.ok("runs", "show", run_id, "--json").splitlines()]
    steps = [e for e in events if e.get("step_completed", {}).get("kind") == "STEP_KIND_MODEL"]
    assert steps
    for step in steps:
        attempts = step["attempts"]
        assert [a["attempt"] for a in attempts] == list(range(1, len(attempts) + 1))
        assert attempts[0]["deployment"] == "demo-primary"
        assert attempts[0]["status_code"] == 503
        assert attempts[-1]["outcome"] == "MODEL_ATTEMPT_OUTCOME_SUCCEEDED"
    stack.ok("cancel", run_id)
    follow.terminal()


def test_submit_refuses_missing_or_invalid_tenant_agent_and_deadline(stack: Stack) -> None:
    no_tenant = stack.run("submit", "Hi", "--agent", "local")
    assert no_tenant.returncode == 2
    assert "--tenant" in no_tenant.stderr
    no_agent = stack.run("submit", "Hi", "--tenant", stack.tenant)
    assert no_agent.returncode == 2
    assert "--agent" in no_agent.stderr
    for tenant, why in (("Acme Corp", "lower-case letters"), ("a" * 65, "longer than 64")):
        bad = stack.run("submit", "Hi", "--agent", "local", "--tenant", tenant)
        assert bad.returncode == 2, bad
        assert why in bad.stderr
        assert "Traceback" not in bad.stderr
    for deadline in ("0", "-5"):
        refused = stack.run(
            "submit", "Hi", "--agent", "local", "--tenant", stack.tenant, "--deadline-s", deadline
        )
        assert refused.returncode == 2, refused
        assert "--deadline-s must be a positive number of seconds" in refused.stderr


def test_cancel_approve_deny_of_a_missing_or_ended_run_say_so(stack: Stack) -> None:
    for args in (
        ("cancel", "run-nope"),
        ("approve", "run-nope", "ap-1"),
        ("deny", "run-nope", "ap-1", "--reason", "no"),
    ):
        done = stack.run(*args)
        assert done.returncode == 2, done
        assert "no run run-nope on " in done.stderr
    submit = ("submit", "Ended", "--agent", "local", "--tenant", stack.tenant, "--json", "--watch")
    run_id = json.loads(stack.ok(*submit).splitlines()[0])["run_id"]
    for args in (
        ("cancel", run_id),
        ("approve", run_id, "ap-1"),
        ("deny", run_id, "ap-1", "--reason", "no"),
    ):
        done = stack.run(*args)
        assert done.returncode == 2, done
        assert f"run {run_id} has already ended (completed)" in done.stderr
    waiting = stack.submit_support()
    follow = stack.follow(waiting)
    approval = follow.until("approval_requested")["approval_requested"]["approval_id"]
    wrong = stack.run("approve", waiting, "ap-not-asked")
    assert wrong.returncode == 2
    assert f"has no pending approval ap-not-asked (pending: {approval};" in wrong.stderr
    other = stack.run("cancel", waiting, "--tenant", "someone-else")
    assert other.returncode == 2
    assert "does not belong to tenant 'someone-else'" in other.stderr
    stack.ok("cancel", waiting)
    follow.terminal()


def test_runs_list_filters_by_tenant_agent_and_status(stack: Stack) -> None:
    other = f"other-{uuid.uuid4().hex[:6]}"
    args = ("submit", "Listed", "--agent", "local", "--json", "--watch")
    mine = json.loads(stack.ok(*args, "--tenant", stack.tenant).splitlines()[0])["run_id"]
    theirs = json.loads(stack.ok(*args, "--tenant", other).splitlines()[0])["run_id"]

    def listed(*filters: str) -> list[dict[str, Any]]:
        out = stack.ok("runs", "list", "--json", "--limit", "0", *filters)
        return [json.loads(line) for line in out.splitlines()]

    by_tenant = listed("--tenant", other)
    assert [r["run_id"] for r in by_tenant] == [theirs]
    assert by_tenant[0]["status"] == "completed"
    assert by_tenant[0]["agent"] == "local"
    assert by_tenant[0]["goal"] == "Listed"
    ours = listed("--tenant", stack.tenant)
    assert mine in {r["run_id"] for r in ours}
    assert {r["tenant_id"] for r in ours} == {stack.tenant}
    assert {r["agent"] for r in listed("--tenant", stack.tenant, "--agent", "support")} == {
        "support"
    }
    cancelled = listed("--tenant", stack.tenant, "--status", "cancelled")
    assert cancelled
    assert {r["status"] for r in cancelled} == {"cancelled"}
    assert mine not in {r["run_id"] for r in cancelled}
    table = stack.ok("runs", "list", "--tenant", other)
    assert table.splitlines()[0].split() == [
        "started",
        "run",
        "tenant",
        "agent",
        "status",
        "steps",
        "cost",
        "goal",
    ]
    assert re.search(rf"{theirs}\s+{other}\s+local\s+completed\s+\d+\s+\$\S+\s+Listed", table)
    bad = stack.run("runs", "list", "--status", "lost")
    assert bad.returncode == 2
    assert "invalid choice" in bad.stderr


def test_submit_watch_without_a_planner_says_so_within_seconds(
    stack: Stack, kafka: KafkaSettings
) -> None:
    # Another namespace of the same broker: its topics exist, but no planner consumes them.
    namespace = f"t{uuid.uuid4().hex[:10]}"
    asyncio.run(_create_catalog(kafka, namespace))
    env = {**stack.env, "STEPLINE_TOPIC_NAMESPACE": namespace}
    started = time.monotonic()
    done = subprocess.run(
        stack.argv("submit", "Anyone?", "--agent", "local", "--tenant", stack.tenant, "--watch"),
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done
    assert f"no planner is consuming {namespace}.stepline.goals.v1" in done.stderr
    assert "stepline up" in done.stderr
    assert time.monotonic() - started < 20
    assert "Traceback" not in done.stderr


async def _create_catalog(kafka: KafkaSettings, namespace: str) -> None:
    admin = AIOKafkaAdminClient(**kafka.client_kwargs("test-cli-admin"))
    await admin.start()
    try:
        await create_topics(admin, *(f"{namespace}.{t.name}" for t in CATALOG), partitions=2)
    finally:
        await admin.close()


def test_a_closed_pipe_ends_tail_quietly(stack: Stack) -> None:
    tail = subprocess.Popen(
        stack.argv("tail", "stepline.runs.v1", "--from-beginning"),
        cwd=ROOT,
        env=stack.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert tail.stdout is not None
    assert json.loads(tail.stdout.readline())["topic"].endswith("stepline.runs.v1")
    tail.stdout.close()  # what `| head -1` does after its line
    _, stderr = tail.communicate(timeout=30)
    assert tail.returncode == 141, stderr
    assert stderr == b""


@pytest.mark.parametrize(
    "args",
    [
        ("topics",),
        ("tail", "stepline.usage.v1"),
        ("runs", "list"),
        ("runs", "show", "run-x"),
        ("submit", "Hi", "--agent", "local", "--tenant", "acme"),
        ("cancel", "run-x"),
        ("up",),
    ],
)
def test_a_missing_broker_is_one_line_saying_what_to_do(
    stack: Stack, args: tuple[str, ...], tmp_path: Path
) -> None:
    env = {
        **stack.env,
        "STEPLINE_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",
        "STEPLINE_STATE_DIR": str(tmp_path),  # `up` must not touch the module's stack
    }
    done = subprocess.run(
        stack.argv(*args), cwd=ROOT, env=env, capture_output=True, text=True, timeout=90
    )
    assert done.returncode == 2, done
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    if args == ("up",):
        assert done.stderr.startswith("stepline: no broker answers at STEPLINE_KAFKA_BOOTSTRAP=")
        assert not (tmp_path / "run").exists()  # no service was started against nothing
    else:
        assert done.stderr.startswith("stepline: no broker at 127.0.0.1:"), done.stderr
        assert "run `stepline up` or set STEPLINE_KAFKA_BOOTSTRAP" in done.stderr


def test_tail_of_a_topic_that_does_not_exist_says_so(stack: Stack) -> None:
    done = stack.run("tail", "stepline.nothing.v1")
    assert done.returncode == 2
    assert "topic " in done.stderr
    assert "stepline.nothing.v1 does not exist" in done.stderr


def test_down_stops_every_service_process(stack: Stack) -> None:
    pids = {p.stem: int(p.read_text()) for p in (stack.state / "run").glob("*.pid")}
    assert set(pids) == {s.name for s in SERVICES}
    out = stack.ok("down")
    assert out.strip() == "stopped: " + ", ".join(s.name for s in SERVICES)
    assert [name for name, pid in pids.items() if pid_alive(pid)] == []
    assert list((stack.state / "run").glob("*.pid")) == []
    status = stack.run("status")
    assert status.returncode == 3
    assert all(" stopped " in line for line in status.stdout.splitlines()[1:]), status.stdout

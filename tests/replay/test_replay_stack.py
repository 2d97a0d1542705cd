"""Replay, fork, diff and batch replay through the CLI against a `stepline up` stack.

One stack per module (own namespace, state dir and ports on the test broker). The `support`
agent runs on route `default` (the offline `local` provider); the candidate routes are served by
a scripted OpenAI-compatible model (tests/replay/scripted.py) that answers differently. The
`send_reply` webhook lands in a receiver that keeps every delivery, so a replay that sent mail
again would show.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import tomllib
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from google.protobuf import json_format

from stepline_client.client import Stepline
from stepline_client.demo import ReplyReceiver, demo_prices, demo_tools, render_toml
from stepline_client.offline import ROUTES_FILE, offline_routes
from stepline_runtime.jsonlines import record_json
from stepline_runtime.settings import KafkaSettings, ServiceSettings
from tests.cli.stack import (
    ROOT,
    Stack,
    free_port,
    stack_env,
    tools_registered,
    topics_created,
    wait_until,
)
from tests.replay.scripted import Answer, ScriptedModel

SCRIPTS = ("diverge", "fork", "batch")
REPLY = {"ticket_id": "T-1012", "body": "Candidate: we refund order O-5004 today."}
LOOKUP_AGENT = """
[agents.lookup]
system_prompt = "Look the customer up in the CRM by e-mail, then answer in one sentence."
route = "default"
tools = ["crm_find_customer"]
max_steps = 6
max_output_tokens = 512
run_deadline_s = 120
"""


def _routes(model: ScriptedModel) -> dict[str, Any]:
    routes = offline_routes(tomllib.loads((ROOT / ROUTES_FILE).read_text()))
    for script in SCRIPTS:
        routes["deployments"][f"{script}-model"] = {
            "provider": "openai_compatible",
            "model": "candidate-1",
            "base_url": model.base_url(script),
            "capabilities": {"tools": True, "context_window": 128000, "max_output_tokens": 4096},
            "timeouts": {"connect_s": 1, "first_byte_s": 10, "total_s": 10},
        }
        routes["routes"][f"candidate-{script}"] = {
            "strategy": "priority",
            "deployments": [f"{script}-model"],
        }
    return routes


@pytest.fixture(scope="module")
def stack(kafka: KafkaSettings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """`stepline up` with the candidate routes; `stepline down` at the end."""
    state = tmp_path_factory.mktemp("replay")
    with ReplyReceiver() as receiver, ScriptedModel() as model:
        tools = state / "tools.toml"
        tools.write_text(render_toml(demo_tools(ROOT / "deploy/config/tools.toml", receiver.port)))
        routes = _routes(model)
        (state / "routes.toml").write_text(render_toml(routes))
        prices = demo_prices(ROOT / "deploy/config/pricebook.toml", routes)
        (state / "pricebook.toml").write_text(render_toml(prices))
        agents = state / "agents.toml"
        agents.write_text((ROOT / "deploy/config/agents.toml").read_text() + LOOKUP_AGENT)
        billing = f"127.0.0.1:{free_port()}"
        env = stack_env(
            kafka,
            state,
            tools,
            billing,
            os.environ,
            routes=state / "routes.toml",
            pricebook=state / "pricebook.toml",
            agents=agents,
        )
        tenant = f"rp-{uuid.uuid4().hex[:6]}"
        env["STEPLINE_BOOTSTRAP_TENANT"] = tenant
        env.pop("STEPLINE_API_KEY", None)
        cli = Stack(env, state, tenant, billing, receiver)
        cli.model = model  # type: ignore[attr-defined]
        cli.settings = ServiceSettings(  # type: ignore[attr-defined]
            kafka=kafka, topic_namespace=env["STEPLINE_TOPIC_NAMESPACE"]
        )
        try:
            cli.ok("up")
            wait_until(lambda: topics_created(cli), 60, "the services' topics")
            wait_until(lambda: tools_registered(cli), 60, "the executor's tool registry")
            yield cli
        finally:
            for follower in cli.followers:
                follower.close()
            cli.run("down", timeout_s=60)


def _model(stack: Stack) -> ScriptedModel:
    model: ScriptedModel = stack.model  # type: ignore[attr-defined]
    return model


def _settings(stack: Stack) -> ServiceSettings:
    settings: ServiceSettings = stack.settings  # type: ignore[attr-defined]
    return settings


def _events(stack: Stack, run_id: str) -> list[dict[str, Any]]:
    """A run's events as `runs show --json` prints them (read in-process: no CLI start-up)."""

    async def read() -> list[dict[str, Any]]:
        async with Stepline(_settings(stack)) as client:
            return [
                json_format.MessageToDict(e, preserving_proto_field_name=True)
                async for e in client.events(run_id, follow=False)
            ]

    return asyncio.run(read())


def _wait(stack: Stack, run_id: str) -> None:
    async def wait() -> None:
        async with Stepline(_settings(stack)) as client:
            await client.wait(run_id, timeout_s=90)

    asyncio.run(wait())


def _keyed(stack: Stack, topic: str, key: str) -> list[dict[str, Any]]:
    """The records of `key` on `topic` (by its short catalog name), decoded like `tail`."""
    settings = _settings(stack)

    async def read() -> list[dict[str, Any]]:
        name = settings.topic(topic)
        consumer = AIOKafkaConsumer(
            enable_auto_commit=False,
            isolation_level="read_committed",
            **settings.kafka.client_kwargs("replay-test"),
        )
        admin = AIOKafkaAdminClient(**settings.kafka.client_kwargs("replay-test-admin"))
        await admin.start()
        try:
            (described,) = await admin.describe_topics([name])
        finally:
            await admin.close()
        parts = [TopicPartition(name, p["partition"]) for p in described["partitions"]]
        await consumer.start()
        try:
            consumer.assign(parts)
            await consumer.seek_to_beginning(*parts)
            ends = await consumer.end_offsets(parts)
            found = []
            for tp in parts:
                while await consumer.position(tp) < ends[tp]:
                    batch = await consumer.getmany(tp, timeout_ms=500)
                    for r in batch.get(tp, []):
                        if r.key == key.encode():
                            found.append(
                                record_json(
                                    r.topic, r.partition, r.offset, r.key, r.value, r.headers
                                )
                            )
            return found
        finally:
            await consumer.stop()

    return asyncio.run(read())


def _tool_steps(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        e["step_completed"]
        for e in events
        if "step_completed" in e and e["step_completed"]["kind"] == "STEP_KIND_TOOL"
    ]


def _called(messages: list[dict[str, Any]]) -> list[str]:
    """The tools the conversation called so far (OpenAI tool messages carry no name)."""
    return [
        call["function"]["name"]
        for m in messages
        if m["role"] == "assistant"
        for call in m.get("tool_calls") or ()
    ]


@pytest.fixture(scope="module")
def original(stack: Stack) -> dict[str, Any]:
    """A completed support run: lookups, an approved reply sent through the webhook."""
    run_id = stack.submit_support()
    follow = stack.follow(run_id)
    request = follow.until("approval_requested")["approval_requested"]
    stack.ok("approve", run_id, request["approval_id"])
    assert "completed" in follow.terminal()
    assert len(stack.receiver.replies) == 1
    events = _events(stack, run_id)
    starts = [e["step_started"] for e in events if "step_started" in e]
    lookups = [
        (s["tool"], json.loads(s["arguments_json"]))
        for s in starts
        if s.get("tool") in ("crm_find_customer", "search_documents")
    ]
    assert len(lookups) == 2, starts
    return {"run_id": run_id, "events": events, "lookups": lookups}


def _diverging_script(lookups: list[tuple[str, dict[str, Any]]]) -> Any:
    """The candidate: the same lookups, then a reply with another body, then an answer."""

    def script(messages: list[dict[str, Any]]) -> Answer:
        done = _called(messages)
        if not done:
            return list(lookups)
        if "send_reply" not in done:
            return [("send_reply", REPLY)]
        return "Candidate: the customer was answered."

    return script


def test_replay_on_the_same_route_is_served_entirely_from_the_record(
    stack: Stack, original: dict[str, Any]
) -> None:
    out = stack.ok("runs", "replay", original["run_id"], "--tenant", stack.tenant, "--json")
    report = json.loads(out)
    replay_id = report["run_id"]
    assert replay_id.startswith("replay-")
    assert report["b"]["outcome"] == "completed", report
    # The deterministic model asks for the same calls: every one answered from the record,
    # the approval reused, the webhook never called again, the executor never asked.
    assert report["served_from_record"] == 3
    assert report["tool_calls"]["same"]
    assert not report["tool_calls"]["new"]
    assert report["same_answer"]
    assert report["b"]["answer"]
    assert len(stack.receiver.replies) == 1
    assert _keyed(stack, "stepline.tool.requests.v1", replay_id) == []
    assert not any("approval_requested" in e for e in _events(stack, replay_id))
    usage = _keyed(stack, "stepline.usage.v1", stack.tenant)
    mine = [u["value"] for u in usage if u["value"]["run_id"] == replay_id]
    assert mine
    assert {u["replay_of"] for u in mine} == {original["run_id"]}
    # The same replay again is the same run: nothing new is submitted.
    again = json.loads(
        stack.ok("runs", "replay", original["run_id"], "--tenant", stack.tenant, "--json")
    )
    assert again["run_id"] == replay_id
    assert again["existed"] is True


@pytest.mark.parametrize("policy", ["stop", "execute"])
def test_a_diverging_side_effect_stops_the_replay_and_executes_nothing(
    stack: Stack, original: dict[str, Any], policy: str
) -> None:
    model = _model(stack)
    model.scripts["diverge"] = _diverging_script(original["lookups"])
    model.requests.pop("diverge", None)
    chosen = ["--policy", policy] if policy != "stop" else []  # stop is the default
    done = stack.run(
        "runs",
        "replay",
        original["run_id"],
        "--tenant",
        stack.tenant,
        "--route",
        "candidate-diverge",
        *chosen,
        "--json",
    )
    assert done.returncode == 1, done.stderr
    report = json.loads(done.stdout)
    replay_id = report["run_id"]
    assert report["b"]["outcome"] == "failed (replay diverged)", report
    events = _events(stack, replay_id)
    steps = _tool_steps(events)
    served = [(s["tool"], s.get("replay_served", "")) for s in steps]
    assert served == [
        ("crm_find_customer", "REPLAY_SERVED_RECORDED"),
        ("search_documents", "REPLAY_SERVED_RECORDED"),
        ("send_reply", "REPLAY_SERVED_DIVERGED"),
    ]
    # send_reply is a webhook: not read-only, not allowed explicitly, so `execute` stops too.
    assert len(stack.receiver.replies) == 1
    assert _keyed(stack, "stepline.tool.requests.v1", replay_id) == []
    assert len(model.requests["diverge"]) == 2  # two model steps went to the candidate
    started = next(e["started"] for e in events if "started" in e)
    assert started["replay"]["original_run_id"] == original["run_id"]
    assert started["replay"]["route"] == "candidate-diverge"
    # The diff names the reply as the same tool with other arguments.
    diff = json.loads(stack.ok("runs", "diff", original["run_id"], replay_id, "--json"))
    calls = diff["tool_calls"]
    assert [c["tool"] for c in calls["different_arguments"]] == ["send_reply"]
    assert sorted(c["tool"] for c in calls["same"]) == ["crm_find_customer", "search_documents"]
    assert calls["new"] == calls["missing"] == []
    text = stack.ok("runs", "diff", original["run_id"], replay_id)
    assert "1 with different arguments" in text
    assert "2 served from the record" in text
    assert re.search(r"outcome\s+completed\s+failed \(replay diverged\)", text), text


def test_stub_answers_the_diverging_call_and_the_replay_completes(
    stack: Stack, original: dict[str, Any]
) -> None:
    model = _model(stack)
    model.scripts["diverge"] = _diverging_script(original["lookups"])
    report = json.loads(
        stack.ok(
            "runs",
            "replay",
            original["run_id"],
            "--tenant",
            stack.tenant,
            "--route",
            "candidate-diverge",
            "--policy",
            "stub",
            "--json",
        )
    )
    assert report["b"]["outcome"] == "completed", report
    assert report["b"]["answer"] == "Candidate: the customer was answered."
    steps = _tool_steps(_events(stack, report["run_id"]))
    assert steps[-1]["replay_served"] == "REPLAY_SERVED_STUBBED"
    assert "not executed in replay" in steps[-1]["output"]
    assert len(stack.receiver.replies) == 1


def test_an_executed_read_only_call_is_marked_as_evaluation_usage(
    stack: Stack, original: dict[str, Any]
) -> None:
    model = _model(stack)

    def script(messages: list[dict[str, Any]]) -> Answer:
        if not _called(messages):  # a lookup the original never made: executed for real
            return [("crm_find_customer", {"email": "someone-else@acme.example"})]
        return "Candidate: looked another customer up."

    model.scripts["diverge"] = script
    model.requests.pop("diverge", None)
    report = json.loads(
        stack.ok(
            "runs", "replay", original["run_id"], "--tenant", stack.tenant,
            "--route", "candidate-diverge", "--policy", "execute",
            "--allow-tool", "crm_find_customer", "--json",
        )
    )  # fmt: skip
    replay_id = report["run_id"]
    assert report["b"]["outcome"] == "completed", report
    (request,) = _keyed(stack, "stepline.tool.requests.v1", replay_id)
    assert request["value"]["replay_of"] == original["run_id"]
    usage = [
        u["value"]
        for u in _keyed(stack, "stepline.usage.v1", stack.tenant)
        if u["value"]["run_id"] == replay_id and u["value"].get("tool")
    ]
    assert [(u["tool"], u["replay_of"]) for u in usage] == [
        ("crm_find_customer", original["run_id"])
    ]


def test_fork_reuses_the_first_steps_and_continues_live(
    stack: Stack, original: dict[str, Any]
) -> None:
    model = _model(stack)
    model.scripts["fork"] = lambda messages: "Forked: answered from the recorded lookups."
    report = json.loads(
        stack.ok(
            "runs",
            "fork",
            original["run_id"],
            "--from-step",
            "3",
            "--tenant",
            stack.tenant,
            "--model",  # a deployment, not a route: the planner prices it as a route of one
            "fork-model",
            "--json",
        )
    )
    fork_id = report["run_id"]
    assert fork_id.startswith("fork-")
    assert report["b"]["outcome"] == "completed", report
    # Steps 1-3 (a model turn and its two lookups) came from the record: one model call was
    # made, for step 4, already carrying the recorded lookups; no tool was asked for.
    (request,) = model.requests["fork"]
    assert sorted(_called(request["messages"])) == ["crm_find_customer", "search_documents"]
    assert sum(m["role"] == "tool" for m in request["messages"]) == 2
    assert _keyed(stack, "stepline.tool.requests.v1", fork_id) == []
    events = _events(stack, fork_id)
    steps = [e["step_completed"]["step_id"] for e in events if "step_completed" in e]
    assert steps == [f"{fork_id}:4"]
    started = next(e["started"] for e in events if "started" in e)
    assert started["replay"]["steps_forked"] == 3
    assert started["replay"]["route"] == "fork-model"
    assert report["steps"][0]["b"] == "(forked from A)"
    assert len(stack.receiver.replies) == 1


def test_another_tenants_run_is_refused(stack: Stack, original: dict[str, Any]) -> None:
    refused = stack.run("runs", "replay", original["run_id"], "--tenant", "someone-else")
    assert refused.returncode == 2
    assert f"run {original['run_id']} does not belong to tenant 'someone-else'" in refused.stderr
    missing = stack.run("runs", "replay", "run-gone", "--tenant", stack.tenant)
    assert missing.returncode == 2
    assert "retention" in missing.stderr


def test_batch_replay_stops_at_the_spend_limit(stack: Stack, tmp_path: Any) -> None:
    model = _model(stack)

    def script(messages: list[dict[str, Any]]) -> Answer:
        if not _called(messages):
            email = re.search(r"[\w.+-]+@[\w.-]+\.\w+", messages[-1]["content"])
            assert email is not None
            return [("crm_find_customer", {"email": email.group(0)})]
        return "Candidate: found them."

    model.scripts["batch"] = script
    runs = []
    for i in range(4):
        goal = f"Find the customer ops@acme.example in the CRM (question {i})."
        out = stack.ok("submit", goal, "--agent", "lookup", "--tenant", stack.tenant, "--json")
        runs.append(json.loads(out)["run_id"])
    for run_id in runs:
        _wait(stack, run_id)
        assert "completed" in _events(stack, run_id)[-1], _events(stack, run_id)
    summary_file = tmp_path / "summary.json"
    # Each replay may spend 0.002 (its budget); two calls cost 0.00042 each at the candidate's
    # stand-in price. One at a time (so the count does not depend on which replay ends first):
    # after three, 0.00252 spent + a 0.002 budget would overrun 0.0041, so the batch stops.
    out = stack.ok(
        "replay",
        "--tenant",
        stack.tenant,
        "--agent",
        "lookup",
        "--since",
        "1h",
        "--route",
        "candidate-batch",
        "--concurrency",
        "1",
        "--spend-limit",
        "0.0041",
        "--run-budget",
        "0.002",
        "--out",
        str(summary_file),
        timeout_s=180,
    )
    summary = json.loads(summary_file.read_text())
    assert summary["runs_selected"] == 4
    assert summary["stopped_at_spend_limit"] is True
    assert summary["runs_replayed"] == 3
    assert summary["runs_skipped_spend_limit"] == 1
    assert summary["completion_rate"] == {"original": 1.0, "replay": 1.0}
    assert summary["divergence_rate"] == 0.0
    assert len(model.requests["batch"]) == 6  # two model calls per replay, none for the rest
    assert all(r["served_from_record"] == 1 for r in summary["runs"])
    assert "3 of 4 runs replayed on route candidate-batch; stopped at the spend limit" in out
    assert float(summary["cost"]["replay"]) <= 0.0041

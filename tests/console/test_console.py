"""The console in a real browser against the real stack (see conftest.py)."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import TypeVar

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from playwright.sync_api import Page, expect

from stepline_client.client import Stepline
from stepline_client.demo import GOAL
from stepline_client.record import ReplaySettings
from stepline_client.replay_cli import launch, read_record
from stepline_keys.secret import key_id_of
from stepline_runtime.codec import encode
from stepline_runtime.settings import ServiceSettings, namespaced
from stepline_runtime.topics import Topics
from tests.console.conftest import Console, Stack, shoot
from tests.frontdoor.factories import T0, RunScript

pytestmark = pytest.mark.kafka

T = TypeVar("T")


def _submit(page: Page, goal: str = GOAL) -> str:
    page.goto(page.url.split("#")[0] + "#/runs")
    page.get_by_text("New run").click()
    page.get_by_label("Goal").fill(goal)
    page.get_by_role("button", name="Submit").click()
    page.wait_for_url(re.compile(r"#/run/"))
    return page.url.rsplit("/", 1)[-1]


def _timeline_items(page: Page) -> int:
    return page.locator("ol.timeline > li").count()


def test_submit_watch_live_approve_with_edits_from_the_inbox_and_complete(
    stack: Stack, open_console: Console
) -> None:
    page = open_console("alice")
    run_id = _submit(page)
    expect(page.locator(".live")).to_have_text("● live")
    expect(page.locator("li.model").first).to_contain_text("demo-primary")
    expect(page.locator("li.model").first).to_contain_text("failed over to local")
    expect(page.get_by_role("heading", name="Waiting for approval")).to_be_visible(timeout=60_000)
    paused = _timeline_items(page)
    shoot(page, "run-awaiting-approval")

    # Another approver decides from the inbox; the run page above is never reloaded.
    inbox = open_console("alice")
    inbox.get_by_role("link", name=re.compile("Approvals")).click()
    card = inbox.locator(f"article.approval-card:has(a:text-is('{run_id}'))")
    expect(card).to_contain_text("send_reply")
    shoot(inbox, "approvals-inbox")
    arguments = json.loads(card.locator("textarea").input_value())
    arguments["body"] = "Edited by the approver: your order ships tomorrow."
    card.locator("textarea").fill(json.dumps(arguments, indent=2))
    card.get_by_role("button", name="Approve").click()
    expect(card).to_have_count(0, timeout=20_000)

    expect(page.locator(".summary .badge")).to_have_text("completed", timeout=60_000)
    assert _timeline_items(page) > paused
    expect(page.locator("#answer")).not_to_be_empty()
    expect(page.locator(".live")).to_have_text("finished")
    expect(page.locator("ol.timeline")).to_contain_text("Approval approved by alice")
    expect(page.locator("ol.timeline")).to_contain_text("with edited arguments")
    shoot(page, "run-completed")
    bodies = [r.get("body") for r in stack.receiver.replies]
    assert "Edited by the approver: your order ships tomorrow." in bodies


def test_deny_with_a_reason_using_the_keyboard(stack: Stack, open_console: Console) -> None:
    page = open_console("alice")
    run_id = _submit(page)
    card = page.locator("article.approval-card")
    expect(card).to_be_visible(timeout=60_000)
    card.get_by_label("Reason").focus()
    page.keyboard.type("wrong customer")
    page.keyboard.press("Tab")  # Approve
    page.keyboard.press("Tab")  # Deny
    page.keyboard.press("Enter")
    expect(page.locator("ol.timeline")).to_contain_text(
        "Approval denied by alice — wrong customer", timeout=30_000
    )
    expect(page.locator(".summary .badge")).to_have_text(
        re.compile("completed|failed"), timeout=60_000
    )
    shoot(page, "run-denied")
    with stack.api("alice") as api:
        [approval] = api.get(f"/api/runs/{run_id}").json()["approvals"]
    assert (approval["status"], approval["reason"]) == ("denied", "wrong customer")


def _poll(read: Callable[[], T], timeout_s: float = 60) -> T:
    """`read()` once it is truthy."""
    deadline = time.monotonic() + timeout_s
    while not (value := read()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.3)
    return value


def _replay(stack: Stack, run_id: str) -> str:
    """Replay `run_id` on its own route, as `stepline runs replay` does (in-process)."""

    async def submit() -> str:
        settings = ServiceSettings(kafka=stack.kafka, topic_namespace=stack.namespace)
        async with Stepline(settings) as client:
            record = await read_record(client, settings, run_id, "acme")
            return (await launch(client, record, ReplaySettings())).run_id

    # Playwright's sync API holds this thread's event loop: run the client on another thread.
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, submit()).result()


def test_a_replay_links_its_original_and_the_compare_view_shows_the_diff(
    stack: Stack, open_console: Console
) -> None:
    with stack.api("alice") as api:  # a support run, its reply approved as the model wrote it
        original = api.post("/api/runs", json={"goal": GOAL}).json()["run_id"]
        approval = _poll(lambda: api.get(f"/api/runs/{original}").json().get("approvals"))[0]
        approved = api.post(
            f"/api/runs/{original}/approvals/{approval['approval_id']}",
            json={"decision": "approve"},
        )
        assert approved.status_code == 202
        _poll(lambda: api.get(f"/api/runs/{original}").json()["run"]["finished_at"])
    delivered = len(stack.receiver.replies)
    replay_id = _replay(stack, original)
    page = open_console("viewer")
    page.goto(f"{stack.url}#/run/{replay_id}")
    expect(page.locator(".summary .badge")).to_have_text("completed", timeout=60_000)
    expect(page.locator("#replay-of")).to_contain_text(original)
    page.goto(f"{stack.url}#/run/{original}")
    expect(page.locator("#replays")).to_contain_text(replay_id)
    page.locator("#replays").get_by_role("link", name="compare").click()
    page.wait_for_url(re.compile(f"#/compare/{original}/{replay_id}"))
    expect(page.locator("#figures tr[data-figure=Outcome]")).to_contain_text("completed")
    # The same model on the same route asks for the same calls: served from the record.
    calls = page.locator("#tool-calls")
    expect(calls).to_contain_text("0 new, 0 missing")
    expect(calls).to_contain_text("served from the record")
    expect(calls).to_contain_text("= send_reply(")
    expect(page.locator("#steps tbody tr").first).to_be_visible()
    expect(page.locator("#answers")).to_contain_text("Answers (the same)")
    shoot(page, "compare-replay")
    with stack.api("alice") as api:
        diff = api.get(f"/api/runs/{original}/diff/{replay_id}").json()
        assert diff["b"]["replay_of"] == original
        assert diff["served_from_record"] >= 1
    assert len(stack.receiver.replies) == delivered  # the replay sent no reply again
    with stack.api("alice") as api:
        assert api.get(f"/api/runs/{original}/diff/no-such-run").status_code == 404
    with stack.api("gina") as other:  # another tenant's key sees neither run
        assert other.get(f"/api/runs/{original}/diff/{replay_id}").status_code == 404


def test_filter_runs(stack: Stack, open_console: Console) -> None:
    page = open_console("viewer")
    page.get_by_label("Status").select_option("completed")
    page.get_by_role("button", name="Filter").click()
    rows = page.locator("table[aria-label=Runs] tbody tr")
    expect(rows.first).to_be_visible()
    for text in rows.locator("td:first-child").all_inner_texts():
        assert text == "completed"
    shoot(page, "runs-filtered")
    page.get_by_label("Agent").fill("no-such-agent")
    page.get_by_role("button", name="Filter").click()
    expect(page.get_by_text("0 runs shown")).to_be_visible()


def test_a_key_of_another_tenant_sees_none_of_its_runs(stack: Stack, open_console: Console) -> None:
    with stack.api("alice") as api:
        acme_runs = [r["run_id"] for r in api.get("/api/runs").json()["runs"]]
    assert acme_runs
    page = open_console("gina")
    expect(page.get_by_text("0 runs shown")).to_be_visible()
    page.goto(f"{stack.url}#/run/{acme_runs[0]}")
    expect(page.get_by_role("alert")).to_have_text(f"No run {acme_runs[0]}.")
    page.goto(f"{stack.url}#/approvals")
    expect(page.get_by_text("Nothing waits for a decision.")).to_be_visible()
    shoot(page, "other-tenant")


def test_costs_and_providers_show_spend_and_the_failing_deployment(
    stack: Stack, open_console: Console
) -> None:
    page = open_console("alice")
    page.get_by_role("link", name="Costs").click()
    expect(page.locator("table[aria-label='Per model'] tbody tr").first).to_contain_text(
        "stepline-local"
    )
    expect(page.locator("svg.chart rect").first).to_be_attached()
    expect(page.locator("#budget")).to_contain_text("today $")
    shoot(page, "costs")
    page.get_by_role("link", name="Providers").click()
    primary = page.locator("tr[data-deployment=demo-primary]")
    expect(primary).to_contain_text("100.0 %")
    expect(primary.locator(".badge")).to_have_text("open")
    expect(page.locator("tr[data-deployment=local] .badge")).to_have_text("closed")
    shoot(page, "providers")


def test_an_admin_issues_a_key_sees_its_secret_once_and_revokes_it(
    stack: Stack, open_console: Console
) -> None:
    viewer = open_console("viewer")
    expect(viewer.get_by_role("link", name="Runs")).to_be_visible()
    expect(viewer.get_by_role("link", name="Keys")).to_be_hidden()
    with stack.api("viewer") as api:
        assert api.get("/api/keys").status_code == 403

    page = open_console("root")
    page.get_by_role("link", name="Keys").click()
    page.get_by_label("Label").fill("ci-bot")
    page.get_by_label("usage:read").check()
    page.get_by_role("button", name="Create key").click()
    secret = page.locator("#new-secret").input_value()
    assert secret.startswith("sk-stl-key_")
    key_id = key_id_of(secret)
    row = page.locator(f"tr[data-key='{key_id}']")
    expect(row).to_contain_text("ci-bot")
    expect(row).to_contain_text("runs:read, usage:read")
    page.get_by_role("button", name="Copy").click()
    expect(page.locator("#status")).to_have_text("Secret copied")
    shoot(page, "keys-created")

    bearer = {"Authorization": f"Bearer {secret}"}
    used = httpx.get(f"{stack.url}api/costs", headers=bearer, timeout=10)
    assert used.status_code == 200, used.text
    assert used.json()["lines"] is not None
    # Shown once: after a reload the page holds the key's prefix, never its secret again.
    page.reload()
    expect(row).to_contain_text("ci-bot")
    expect(row.locator("td").nth(6)).not_to_have_text("–")  # last used here
    assert secret not in page.content()

    page.once("dialog", lambda dialog: dialog.accept())
    row.get_by_role("button", name=f"Revoke {key_id}").click()
    expect(row).to_have_count(0)
    refused = httpx.get(f"{stack.url}api/runs", headers=bearer, timeout=10)
    assert refused.status_code == 401
    page.get_by_role("link", name="Show revoked and expired keys").click()
    expect(row.locator(".badge")).to_have_text("revoked")
    shoot(page, "keys-revoked")


async def _publish_runs(stack: Stack, tenant: str, count: int) -> None:
    producer = AIOKafkaProducer(
        enable_idempotence=True, acks="all", **stack.kafka.client_kwargs("test-bulk")
    )
    await producer.start()
    try:
        topic = namespaced(Topics.RUNS, stack.namespace)
        for i in range(count):
            script = RunScript(
                f"bulk-{i:04}",
                tenant_id=tenant,
                agent=f"agent-{i % 7}",
                start=T0 + timedelta(seconds=i),
            ).started(goal=f"bulk goal {i}")
            if i % 4:
                script.model_step(1).completed(answer=f"answer {i}")
            for event in script.events:
                out = encode(topic, event.run_id, event, event_id=event.event_id, source="test")
                await producer.send(out.topic, out.value, key=out.key, headers=list(out.headers))
        await producer.flush()
    finally:
        await producer.stop()


def test_a_thousand_runs_are_listed_paginated_and_keyboard_navigable(
    stack: Stack, open_console: Console
) -> None:
    # How fast they draw is a benchmark figure (bench/console.py, `make bench`), not a bound here.
    # Playwright's sync API keeps an event loop on this thread: publish from another one.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, _publish_runs(stack, "bulk", 1000)).result()
    with stack.api("bulk") as api:
        deadline = time.monotonic() + 60
        while len(api.get("/api/runs", params={"limit": 1000}).json()["runs"]) < 1000:
            assert time.monotonic() < deadline, "the read model did not reach 1,000 runs"
            time.sleep(0.5)
    page = open_console("bulk")
    rows = page.locator("table[aria-label=Runs] tbody tr")
    page.goto(f"{stack.url}#/runs/?limit=1000")
    expect(page.get_by_text(re.compile("^1000 runs shown"))).to_be_visible()
    assert rows.count() == 1000
    assert rows.first.locator("a").inner_text() == "bulk-0999"  # newest first
    shoot(page, "runs-1000", full_page=False)

    # Paginated: 200 a page, the next page appended after the first.
    page.goto(f"{stack.url}#/runs/?limit=200")
    expect(page.get_by_text(re.compile("^200 runs shown, more available"))).to_be_visible()
    page.get_by_role("button", name="Next page").click()
    expect(page.get_by_text(re.compile("^400 runs shown, more available"))).to_be_visible()
    assert rows.nth(399).locator("a").inner_text() == "bulk-0600"

    # Keyboard: Tab moves from one run's link to the next, Enter opens that run.
    rows.first.locator("a").focus()
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "bulk-0998"
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile("#/run/bulk-0998$"))
    expect(page.get_by_role("heading", name=re.compile("Run bulk-0998"))).to_be_visible()

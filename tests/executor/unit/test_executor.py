"""The executor core: refusals, validation, intent → outcome, timeouts, cancel, limits."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

from stepline_executor.executor import Executor, truncate
from stepline_executor.model import (
    CallRequest,
    ErrorKind,
    ToolInterruptedError,
    ToolNotSentError,
)
from stepline_executor.outcomes import InMemoryOutcomeStore
from stepline_executor.registry import Access, Registry
from tests.executor.fakes import ScriptedTool

NOW = datetime(2026, 11, 5, 12, 0, tzinfo=UTC)
OPEN = Access(tenants={"*": ("*",)}, agents={"*": ("*",)})


def _executor(
    *tools: ScriptedTool,
    store: InMemoryOutcomeStore | None = None,
    access: Access = OPEN,
) -> Executor:
    return Executor(
        Registry(tools),
        access,
        store or InMemoryOutcomeStore(),
        clock=lambda: NOW,
        monotonic=time.monotonic,
    )


def _request(
    tool: str = "t", args: str = '{"x": 1}', call: str = "r1:1:0", **kw: object
) -> CallRequest:
    fields: dict[str, object] = {
        "run_id": "r1",
        "tenant_id": "acme",
        "step_id": "r1:1",
        "call_id": call,
        "tool": tool,
        "arguments_json": args,
        "idempotency_key": f"key-{call}",
        "agent": "support",
    }
    fields.update(kw)
    return CallRequest(**fields)  # type: ignore[arg-type]


async def test_a_completed_call_returns_the_output_and_records_it() -> None:
    tool = ScriptedTool.named("t")
    store = InMemoryOutcomeStore()
    outcome = await _executor(tool, store=store).execute(_request())
    assert outcome.succeeded
    assert outcome.output == '{"ok": true}'
    assert outcome.executed
    assert store.calls["r1:1:0"].outcome == outcome
    assert tool.runs[0].idempotency_key == "key-r1:1:0"


async def test_unknown_tool_lists_the_tools_the_caller_may_use() -> None:
    outcome = await _executor(ScriptedTool.named("t")).execute(_request(tool="nope"))
    assert outcome.error_kind is ErrorKind.UNKNOWN_TOOL
    assert "'nope'" in outcome.message
    assert "t" in outcome.message.split("available tools:")[1]
    assert not outcome.executed


async def test_tool_not_allowed_for_tenant_or_agent() -> None:
    tool = ScriptedTool.named("t")
    by_tenant = Access(tenants={"other": ("*",)}, agents={"*": ("*",)})
    outcome = await _executor(tool, access=by_tenant).execute(_request())
    assert outcome.error_kind is ErrorKind.NOT_ALLOWED
    assert "tenant 'acme'" in outcome.message
    by_agent = Access(tenants={"*": ("*",)}, agents={"support": ("calc*",)})
    outcome = await _executor(tool, access=by_agent).execute(_request())
    assert outcome.error_kind is ErrorKind.NOT_ALLOWED
    assert "agent 'support'" in outcome.message
    assert tool.runs == []


async def test_invalid_arguments_say_exactly_what_is_wrong() -> None:
    tool = ScriptedTool.named("t")
    executor = _executor(tool)
    broken = await executor.execute(_request(args='{"x": '))
    assert broken.error_kind is ErrorKind.INVALID_ARGUMENTS
    assert "not valid JSON" in broken.message
    not_object = await executor.execute(_request(args="[1]"))
    assert "must be a JSON object" in not_object.message
    wrong = await executor.execute(_request(args='{"x": "one", "y": 2}'))
    assert wrong.error_kind is ErrorKind.INVALID_ARGUMENTS
    assert "x: 'one' is not of type 'integer'" in wrong.message
    assert "'y' was unexpected" in wrong.message
    assert '"required":["x"]' in wrong.message  # the schema, so the model can correct itself
    assert tool.runs == []


async def test_redelivered_completed_call_is_replayed_not_rerun() -> None:
    tool = ScriptedTool.named("t")
    executor = _executor(tool)
    first = await executor.execute(_request())
    again = await executor.execute(_request())
    assert len(tool.runs) == 1
    assert again.replayed
    assert not first.replayed
    assert again.output == first.output


async def test_started_but_unrecorded_non_idempotent_call_is_outcome_unknown() -> None:
    tool = ScriptedTool.named("t", idempotent=False)
    store = InMemoryOutcomeStore()
    await store.mark_started("r1:1:0", "t", NOW, partition=0)  # a previous executor died here
    executor = _executor(tool, store=store)
    outcome = await executor.execute(_request())
    assert outcome.error_kind is ErrorKind.OUTCOME_UNKNOWN
    assert outcome.executed
    assert tool.runs == []
    # The answer is now recorded: later redeliveries replay it.
    replay = await executor.execute(_request())
    assert replay.replayed
    assert replay.error_kind is ErrorKind.OUTCOME_UNKNOWN
    assert tool.runs == []


async def test_started_but_unrecorded_idempotent_call_reruns_with_the_same_key() -> None:
    tool = ScriptedTool.named("t", idempotent=True)
    store = InMemoryOutcomeStore()
    await store.mark_started("r1:1:0", "t", NOW, partition=0)
    outcome = await _executor(tool, store=store).execute(_request())
    assert outcome.succeeded
    assert [c.idempotency_key for c in tool.runs] == ["key-r1:1:0"]
    assert store.calls["r1:1:0"].attempts == 2


async def test_a_slow_idempotent_tool_times_out() -> None:
    tool = ScriptedTool.named("t", timeout_s=0.05, idempotent=True)
    tool.gate = asyncio.Event()  # never opened
    outcome = await _executor(tool).execute(_request())
    assert outcome.error_kind is ErrorKind.TIMED_OUT
    assert outcome.retryable
    assert "0.05" in outcome.message


async def test_a_passed_deadline_fails_without_running() -> None:
    tool = ScriptedTool.named("t")
    outcome = await _executor(tool).execute(_request(deadline=NOW - timedelta(seconds=1)))
    assert outcome.error_kind is ErrorKind.TIMED_OUT
    assert not outcome.executed
    assert tool.runs == []


async def test_cancelling_an_inflight_call_reports_cancelled() -> None:
    tool = ScriptedTool.named("t")
    tool.gate = asyncio.Event()
    executor = _executor(tool)
    running = asyncio.create_task(executor.execute(_request()))
    await tool.started.wait()
    assert executor.cancel("r1", None, sequence=10, reason="run cancelled") == 1
    outcome = await running
    assert outcome.error_kind is ErrorKind.CANCELLED
    assert outcome.message == "cancelled: run cancelled"
    assert executor.inflight() == 0


async def test_a_call_queued_behind_a_cancel_never_runs() -> None:
    tool = ScriptedTool.named("t")
    executor = _executor(tool)
    executor.cancel("r1", None, sequence=10, reason="deadline exceeded")
    before = await executor.execute(_request(sequence=7))
    after = await executor.execute(_request(call="r1:2:0", sequence=11))
    named = ScriptedTool.named("u")
    executor2 = _executor(named)
    executor2.cancel("r1", frozenset({"r1:1:0"}), sequence=3, reason="stop")
    explicit = await executor2.execute(_request(tool="u", sequence=99))
    assert before.error_kind is ErrorKind.CANCELLED
    assert after.succeeded  # a later request is a new decision of the planner
    assert explicit.error_kind is ErrorKind.CANCELLED
    assert len(tool.runs) == 1
    assert named.runs == []


async def test_concurrency_limit_per_tool() -> None:
    tool = ScriptedTool.named("t", max_concurrency=2)
    tool.delay_s = 0.02
    executor = _executor(tool)
    outcomes = await asyncio.gather(
        *(executor.execute(_request(call=f"r1:1:{i}")) for i in range(6))
    )
    assert all(o.succeeded for o in outcomes)
    assert tool.peak == 2


async def test_large_output_is_truncated_with_a_marker() -> None:
    tool = ScriptedTool.named("t", max_output_bytes=300)
    tool.output = "é" * 1000
    outcome = await _executor(tool).execute(_request())
    assert outcome.truncated
    assert outcome.original_size == 2000
    assert outcome.output is not None
    assert "[output truncated by stepline: 300 of 2000 bytes shown]" in outcome.output
    assert truncate("short", 10) == ("short", False, 5)


async def test_tool_errors_and_crashes_become_failed_results() -> None:
    failing = ScriptedTool.named("f")
    failing.fail = "the CRM said no"
    crashing = ScriptedTool.named("c")
    crashing.crash = True
    executor = _executor(failing, crashing)
    failed = await executor.execute(_request(tool="f"))
    crashed = await executor.execute(_request(tool="c", call="r1:1:1"))
    assert failed.error_kind is ErrorKind.EXECUTION_FAILED
    assert failed.message == "the CRM said no"
    assert crashed.error_kind is ErrorKind.EXECUTION_FAILED
    assert "RuntimeError" in crashed.message
    assert "boom" not in crashed.message  # internal details stay in the log


async def test_a_non_idempotent_call_expiring_after_it_started_is_outcome_unknown() -> None:
    # Issue 19 defect 1: the request may have left the process; "timed out" would invite a
    # model to call again and double the side effect.
    tool = ScriptedTool.named("t", timeout_s=0.05, idempotent=False)
    tool.gate = asyncio.Event()  # never opened: the target never answers
    store = InMemoryOutcomeStore()
    outcome = await _executor(tool, store=store).execute(_request())
    assert outcome.error_kind is ErrorKind.OUTCOME_UNKNOWN
    assert outcome.executed
    assert not outcome.retryable
    assert "started at 2026-11-05T12:00:00" in outcome.message
    assert "0.05 s" in outcome.message
    assert "before calling it again" in outcome.message
    assert store.calls["r1:1:0"].outcome == outcome


async def test_a_non_idempotent_call_is_not_started_below_the_deadline_floor() -> None:
    risky = ScriptedTool.named("t", idempotent=False)
    safe = ScriptedTool.named("s", idempotent=True)
    executor = _executor(risky, safe)
    nearly = NOW + timedelta(seconds=0.2)
    refused = await executor.execute(_request(deadline=nearly))
    assert refused.error_kind is ErrorKind.TIMED_OUT
    assert not refused.executed
    assert refused.retryable
    assert "not started" in refused.message
    assert "nothing was sent" in refused.message
    assert risky.runs == []
    # An idempotent tool may use what is left: a re-run has no extra effect.
    ran = await executor.execute(_request(tool="s", call="r1:1:1", deadline=nearly))
    assert ran.succeeded


async def test_a_call_that_never_left_the_process_is_not_executed() -> None:
    tool = ScriptedTool.named("t")
    tool.error = ToolNotSentError("webhook 't' unreachable: connection refused; nothing was sent")
    outcome = await _executor(tool).execute(_request())
    assert outcome.error_kind is ErrorKind.EXECUTION_FAILED
    assert outcome.retryable
    assert not outcome.executed  # nothing to bill, safe to call again


async def test_a_connection_lost_mid_call_is_unknown_only_for_non_idempotent_tools() -> None:
    lost = "MCP server 'x' went away during the call"
    risky = ScriptedTool.named("t", idempotent=False)
    risky.error = ToolInterruptedError(lost)
    safe = ScriptedTool.named("s", idempotent=True)
    safe.error = ToolInterruptedError(lost)
    executor = _executor(risky, safe)
    unknown = await executor.execute(_request())
    assert unknown.error_kind is ErrorKind.OUTCOME_UNKNOWN
    assert unknown.executed
    assert lost in unknown.message
    failed = await executor.execute(_request(tool="s", call="r1:1:1"))
    assert failed.error_kind is ErrorKind.EXECUTION_FAILED
    assert failed.retryable


async def test_unknown_tool_never_lists_tools_the_caller_may_not_use() -> None:
    access = Access(tenants={"*": ("*",)}, agents={"support": ("t", "everything.*")})
    secret = ScriptedTool.named("secret")
    mcp = ScriptedTool.named("everything.get-sum", source="mcp:everything")
    outcome = await _executor(ScriptedTool.named("t"), secret, mcp, access=access).execute(
        _request(tool="nope")
    )
    assert outcome.error_kind is ErrorKind.UNKNOWN_TOOL
    listed = outcome.message.split("available tools:")[1]
    assert "secret" not in outcome.message
    assert sorted(n.strip() for n in listed.split(",")) == ["everything__get-sum", "t"]


async def test_tools_are_dispatched_by_their_provider_safe_name() -> None:
    mcp = ScriptedTool.named("everything.get-sum", source="mcp:everything")
    executor = _executor(mcp, access=Access(tenants={"*": ("everything.*",)}, agents=OPEN.agents))
    outcome = await executor.execute(_request(tool="everything__get-sum"))
    assert outcome.succeeded
    assert len(mcp.runs) == 1
    raw = await executor.execute(_request(tool="everything.get-sum", call="r1:1:1"))
    assert raw.error_kind is ErrorKind.UNKNOWN_TOOL


async def test_an_expired_call_says_whether_its_request_had_left() -> None:
    # A tool that reports its request never left (still connecting) expires safely...
    connecting = ScriptedTool.named("t", timeout_s=0.05, idempotent=False, sent=False)
    connecting.gate = asyncio.Event()
    unsent = await _executor(connecting).execute(_request())
    assert unsent.error_kind is ErrorKind.TIMED_OUT
    assert not unsent.executed
    assert unsent.retryable
    assert "nothing was sent" in unsent.message
    # ... one whose request went out is unknown, and the model is told it was sent.
    posted = ScriptedTool.named("t", timeout_s=0.05, idempotent=False, sent=True)
    posted.gate = asyncio.Event()
    unknown = await _executor(posted).execute(_request())
    assert unknown.error_kind is ErrorKind.OUTCOME_UNKNOWN
    assert "its request was sent" in unknown.message

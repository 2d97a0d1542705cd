"""The executor core: check, validate, record intent, run with limits, record the outcome."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from stepline_executor.cancels import CancelBook
from stepline_executor.model import (
    ArgumentsError,
    CallContext,
    CallRequest,
    ErrorKind,
    Outcome,
    Tool,
    ToolError,
    ToolInterruptedError,
    ToolNotSentError,
    ToolOutput,
    ToolSpec,
)
from stepline_executor.outcomes import CallState, OutcomeStore
from stepline_executor.registry import Access, PublicTool, Registry

__all__ = ["DEFAULT_START_FLOOR_S", "Executor", "IntentNotRecordedError", "truncate"]

log = logging.getLogger(__name__)

_SCHEMA_HINT_CHARS = 2_000
# A non-idempotent call with less of its deadline left than this is not started: started doomed
# it could reach its target and then expire, leaving an outcome nobody can know. The service's
# setting `executor_start_floor_s` overrides it.
DEFAULT_START_FLOOR_S = 1.0


def truncate(text: str, limit: int) -> tuple[str, bool, int]:
    """`text` cut to `limit` UTF-8 bytes with a visible marker; (text, truncated, full size)."""
    raw = text.encode("utf-8")
    if len(raw) <= limit:
        return text, False, len(raw)
    kept = raw[:limit].decode("utf-8", errors="ignore")
    marker = (
        f"\n…[output truncated by stepline: {len(kept.encode('utf-8'))} of {len(raw)} bytes shown]"
    )
    return kept + marker, True, len(raw)


class IntentNotRecordedError(RuntimeError):
    """The outcome store did not acknowledge "started": the tool was not run."""


@dataclass
class _Attempt:
    started_at: float | None = None
    started_wall: datetime | None = None


class Executor:
    """Runs tool calls; at most one live execution per call id, never a side effect twice."""

    def __init__(
        self,
        registry: Registry,
        access: Access,
        store: OutcomeStore,
        *,
        clock: Callable[[], datetime],
        monotonic: Callable[[], float],
        cancels: CancelBook | None = None,
        start_floor_s: float = DEFAULT_START_FLOOR_S,
    ) -> None:
        self._registry = registry
        self._access = access
        self._store = store
        self._clock = clock
        self._monotonic = monotonic
        self._cancels = cancels or CancelBook()
        self._start_floor_s = start_floor_s
        self._semaphores: dict[str, asyncio.Semaphore] = {}
        self._inflight: dict[str, tuple[str, asyncio.Task[ToolOutput]]] = {}

    def cancel(
        self, run_id: str, call_ids: frozenset[str] | None, *, sequence: int, reason: str
    ) -> int:
        """Stop in-flight calls of `run_id` (None = all) and refuse queued ones; count stopped."""
        self._cancels.add(run_id, call_ids, sequence, reason or "cancelled")
        stopped = 0
        for call_id, (owner, task) in list(self._inflight.items()):
            if owner == run_id and (call_ids is None or call_id in call_ids) and not task.done():
                task.cancel()
                stopped += 1
        return stopped

    def inflight(self) -> int:
        """Number of calls running now."""
        return len(self._inflight)

    async def execute(self, request: CallRequest) -> Outcome:
        """Produce the outcome of `request` (running the tool only when that is safe)."""
        tool = self._registry.get(request.tool)
        if tool is None:
            return self._refused(request, ErrorKind.UNKNOWN_TOOL, self._unknown_tool(request))
        refusal = self._access.refusal(
            request.tenant_id, request.agent, request.tool, tool.original
        )
        if refusal:
            return self._refused(request, ErrorKind.NOT_ALLOWED, refusal)
        try:
            parsed = tool.parse(_arguments(request.arguments_json))
        except ArgumentsError as invalid:
            return self._refused(
                request, ErrorKind.INVALID_ARGUMENTS, _invalid_message(tool.spec, str(invalid))
            )

        stored = await self._store.get(request.call_id, partition=request.partition)
        if stored is not None and stored.state is CallState.COMPLETED and stored.outcome:
            return stored.outcome.as_replayed()
        if stored is not None and stored.state is CallState.STARTED and not tool.spec.idempotent:
            # We may have run it already and cannot know: running it again could double a
            # payment or a reply. Tell the model instead, and remember that answer.
            since = f" at {_iso(stored.started_at)}" if stored.started_at else ""
            outcome = Outcome.failed(
                ErrorKind.OUTCOME_UNKNOWN,
                f"tool {tool.spec.name!r} was started{since} and may have reached its target,"
                " but the executor stopped before its outcome was recorded; it was not run"
                f" again. {_CHECK}",
                finished_at=self._clock(),
                executed=True,
            )
            await self._store.mark_completed(
                request.call_id,
                tool.spec.name,
                outcome,
                self._clock(),
                partition=request.partition,
            )
            return outcome
        return await self._run(tool, parsed, request)

    async def _run(self, tool: PublicTool, parsed: Any, request: CallRequest) -> Outcome:
        spec = tool.spec
        now = self._clock()
        reason = self._cancels.reason(request.run_id, request.call_id, request.sequence)
        if reason is not None:
            return await self._finish(request, spec, _cancelled(reason, now))
        timeout = spec.timeout_s
        if request.deadline is not None:
            remaining = (request.deadline - now).total_seconds()
            if remaining <= 0:
                late = Outcome.failed(
                    ErrorKind.TIMED_OUT,
                    f"tool {spec.name!r} was not started: the call's deadline passed before it"
                    " could start; nothing was sent, so calling it again is safe",
                    finished_at=now,
                    retryable=True,
                )
                return await self._finish(request, spec, late)
            if remaining < self._start_floor_s and not spec.idempotent:
                doomed = Outcome.failed(
                    ErrorKind.TIMED_OUT,
                    f"tool {spec.name!r} was not started: only {remaining:.3g} s of the call's"
                    f" deadline was left (at least {self._start_floor_s:g} s is needed); nothing"
                    " was sent, so calling it again is safe",
                    finished_at=now,
                    retryable=True,
                )
                return await self._finish(request, spec, doomed)
            timeout = min(timeout, remaining)
        context = CallContext(
            tenant_id=request.tenant_id,
            run_id=request.run_id,
            call_id=request.call_id,
            idempotency_key=request.idempotency_key or request.call_id,
            timeout_s=timeout,
        )
        attempt = _Attempt()
        task = asyncio.ensure_future(
            self._attempt(tool, parsed, context, attempt, request.partition)
        )
        self._inflight[request.call_id] = (request.run_id, task)
        try:
            # `wait` does not raise when the task fails or is cancelled by `cancel()`; it raises
            # only when *we* are cancelled (shutdown): then the call stays "started".
            await asyncio.wait({task})
        except asyncio.CancelledError:
            task.cancel()
            raise
        finally:
            self._inflight.pop(request.call_id, None)
        if not task.cancelled() and isinstance(task.exception(), IntentNotRecordedError):
            # Nothing ran and nothing is known: the request is delivered again.
            raise task.exception()  # type: ignore[misc]
        cancel_reason = self._cancels.reason(request.run_id, request.call_id, -1)
        outcome = self._outcome(task, attempt, spec, context, cancel_reason)
        return await self._finish(request, spec, outcome)

    async def _attempt(
        self, tool: Tool, parsed: Any, context: CallContext, attempt: _Attempt, partition: int
    ) -> ToolOutput:
        async with asyncio.timeout(context.timeout_s), self._semaphore(tool.spec):
            started = self._clock()
            # Acknowledged before the tool runs: a crash from here on is seen as "started".
            try:
                await self._store.mark_started(
                    context.call_id, tool.spec.name, started, partition=partition
                )
            except Exception as error:
                raise IntentNotRecordedError(
                    f"the intent to run {context.call_id} was not recorded ({error!r});"
                    " the tool was not run"
                ) from error
            attempt.started_at = self._monotonic()
            attempt.started_wall = started
            return await tool.run(parsed, context)

    def _outcome(
        self,
        task: asyncio.Task[ToolOutput],
        attempt: _Attempt,
        spec: ToolSpec,
        context: CallContext,
        cancel_reason: str | None,
    ) -> Outcome:
        now = self._clock()
        timeout = context.timeout_s
        # A tool that says its request never left had no effect anywhere: not executed.
        executed = attempt.started_at is not None and context.progress.sent is not False
        duration = self._monotonic() - attempt.started_at if attempt.started_at else 0.0
        if task.cancelled():
            reason = cancel_reason or "the run cancelled this call"
            return replace(_cancelled(reason, now), duration_s=duration, executed=executed)
        error = task.exception()
        if error is None:
            output = task.result()
            text, truncated, size = truncate(output.text, spec.max_output_bytes)
            return Outcome(
                output=text,
                content_type=output.content_type,
                truncated=truncated,
                original_size=size,
                duration_s=duration,
                finished_at=now,
                executed=executed,
            )
        lost = isinstance(error, TimeoutError | ToolInterruptedError)
        if lost and attempt.started_at is not None and not executed:
            return Outcome.failed(
                ErrorKind.TIMED_OUT,
                f"tool {spec.name!r} did not get its request out within {timeout:g} s;"
                " nothing was sent, so calling it again is safe",
                finished_at=now,
                duration_s=duration,
                retryable=True,
            )
        if lost and executed and not spec.idempotent:
            # The request may have reached the target: never tell the model "timed out".
            why = (
                f"did not finish within {timeout:g} s (the call's time limit)"
                if isinstance(error, TimeoutError)
                else f"lost its answer: {error}"
            )
            reached = (
                "its request was sent"
                if context.progress.sent
                else "it may have reached its target"
            )
            return Outcome.failed(
                ErrorKind.OUTCOME_UNKNOWN,
                f"tool {spec.name!r} was started at {_iso(attempt.started_wall)} and {reached},"
                f" but it {why}; its outcome is unknown and it was not run again. {_CHECK}",
                finished_at=now,
                duration_s=duration,
                executed=True,
            )
        if isinstance(error, TimeoutError):
            return Outcome.failed(
                ErrorKind.TIMED_OUT,
                f"tool {spec.name!r} did not finish within {timeout:g} s",
                finished_at=now,
                duration_s=duration,
                retryable=True,
                executed=executed,
            )
        if isinstance(error, ToolError):
            return Outcome.failed(
                ErrorKind.EXECUTION_FAILED,
                error.message,
                finished_at=now,
                duration_s=duration,
                retryable=error.retryable,
                # Nothing left the process: no effect anywhere, nothing to bill.
                executed=executed and not isinstance(error, ToolNotSentError),
            )
        log.error("tool %s raised", spec.name, exc_info=error)
        return Outcome.failed(
            ErrorKind.EXECUTION_FAILED,
            f"tool {spec.name!r} failed unexpectedly ({type(error).__name__})",
            finished_at=now,
            duration_s=duration,
            executed=executed,
        )

    async def _finish(self, request: CallRequest, spec: ToolSpec, outcome: Outcome) -> Outcome:
        await self._store.mark_completed(
            request.call_id, spec.name, outcome, self._clock(), partition=request.partition
        )
        return outcome

    def _semaphore(self, spec: ToolSpec) -> asyncio.Semaphore:
        semaphore = self._semaphores.get(spec.name)
        if semaphore is None:
            semaphore = asyncio.Semaphore(max(1, spec.max_concurrency))
            self._semaphores[spec.name] = semaphore
        return semaphore

    def _refused(self, request: CallRequest, kind: ErrorKind, message: str) -> Outcome:
        return Outcome.failed(kind, message, finished_at=self._clock())

    def _unknown_tool(self, request: CallRequest) -> str:
        available = self._access.allowed(request.tenant_id, request.agent, self._registry.tools())
        return f"no tool named {request.tool!r}; available tools: {', '.join(available) or 'none'}"


_CHECK = "Check the target system before calling it again."


def _iso(at: datetime | None) -> str:
    return at.isoformat(timespec="milliseconds") if at else "an unknown time"


def _cancelled(reason: str, now: datetime) -> Outcome:
    return Outcome.failed(ErrorKind.CANCELLED, f"cancelled: {reason}", finished_at=now)


def _arguments(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text or "{}")
    except json.JSONDecodeError as error:
        raise ArgumentsError(
            f"arguments are not valid JSON ({error.msg} at line {error.lineno} column"
            f" {error.colno}); send a JSON object"
        ) from error
    if not isinstance(value, dict):
        raise ArgumentsError(f"arguments must be a JSON object, not {type(value).__name__}")
    return value


def _invalid_message(spec: ToolSpec, problem: str) -> str:
    schema = json.dumps(spec.parameters, separators=(",", ":"), sort_keys=True)
    if len(schema) > _SCHEMA_HINT_CHARS:
        schema = schema[:_SCHEMA_HINT_CHARS] + "…"
    return (
        f"invalid arguments for tool {spec.name!r}: {problem}. Expected arguments schema: {schema}"
    )

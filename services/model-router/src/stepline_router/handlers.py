"""Inbound Kafka port: ModelCallRequested → the router → ModelCallResult + UsageRecorded."""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import assert_never

from prometheus_client import Counter, Histogram

from stepline.v1 import model_pb2
from stepline_router.clock import Clock
from stepline_router.convert import (
    InvalidRequestError,
    completed_message,
    failed_message,
    request_from_proto,
    timestamp,
    usage_records,
)
from stepline_router.errors import Outcome
from stepline_router.router import CallFailed, CallOutcome, CallSucceeded, Router
from stepline_router.types import ModelRequest
from stepline_runtime.codec import Cause, InvalidRecordError, decode, encode
from stepline_runtime.logs import bind
from stepline_runtime.metrics import MODEL_CALLS, PROVIDER_ATTEMPT_SECONDS, PROVIDER_ATTEMPTS
from stepline_runtime.records import InboundRecord, OutboundRecord
from stepline_runtime.tracing import current_traceparent

__all__ = ["ModelCallHandler", "Topics"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Topics:
    """The (namespaced) topics the handler writes to."""

    results: str
    usage: str


class ModelCallHandler:
    """Turns one `ModelCallRequested` record into its usage records and result."""

    def __init__(self, router: Router, topics: Topics, clock: Clock, source: str) -> None:
        self._router = router
        self._topics = topics
        self._clock = clock
        self._source = source

    async def on_model_call_requested(self, record: InboundRecord) -> Sequence[OutboundRecord]:
        """Route the call; outputs are published (usage first) before the offset is committed."""
        decoded = decode(record, [model_pb2.ModelCallRequested])
        message = decoded.message
        if not message.run_id or not message.call_id:
            raise InvalidRecordError(Cause.INVALID, "run_id and call_id are required")
        try:
            request = request_from_proto(
                call_id=message.call_id,
                tenant_id=message.tenant_id,
                route=message.route,
                messages=message.messages,
                tools=message.tools,
                parameters=message.parameters,
                deadline=message.deadline.ToDatetime(tzinfo=UTC)
                if message.HasField("deadline")
                else None,
                max_cost=message.max_cost,
                stream=message.stream,
                run_id=message.run_id,
                step_id=message.step_id,
                agent=message.agent,
                replay_of=message.replay_of,
            )
        except InvalidRequestError as error:
            raise InvalidRecordError(Cause.INVALID, str(error)) from error
        with bind(run_id=request.run_id, tenant_id=request.tenant_id, call_id=request.call_id):
            outcome = await self._router.complete(request)
            clean = isinstance(outcome, CallSucceeded) and len(outcome.attempts) == 1
            # A clean call is in the metrics, the trace and the run's events already: logging
            # each one at INFO cost a tenth of the router's CPU per call.
            log.log(
                logging.DEBUG if clean else logging.INFO,
                "model call finished",
                extra={
                    "route": request.route,
                    "succeeded": isinstance(outcome, CallSucceeded),
                    "attempts": len(outcome.attempts),
                },
            )
        _observe(request.route, outcome)
        # One time for the result and its records' headers (formatted once for all of them).
        finished = self._clock.now()
        result = model_pb2.ModelCallResult(
            run_id=request.run_id,
            tenant_id=request.tenant_id,
            step_id=request.step_id,
            call_id=request.call_id,
            finished_at=timestamp(finished),
        )
        if isinstance(outcome, CallSucceeded):
            result.completed.CopyFrom(completed_message(outcome))
        elif isinstance(outcome, CallFailed):
            result.failed.CopyFrom(failed_message(outcome))
        else:
            assert_never(outcome)
        # This record's span when it is handled in one (`stamp` then keeps the records as
        # they are); else the request's.
        traceparent = current_traceparent() or decoded.headers.traceparent
        return [
            *self.usage_outputs(request, outcome, traceparent, finished),
            encode(
                self._topics.results,
                request.run_id,
                result,
                event_id=f"{request.call_id}/result",
                source=self._source,
                tenant_id=request.tenant_id,
                traceparent=traceparent,
                time=finished,
            ),
        ]

    def usage_outputs(
        self,
        request: ModelRequest,
        outcome: CallOutcome,
        traceparent: str = "",
        time: datetime | None = None,
    ) -> list[OutboundRecord]:
        """`UsageRecorded` records (key tenant_id) for every attempt, skipped ones included;
        `time` is their header's (now by default)."""
        return [
            encode(
                self._topics.usage,
                request.tenant_id,
                usage,
                event_id=usage.usage_id,
                source=self._source,
                tenant_id=request.tenant_id,
                traceparent=traceparent,
                time=time,
            )
            for usage in usage_records(request, outcome)
        ]


def _observe(route: str, outcome: CallOutcome) -> None:
    """Count the call and each of its attempts (skipped ones too, with their outcome)."""
    for attempt in outcome.attempts:
        _attempts(attempt.provider, attempt.deployment, attempt.model, attempt.outcome).inc()
        if attempt.sent:
            _attempt_seconds(attempt.provider, attempt.deployment).observe(attempt.latency_s)
    result = "succeeded" if isinstance(outcome, CallSucceeded) else outcome.kind.value
    _calls(route, result).inc()


# The metric children of each label set, looked up once: `labels()` validates and locks on
# every call. Label sets are few (deployments × outcomes), the caches bounded all the same.
@functools.lru_cache(maxsize=1024)
def _attempts(provider: str, deployment: str, model: str, outcome: Outcome) -> Counter:
    return PROVIDER_ATTEMPTS.labels(provider, deployment, model, outcome.value)


@functools.lru_cache(maxsize=1024)
def _attempt_seconds(provider: str, deployment: str) -> Histogram:
    return PROVIDER_ATTEMPT_SECONDS.labels(provider, deployment)


@functools.lru_cache(maxsize=1024)
def _calls(route: str, result: str) -> Counter:
    return MODEL_CALLS.labels(route, result)

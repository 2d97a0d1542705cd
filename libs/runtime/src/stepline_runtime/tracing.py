"""OpenTelemetry tracing carried through Kafka headers (W3C `traceparent`), one run one trace.

Every handled record gets a consumer span that continues the trace of the record's
`traceparent`; every record produced while that span is current carries the span's own
`traceparent` (same trace id, new span id), so a run's goal, model calls, tool calls, usage and
ledger entries form one trace across services. Spans are always created (so span ids are
fresh), but exported only when `OTEL_EXPORTER_OTLP_ENDPOINT` (or the traces-specific variable)
is set. Without an exporter a span would be built only to be dropped, so the current span is then
a non-recording one with a fresh span id in the parent's trace: ids propagate exactly the same
(logs and downstream records see the trace), at a tenth of the cost per record.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from stepline_runtime.headers import HeaderName
from stepline_runtime.records import InboundRecord, OutboundRecord

__all__ = [
    "OTLP_ENDPOINT_VARIABLES",
    "configure_tracing",
    "current_traceparent",
    "handling",
    "keyed_trace",
    "shutdown_tracing",
    "spans_dropped",
    "stamp",
    "trace_id_of",
]

log = logging.getLogger(__name__)

# Either variable switches OTLP export on (the exporter reads the rest of OTEL_* itself).
OTLP_ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")

_propagator = TraceContextTextMapPropagator()
_provider = TracerProvider(resource=Resource.create({"service.name": "stepline"}))
_tracer = _provider.get_tracer("stepline_runtime")
# Until a composition root configures tracing, only records already in a trace get spans.
_configured = False
# Whether spans are exported; when not, they are non-recording (ids only).
_exporting = False


def configure_tracing(service: str, environ: Mapping[str, str] | None = None) -> bool:
    """Name this process's spans after `service`; export via OTLP/HTTP when an endpoint is set.

    Returns whether spans are exported. Call once, in the composition root.
    """
    global _provider, _tracer, _configured, _exporting
    env = os.environ if environ is None else environ
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    exporting = any(env.get(name) for name in OTLP_ENDPOINT_VARIABLES)
    if exporting:
        # Imported only when used: the exporter pulls in `requests`.
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        log.info("tracing exported over OTLP/HTTP", extra={"service": service})
    _provider, _tracer = provider, provider.get_tracer("stepline_runtime")
    _configured, _exporting = True, exporting
    trace.set_tracer_provider(provider)
    return exporting


def spans_dropped() -> bool:
    """True once `configure_tracing` ran without an exporter: a span built now is dropped."""
    return _configured and not _exporting


def shutdown_tracing() -> None:
    """Flush and stop the exporter (if any); call when the service stops."""
    _provider.shutdown()


def _parent(traceparent: str, tracestate: str = "") -> Context:
    carrier = {HeaderName.TRACEPARENT: traceparent}
    if tracestate:
        carrier[HeaderName.TRACESTATE] = tracestate
    return _propagator.extract(carrier)


@contextmanager
def handling(
    record: InboundRecord, consumer: str, *, derive_from_key: bool = False
) -> Iterator[None]:
    """A consumer span for `record`, child of its `traceparent`.

    A record without one starts a new trace, or with `derive_from_key` joins the trace derived
    from its key (the planner: a goal's run id), see `keyed_trace`; both only once
    `configure_tracing` ran (library use without it leaves untraced records untraced).
    """
    traceparent = record.header(HeaderName.TRACEPARENT) or ""
    if not traceparent and not _configured:
        yield
        return
    if not _exporting:
        key = record.key.decode(errors="replace") if derive_from_key and record.key else ""
        with _ids_only(_parsed(traceparent) or (_derived(key) if key else None)):
            yield
        return
    if traceparent or not derive_from_key or not record.key:
        context = _parent(traceparent, record.header(HeaderName.TRACESTATE) or "")
    else:
        context = _derived_context(record.key.decode(errors="replace"))
    attributes: dict[str, str | int] = {
        "messaging.system": "kafka",
        "messaging.operation.type": "process",
        "messaging.destination.name": record.topic,
        "messaging.destination.partition.id": str(record.partition),
        "messaging.kafka.offset": record.offset,
        "messaging.consumer.group.name": consumer,
    }
    with _tracer.start_as_current_span(
        f"process {record.topic}", context=context, kind=SpanKind.CONSUMER, attributes=attributes
    ):
        yield


def _derived(key: str) -> SpanContext:
    digest = hashlib.sha256(f"stepline-trace\x1f{key}".encode()).digest()
    return SpanContext(
        trace_id=int.from_bytes(digest[:16], "big") or 1,
        span_id=int.from_bytes(digest[16:24], "big") or 1,
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )


def _derived_context(key: str) -> Context:
    return trace.set_span_in_context(NonRecordingSpan(_derived(key)))


def _parsed(traceparent: str) -> SpanContext | None:
    """The span context of a W3C `traceparent` (version 00), or None when malformed."""
    parts = traceparent.split("-")
    if len(parts) != 4 or len(parts[1]) != 32 or len(parts[2]) != 16 or len(parts[3]) != 2:
        return None
    try:
        trace_id, span_id, flags = int(parts[1], 16), int(parts[2], 16), int(parts[3], 16)
    except ValueError:
        return None
    if not trace_id or not span_id:
        return None
    return SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(flags))


@contextmanager
def _ids_only(parent: SpanContext | None) -> Iterator[None]:
    """A non-recording current span: a fresh span id, in `parent`'s trace or a new one."""
    trace_id = parent.trace_id if parent is not None else random.getrandbits(128) or 1
    flags = parent.trace_flags if parent is not None else TraceFlags(TraceFlags.SAMPLED)
    span = NonRecordingSpan(
        SpanContext(trace_id, random.getrandbits(64) or 1, is_remote=False, trace_flags=flags)
    )
    token = otel_context.attach(trace.set_span_in_context(span))
    try:
        yield
    finally:
        otel_context.detach(token)


@contextmanager
def keyed_trace(key: str, name: str) -> Iterator[None]:
    """A span in the trace derived from `key` (e.g. a run id), for work no record started.

    The planner's timers have no inbound record; deriving the trace id from the run id puts
    a run's timeouts in the same trace as the run when the run's trace was derived the same way.
    """
    if not _configured:
        yield
        return
    if not _exporting:
        with _ids_only(_derived(key)):
            yield
        return
    with _tracer.start_as_current_span(name, context=_derived_context(key)):
        yield


def current_traceparent() -> str:
    """The `traceparent` of the current span, or "" outside any span."""
    # What the W3C propagator writes (version 00), without building a carrier per record.
    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return ""
    return (
        f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}"
        f"-{int(span_context.trace_flags):02x}"
    )


def trace_id_of(traceparent: str) -> str:
    """The 32-hex trace id of a `traceparent`, or "" when it is malformed."""
    parts = traceparent.split("-")
    return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else ""


def stamp(records: Sequence[OutboundRecord]) -> list[OutboundRecord]:
    """`records` carrying the current span's `traceparent` (records of another trace are kept).

    A handler that copied the inbound `traceparent` gets it replaced by its own span's, so each
    hop has its own span id; a record a handler deliberately put in another trace keeps it.
    """
    traceparent = current_traceparent()
    if not traceparent:
        return list(records)
    trace_id = trace_id_of(traceparent)
    current = traceparent.encode()
    stamped = []
    for record in records:
        existing = next((v for k, v in record.headers if k == HeaderName.TRACEPARENT), None)
        if existing == current:
            stamped.append(record)  # the handler already wrote this span's own
            continue
        if existing is not None and trace_id_of(existing.decode(errors="replace")) not in (
            "",
            trace_id,
        ):
            stamped.append(record)
            continue
        headers = tuple(h for h in record.headers if h[0] != HeaderName.TRACEPARENT)
        stamped.append(
            OutboundRecord(
                record.topic,
                record.key,
                record.value,
                (*headers, (HeaderName.TRACEPARENT, traceparent.encode())),
                record.partition,
            )
        )
    return stamped

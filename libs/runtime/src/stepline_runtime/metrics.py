"""Prometheus metrics of every service: one registry, one set of names, bounded labels.

Labels are chosen for bounded cardinality: topics, consumers, deployments, providers, models,
tools, agents and tenants (configured sets), never run, call or usage ids. Counters fed from
the transactional processor may count a record again when its transaction is re-run; the
ledger, not these counters, is the record of money.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from decimal import Decimal

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = [
    "CIRCUIT_STATES",
    "CONSUMER_LAG",
    "COST",
    "MODEL_CALLS",
    "PROVIDER_ATTEMPTS",
    "PROVIDER_ATTEMPT_SECONDS",
    "RECORDS_DEAD_LETTERED",
    "RECORDS_IN_FLIGHT",
    "RECORDS_PROCESSED",
    "RECORDS_REDELIVERED",
    "RECORD_SECONDS",
    "RUNS_FINISHED",
    "RUN_SECONDS",
    "STEP_SECONDS",
    "TOOL_SECONDS",
    "TRANSACTIONS",
    "UNPRICED_USAGE",
    "record_cost",
    "serve_metrics",
    "watch_circuits",
]

log = logging.getLogger(__name__)

# Model and tool calls take from milliseconds (local, calculator) to minutes (reasoning models).
_CALL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_RUN_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)

# --- runtime: consumers and transactions -------------------------------------------------------

RECORDS_PROCESSED = Counter(
    "stepline_records_processed",
    "Input records handled (outputs produced, or dead-lettered), per consumer and topic.",
    ["consumer", "topic"],
)
RECORDS_DEAD_LETTERED = Counter(
    "stepline_records_dead_lettered",
    "Input records parked on the dead-letter topic, per consumer, topic and cause.",
    ["consumer", "topic", "cause"],
)
RECORDS_REDELIVERED = Counter(
    "stepline_records_redelivered",
    "Failed attempts that asked for the record again (at-least-once consumers).",
    ["consumer", "topic"],
)
RECORDS_IN_FLIGHT = Gauge(
    "stepline_records_in_flight",
    "Input records started and not done yet (key-ordered consumers), per consumer.",
    ["consumer"],
)
RECORD_SECONDS = Histogram(
    "stepline_record_handle_seconds",
    "Time to handle one input record (handler only, without publishing).",
    ["consumer", "topic"],
    buckets=_CALL_BUCKETS,
)
TRANSACTIONS = Counter(
    "stepline_transactions",
    "Kafka transactions of the exactly-once processor, by outcome (committed, aborted, fenced).",
    ["app", "outcome"],
)
CONSUMER_LAG = Gauge(
    "stepline_consumer_lag_records",
    "Committed records the group has not consumed yet (transaction markers not counted).",
    ["group", "topic", "partition"],
)

# --- planner -----------------------------------------------------------------------------------

STEP_SECONDS = Histogram(
    "stepline_step_duration_seconds",
    "Duration of a run's step from request to result, per kind (model, tool) and outcome.",
    ["kind", "outcome"],
    buckets=_CALL_BUCKETS,
)
RUN_SECONDS = Histogram(
    "stepline_run_duration_seconds",
    "Duration of finished runs, per agent and final status.",
    ["agent", "status"],
    buckets=_RUN_BUCKETS,
)
RUNS_FINISHED = Counter(
    "stepline_runs_finished", "Runs that ended, per agent and status.", ["agent", "status"]
)

# --- model router ------------------------------------------------------------------------------

PROVIDER_ATTEMPTS = Counter(
    "stepline_provider_attempts",
    "Attempts the router made per deployment, by outcome (success, rate_limited, timeout, …).",
    ["provider", "deployment", "model", "outcome"],
)
PROVIDER_ATTEMPT_SECONDS = Histogram(
    "stepline_provider_attempt_duration_seconds",
    "Latency of attempts that reached a provider.",
    ["provider", "deployment"],
    buckets=_CALL_BUCKETS,
)
MODEL_CALLS = Counter(
    "stepline_model_calls",
    "Model calls the router finished, per route and outcome (succeeded or the error kind).",
    ["route", "outcome"],
)

# --- tool executor -----------------------------------------------------------------------------

TOOL_SECONDS = Histogram(
    "stepline_tool_duration_seconds",
    "Duration of tool executions, per tool and outcome (COMPLETED or the error kind).",
    ["tool", "outcome"],
    buckets=_CALL_BUCKETS,
)

# --- cost (billing) ----------------------------------------------------------------------------

COST = Counter(
    "stepline_cost",
    "Priced spend entered in the ledger, per tenant, kind (model, tool), provider and model.",
    ["tenant", "kind", "provider", "model", "currency"],
)
UNPRICED_USAGE = Counter(
    "stepline_unpriced_usage",
    "Ledger entries without a price (unpriced, never zero), per kind, provider and model.",
    ["kind", "provider", "model"],
)


def record_cost(
    tenant: str, kind: str, provider: str, model: str, currency: str, cost: Decimal | None
) -> None:
    """Count one ledger entry's cost, or an unpriced entry when `cost` is None."""
    if cost is None:
        UNPRICED_USAGE.labels(kind, provider, model).inc()
    else:
        COST.labels(tenant, kind, provider, model, currency).inc(float(cost))


# --- circuit state, read at scrape time --------------------------------------------------------

CIRCUIT_STATES = {"closed": 0.0, "half_open": 1.0, "open": 2.0}
_circuits: list[Callable[[], Mapping[str, str]]] = []


class _CircuitCollector(Collector):
    """`stepline_circuit_state{deployment}`: 0 closed, 1 half-open, 2 open, at scrape time."""

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(
            "stepline_circuit_state",
            "Circuit breaker state per deployment: 0 closed, 1 half-open, 2 open.",
            labels=["deployment"],
        )
        for states in _circuits:
            for deployment, state in sorted(states().items()):
                family.add_metric([deployment], CIRCUIT_STATES.get(state, -1.0))
        yield family


REGISTRY.register(_CircuitCollector())


def watch_circuits(states: Callable[[], Mapping[str, str]]) -> None:
    """Report `states()` (deployment → closed/half_open/open) as `stepline_circuit_state`."""
    _circuits[:] = [states]


def serve_metrics(port: int, host: str = "127.0.0.1") -> int | None:
    """Serve `/metrics` on `host:port` (0 = any free port); the bound port, None if it failed.

    A port already taken is logged, not fatal: metrics must never stop a service from working.
    """
    try:
        server, _ = start_http_server(port, addr=host)
    except OSError as error:
        log.error(
            "cannot serve metrics; set STEPLINE_METRICS_PORT to a free port (0 disables)",
            extra={"host": host, "port": port, "error": str(error)},
        )
        return None
    bound = int(server.server_address[1])
    log.info("metrics served", extra={"host": host, "port": bound})
    return bound

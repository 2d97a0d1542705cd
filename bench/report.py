"""The markdown summary and PNG plots of the last `make bench`, from bench/results/*.json.

Writes bench/results/summary.md and bench/results/*.png; a benchmark whose JSON is missing is
listed as not run. Runs without a broker: it only reads the JSON files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on CI or over SSH
import matplotlib.pyplot as plt

__all__ = ["main", "render"]

RESULTS = Path(__file__).parent / "results"
_ROUTER_CLIENTS = ("direct_httpx", "stepline", "litellm")


def _load(results: Path, name: str) -> dict[str, Any] | None:
    path = results / f"{name}.json"
    if not path.exists():
        return None
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _table(header: list[str], rows: list[list[object]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def _raw(data: dict[str, Any]) -> list[str]:
    rtt = data["round_trip_ms"]
    return [
        "## Raw Kafka round trip (`bench/raw_kafka.py`)",
        "",
        *_table(
            ["figure", "value"],
            [
                ["round trip p50", f"{rtt['p50']} ms"],
                ["round trip p99", f"{rtt['p99']} ms"],
                ["pipelined throughput", f"{data['messages_per_second']:,} records/s"],
            ],
        ),
    ]


def _router(data: dict[str, Any], results: Path) -> list[str]:
    rows = []
    for level in data["overhead"]:
        direct = level["direct"]
        rows.append(
            [
                level["concurrency"],
                f"{direct['p50_ms']} / {direct['p99_ms']} ms",
                *(
                    f"+{level[c]['overhead_p50_ms']} / +{level[c]['overhead_p99_ms']} ms"
                    for c in _ROUTER_CLIENTS
                ),
                " / ".join(
                    f"{level[c]['requests_per_s']:,.0f}" for c in ("direct", *_ROUTER_CLIENTS)
                ),
            ]
        )
    lines = [
        "## Model-router overhead against LiteLLM (`bench/router.py`)",
        "",
        *_table(
            [
                "concurrency",
                "direct p50 / p99",
                "httpx overhead",
                "Stepline overhead",
                "LiteLLM overhead",
                "req/s direct / httpx / Stepline / LiteLLM",
            ],
            rows,
        ),
        "",
        "![router overhead](router_overhead.png)",
    ]
    fig, ax = plt.subplots(figsize=(7, 4))
    levels = [level["concurrency"] for level in data["overhead"]]
    for client in _ROUTER_CLIENTS:
        values = [level[client]["overhead_p50_ms"] for level in data["overhead"]]
        ax.plot(levels, values, marker="o", label=client)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("concurrency")
    ax.set_ylabel("p50 overhead over direct HTTP (ms)")
    ax.set_title("Router overhead per request (instant upstream)")
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)
    _save(fig, results / "router_overhead.png")
    failover = data.get("failover")
    if failover:
        rows = []
        for scenario in failover["scenarios"].values():
            after = scenario["after_circuit_open_ms"]
            rows.append(
                [
                    scenario["primary"],
                    f"{scenario['time_to_first_answer_ms']['p50']} ms",
                    scenario["requests_to_open"],
                    f"{after['p50']} / {after['p99']} ms",
                ]
            )
        lines += [
            "",
            "### Failover (`bench/failover.py`)",
            "",
            *_table(
                [
                    "primary",
                    "first successful answer p50",
                    "requests until open",
                    "next 100 after open p50 / p99",
                ],
                rows,
            ),
        ]
    return lines


def _steps(data: dict[str, Any], results: Path) -> list[str]:
    levels = data["levels"]
    rows = []
    for level in levels:
        usage = level["usage"]
        rows.append(
            [
                f"{level['concurrent_runs']:,}",
                level["runs"],
                f"{level['step_overhead_ms']['p50']} / {level['step_overhead_ms']['p99']} ms",
                f"{level['model_tool_time_ms']['mean']} ms",
                level.get("overhead_p50_over_4_raw_round_trips", "n/a"),
                f"{level['steps_per_s']:,}",
                f"{level['run_latency_ms']['p50']:,.0f} ms",
                ", ".join(f"{name} {u['cpu_percent_of_one_core']}%" for name, u in usage.items()),
                ", ".join(
                    f"{name} {u['peak_rss_mib']}"
                    for name, u in usage.items()
                    if "peak_rss_mib" in u
                ),
            ]
        )
    four = data.get("four_raw_round_trips_ms")
    lines = [
        "## Agent step overhead (`bench/steps.py`)",
        "",
        f"{data['steps_per_run']} steps per run ({data['step_mix']}), {data['partitions']} "
        f"partitions, one planner, instant responder. Four raw round trips = {four} ms.",
        "",
        *_table(
            [
                "concurrent runs",
                "runs",
                "step overhead p50 / p99",
                "model+tool time (mean)",
                "overhead p50 ÷ 4 raw RTT",
                "steps/s",
                "run latency p50",
                "CPU (% of one core)",
                "peak RSS MiB",
            ],
            rows,
        ),
        "",
        "![step overhead](steps_overhead.png)",
    ]
    concurrency = [level["concurrent_runs"] for level in levels]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for q in ("p50", "p99"):
        left.plot(concurrency, [lv["step_overhead_ms"][q] for lv in levels], marker="o", label=q)
    if four:
        left.axhline(four, color="grey", linestyle="--", label="4 raw Kafka round trips")
    left.set_xscale("log")
    left.set_yscale("log")
    left.set_xlabel("concurrent runs")
    left.set_ylabel("step overhead (ms)")
    left.set_title("Per-step overhead")
    left.legend()
    left.grid(True, which="both", alpha=0.3)
    right.plot(concurrency, [lv["steps_per_s"] for lv in levels], marker="o", color="tab:green")
    right.set_xscale("log")
    right.set_xlabel("concurrent runs")
    right.set_ylabel("steps per second")
    right.set_title("Sustained throughput (one planner)")
    right.grid(True, which="both", alpha=0.3)
    _save(fig, results / "steps_overhead.png")
    return lines


def _scaleout(data: dict[str, Any], results: Path) -> list[str]:
    lines = [
        "## Scale-out (`bench/scaleout.py`)",
        "",
        f"**{data['cpu_limit_note']}.** {data['partitions']} partitions, {data['in_flight']} "
        f"units in flight, throughput over {data['window_s']} s windows.",
        "",
    ]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    # Every service the benchmark measured (scaleout.BENCHMARKS), in its order.
    services = [k for k, v in data.items() if isinstance(v, dict) and "levels" in v]
    width = 0.8 / max(1, len(services))
    for offset, service in enumerate(services):
        part = data[service]
        rows = []
        for level in part["levels"]:
            rebalance = level["rebalance"]
            rows.append(
                [
                    service,
                    level["instances"],
                    f"{level['units_per_s']} {part['unit']}/s",
                    f"{level['steps_per_s']}",
                    # Results written before the start-up was measured have no `ready_s`.
                    f"{rebalance['ready_s']} s" if rebalance and rebalance.get("ready_s") else "-",
                    f"{rebalance['assigned_s']} s" if rebalance else "-",
                    f"{rebalance['resumed_s']} s" if rebalance else "-",
                    f"{rebalance['stall_s']} s" if rebalance else "-",
                ]
            )
        lines += [
            *_table(
                [
                    "service",
                    "instances",
                    "throughput",
                    "steps/s",
                    "new instances ready",
                    "rebalance: assigned",
                    "resumed",
                    "longest stall",
                ],
                rows,
            ),
            "",
        ]
        instances = [level["instances"] for level in part["levels"]]
        left.plot(
            instances,
            [level["units_per_s"] for level in part["levels"]],
            marker="o",
            label=f"{service} ({part['unit']}/s)",
        )
        moved = [level for level in part["levels"] if level["rebalance"]]
        xs = [i + (offset - (len(services) - 1) / 2) * width for i in range(len(moved))]
        right.bar(
            xs,
            [level["rebalance"]["resumed_s"] for level in moved],
            width,
            label=f"{service}: resumed",
        )
        right.set_xticks(range(len(moved)), [f"→{level['instances']} instances" for level in moved])
    left.set_xticks(list(INSTANCE_TICKS))
    left.set_xlabel("instances (same 2 cores)")
    left.set_ylabel("throughput per second")
    left.set_title("Throughput by instances")
    left.legend()
    left.grid(True, alpha=0.3)
    right.set_ylabel("seconds from spawn")
    right.set_title("Rebalance: until every partition makes progress")
    right.legend(loc="lower right")
    _save(fig, results / "scaleout.png")
    lines.append("![scale-out](scaleout.png)")
    return lines


INSTANCE_TICKS = (1, 2, 4)


def _stack(data: dict[str, Any], results: Path) -> list[str]:
    levels = data["levels"]
    rows = [
        [
            f"{lv['concurrent_runs']:,}",
            f"{lv['completed_runs']} / {lv['runs']}",
            f"{lv['steps_per_s']:,}",
            f"{lv['step_latency_ms']['model']['p50']} / {lv['step_latency_ms']['model']['p99']} ms",
            f"{lv['step_latency_ms']['tool']['p50']} / {lv['step_latency_ms']['tool']['p99']} ms",
            f"{lv['run_latency_ms']['p50']:,.0f} / {lv['run_latency_ms']['p99']:,.0f} ms",
            ", ".join(f"{k} {v}" for k, v in lv["cpu_ms_per_step"].items()),
            lv["log_entries_per_step"],
            lv.get("share_of_kafka_ceiling", "n/a"),
        ]
        for lv in levels
    ]
    lines = [
        "## Full stack (`bench/stack.py`)",
        "",
        f"Services: {', '.join(data['services'])}; {data['partitions']} partitions; "
        "each run: model → two tools in parallel → model (route `local`).",
        "",
        *_table(
            [
                "concurrent runs",
                "completed",
                "steps/s",
                "model step p50 / p99",
                "tool step p50 / p99",
                "run p50 / p99",
                "CPU ms per step",
                "log entries/step",
                "share of Kafka ceiling",
            ],
            rows,
        ),
        "",
        "![full stack](stack.png)",
    ]
    concurrency = [lv["concurrent_runs"] for lv in levels]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.plot(concurrency, [lv["steps_per_s"] for lv in levels], marker="o", label="steps/s")
    left.set_xscale("log")
    left.set_xlabel("concurrent runs")
    left.set_ylabel("steps per second")
    left.set_title("Full-stack throughput")
    left.grid(True, which="both", alpha=0.3)
    for kind in ("model", "tool"):
        right.plot(
            concurrency,
            [lv["step_latency_ms"][kind]["p50"] for lv in levels],
            marker="o",
            label=f"{kind} step p50",
        )
    right.set_xscale("log")
    right.set_yscale("log")
    right.set_xlabel("concurrent runs")
    right.set_ylabel("ms")
    right.set_title("Step latency")
    right.legend()
    right.grid(True, which="both", alpha=0.3)
    _save(fig, results / "stack.png")
    return lines


def _console(data: dict[str, Any]) -> list[str]:
    names = {
        "page": "the console's runs page",
        "api_fetch": "API fetch + JSON only",
        "bare_list": "the same JSON as a bare list",
    }
    return [
        "## Console: 1,000 runs drawn in headless Chromium (`bench/console.py`)",
        "",
        *_table(
            ["", "p50", "p90", "best"],
            [
                [
                    label,
                    f"{data[k]['p50_ms']} ms",
                    f"{data[k]['p90_ms']} ms",
                    f"{data[k]['best_ms']} ms",
                ]
                for k, label in names.items()
            ],
        ),
        "",
        f"The page costs {data['page_minus_api_fetch_p50_ms']} ms over the API fetch alone "
        f"(p50), {data['page_over_bare_list_p50']}× a bare list of the same runs.",
    ]


_SECTIONS: dict[str, Any] = {
    "raw_kafka": lambda data, results: _raw(data),
    "router": _router,
    "steps": _steps,
    "stack": _stack,
    "scaleout": _scaleout,
    "console": lambda data, results: _console(data),
}


def _save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render(results: Path = RESULTS) -> Path:
    """Write summary.md and the plots into `results`; the summary's path."""
    sections: list[str] = ["# Stepline benchmark summary", ""]
    machine: dict[str, Any] | None = None
    missing = []
    for name, section in _SECTIONS.items():
        data = _load(results, name)
        if data is None:
            missing.append(name)
            continue
        machine = machine or data.get("machine")
        body = section(data, results)
        sections += [*body, "", f"_measured {data.get('at', '?')}_", ""]
    if machine:
        described = ", ".join(f"{k}: {v}" for k, v in machine.items())
        sections[2:2] = [f"Machine: {described}.", ""]
    if missing:
        sections += [f"Not run: {', '.join(missing)}.", ""]
    summary = results / "summary.md"
    summary.write_text("\n".join(sections))
    return summary


def main() -> None:
    """Render the summary and say where it is."""
    print(f"summary written to {render()}")


if __name__ == "__main__":
    main()

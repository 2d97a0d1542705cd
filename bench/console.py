"""The console's runs list: 1,000 runs fetched, drawn and painted, against two peers.

Method: the front door's HTTP app (the real `Api` and static pages, uvicorn on loopback) over a
SQLite read model holding 1,000 finished runs of one tenant, each folded from its run events as
the projector would; Debian's Chromium under Playwright (no browser download), 1400×900, one
tab. Each round, from another page of the console, the runs page is opened with `limit=1000`
and timed in the page from the hash change until the frame after "1000 runs shown" (fetch,
JSON, DOM, layout and paint: what a person waits for). The peers, timed in the same tab right after:

- `api_fetch`: `fetch('/api/runs?limit=1000')` and `response.json()` alone — the floor any
  page over this API pays;
- `bare_list`: the same fetch, then the same 1,000 runs as one `<li>` of text each, appended and
  painted — a list without the console's table, badges and formatting.

Rounds: 3 warm-up, then 15 measured; p50, p90 and the best of each are written to
bench/results/console.json. `python -m bench.console` (no broker needed).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from playwright.sync_api import Page, sync_playwright

from bench.apps.stack import machine, percentile
from stepline.v1 import common_pb2, runs_pb2
from stepline_frontdoor.app import HttpServerPart
from stepline_frontdoor.commands import RecordingCommands
from stepline_frontdoor.convert import run_fact
from stepline_frontdoor.http_api import Api, build_app
from stepline_frontdoor.keyfile import StaticAuthenticator
from stepline_frontdoor.live import RunFeed
from stepline_frontdoor.openapi import document
from stepline_frontdoor.sqlstore import SqliteReadStore
from stepline_frontdoor.store import Position
from stepline_keys import KeyRegistry, Principal, Scope
from stepline_keys.feeds import InMemoryKeyLog
from stepline_keys.manage import KeyAdmin

__all__ = ["main"]

RESULTS = Path(__file__).parent / "results"
CHROMIUM = Path("/usr/bin/chromium")
RUNS = 1_000
WARMUP, ROUNDS = 3, 15
KEY = "sk-bench-console"
T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)

_BARE_LIST = """async () => {
  const started = performance.now();
  const response = await fetch("/api/runs?limit=1000", { headers: { Authorization: "Bearer %s" } });
  const { runs } = await response.json();
  const list = document.createElement("ul");
  for (const r of runs) {
    const item = document.createElement("li");
    item.textContent = `${r.status} ${r.run_id} ${r.agent} ${r.goal} ${r.cost} ${r.steps}`;
    list.append(item);
  }
  document.getElementById("main").replaceChildren(list);
  await new Promise((r) => requestAnimationFrame(r));
  return performance.now() - started;
}"""
_PAGE = """() => new Promise((resolve) => {
  const main = document.getElementById("main");
  const started = performance.now();
  const shown = () =>
    [...main.querySelectorAll("p.muted")].some((p) => p.textContent.startsWith("1000 runs shown"));
  const observer = new MutationObserver(() => {
    if (!shown()) return;
    observer.disconnect();
    requestAnimationFrame(() => resolve(performance.now() - started));
  });
  observer.observe(main, { childList: true, subtree: true, characterData: true });
  location.hash = "#/runs/?limit=1000";
})"""
_API_FETCH = """async () => {
  const started = performance.now();
  const response = await fetch("/api/runs?limit=1000", { headers: { Authorization: "Bearer %s" } });
  const { runs } = await response.json();
  if (runs.length !== 1000) throw new Error(`got ${runs.length} runs`);
  return performance.now() - started;
}"""


def _stamp(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def _events(i: int) -> list[runs_pb2.RunEvent]:
    run_id, start = f"bench-{i:04}", T0 + timedelta(seconds=i)
    goal = f"Answer ticket T-{i} and refund the order if it is due"
    cost = common_pb2.Money(currency="USD", amount="0.0021")
    bodies: list[dict[str, Any]] = [
        {"started": runs_pb2.RunStarted(goal=goal, route="default")},
        {"completed": runs_pb2.RunCompleted(answer=f"answer {i}", steps=3, cost=cost)},
    ]
    return [
        runs_pb2.RunEvent(
            run_id=run_id,
            tenant_id="bench",
            event_id=f"{run_id}/{n}",
            sequence=n,
            agent=f"agent-{i % 7}",
            occurred_at=_stamp(start + timedelta(seconds=n)),
            **body,
        )
        for n, body in enumerate(bodies, 1)
    ]


def _store(path: Path) -> SqliteReadStore:
    store = SqliteReadStore(path)
    offset = 0
    for i in range(RUNS):
        for event in _events(i):
            store.apply_run_event(run_fact(event, T0), Position("runs", 0, offset))
            offset += 1
    return store


@contextmanager
def _serving(store: SqliteReadStore) -> Iterator[str]:
    """The console over `store` on a free loopback port, in a thread of its own."""
    clock = lambda: datetime.now(UTC)  # noqa: E731
    keys = StaticAuthenticator.of([(KEY, Principal("k-bench", "bench", frozenset({Scope.ADMIN})))])
    api = Api(
        store,
        RecordingCommands(),
        keys,
        RunFeed(),
        keys=KeyAdmin(KeyRegistry(clock), InMemoryKeyLog(), clock),
        clock=clock,
    )
    server = HttpServerPart(build_app(api, document, lambda: True), "127.0.0.1", 0)
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    async def serve() -> None:
        await server.start()
        ready.set()
        await server.wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    if not ready.wait(30):
        raise RuntimeError("the console did not start")
    try:
        yield server.url
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(10)
        thread.join(10)


def _page_round(page: Page, url: str) -> float:
    page.goto(f"{url}#/providers")
    page.get_by_role("heading", name="Providers").wait_for()
    # Timed inside the page (a MutationObserver, then the next frame): Playwright's own waits
    # poll at up to 500 ms steps and would measure themselves.
    took: float = page.evaluate(_PAGE)
    rows = page.locator("table[aria-label=Runs] tbody tr").count()
    if rows != RUNS:
        raise RuntimeError(f"{rows} rows drawn, not {RUNS}")
    return took


def _summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50_ms": round(statistics.median(ordered), 1),
        "p90_ms": round(percentile(ordered, 0.9), 1),
        "best_ms": round(ordered[0], 1),
    }


def measure(url: str) -> dict[str, Any]:
    """Rounds of the page and of both peers in one Chromium tab."""
    timings: dict[str, list[float]] = {"page": [], "api_fetch": [], "bare_list": []}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(url)
        page.get_by_label("API key").fill(KEY)
        page.get_by_role("button", name="Use key").click()
        page.get_by_text("· tenant").wait_for()
        for n in range(WARMUP + ROUNDS):
            figures = {
                "page": _page_round(page, url),
                "api_fetch": float(page.evaluate(_API_FETCH % KEY)),
                "bare_list": float(page.evaluate(_BARE_LIST % KEY)),
            }
            if n >= WARMUP:
                for name, value in figures.items():
                    timings[name].append(value)
        browser.close()
    result = {name: _summary(values) for name, values in timings.items()}
    page_p50, api_p50 = result["page"]["p50_ms"], result["api_fetch"]["p50_ms"]
    return {
        **result,
        "page_minus_api_fetch_p50_ms": round(page_p50 - api_p50, 1),
        "page_over_bare_list_p50": round(page_p50 / result["bare_list"]["p50_ms"], 2),
    }


def run() -> dict[str, Any]:
    """Fill the read model, serve it, measure; the figures."""
    if not CHROMIUM.exists():
        raise SystemExit("bench.console needs /usr/bin/chromium: make chromium")
    work = Path(__file__).resolve().parents[1] / ".local" / "bench-console"
    work.mkdir(parents=True, exist_ok=True)
    for old in work.glob("runs.sqlite3*"):
        old.unlink()
    store = _store(work / "runs.sqlite3")
    try:
        with _serving(store) as url:
            return measure(url)
    finally:
        store.close()


async def main() -> None:
    """Measure, print, and write bench/results/console.json."""
    # Playwright's sync API wants a thread without a running event loop.
    figures = await asyncio.to_thread(run)
    result = {
        "benchmark": "console runs list",
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "runs": RUNS,
        "rounds": ROUNDS,
        "machine": machine(),
        **figures,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "console.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"1,000 runs, p50 of {ROUNDS} rounds in headless Chromium (best in brackets):")
    for name in ("page", "api_fetch", "bare_list"):
        f = figures[name]
        p50, p90, best = f["p50_ms"], f["p90_ms"], f["best_ms"]
        print(f"  {name:<10} {p50:8.1f} ms  p90 {p90:8.1f} ms  ({best:.1f})")
    print(
        f"  the page costs {figures['page_minus_api_fetch_p50_ms']} ms over the API fetch alone, "
        f"{figures['page_over_bare_list_p50']}× a bare list of the same JSON"
    )


if __name__ == "__main__":
    asyncio.run(main())

"""The README's run-page screenshot, taken from `make demo`'s run as the console shows it live.

`python scripts/console_screenshot.py` (or `make console-screenshot`; a broker must answer at
`STEPLINE_KAFKA_BOOTSTRAP`, e.g. `make kafka-up`) runs the demo as `make demo` does — its
services, its failing primary, the offline provider, in a state dir and topic namespace of its
own — reads the console URL and key it prints, and opens that console in Debian's Chromium under
Playwright (no browser download) on the demo's run. The demo's approval waits until the run page
is live (its event stream open while the run is still going: the check that the demo's run is
visible in the console, live), then the page follows the run to its end and the script writes
`docs/console-run.png` (one 1100-pixel-wide page in 256 colours, so it stays small).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import queue
import re
import shutil
import sys
import threading
import uuid
from pathlib import Path
from typing import TextIO

from PIL import Image
from playwright.sync_api import Page, expect, sync_playwright

ROOT = Path(__file__).resolve().parents[1]
OUTPUT = ROOT / "docs" / "console-run.png"
CHROMIUM = Path("/usr/bin/chromium")
_CONSOLE = re.compile(r"console: (http://\S+?)/#/runs \(paste the key (\S+)\)")
_SUBMITTED = re.compile(r"goal submitted: run (\S+)")


class _Lines:
    """A text stream for the demo's output: echoed, and each line handed to the browser side."""

    def __init__(self, echo: TextIO) -> None:
        self.queue: queue.Queue[str | None] = queue.Queue()
        self._echo = echo

    def write(self, text: str) -> int:
        self._echo.write(text)
        for line in text.splitlines():
            self.queue.put(line)
        return len(text)

    def flush(self) -> None:
        self._echo.flush()

    def wait_for(self, pattern: re.Pattern[str], timeout_s: float) -> re.Match[str]:
        """The first line matching `pattern`; SystemExit when the demo ends or time runs out."""
        while True:
            try:
                line = self.queue.get(timeout=timeout_s)
            except queue.Empty:
                raise SystemExit(f"the demo did not print {pattern.pattern!r}") from None
            if line is None:
                raise SystemExit("the demo ended before printing what the screenshot needs")
            found = pattern.search(line)
            if found:
                return found


def _follow(page: Page, url: str, key: str, run_id: str, live: threading.Event) -> None:
    page.goto(url + "/")
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Use key").click()
    page.get_by_text("· tenant").wait_for()
    page.goto(f"{url}/#/run/{run_id}")
    # Live while the run is still going: the page's event stream is open before the run ends.
    expect(page.locator(".live")).to_have_text("● live", timeout=60_000)
    expect(page.get_by_role("heading", name="Waiting for approval")).to_be_visible(timeout=60_000)
    status = page.locator(".summary .badge")
    expect(status).to_have_text("awaiting approval")
    steps = page.locator("ol.timeline > li").count()
    live.set()  # the demo approves now; the rest of the run arrives over the open stream
    expect(status).to_have_text("completed", timeout=120_000)
    assert page.locator("ol.timeline > li").count() > steps, "the timeline did not grow live"
    expect(page.locator("#answer")).not_to_be_empty()
    # The last usage records follow the run's end by a moment (`changed` events).
    page.wait_for_timeout(1500)


def _demo(out: _Lines, live: threading.Event, state: Path) -> None:
    from stepline.v1 import runs_pb2
    from stepline_client.demo import run_demo

    async def approve(_: runs_pb2.ApprovalRequested) -> bool:
        # Hold the run at its approval until the browser follows it live (or give up).
        return await asyncio.to_thread(live.wait, 120)

    try:
        result = asyncio.run(
            run_demo(
                state_dir=state,
                bootstrap=os.environ.get("STEPLINE_KAFKA_BOOTSTRAP", "127.0.0.1:9092"),
                namespace=f"shot{uuid.uuid4().hex[:8]}",
                env={k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")},
                out=out,  # type: ignore[arg-type]
                timeout_s=180,
                approve=approve,
            )
        )
        out.write(f"demo run {result.run_id}: {result.status}\n")
    finally:
        out.queue.put(None)


def main(argv: list[str] | None = None) -> int:
    """Run the demo, follow its run in the console live, write the screenshot."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=OUTPUT)
    parser.add_argument("--width", type=int, default=1100, help="viewport width in CSS pixels")
    args = parser.parse_args(argv)
    if not CHROMIUM.exists():
        raise SystemExit("no /usr/bin/chromium: run `make chromium`")
    state = ROOT / ".local" / "console-screenshot"
    shutil.rmtree(state, ignore_errors=True)
    out, live = _Lines(sys.stdout), threading.Event()
    demo = threading.Thread(target=_demo, args=(out, live, state), name="demo")
    demo.start()
    try:
        console = out.wait_for(_CONSOLE, 180)
        run_id = out.wait_for(_SUBMITTED, 120).group(1)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox", "--disable-gpu"]
            )
            page = browser.new_page(viewport={"width": args.width, "height": 900})
            page.set_default_timeout(30_000)
            _follow(page, console.group(1), console.group(2), run_id, live)
            args.output.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(args.output), full_page=True)
            browser.close()
    finally:
        live.set()
        demo.join(timeout=240)
    # A page's screenshot holds few colours: a 256-colour palette PNG is a fraction of the size.
    with Image.open(args.output) as shot:
        shot.convert("RGB").quantize(colors=256).save(args.output, optimize=True)
    print(f"wrote {args.output} ({args.output.stat().st_size // 1024} KB) of run {run_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

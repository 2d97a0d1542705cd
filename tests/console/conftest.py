"""The real stack for browser tests: broker, planner, router, executor, billing, front door.

Services run as subprocesses under the `stepline up` supervisor in a fresh topic namespace, on
the demo's configuration (a primary provider answering 503, the offline `local` provider behind
it, a webhook receiver for `send_reply`). Chromium is Debian's (`make chromium`), driven by
Playwright with no browser download. Screenshots land in `.local/artifacts/console/`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from playwright.sync_api import Browser, Page, sync_playwright

from stepline.v1 import tools_pb2
from stepline_client.demo import (
    TOOLS,
    FailingProvider,
    ReplyReceiver,
    demo_prices,
    demo_routes,
    demo_tools,
    render_toml,
)
from stepline_client.supervisor import SERVICES, Supervisor
from stepline_frontdoor.keyfile import add_key
from stepline_keys import Principal, Scope
from stepline_runtime.codec import InvalidRecordError, decode
from stepline_runtime.processor import inbound
from stepline_runtime.settings import KafkaSettings, namespaced
from stepline_runtime.topics import CATALOG, Topics, ensure_topics

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "deploy" / "config"
ARTIFACTS = ROOT / ".local" / "artifacts" / "console"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = pytest.mark.kafka

Console = Callable[[str], Page]


@dataclass(frozen=True)
class Stack:
    """What the browser tests reach: the console, the keys, the reply receiver."""

    url: str
    namespace: str
    keys: dict[str, str]
    receiver: ReplyReceiver
    kafka: KafkaSettings

    def api(self, key: str) -> httpx.Client:
        """An HTTP client of the console's API with `key`."""
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {self.keys[key]}"}, timeout=10
        )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _tools_registered(kafka: KafkaSettings, namespace: str, timeout_s: float) -> None:
    admin = AIOKafkaAdminClient(**kafka.client_kwargs("test-admin"))
    await admin.start()
    try:
        await ensure_topics(admin, CATALOG, 2, namespace=namespace)
    finally:
        await admin.close()
    topic = namespaced(Topics.TOOLS, namespace)
    consumer = AIOKafkaConsumer(
        topic,
        group_id=f"test-tools-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        **kafka.client_kwargs("test-tools"),
    )
    await consumer.start()
    seen: set[str] = set()
    deadline = time.monotonic() + timeout_s
    try:
        while not set(TOOLS) <= seen and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=300)).values():
                for record in records:
                    with contextlib.suppress(InvalidRecordError):
                        decode(inbound(record), [tools_pb2.ToolRegistered])
                        seen.add((record.key or b"").decode())
    finally:
        await consumer.stop()
    assert set(TOOLS) <= seen, f"tools not registered: {set(TOOLS) - seen}"


def _wait_ready(url: str, supervisor: Supervisor, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}healthz", timeout=2).status_code == 200:
                return
        dead = [s.name for s in supervisor.status() if not s.running]
        assert not dead, f"services died: {dead}"
        time.sleep(0.3)
    raise AssertionError(f"console at {url} not ready in {timeout_s}s")


@pytest.fixture(scope="module")
def stack(kafka: KafkaSettings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Every service on the real broker in a fresh namespace, with three console keys."""
    namespace = f"console{uuid.uuid4().hex[:8]}"
    state = tmp_path_factory.mktemp("console-stack")
    configs = state / "config"
    configs.mkdir()
    key_file = state / "frontdoor" / "keys.toml"
    keys = {
        name: add_key(key_file, Principal(f"k-{name}", tenant, scopes, label=name))
        for name, tenant, scopes in [
            ("alice", "acme", frozenset({Scope.RUNS_READ, Scope.GOALS_SUBMIT,
                                         Scope.APPROVALS_DECIDE, Scope.USAGE_READ})),
            ("viewer", "acme", frozenset({Scope.RUNS_READ})),
            ("gina", "globex", frozenset({Scope.RUNS_READ, Scope.APPROVALS_DECIDE})),
            ("bulk", "bulk", frozenset({Scope.RUNS_READ})),
            ("root", "acme", frozenset({Scope.ADMIN})),
        ]
    }  # fmt: skip
    port = _free_port()
    with FailingProvider() as failing, ReplyReceiver() as receiver:
        routes = demo_routes(CONFIG / "demo" / "routes.toml", failing.port, {})
        # Unlike the demo, let the failing primary's circuit open: the providers page shows it.
        routes["breaker"]["failure_threshold"] = 3
        (configs / "routes.toml").write_text(render_toml(routes))
        (configs / "tools.toml").write_text(
            render_toml(demo_tools(CONFIG / "tools.toml", receiver.port))
        )
        (configs / "pricebook.toml").write_text(
            render_toml(demo_prices(CONFIG / "pricebook.toml", routes))
        )
        env = {
            **{k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")},
            "STEPLINE_KAFKA_BOOTSTRAP": kafka.bootstrap,
            "STEPLINE_TOPIC_NAMESPACE": namespace,
            "STEPLINE_PARTITIONS": "2",
            "STEPLINE_ROUTES": str(configs / "routes.toml"),
            "STEPLINE_TOOLS_CONFIG": str(configs / "tools.toml"),
            "STEPLINE_PRICEBOOK": str(configs / "pricebook.toml"),
            "STEPLINE_EXECUTOR_DATA_DIR": str(state / "tool-executor"),
            "STEPLINE_BILLING_DATA_DIR": str(state / "billing"),
            "STEPLINE_GRPC_ENABLED": "false",
            "STEPLINE_BILLING_GRPC_ADDRESS": "127.0.0.1:0",
            "STEPLINE_FRONTDOOR_GRPC_ADDRESS": "127.0.0.1:0",
            "STEPLINE_METRICS_PORT": "0",
            "STEPLINE_FRONTDOOR_PORT": str(port),
            "STEPLINE_FRONTDOOR_DATA_DIR": str(state / "frontdoor"),
            "STEPLINE_FRONTDOOR_KEYS_FILE": str(key_file),
        }
        env.pop("STEPLINE_OPENAI_BASE_URL", None)
        supervisor = Supervisor(state)
        try:
            # Planner last: it reads the tool registry once at start.
            Supervisor(state, tuple(s for s in SERVICES if s.name != "planner")).up(env)
            asyncio.run(_tools_registered(kafka, namespace, 60))
            supervisor.up(env)
            url = f"http://127.0.0.1:{port}/"
            _wait_ready(url, supervisor, 60)
            yield Stack(url, namespace, keys, receiver, kafka)
        finally:
            supervisor.down()
            for status in supervisor.status():
                log = status.log.read_text(errors="replace") if status.log.exists() else ""
                if "Traceback" in log:
                    print(f"--- {status.name} log (tail):\n{log[-3000:]}")


# Module scope, not session: Playwright's sync API holds an event loop on the main thread while
# it runs, and the asyncio tests that follow need that thread free again.
@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's Chromium under Playwright (never a Playwright browser download)."""
    if not CHROMIUM.exists():
        pytest.fail("no /usr/bin/chromium: run `make chromium` (part of `make test`)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS
        )
        yield launched
        launched.close()


@pytest.fixture
def open_console(stack: Stack, browser: Browser) -> Iterator[Console]:
    """Opens the console signed in with a named key; screenshots each page on the way out."""
    contexts = []

    def sign_in(key: str) -> Page:
        context = browser.new_context(viewport={"width": 1400, "height": 900})
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(30_000)
        page.goto(stack.url)
        page.get_by_label("API key").fill(stack.keys[key])
        page.get_by_role("button", name="Use key").click()
        page.get_by_text("· tenant").wait_for()
        return page

    yield sign_in
    for context in contexts:
        context.close()


def shoot(page: Page, name: str, *, full_page: bool = True) -> Path:
    """Save a screenshot as a test artifact."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    return path

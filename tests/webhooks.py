"""A local webhook receiver and a stack configured with a non-idempotent webhook tool.

Shared by the tests that run the whole stack against a side effect (`tests/chaos/test_chaos.py`,
`tests/executor/integration/test_unknown_outcomes_on_the_stack.py`): an agent searches the demo
tickets, then calls `post_message`, a webhook that must never be delivered twice.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from scripts.bad_input import ROOT, Stack

__all__ = ["WebhookReceiver", "configure_webhook_agent"]


class WebhookReceiver:
    """A local webhook endpoint recording every POST's Idempotency-Key.

    With `hold_s` each POST is held that long (or until `release` is set) before the answer,
    so a test can make the caller's deadline pass or kill it mid-call.
    """

    def __init__(self, hold_s: float = 0.0) -> None:
        self.keys: list[str] = []
        self.seen: Counter[str] = Counter()
        self.arrived = threading.Event()
        self.release = threading.Event()
        lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                key = self.headers.get("Idempotency-Key", "")
                with lock:
                    outer.keys.append(key)
                    outer.seen[key] += 1
                outer.arrived.set()
                if hold_s:
                    outer.release.wait(hold_s)
                body = json.dumps({"posted": True}).encode()
                with contextlib.suppress(OSError):  # a held caller may be gone
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]

    @contextlib.contextmanager
    def serving(self) -> Iterator[WebhookReceiver]:
        """Serve in a thread until the block ends."""
        thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self.release.set()
            self.server.shutdown()
            self.server.server_close()


def configure_webhook_agent(
    stack: Stack,
    receiver_port: int,
    *,
    tenant: str,
    agent: str,
    webhook_timeout_s: int,
    tool_step_deadline_s: int,
) -> None:
    """A tools file with the non-idempotent `post_message` webhook, and `agent` using it."""
    tools = (ROOT / "deploy" / "config" / "tools.toml").read_text(encoding="utf-8")
    # The copy lives elsewhere: make its relative paths absolute.
    tools = tools.replace('"../', f'"{ROOT / "deploy"}/')
    tools += f"""
[[webhooks]]
name = "post_message"
description = "Post a message to the team channel about the support tickets."
url = "http://127.0.0.1:{receiver_port}/post"
idempotent = false
timeout_s = {webhook_timeout_s}
[webhooks.parameters]
type = "object"
additionalProperties = false
required = ["message"]
[webhooks.parameters.properties.message]
type = "string"
minLength = 1

[tenants.{tenant}]
tools = ["*"]
http_hosts = []
"""
    path = stack.state_dir / "tools.toml"
    path.write_text(tools, encoding="utf-8")
    stack.env["STEPLINE_TOOLS_CONFIG"] = str(path)
    agents = stack.state_dir / "agents.toml"
    agents.write_text(
        agents.read_text(encoding="utf-8")
        + f"""
[agents.{agent}]
system_prompt = "Search the tickets, then post one message about what you found."
route = "local"
tools = ["search_documents", "post_message"]
max_steps = 8
run_deadline_s = 120
model_step_deadline_s = 30
tool_step_deadline_s = {tool_step_deadline_s}
""",
        encoding="utf-8",
    )

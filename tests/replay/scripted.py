"""A scripted OpenAI-compatible model for stack tests: the "candidate" a replay switches to.

Served on loopback; the first path segment picks a script (`/<script>/v1/chat/completions`), so
one server stands behind several deployments. Every request body is kept per script, so a test
counts the model calls a replay made and sees what they were sent.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self

__all__ = ["USAGE", "Answer", "ScriptedModel"]

# Usage every answer reports: fixed, so what a replay costs is known in advance.
USAGE = {"prompt_tokens": 2000, "completion_tokens": 200, "total_tokens": 2200}
# (tool calls as (name, arguments)), or a final answer text.
Answer = list[tuple[str, dict[str, Any]]] | str
Script = Callable[[list[dict[str, Any]]], Answer]


def _completion(answer: Answer, n: int) -> dict[str, Any]:
    if isinstance(answer, str):
        message: dict[str, Any] = {"role": "assistant", "content": answer}
        finish = "stop"
    else:
        calls = [
            {
                "id": f"call_{n}_{i}",
                "type": "function",
                "function": {"name": name, "arguments": json.dumps(args)},
            }
            for i, (name, args) in enumerate(answer)
        ]
        message = {"role": "assistant", "content": None, "tool_calls": calls}
        finish = "tool_calls"
    return {
        "id": f"chatcmpl-{n}",
        "object": "chat.completion",
        "created": 0,
        "model": "candidate-1",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": USAGE,
    }


class ScriptedModel:
    """Scripts by name; `requests[name]` holds the bodies each one received."""

    def __init__(self) -> None:
        self.scripts: dict[str, Script] = {}
        self.requests: dict[str, list[dict[str, Any]]] = {}
        lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                name = self.path.strip("/").split("/", 1)[0]
                with lock:
                    seen = outer.requests.setdefault(name, [])
                    seen.append(body)
                    n = len(seen)
                script = outer.scripts.get(name)
                if script is None:
                    self._send(404, {"error": {"message": f"no script {name!r}"}})
                    return
                self._send(200, _completion(script(body["messages"]), n))

            def _send(self, status: int, payload: dict[str, Any]) -> None:
                raw = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, format: str, *args: object) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        """The loopback port it listens on."""
        return int(self._server.server_address[1])

    def base_url(self, script: str) -> str:
        """The OpenAI base URL of one script."""
        return f"http://127.0.0.1:{self.port}/{script}/v1"

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()

"""A `stepline up` stack for CLI tests: its environment, and the CLI run as a subprocess."""

from __future__ import annotations

import json
import queue
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stepline_client.demo import GOAL, ReplyReceiver
from stepline_runtime.settings import KafkaSettings

__all__ = [
    "ROOT",
    "SUPPORT_TOOLS",
    "Follow",
    "Stack",
    "free_port",
    "pid_alive",
    "stack_env",
    "tools_registered",
    "topics_created",
    "wait_until",
]

ROOT = Path(__file__).resolve().parents[2]
SUPPORT_TOOLS = {"crm_find_customer", "search_documents", "send_reply"}
Event = dict[str, Any]


def free_port() -> int:
    """A free loopback port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pid_alive(pid: int) -> bool:
    """True while `pid` runs (a zombie does not count)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[-1][:1]
    except OSError:
        return False
    return state != "Z"


class Follow:
    """`stepline runs show RUN --follow --json` read line by line in the background."""

    def __init__(self, stack: Stack, run_id: str) -> None:
        self.events: list[Event] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._process = subprocess.Popen(
            stack.argv("runs", "show", run_id, "--follow", "--json"),
            cwd=ROOT,
            env=stack.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def until(self, kind: str, timeout_s: float = 60) -> Event:
        """The first event of `kind` (e.g. approval_requested); fails when the stream ends."""
        for event in self.events:
            if kind in event:
                return event
        deadline = time.monotonic() + timeout_s
        while True:
            line = self._lines.get(timeout=max(0.1, deadline - time.monotonic()))
            if line is None:
                stderr = self._process.stderr.read() if self._process.stderr else ""
                raise AssertionError(f"run ended without {kind}: {self.events} {stderr}")
            found: Event = json.loads(line)
            self.events.append(found)
            if kind in found:
                return found

    def terminal(self, timeout_s: float = 60) -> Event:
        """The run's last event; the follower exits after it."""
        deadline = time.monotonic() + timeout_s
        while True:
            line = self._lines.get(timeout=max(0.1, deadline - time.monotonic()))
            if line is None:
                assert self._process.wait(10) == 0
                last = self.events[-1]
                assert {"completed", "failed", "cancelled"} & set(last), last
                return last
            self.events.append(json.loads(line))

    def close(self) -> None:
        """Stop the follower if it still runs."""
        if self._process.poll() is None:
            self._process.terminate()
        self._process.wait(10)


@dataclass
class Stack:
    """The environment a `stepline up` stack runs in, and how to call the CLI against it."""

    env: dict[str, str]
    state: Path
    tenant: str
    billing: str
    receiver: ReplyReceiver
    followers: list[Follow] = field(default_factory=list)

    def argv(self, *args: str) -> list[str]:
        """The CLI command line for `args`."""
        return [sys.executable, "-m", "stepline_client.cli", *args]

    def run(self, *args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
        """Run one CLI command to its end."""
        return subprocess.run(
            self.argv(*args),
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )

    def ok(self, *args: str, timeout_s: float = 60) -> str:
        """Run one CLI command that must succeed; its stdout."""
        done = self.run(*args, timeout_s=timeout_s)
        assert done.returncode == 0, f"stepline {' '.join(args)}: {done.stdout}{done.stderr}"
        return done.stdout

    def follow(self, run_id: str) -> Follow:
        """Follow a run's events (stopped at teardown)."""
        follower = Follow(self, run_id)
        self.followers.append(follower)
        return follower

    def submit_support(self) -> str:
        """Submit the support goal (it pauses for approval of send_reply); its run id."""
        out = self.ok("submit", GOAL, "--agent", "support", "--tenant", self.tenant, "--json")
        run_id: str = json.loads(out)["run_id"]
        return run_id

    def logs(self) -> str:
        """The tail of every service log, for failure messages."""
        parts = []
        for log in sorted((self.state / "logs").glob("*.log")):
            parts.append(f"--- {log.name}\n" + "\n".join(log.read_text().splitlines()[-10:]))
        return "\n".join(parts)


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll `condition` every half second; fail the test after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def tools_registered(stack: Stack) -> bool:
    """True once the executor announced the support agent's tools."""
    out = stack.ok("tail", "stepline.tools.v1", "--from-beginning", "--idle-timeout", "1")
    return {json.loads(line)["key"] for line in out.splitlines()} >= SUPPORT_TOOLS


def topics_created(stack: Stack) -> bool:
    """True once every catalog topic exists."""
    return " missing " not in stack.ok("topics")


def stack_env(
    kafka: KafkaSettings,
    state: Path,
    tools: Path,
    billing: str,
    base: Mapping[str, str],
    **configs: Path,
) -> dict[str, str]:
    """The environment of a stack in its own namespace, state dir and ports on `kafka`.

    `configs` sets further STEPLINE_<NAME> paths (e.g. routes=…, pricebook=…).
    """
    env = {
        **base,
        "STEPLINE_KAFKA_BOOTSTRAP": kafka.bootstrap,
        "STEPLINE_TOPIC_NAMESPACE": f"t{uuid.uuid4().hex[:10]}",
        "STEPLINE_STATE_DIR": str(state),
        "STEPLINE_PARTITIONS": "2",
        "STEPLINE_METRICS_PORT": "0",
        "STEPLINE_GRPC_PORT": str(free_port()),
        "STEPLINE_BILLING_GRPC_ADDRESS": billing,
        "STEPLINE_FRONTDOOR_GRPC_ADDRESS": f"127.0.0.1:{free_port()}",
        "STEPLINE_EXECUTOR_DATA_DIR": str(state / "tool-executor"),
        "STEPLINE_BILLING_DATA_DIR": str(state / "billing"),
        "STEPLINE_FRONTDOOR_PORT": "0",
        "STEPLINE_FRONTDOOR_DATA_DIR": str(state / "frontdoor"),
        "STEPLINE_TOOLS_CONFIG": str(tools),
        "PYTHONUNBUFFERED": "1",
        **{f"STEPLINE_{name.upper()}": str(path) for name, path in configs.items()},
    }
    # Only the offline provider may answer in a test.
    for key in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "STEPLINE_OPENAI_BASE_URL"):
        env.pop(key, None)
    return env

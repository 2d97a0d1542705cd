"""The README's "Use it" block, line by line, in a fresh shell, against the real broker.

Each line runs in `bash` with a bare PATH (no virtualenv, no uv), after the block's earlier
`source`/`export` lines, from the repository root, as a user pastes it. The placeholders are
filled the way a user would: RUN_ID from what `submit` printed, and for `approve` and `cancel`
a support run waiting for approval (its APPROVAL_ID from `runs show`). The environment adds only
what isolates the test: the test broker, a topic namespace, a state dir and free ports.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from stepline_client.demo import ReplyReceiver, demo_tools, render_toml
from stepline_runtime.settings import KafkaSettings
from tests.cli.stack import (
    ROOT,
    Follow,
    Stack,
    free_port,
    stack_env,
    tools_registered,
    topics_created,
    wait_until,
)

FRESH_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
TENANT = "acme"  # the tenant the README's lines name
STATE_LINE = re.compile(r"^(source|\.|export|cd)\s")


def use_it_lines() -> list[str]:
    """The command lines of the README's first code block under "## Use it"."""
    section = (ROOT / "README.md").read_text().split("\n## Use it\n", 1)[1]
    block = section.split("```sh\n", 1)[1].split("\n```", 1)[0]
    return [line for line in block.splitlines() if line.strip()]


def _stepline_args(line: str) -> list[str]:
    """The words after `stepline` (empty for other lines), comments dropped."""
    words = shlex.split(line, comments=True)
    return words[1:] if words[:1] == ["stepline"] else []


class Shell:
    """Runs README lines like a fresh terminal would, remembering `source`/`export` lines."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.prelude: list[str] = []

    def popen(self, line: str) -> subprocess.Popen[str]:
        """Start `line` in bash (its own process group, like a terminal's foreground job)."""
        return subprocess.Popen(
            ["bash", "-c", "\n".join([*self.prelude, line])],
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )

    def run(self, line: str, timeout_s: float = 180) -> subprocess.CompletedProcess[str]:
        """Run `line` to its end."""
        process = self.popen(line)
        out, err = process.communicate(timeout=timeout_s)
        if STATE_LINE.match(line):
            self.prelude.append(line)
        return subprocess.CompletedProcess(line, process.returncode, out, err)


@pytest.fixture
def readme_env(kafka: KafkaSettings, tmp_path: Path) -> Iterator[tuple[dict[str, str], Stack]]:
    """A fresh shell's environment plus the test's isolation; `stepline down` at the end."""
    with ReplyReceiver() as receiver:
        tools = tmp_path / "tools.toml"
        tools.write_text(render_toml(demo_tools(ROOT / "deploy/config/tools.toml", receiver.port)))
        billing = f"127.0.0.1:{free_port()}"
        base = {"PATH": FRESH_PATH, "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8"}
        env = stack_env(kafka, tmp_path, tools, billing, base)
        helper = Stack(env, tmp_path, TENANT, billing, receiver)
        try:
            yield env, helper
        finally:
            for follower in helper.followers:
                follower.close()
            helper.run("down", timeout_s=60)


def _waiting_support_run(helper: Stack) -> tuple[str, str, Follow]:
    """A support run paused for approval: its run id, approval id and follower."""
    run_id = helper.submit_support()
    follower = helper.follow(run_id)
    approval = follower.until("approval_requested")["approval_requested"]
    return run_id, approval["approval_id"], follower


def test_the_use_it_block_works_pasted_line_by_line(
    readme_env: tuple[dict[str, str], Stack],
) -> None:
    env, helper = readme_env
    lines = use_it_lines()
    assert lines[0].startswith("make install"), lines
    shell = Shell(env)
    submitted = ""
    ran: list[str] = []
    for line in lines:
        args = _stepline_args(line)
        command = args[:1]
        ran += command
        follower = None
        if "APPROVAL_ID" in line or command == ["cancel"]:
            run_id, approval_id, follower = _waiting_support_run(helper)
            line = line.replace("RUN_ID", run_id).replace("APPROVAL_ID", approval_id)
        elif "RUN_ID" in line:
            assert submitted, f"{line!r} comes before a submit"
            line = line.replace("RUN_ID", submitted)
        if "Ctrl-C" in line:
            _interrupted_after_first_line(shell, line)
            continue
        done = shell.run(line)
        context = f"{line}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
        assert done.returncode == 0, context + helper.logs()
        assert "Traceback" not in done.stderr, context
        if line.startswith("source "):
            where = shell.run("command -v stepline").stdout.strip()
            assert where == str(ROOT / ".venv" / "bin" / "stepline"), where
        elif command == ["up"]:
            assert done.stdout.rstrip().endswith("ready"), context
            # No key, broker on loopback: every route is served by the offline stand-in.
            assert "every route is served by the offline `local` model" in done.stdout, context
            wait_until(lambda: topics_created(helper), 60, "the services' topics")
            wait_until(lambda: tools_registered(helper), 60, "the executor's tool registry")
        elif command == ["submit"]:
            found = re.match(r"run (\S+) submitted", done.stdout)
            assert found, context
            submitted = found.group(1)
            assert re.search(r"completed in \d+ steps", done.stdout), context
            assert "\nanswer:\n" in done.stdout, context
        elif args[:2] == ["runs", "list"]:
            assert submitted in done.stdout, context
        elif args[:2] == ["runs", "show"]:
            assert "started: 'What is 2+2?'" in done.stdout, context
            assert re.search(r"completed in \d+ steps", done.stdout), context
        elif command == ["approve"]:
            assert follower is not None
            assert "completed" in follower.terminal(), context
        elif command == ["cancel"]:
            assert follower is not None
            assert "cancelled" in follower.terminal(), context
        elif command == ["usage"]:
            assert re.search(r"^total: \d+ calls, \$", done.stdout, re.M), context
        elif command == ["topics"]:
            assert done.stdout.split()[:2] == ["topic", "partitions"], context
        elif command == ["down"]:
            assert done.stdout.startswith("stopped: "), context
            assert "planner" in done.stdout, context
    assert {"up", "submit", "runs", "down"} <= set(ran), ran


def _interrupted_after_first_line(shell: Shell, line: str) -> None:
    """A line that follows until Ctrl-C: its first record arrives, then SIGINT ends it quietly."""
    process = shell.popen(line)
    assert process.stdout is not None
    first = process.stdout.readline()
    assert json.loads(first)["topic"].endswith("stepline.usage.v1"), first
    os.killpg(process.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    _, err = process.communicate(timeout=30)
    assert process.returncode in (130, -signal.SIGINT), (process.returncode, err)
    assert "Traceback" not in err, err

"""Issue 19: a broker restart must not flood the service logs, and every log line is JSON.

The whole stack (`stepline up`'s services) runs against a private broker on its own ports,
which this test stops and starts again; the shared broker is never touched. Lines are counted
per service from the moment the broker stops until the services have had `SETTLE_S` seconds
with the broker back.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pytest

from scripts.bad_input import Stack
from stepline_localkafka import KafkaSettings as LocalKafkaSettings
from stepline_localkafka import LocalKafka

pytestmark = pytest.mark.kafka

# The bound stated in RELIABILITY.md: lines one service may write while the broker restarts
# (stop + start, ~10 s here) and for SETTLE_S seconds after. The repeat filter lets each
# distinct warning/error through at most `REPEATS` times per window plus one summary line.
MAX_LINES_PER_SERVICE = 200
SETTLE_S = 20.0


def _shared_lib_dir() -> Path:
    """The jar cache of the shared dev broker, reused so the test does not resolve again."""
    env = {k: v for k, v in os.environ.items() if k != "STEPLINE_KAFKA_PORT"}
    return LocalKafkaSettings.resolve(env=env).lib_dir


def _free_pair() -> int:
    for base in range(29400, 29800, 2):
        free = True
        for port in (base, base + 1):
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    free = False
        if free:
            return base
    raise RuntimeError("no two consecutive free ports")


def _lines(stack: Stack, service: str) -> list[str]:
    return stack.log(service).splitlines()


def _not_json(lines: list[str]) -> list[str]:
    bad = []
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            bad.append(line)
            continue
        if not isinstance(entry, dict) or "level" not in entry:
            bad.append(line)
    return bad


def test_a_broker_restart_writes_few_log_lines_and_all_of_them_json(tmp_path: Path) -> None:
    base = _free_pair()
    settings = LocalKafkaSettings.resolve(
        state_dir=tmp_path / "kafka",
        port=base,
        controller_port=base + 1,
        lib_dir=_shared_lib_dir(),
        env={},  # never the shared broker: this one is restarted
    )
    broker = LocalKafka(settings, echo=lambda _: None)
    broker.up(120)
    try:
        stack = Stack(tmp_path / "stack", "restart")
        stack.env["STEPLINE_KAFKA_BOOTSTRAP"] = settings.local_bootstrap
        stack.env["STEPLINE_METRICS_PORT"] = "0"
        with stack.running():
            statuses = stack.supervisor.status()
            names = [s.name for s in statuses]
            assert all(s.ready for s in statuses), statuses
            before = {n: len(_lines(stack, n)) for n in names}
            broker.down()
            broker.up(120)
            time.sleep(SETTLE_S)
            during = {n: len(_lines(stack, n)) - before[n] for n in names}
            assert all(stack.pids().values()), f"a service died: {stack.pids()}"
    finally:
        broker.down()
    logs = {n: _lines(stack, n) for n in names}
    print(f"log lines per service during the restart: {during}")
    assert max(during.values()) <= MAX_LINES_PER_SERVICE, during
    assert {n: _not_json(lines)[:3] for n, lines in logs.items()} == {n: [] for n in names}

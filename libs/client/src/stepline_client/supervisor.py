"""`stepline up/down/status`: the local broker plus every service as a detached subprocess.

The services are the installed service specs (`stepline_runtime.service.discover`). Each runs as
`python -m <spec.module>` with its log in `<state>/logs/<name>.log` and its pid in
`<state>/run/<name>.pid`; it writes `<state>/run/<name>.ready` once all its parts started
(`STEPLINE_READY_FILE`, see `stepline_runtime.lifecycle`). `up` is idempotent: it starts what is
not running (a crashed service is started again), leaves the rest alone, and returns once what it
started is ready.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from stepline_runtime.service import ServiceSpec, discover

__all__ = ["SERVICES", "ServiceStatus", "Supervisor"]

# Every installed service, from its spec.
SERVICES: tuple[ServiceSpec, ...] = discover()


@dataclass(frozen=True, slots=True)
class ServiceStatus:
    """One line of `stepline status`."""

    name: str
    pid: int | None
    running: bool
    log: Path
    # Every part started (the service wrote its ready file, see `run_service`).
    ready: bool = False


def _alive(pid: int, module: str) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # A recycled pid is not ours: check it still runs our module and is not a zombie.
    return module.encode() in cmdline and stat.split(") ", 1)[-1][:1] != "Z"


class Supervisor:
    """Starts, stops and reports the local services."""

    def __init__(self, state_dir: Path, services: tuple[ServiceSpec, ...] = SERVICES) -> None:
        self._state = state_dir
        self._services = services

    def _pid_file(self, service: ServiceSpec) -> Path:
        return self._state / "run" / f"{service.name}.pid"

    def _ready_file(self, service: ServiceSpec) -> Path:
        return self._state / "run" / f"{service.name}.ready"

    def _log(self, service: ServiceSpec) -> Path:
        return self._state / "logs" / f"{service.name}.log"

    def _pid(self, service: ServiceSpec) -> int | None:
        try:
            return int(self._pid_file(service).read_text().strip())
        except (OSError, ValueError):
            return None

    def status(self) -> list[ServiceStatus]:
        """Each service's pid and whether it is running."""
        result = []
        for service in self._services:
            pid = self._pid(service)
            running = pid is not None and _alive(pid, service.module)
            ready = running and self._ready_file(service).exists()
            result.append(ServiceStatus(service.name, pid, running, self._log(service), ready))
        return result

    def up(self, env: Mapping[str, str], *, ready_timeout_s: float = 90) -> list[ServiceStatus]:
        """Start every service that is not running; return once each one started is ready,
        one of them died (bad config, no broker), or `ready_timeout_s` passed."""
        (self._state / "run").mkdir(parents=True, exist_ok=True)
        (self._state / "logs").mkdir(parents=True, exist_ok=True)
        started: list[tuple[ServiceSpec, subprocess.Popen[bytes]]] = []
        for service, status in zip(self._services, self.status(), strict=True):
            if status.running:
                continue
            ready_file = self._ready_file(service)
            ready_file.unlink(missing_ok=True)  # left by a killed process
            with self._log(service).open("ab") as log:
                process = subprocess.Popen(
                    [sys.executable, "-m", service.module],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    env={**env, "STEPLINE_READY_FILE": str(ready_file)},
                    start_new_session=True,  # survives the CLI; stopped by `stepline down`
                )
            self._pid_file(service).write_text(f"{process.pid}\n")
            started.append((service, process))
        deadline = time.monotonic() + ready_timeout_s
        while started and time.monotonic() < deadline:
            if any(p.poll() is not None for _, p in started):
                break
            if all(self._ready_file(s).exists() for s, _ in started):
                break
            time.sleep(0.1)
        return self.status()

    def down(self, grace_s: float = 20) -> list[str]:
        """SIGTERM every running service, SIGKILL what is left after `grace_s`; names stopped."""
        running = [
            (s, self._pid(s))
            for s, st in zip(self._services, self.status(), strict=True)
            if st.running
        ]
        for _, pid in running:
            if pid is not None:
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for service, pid in running:
            while pid is not None and _alive(pid, service.module):
                if time.monotonic() > deadline:
                    os.kill(pid, signal.SIGKILL)
                    break
                time.sleep(0.1)
        for service in self._services:
            self._pid_file(service).unlink(missing_ok=True)
            self._ready_file(service).unlink(missing_ok=True)
        return [service.name for service, _ in running]

"""`stepline up/down/status`: the local broker plus every service as detached subprocesses.

The services are the installed service specs (`stepline_runtime.service.discover`), one instance
each unless scaled (`stepline up --scale billing=2`). Instance 1 of a service is named like the
service, instance k ≥ 2 `<service>-<k>`; each runs as `python -m <spec.module>` with its log in
`<state>/logs/<instance>.log` and its pid in `<state>/run/<instance>.pid`, and writes
`<state>/run/<instance>.ready` once all its parts started (`STEPLINE_READY_FILE`, see
`stepline_runtime.lifecycle`). Instances of one service share its consumer group; what must
differ is derived from the instance number (`instance_env`): every listening port moves up by
`PORT_STRIDE` per instance, and the Kafka client id prefix names the instance, so the group's
members can be told apart (`stepline status`). `up` is idempotent: it starts what is not running
(a crashed instance is started again), leaves the rest alone, stops instances beyond a scale
given explicitly, and returns once what it started is ready.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from stepline_runtime.service import ServiceSpec, discover

__all__ = [
    "PORT_STRIDE",
    "SERVICES",
    "Instance",
    "ScaleError",
    "ServiceStatus",
    "Supervisor",
    "instance_env",
    "instance_of_client",
    "parse_scale",
]

# Every installed service, from its spec.
SERVICES: tuple[ServiceSpec, ...] = discover()
# Instance k listens on its service's ports + (k - 1) · PORT_STRIDE.
PORT_STRIDE = 100
_DEFAULT_CLIENT_PREFIX = "stepline"


class ScaleError(ValueError):
    """A scale that cannot run here (unknown service, bad count, ports colliding…)."""


@dataclass(frozen=True, slots=True)
class Instance:
    """Instance `number` (1-based) of a service."""

    spec: ServiceSpec
    number: int

    @property
    def id(self) -> str:
        """`billing` for the first instance, `billing-2`, `billing-3`… for the others."""
        return self.spec.name if self.number == 1 else f"{self.spec.name}-{self.number}"


@dataclass(frozen=True, slots=True)
class ServiceStatus:
    """One line of `stepline status`: one instance of a service."""

    name: str
    pid: int | None
    running: bool
    log: Path
    # Every part started (the service wrote its ready file, see `run_service`).
    ready: bool = False
    # The instance id (`name` for the first instance).
    instance: str = ""
    number: int = 1


def parse_scale(text: str, services: tuple[ServiceSpec, ...] = SERVICES) -> dict[str, int]:
    """`planner=2,billing=3` → {"planner": 2, "billing": 3}; ScaleError says what is wrong."""
    names = {s.name for s in services}
    scale: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, count = item.partition("=")
        name = name.strip()
        if not sep or not count.strip().isdigit():
            raise ScaleError(f"--scale {item!r}: write SERVICE=COUNT, e.g. billing=2")
        if name not in names:
            raise ScaleError(f"--scale: no service {name!r} (services: {', '.join(sorted(names))})")
        if int(count) < 1:
            raise ScaleError(f"--scale {item!r}: at least 1 instance (`stepline down` stops all)")
        scale[name] = int(count)
    return scale


def _shift(value: str, offset: int) -> str:
    """A port (`50061`) or address (`127.0.0.1:50061`) moved up by `offset`; 0 stays 0."""
    host, sep, port = value.rpartition(":")
    if not port.isdigit():
        raise ScaleError(f"{value!r} is not a port or host:port")
    moved = int(port) + offset if int(port) else 0
    if moved > 65535:
        raise ScaleError(f"{value!r} + {offset} is beyond the last port")
    return f"{host}{sep}{moved}"


def _port_values(spec: ServiceSpec, env: Mapping[str, str]) -> dict[str, str]:
    """Env variable → its value for instance 1, for every port the service listens on."""
    values: dict[str, str] = {}
    if spec.metrics_port is not None:
        values["STEPLINE_METRICS_PORT"] = env.get("STEPLINE_METRICS_PORT", str(spec.metrics_port))
    for name, port in spec.ports.items():
        setting = spec.port_settings.get(name)
        if setting is None:
            raise ScaleError(
                f"{spec.name}: its spec names no setting for its {name} port, so a second "
                "instance could not listen elsewhere (ServiceSpec.port_settings)"
            )
        variable = f"STEPLINE_{setting.upper()}"
        # The settings' own default keeps its form (a port, or a host:port address).
        default = spec.load_settings().model_fields[setting].default
        values[variable] = env.get(variable, str(port if default is None else default))
    return values


def instance_env(instance: Instance, env: Mapping[str, str]) -> dict[str, str]:
    """What instance k ≥ 2 sets on top of `env`: its ports and its Kafka client id prefix."""
    if instance.number == 1:
        return {}
    offset = (instance.number - 1) * PORT_STRIDE
    prefix = env.get("STEPLINE_KAFKA_CLIENT_ID_PREFIX", _DEFAULT_CLIENT_PREFIX)
    derived = {k: _shift(v, offset) for k, v in _port_values(instance.spec, env).items()}
    derived["STEPLINE_KAFKA_CLIENT_ID_PREFIX"] = f"{prefix}-{instance.number}"
    return derived


def instance_of_client(client_id: str, env: Mapping[str, str]) -> int | None:
    """Which local instance number a group member's Kafka client id belongs to (None: not ours)."""
    prefix = re.escape(env.get("STEPLINE_KAFKA_CLIENT_ID_PREFIX", _DEFAULT_CLIENT_PREFIX))
    numbered = re.match(rf"^{prefix}-(\d+)-", client_id)
    if numbered:
        return int(numbered.group(1))
    return 1 if re.match(rf"^{prefix}-", client_id) else None


def _check_ports(instances: list[Instance], env: Mapping[str, str]) -> None:
    taken: dict[str, str] = {}
    for instance in instances:
        values = _port_values(instance.spec, env)
        values.update({k: v for k, v in instance_env(instance, env).items() if k in values})
        for variable, value in values.items():
            port = value.rpartition(":")[2]
            if port == "0":
                continue
            other = taken.setdefault(port, f"{instance.id} ({variable})")
            if other != f"{instance.id} ({variable})":
                raise ScaleError(f"port {port}: {other} and {instance.id} ({variable})")


def _check_needs(
    scale: Mapping[str, int], services: tuple[ServiceSpec, ...], env: Mapping[str, str]
) -> None:
    for spec in services:
        if scale.get(spec.name, 1) < 2:
            continue
        for setting, why in spec.scale_needs.items():
            variable = f"STEPLINE_{setting.upper()}"
            if not env.get(variable):
                raise ScaleError(
                    f"{spec.name}={scale[spec.name]} needs {variable}: {why}. Set it, or run "
                    f"one {spec.name} instance"
                )


def _alive(pid: int, module: str) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # A recycled pid is not ours: check it still runs our module and is not a zombie.
    return module.encode() in cmdline and stat.split(") ", 1)[-1][:1] != "Z"


class Supervisor:
    """Starts, stops and reports the local service instances."""

    def __init__(
        self,
        state_dir: Path,
        services: tuple[ServiceSpec, ...] = SERVICES,
        scale: Mapping[str, int] | None = None,
    ) -> None:
        self._state = state_dir
        self._services = services
        self._scale = dict(scale or {})

    def _file(self, instance: Instance, folder: str, suffix: str) -> Path:
        return self._state / folder / f"{instance.id}.{suffix}"

    def _pid(self, instance: Instance) -> int | None:
        try:
            return int(self._file(instance, "run", "pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def _recorded(self, spec: ServiceSpec) -> int:
        """The highest instance number with a pid file (instances started earlier)."""
        pattern = re.compile(rf"^{re.escape(spec.name)}-(\d+)\.pid$")
        numbers = [1]
        run = self._state / "run"
        if run.is_dir():
            numbers += [int(m.group(1)) for p in run.iterdir() if (m := pattern.match(p.name))]
        return max(numbers)

    def instances(self) -> list[Instance]:
        """Every instance wanted or recorded: the scale, plus any started earlier beyond it."""
        return [
            Instance(spec, number)
            for spec in self._services
            for number in range(1, max(self._scale.get(spec.name, 1), self._recorded(spec)) + 1)
        ]

    def _status(self, instance: Instance) -> ServiceStatus:
        pid = self._pid(instance)
        running = pid is not None and _alive(pid, instance.spec.module)
        ready = running and self._file(instance, "run", "ready").exists()
        log = self._file(instance, "logs", "log")
        return ServiceStatus(
            instance.spec.name, pid, running, log, ready, instance.id, instance.number
        )

    def status(self) -> list[ServiceStatus]:
        """Each instance's pid and whether it is running (instances never started included)."""
        return [self._status(instance) for instance in self.instances()]

    def _wanted(self, instance: Instance) -> bool:
        return instance.number <= self._scale.get(instance.spec.name, 1)

    def check(self, env: Mapping[str, str]) -> None:
        """ScaleError when the scale cannot run with `env` (a missing setting, a port twice)."""
        _check_needs(self._scale, self._services, env)
        _check_ports([i for i in self.instances() if self._wanted(i)], env)

    def up(self, env: Mapping[str, str], *, ready_timeout_s: float = 90) -> list[ServiceStatus]:
        """Start every wanted instance that is not running; return once each one started is
        ready, one of them died (bad config, no broker), or `ready_timeout_s` passed.

        Instances beyond a count given in `scale` are stopped; without one they are left alone.
        """
        (self._state / "run").mkdir(parents=True, exist_ok=True)
        (self._state / "logs").mkdir(parents=True, exist_ok=True)
        self.check(env)
        instances = self.instances()
        surplus = [i for i in instances if not self._wanted(i) and i.spec.name in self._scale]
        self._stop(surplus)
        started: list[tuple[Instance, subprocess.Popen[bytes]]] = []
        for instance in instances:
            if not self._wanted(instance) or self._status(instance).running:
                continue
            ready_file = self._file(instance, "run", "ready")
            ready_file.unlink(missing_ok=True)  # left by a killed process
            with self._file(instance, "logs", "log").open("ab") as log:
                process = subprocess.Popen(
                    [sys.executable, "-m", instance.spec.module],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    env={
                        **env,
                        **instance_env(instance, env),
                        "STEPLINE_READY_FILE": str(ready_file),
                    },
                    start_new_session=True,  # survives the CLI; stopped by `stepline down`
                )
            self._file(instance, "run", "pid").write_text(f"{process.pid}\n")
            started.append((instance, process))
        deadline = time.monotonic() + ready_timeout_s
        while started and time.monotonic() < deadline:
            if any(p.poll() is not None for _, p in started):
                break
            if all(self._file(i, "run", "ready").exists() for i, _ in started):
                break
            time.sleep(0.1)
        # A process just forked shows its parent's command line until it execs, so it would read
        # as not running: wait for that moment (bounded; one that exits reads as stopped).
        settle = time.monotonic() + 5
        while time.monotonic() < settle and any(
            p.poll() is None and not _alive(p.pid, i.spec.module) for i, p in started
        ):
            time.sleep(0.01)
        return [s for s in self.status() if s.running or self._wanted(self._instance(s))]

    def _instance(self, status: ServiceStatus) -> Instance:
        spec = next(s for s in self._services if s.name == status.name)
        return Instance(spec, status.number)

    def _stop(self, instances: list[Instance], grace_s: float = 20) -> list[str]:
        """SIGTERM the running ones, SIGKILL what is left after `grace_s`; forget them all."""
        running = [(i, self._pid(i)) for i in instances if self._status(i).running]
        for _, pid in running:
            if pid is not None:
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for instance, pid in running:
            while pid is not None and _alive(pid, instance.spec.module):
                if time.monotonic() > deadline:
                    os.kill(pid, signal.SIGKILL)
                    break
                time.sleep(0.1)
        for instance in instances:
            self._file(instance, "run", "pid").unlink(missing_ok=True)
            self._file(instance, "run", "ready").unlink(missing_ok=True)
        return [instance.id for instance, _ in running]

    def down(self, grace_s: float = 20) -> list[str]:
        """Stop every running instance; the instance ids stopped."""
        return self._stop(self.instances(), grace_s)

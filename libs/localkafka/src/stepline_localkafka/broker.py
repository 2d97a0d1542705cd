"""LocalKafka: start, stop and check the single-node broker described by KafkaSettings."""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Any, Literal

from .errors import KafkaNotReadyError, LocalKafkaError
from .jars import ensure_jars
from .locking import file_lock
from .paths import KafkaSettings
from .process import cmdline, is_alive, read_pid, stop_pid
from .readiness import is_ready, wait_ready
from .security import ScramCredentials

__all__ = [
    "EXIT_DOWN",
    "EXIT_UNREADY",
    "BrokerStatus",
    "LocalKafka",
    "java_executable",
    "new_cluster_id",
]

EXIT_DOWN = 3
EXIT_UNREADY = 1
DEFAULT_START_TIMEOUT = 90.0
DEFAULT_STOP_GRACE = 30.0
# A test session creates thousands of partitions (unique topics per test); at 512 MiB the broker
# ran out of heap near 14,000 of them. The heap grows only as needed, so the cap costs nothing.
HEAP_OPTS = ["-Xms256m", "-Xmx2g"]
JVM_OPTS = [
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:InitiatingHeapOccupancyPercent=35",
    "-XX:+ExplicitGCInvokesConcurrent",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
]
ENV_JAVA_OPTS = "STEPLINE_KAFKA_JAVA_OPTS"
ENV_START_TIMEOUT = "STEPLINE_KAFKA_START_TIMEOUT"


def new_cluster_id() -> str:
    """A KRaft cluster id: base64url of 16 random bytes, without padding."""
    while True:
        raw = secrets.token_bytes(16)
        cluster_id = base64.urlsafe_b64encode(raw).decode().rstrip("=")
        # Like Kafka's Uuid.randomUuid(): a leading "-" would be parsed as a command line
        # option by StorageTool, and the all-zero / metadata-topic ids are reserved.
        if not cluster_id.startswith("-") and raw not in (bytes(16), bytes(15) + b"\x01"):
            return cluster_id


def _port_in_use(port: int) -> bool:
    """True if something is bound to 127.0.0.1:``port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def _tail(path: Path, lines: int = 25) -> str:
    try:
        content = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"  ({path} does not exist)"
    return "\n".join(f"  {line}" for line in content[-lines:]) or f"  ({path} is empty)"


def java_executable() -> str:
    """The java binary ($JAVA_HOME/bin/java or java on PATH)."""
    return _java()


def _java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").is_file():
        return str(Path(java_home) / "bin" / "java")
    java = shutil.which("java")
    if java is None:
        raise LocalKafkaError("java is not on PATH; Kafka 4.x needs Java 17 or newer")
    return java


@dataclass(frozen=True)
class BrokerStatus:
    """Outcome of LocalKafka.status()."""

    state: Literal["up", "down", "unready"]
    bootstrap: str
    pid: int | None
    managed: bool
    detail: str

    @property
    def exit_code(self) -> int:
        """0 if up and ready, 3 if down, 1 if running but not ready."""
        return {"up": 0, "down": EXIT_DOWN, "unready": EXIT_UNREADY}[self.state]


class LocalKafka:
    """The single-node KRaft broker on loopback whose state lives in ``settings.state_dir``."""

    def __init__(
        self,
        settings: KafkaSettings | None = None,
        *,
        echo: Callable[[str], None] | None = None,
    ) -> None:
        """Use ``settings`` (default: from flags/env/defaults) and report through ``echo``."""
        self.settings = settings or KafkaSettings.resolve()
        self._echo = echo or (lambda message: print(message, flush=True))
        self._child: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        """Bootstrap servers clients should use (external broker if configured, else ours)."""
        return self.settings.bootstrap

    # ---------------------------------------------------------------------------- security
    def credentials(self) -> ScramCredentials | None:
        """SCRAM users of this broker if its state dir is in SASL mode, else None."""
        return ScramCredentials.load(self.settings.credentials_file)

    def _auth(self) -> dict[str, Any] | None:
        """aiokafka login arguments of the admin user when in SASL mode."""
        credentials = self.credentials()
        return credentials.client_kwargs() if credentials is not None else None

    def _prepare_security(self) -> ScramCredentials | None:
        """Decide the mode (recorded in the state dir, else --sasl) and create users if new."""
        s = self.settings
        credentials = self.credentials()
        if credentials is None and s.sasl:
            if (s.data_dir / "meta.properties").is_file():
                raise LocalKafkaError(
                    f"the storage in {s.data_dir} was formatted without SASL users, and SCRAM "
                    "users can only be added at format time here. Use another --state-dir for "
                    f"the secured broker, or delete {s.data_dir} to start empty."
                )
            credentials = ScramCredentials.generate()
            credentials.save(s.credentials_file)
            self._echo(
                f"created SCRAM users {', '.join(credentials.passwords)} ({s.credentials_file})"
            )
        elif credentials is not None and not s.sasl:
            self._echo(
                f"{s.state_dir} is a SASL/SCRAM broker ({s.credentials_file}); keeping it so"
            )
        if credentials is not None:
            _write_private(s.admin_client_config, credentials.java_client_properties())
        return credentials

    # ----------------------------------------------------------------- process bookkeeping
    def _is_ours(self, pid: int) -> bool:
        return is_alive(pid) and str(self.settings.props_file) in cmdline(pid)

    def running_pid(self) -> int | None:
        """Pid of our live broker, or None (a stale pid file does not count)."""
        pid = read_pid(self.settings.pid_file)
        return pid if pid is not None and self._is_ours(pid) else None

    # ------------------------------------------------------------------------------ up
    def up(self, timeout: float | None = None) -> bool:
        """Start the broker unless it already runs, and wait until ready; True if started."""
        if timeout is None:
            timeout = float(os.environ.get(ENV_START_TIMEOUT, DEFAULT_START_TIMEOUT))
        s = self.settings
        external = s.external_bootstrap
        if external is not None:
            self._echo(
                f"STEPLINE_KAFKA_BOOTSTRAP={external} names a broker this tool does not manage; "
                "not starting one, checking that it is ready"
            )
            asyncio.run(wait_ready(external, timeout))
            self._echo(f"kafka ready at {external}")
            return False

        s.state_dir.mkdir(parents=True, exist_ok=True)
        with file_lock(s.lock_file):
            pid = self.running_pid()
            if pid is not None:
                asyncio.run(
                    wait_ready(
                        s.local_bootstrap, timeout, alive=lambda: is_alive(pid), auth=self._auth()
                    )
                )
                self._echo(f"kafka already up at {s.local_bootstrap} (pid {pid})")
                return False
            s.pid_file.unlink(missing_ok=True)
            self._check_ports_free()

            # Before the (possibly slow) jar resolution: a mode conflict fails at once.
            credentials = self._prepare_security()
            t0 = time.monotonic()
            if ensure_jars(s.pom_file, s.lib_dir):
                self._echo(f"resolved Kafka jars into {s.lib_dir} in {time.monotonic() - t0:.1f} s")
            self._render_properties(credentials)
            t1 = time.monotonic()
            if self._format_storage(credentials):
                self._echo(f"formatted KRaft storage in {time.monotonic() - t1:.1f} s")
            t2 = time.monotonic()
            proc = self._start_java()
            try:
                asyncio.run(
                    wait_ready(
                        s.local_bootstrap,
                        timeout,
                        alive=lambda: proc.poll() is None,
                        auth=credentials.client_kwargs() if credentials else None,
                    )
                )
            except BaseException as exc:
                self._stop_process(proc.pid)
                s.pid_file.unlink(missing_ok=True)
                if isinstance(exc, KafkaNotReadyError):
                    raise KafkaNotReadyError(
                        f"{exc}\nlast lines of {s.logs_dir / 'server.log'}:\n"
                        f"{_tail(s.logs_dir / 'server.log')}\n"
                        f"last lines of {s.logs_dir / 'kafka.out'}:\n"
                        f"{_tail(s.logs_dir / 'kafka.out', 10)}"
                    ) from None
                raise
            mode = f"SASL/SCRAM + ACLs, users in {s.credentials_file}; " if credentials else ""
            self._echo(
                f"kafka up at {s.local_bootstrap} (pid {proc.pid}, ready in "
                f"{time.monotonic() - t2:.1f} s; {mode}logs in {s.logs_dir})"
            )
            return True

    def _check_ports_free(self) -> None:
        s = self.settings
        for name, port in (("broker", s.port), ("controller", s.controller_port)):
            if _port_in_use(port):
                raise LocalKafkaError(
                    f"{name} port 127.0.0.1:{port} is already in use by a process this tool did "
                    f"not start (no live broker recorded in {s.pid_file}). Stop that process, or "
                    "pick other ports with --port / STEPLINE_KAFKA_PORT (controller: port+1 or "
                    "--controller-port). If it is a Kafka broker you run yourself, you do not "
                    "need `up`: set STEPLINE_KAFKA_BOOTSTRAP to its address."
                )

    def _render_properties(self, credentials: ScramCredentials | None = None) -> None:
        s = self.settings
        path = s.sasl_template_file if credentials else s.template_file
        try:
            template = Template(path.read_text())
        except OSError as exc:
            raise LocalKafkaError(f"cannot read {path}: {exc}") from None
        values: dict[str, object] = {
            "port": s.port,
            "controller_port": s.controller_port,
            "log_dirs": str(s.data_dir),
        }
        if credentials is None:
            s.props_file.write_text(template.substitute(values))
        else:
            # The SASL config holds the broker's own password: owner-only.
            values.update(credentials.template_values())
            _write_private(s.props_file, template.substitute(values))

    def _java_base(self) -> list[str]:
        s = self.settings
        return [
            _java(),
            f"-Dlog4j2.configurationFile={s.log4j_file}",
            f"-Dkafka.logs.dir={s.logs_dir}",
            "-cp",
            str(s.lib_dir / "*"),
        ]

    def _format_storage(self, credentials: ScramCredentials | None = None) -> bool:
        """Format log.dirs on first use; True if it was formatted now."""
        s = self.settings
        if (s.data_dir / "meta.properties").is_file():
            recorded = s.format_record.read_text().split() if s.format_record.is_file() else []
            if recorded and recorded[0] != str(s.controller_port):
                raise LocalKafkaError(_ports_changed(s, recorded))
            return False
        if s.cluster_id_file.is_file():
            cluster_id = s.cluster_id_file.read_text().strip()
        else:
            cluster_id = new_cluster_id()
            s.cluster_id_file.write_text(cluster_id + "\n")
        s.logs_dir.mkdir(parents=True, exist_ok=True)
        command = [
            *self._java_base(),
            "kafka.tools.StorageTool",
            "format",
            "--standalone",
            "-t",
            cluster_id,
            "-c",
            str(s.props_file),
            *(credentials.format_args() if credentials else []),
        ]
        result = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            shown = (
                command if credentials is None else command[: command.index(str(s.props_file)) + 1]
            )
            raise LocalKafkaError(
                f"formatting the Kafka storage failed (exit {result.returncode}):\n"
                f"  {shlex.join(shown)}\n{result.stdout.strip()}"
            )
        # The controller port first (older state dirs hold only it), then the broker port.
        s.format_record.write_text(f"{s.controller_port}\n{s.port}\n")
        return True

    def _start_java(self) -> subprocess.Popen[bytes]:
        s = self.settings
        s.logs_dir.mkdir(parents=True, exist_ok=True)
        base = self._java_base()
        command = [
            base[0],
            *HEAP_OPTS,
            *JVM_OPTS,
            *shlex.split(os.environ.get(ENV_JAVA_OPTS, "")),
            *base[1:],
            "kafka.Kafka",
            str(s.props_file),
        ]
        with (s.logs_dir / "kafka.out").open("ab") as out:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            out.write(f"\n=== {stamp} {shlex.join(command)}\n".encode())
            out.flush()
            proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=s.state_dir,
            )
        s.pid_file.write_text(f"{proc.pid}\n")
        self._child = proc
        return proc

    def _stop_process(self, pid: int) -> tuple[bool, float]:
        result = stop_pid(pid, DEFAULT_STOP_GRACE)
        if self._child is not None and self._child.pid == pid:
            self._child.wait()
            self._child = None
        return result

    # ---------------------------------------------------------------------------- down
    def down(self) -> bool:
        """Stop the broker recorded in the pid file; True if a process was stopped."""
        s = self.settings
        if not s.state_dir.is_dir():
            self._echo(f"kafka is not running (no state dir {s.state_dir})")
            return False
        with file_lock(s.lock_file):
            pid = read_pid(s.pid_file)
            if pid is None:
                self._echo(f"kafka is not running (no pid file {s.pid_file})")
                return False
            if not is_alive(pid):
                s.pid_file.unlink(missing_ok=True)
                self._echo(f"kafka is not running (pid {pid} is gone; removed stale pid file)")
                return False
            if not self._is_ours(pid):
                s.pid_file.unlink(missing_ok=True)
                self._echo(
                    f"pid {pid} is not the broker of {s.state_dir} (pid reused?); left it alone "
                    "and removed the stale pid file"
                )
                return False
            graceful, seconds = self._stop_process(pid)
            s.pid_file.unlink(missing_ok=True)
            how = "controlled shutdown" if graceful else "killed after the grace period"
            self._echo(f"kafka stopped (pid {pid}, {how}, {seconds:.1f} s)")
            return True

    # -------------------------------------------------------------------------- status
    def status(self, timeout: float = 10.0) -> BrokerStatus:
        """Whether the broker is up and ready, with its pid and bootstrap."""
        s = self.settings
        external = s.external_bootstrap
        if external is not None:
            ready = asyncio.run(is_ready(external, timeout))
            return BrokerStatus(
                state="up" if ready else "down",
                bootstrap=external,
                pid=None,
                managed=False,
                detail="external broker (STEPLINE_KAFKA_BOOTSTRAP)",
            )
        pid = self.running_pid()
        if pid is None:
            busy = _port_in_use(s.port)
            detail = f"port {s.port} is used by another process" if busy else f"state {s.state_dir}"
            return BrokerStatus("down", s.local_bootstrap, None, True, detail)
        ready = asyncio.run(is_ready(s.local_bootstrap, timeout, auth=self._auth()))
        return BrokerStatus(
            state="up" if ready else "unready",
            bootstrap=s.local_bootstrap,
            pid=pid,
            managed=True,
            detail=f"state {s.state_dir}" if ready else "running but not ready (starting?)",
        )


def _ports_changed(s: KafkaSettings, recorded: list[str]) -> str:
    """One line: the storage belongs to other ports, and the ways out."""
    controller = recorded[0]
    port = recorded[1] if len(recorded) > 1 else None
    before = (
        f"start it on its port again (STEPLINE_KAFKA_PORT={port} or --port {port}), "
        if port is not None and port != str(s.port)
        else ""
    )
    return (
        f"the Kafka storage in {s.state_dir} was formatted for controller port {controller}, "
        f"not {s.controller_port} (KRaft keeps the controller's address in its storage): "
        f"{before}keep port {s.port} with STEPLINE_KAFKA_CONTROLLER_PORT={controller} (or "
        f"--controller-port {controller}), give the new port its own STEPLINE_KAFKA_STATE_DIR "
        f"(or --state-dir), or delete {s.data_dir} to start empty"
    )


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by the owner only (it holds a password)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def default_echo_stderr(message: str) -> None:
    """Print a progress message to stderr."""
    print(message, file=sys.stderr, flush=True)

"""A three-node KRaft Kafka cluster on loopback (static voters), for failure tests.

Every node is broker and controller; the voter set is static (`controller.quorum.voters`, storage
formatted without `--standalone`), topics default to three replicas with `min.insync.replicas=2`,
so one node can die without losing an acknowledged write. Each node lives in
`<state-dir>/node-<id>` and listens on `base_port + 2 * (id - 1)` (its controller on the next
port). The single-node `LocalKafka` is untouched; this module only reuses its process handling.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from string import Template

from .broker import DEFAULT_START_TIMEOUT, ENV_START_TIMEOUT, LocalKafka, new_cluster_id
from .errors import KafkaNotReadyError, LocalKafkaError
from .jars import ensure_jars
from .locking import file_lock
from .paths import KafkaSettings, find_repo_root
from .process import is_alive
from .readiness import wait_ready
from .security import ScramCredentials

__all__ = ["DEFAULT_BASE_PORT", "DEFAULT_NODES", "ClusterNode", "LocalCluster"]

DEFAULT_BASE_PORT = 9192
DEFAULT_NODES = 3
TEMPLATE = "server-cluster.properties.template"


class ClusterNode(LocalKafka):
    """One node of the cluster: the single-node broker's process handling, cluster config."""

    def __init__(
        self,
        node_id: int,
        settings: KafkaSettings,
        voters: str,
        cluster_id: str,
        *,
        echo: Callable[[str], None] | None = None,
    ) -> None:
        """Node `node_id` with `settings` (its own state dir and ports) in voter set `voters`."""
        super().__init__(settings, echo=echo)
        self.node_id = node_id
        self.voters = voters
        self.cluster_id = cluster_id

    def _render_properties(self, credentials: ScramCredentials | None = None) -> None:
        s = self.settings
        path = s.deploy_dir / TEMPLATE
        try:
            template = Template(path.read_text())
        except OSError as exc:
            raise LocalKafkaError(f"cannot read {path}: {exc}") from None
        s.props_file.write_text(
            template.substitute(
                node_id=self.node_id,
                port=s.port,
                controller_port=s.controller_port,
                voters=self.voters,
                log_dirs=str(s.data_dir),
            )
        )

    def _format_storage(self, credentials: ScramCredentials | None = None) -> bool:
        """Format with the static voter set (no `--standalone`) on first use."""
        s = self.settings
        if (s.data_dir / "meta.properties").is_file():
            return False
        s.logs_dir.mkdir(parents=True, exist_ok=True)
        command = [
            *self._java_base(),
            "kafka.tools.StorageTool",
            "format",
            "-t",
            self.cluster_id,
            "-c",
            str(s.props_file),
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
            raise LocalKafkaError(
                f"formatting node {self.node_id} failed (exit {result.returncode}):\n"
                f"{result.stdout.strip()}"
            )
        return True

    def launch(self) -> int:
        """Render, format if new and start the JVM without waiting; returns its pid."""
        s = self.settings
        s.state_dir.mkdir(parents=True, exist_ok=True)
        pid = self.running_pid()
        if pid is not None:
            return pid
        s.pid_file.unlink(missing_ok=True)
        self._check_ports_free()
        self._render_properties()
        self._format_storage()
        return self._start_java().pid

    def kill(self) -> int | None:
        """SIGKILL the node (no controlled shutdown); returns the pid killed, if any."""
        pid = self.running_pid()
        if pid is None:
            return None
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while is_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if self._child is not None and self._child.pid == pid:
            self._child.wait()
            self._child = None
        self.settings.pid_file.unlink(missing_ok=True)
        return pid


class LocalCluster:
    """`nodes` KRaft nodes on loopback sharing one cluster id and a static voter set."""

    def __init__(
        self,
        state_dir: Path | None = None,
        *,
        base_port: int = DEFAULT_BASE_PORT,
        nodes: int = DEFAULT_NODES,
        deploy_dir: Path | None = None,
        lib_dir: Path | None = None,
        echo: Callable[[str], None] | None = None,
    ) -> None:
        """Cluster state in `state_dir` (default <repo>/.local/kafka-cluster)."""
        if nodes < 1:
            raise LocalKafkaError(f"a cluster needs at least one node, got {nodes}")
        if state_dir is None or deploy_dir is None or lib_dir is None:
            root = find_repo_root()
            state_dir = state_dir or root / ".local" / "kafka-cluster"
            deploy_dir = deploy_dir or root / "deploy" / "kafka"
            # The jars are the single-node broker's: resolved once, shared read-only.
            lib_dir = lib_dir or root / ".local" / "kafka" / "lib"
        self.state_dir = state_dir.resolve()
        deploy, lib = deploy_dir.resolve(), lib_dir.resolve()
        self._echo = echo or (lambda message: print(message, flush=True))
        self.state_dir.mkdir(parents=True, exist_ok=True)
        id_file = self.state_dir / "cluster.id"
        if not id_file.is_file():
            id_file.write_text(new_cluster_id() + "\n")
        cluster_id = id_file.read_text().strip()
        ports = [(base_port + 2 * i, base_port + 2 * i + 1) for i in range(nodes)]
        voters = ",".join(f"{i + 1}@127.0.0.1:{c}" for i, (_, c) in enumerate(ports))
        self.nodes = [
            ClusterNode(
                i + 1,
                KafkaSettings(
                    state_dir=self.state_dir / f"node-{i + 1}",
                    deploy_dir=deploy,
                    lib_dir=lib,
                    port=port,
                    controller_port=controller,
                ),
                voters,
                cluster_id,
                echo=self._echo,
            )
            for i, (port, controller) in enumerate(ports)
        ]

    @property
    def bootstrap(self) -> str:
        """Bootstrap servers of every node, comma-separated."""
        return ",".join(n.settings.local_bootstrap for n in self.nodes)

    def node(self, node_id: int) -> ClusterNode:
        """Node `node_id` (1-based)."""
        return self.nodes[node_id - 1]

    def up(self, timeout: float | None = None) -> bool:
        """Start every node that is not running and wait until the cluster serves; True if any."""
        if timeout is None:
            timeout = float(os.environ.get(ENV_START_TIMEOUT, DEFAULT_START_TIMEOUT))
        with file_lock(self.state_dir / ".lock"):
            settings = self.nodes[0].settings
            ensure_jars(settings.pom_file, settings.lib_dir)
            started = [n for n in self.nodes if n.running_pid() is None]
            t0 = time.monotonic()
            # All at once: a voter cannot serve before a quorum of its peers runs.
            for node in started:
                node.launch()
            try:
                asyncio.run(
                    wait_ready(
                        self.bootstrap,
                        timeout,
                        alive=lambda: any(n.running_pid() is not None for n in self.nodes),
                    )
                )
            except KafkaNotReadyError:
                for node in started:
                    node.down()
                raise
            pids = ", ".join(str(n.running_pid()) for n in self.nodes)
            self._echo(
                f"kafka cluster up at {self.bootstrap} (pids {pids}, ready in "
                f"{time.monotonic() - t0:.1f} s; state in {self.state_dir})"
            )
            return bool(started)

    def down(self) -> bool:
        """Stop every node (controlled shutdown, all signalled first); True if any was stopped."""
        stopped = False
        running = [(n, n.running_pid()) for n in self.nodes]
        for _, pid in running:
            if pid is not None:
                os.kill(pid, signal.SIGTERM)
        for node, pid in running:
            if pid is not None:
                stopped = node.down() or stopped
        return stopped

    def status(self) -> dict[int, int | None]:
        """Pid of each running node (None when down)."""
        return {n.node_id: n.running_pid() for n in self.nodes}

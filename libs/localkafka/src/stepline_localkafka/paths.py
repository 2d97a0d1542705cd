"""Settings and file locations of the local Kafka broker."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .errors import LocalKafkaError

__all__ = [
    "DEFAULT_PORT",
    "ENV_BOOTSTRAP",
    "ENV_LIB_DIR",
    "ENV_PORT",
    "ENV_SASL",
    "ENV_STATE_DIR",
    "KafkaSettings",
    "find_repo_root",
]

DEFAULT_PORT = 9092
POM_RELATIVE = Path("deploy") / "kafka" / "pom.xml"
ENV_BOOTSTRAP = "STEPLINE_KAFKA_BOOTSTRAP"
ENV_STATE_DIR = "STEPLINE_KAFKA_STATE_DIR"
ENV_PORT = "STEPLINE_KAFKA_PORT"
ENV_CONTROLLER_PORT = "STEPLINE_KAFKA_CONTROLLER_PORT"
ENV_DEPLOY_DIR = "STEPLINE_KAFKA_DEPLOY_DIR"
ENV_LIB_DIR = "STEPLINE_KAFKA_LIB_DIR"
ENV_SASL = "STEPLINE_KAFKA_LOCAL_SASL"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost"})


def find_repo_root(start: Path | None = None) -> Path:
    """Walk up from ``start`` to the directory holding deploy/kafka/pom.xml.

    Without ``start``: from the cwd, then from this package's own place, so the `stepline`
    launcher `make install` puts on PATH works from any directory of a fresh login shell.
    """
    starts = [start] if start is not None else [Path.cwd(), Path(__file__).parent]
    here = starts[0].resolve()
    for begin in starts:
        resolved = begin.resolve()
        for candidate in (resolved, *resolved.parents):
            if (candidate / POM_RELATIVE).is_file():
                return candidate
    raise LocalKafkaError(
        f"cannot find {POM_RELATIVE} in {here} or any parent directory; run this from inside "
        "the Stepline repository or pass --deploy-dir and --state-dir"
    )


def _port(value: str, name: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise LocalKafkaError(f"{name} must be a port number, got {value!r}") from None
    if not 0 < port < 65536:
        raise LocalKafkaError(f"{name} must be between 1 and 65535, got {port}")
    return port


@dataclass(frozen=True)
class KafkaSettings:
    """Where the broker keeps its state and which loopback ports it listens on."""

    state_dir: Path
    deploy_dir: Path
    lib_dir: Path
    port: int
    controller_port: int
    env_bootstrap: str | None = None
    # Start with SASL/SCRAM + ACLs (a state dir formatted that way stays that way).
    sasl: bool = False

    @classmethod
    def resolve(
        cls,
        *,
        state_dir: Path | None = None,
        port: int | None = None,
        controller_port: int | None = None,
        deploy_dir: Path | None = None,
        lib_dir: Path | None = None,
        sasl: bool | None = None,
        env: Mapping[str, str] | None = None,
    ) -> KafkaSettings:
        """Combine explicit values, STEPLINE_KAFKA_* environment variables and defaults."""
        env = os.environ if env is None else env
        root: Path | None = None

        def repo_root() -> Path:
            nonlocal root
            if root is None:
                root = find_repo_root()
            return root

        if deploy_dir is None:
            deploy_dir = (
                Path(env[ENV_DEPLOY_DIR])
                if env.get(ENV_DEPLOY_DIR)
                else repo_root() / "deploy" / "kafka"
            )
        if state_dir is None:
            state_dir = (
                Path(env[ENV_STATE_DIR])
                if env.get(ENV_STATE_DIR)
                else repo_root() / ".local" / "kafka"
            )
        state_dir = state_dir.expanduser().resolve()
        if port is None:
            port = _port(env[ENV_PORT], ENV_PORT) if env.get(ENV_PORT) else DEFAULT_PORT
        if controller_port is None:
            controller_port = (
                _port(env[ENV_CONTROLLER_PORT], ENV_CONTROLLER_PORT)
                if env.get(ENV_CONTROLLER_PORT)
                else port + 1
            )
        if port == controller_port:
            raise LocalKafkaError(f"broker and controller ports must differ (both {port})")
        if lib_dir is None:
            lib_dir = Path(env[ENV_LIB_DIR]) if env.get(ENV_LIB_DIR) else state_dir / "lib"
        if sasl is None:
            sasl = env.get(ENV_SASL, "").strip().lower() in ("1", "true", "yes", "on")
        return cls(
            state_dir=state_dir,
            deploy_dir=deploy_dir.expanduser().resolve(),
            lib_dir=lib_dir.expanduser().resolve(),
            port=port,
            controller_port=controller_port,
            env_bootstrap=env.get(ENV_BOOTSTRAP) or None,
            sasl=sasl,
        )

    @property
    def local_bootstrap(self) -> str:
        """Bootstrap address of the broker this tool manages."""
        return f"127.0.0.1:{self.port}"

    @property
    def external_bootstrap(self) -> str | None:
        """STEPLINE_KAFKA_BOOTSTRAP when it names a broker other than ours, else None."""
        if self.env_bootstrap is None:
            return None
        ours = {f"{host}:{self.port}" for host in LOOPBACK_HOSTS}
        servers = {s.strip() for s in self.env_bootstrap.split(",") if s.strip()}
        return None if servers <= ours else self.env_bootstrap

    @property
    def bootstrap(self) -> str:
        """The bootstrap clients should use: an external broker if configured, else ours."""
        return self.external_bootstrap or self.local_bootstrap

    @property
    def pom_file(self) -> Path:
        """Maven project that lists the broker jars."""
        return self.deploy_dir / "pom.xml"

    @property
    def template_file(self) -> Path:
        """server.properties template."""
        return self.deploy_dir / "server.properties.template"

    @property
    def sasl_template_file(self) -> Path:
        """server.properties template of the SASL/SCRAM + ACL mode."""
        return self.deploy_dir / "server-sasl.properties.template"

    @property
    def tools_pom_file(self) -> Path:
        """Maven project that lists Kafka's command line tools (kafka-tools)."""
        return self.deploy_dir / "tools" / "pom.xml"

    @property
    def tools_lib_dir(self) -> Path:
        """Jar directory of the command line tools, next to the broker jars."""
        return self.lib_dir.with_name(self.lib_dir.name + "-tools")

    @property
    def credentials_file(self) -> Path:
        """SCRAM users and passwords of a SASL-mode broker (mode 0600)."""
        return self.state_dir / "sasl" / "credentials.json"

    @property
    def admin_client_config(self) -> Path:
        """Kafka client config of the admin user, for ``--command-config`` of Kafka's tools."""
        return self.state_dir / "sasl" / "admin.properties"

    @property
    def tools_classpath(self) -> str:
        """The java classpath of Kafka's tools: the broker jars plus the kafka-tools jar."""
        return f"{self.lib_dir / '*'}:{self.tools_lib_dir / '*'}"

    @property
    def tools_log4j_file(self) -> Path:
        """log4j2 configuration of Kafka's command line tools (warnings to stderr)."""
        return self.deploy_dir / "tools-log4j2.yaml"

    @property
    def log4j_file(self) -> Path:
        """log4j2 configuration of the broker."""
        return self.deploy_dir / "log4j2.yaml"

    @property
    def props_file(self) -> Path:
        """Rendered server.properties."""
        return self.state_dir / "server.properties"

    @property
    def data_dir(self) -> Path:
        """Kafka log.dirs (topic data and the KRaft metadata log)."""
        return self.state_dir / "data"

    @property
    def logs_dir(self) -> Path:
        """Broker log files (server.log, controller.log, kafka.out, ...)."""
        return self.state_dir / "logs"

    @property
    def pid_file(self) -> Path:
        """Pid of the running broker."""
        return self.state_dir / "kafka.pid"

    @property
    def cluster_id_file(self) -> Path:
        """KRaft cluster id used to format the storage."""
        return self.state_dir / "cluster.id"

    @property
    def format_record(self) -> Path:
        """Controller port the storage was formatted for (the KRaft voter set stores it)."""
        return self.state_dir / "formatted-controller-port"

    @property
    def lock_file(self) -> Path:
        """Serialises up/down on one state dir."""
        return self.state_dir / ".lock"

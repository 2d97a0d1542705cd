"""Command line: python -m stepline_localkafka {up,down,status,credentials,run,tool,…}."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from types import FrameType

from .broker import LocalKafka, default_echo_stderr
from .cluster import DEFAULT_BASE_PORT, LocalCluster
from .errors import LocalKafkaError
from .paths import ENV_BOOTSTRAP, KafkaSettings
from .readiness import is_ready
from .security import SERVICE_USERS
from .tools import TOOLS, describe_tools, tool_command

__all__ = ["main"]

EXIT_ERROR = 2


def _common_options(parser: argparse.ArgumentParser) -> None:
    s = argparse.SUPPRESS
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=s,
        help="state directory (env STEPLINE_KAFKA_STATE_DIR; default <repo>/.local/kafka)",
    )
    parser.add_argument(
        "--port", type=int, default=s, help="broker port (env STEPLINE_KAFKA_PORT; default 9092)"
    )
    parser.add_argument(
        "--controller-port", type=int, default=s, help="KRaft controller port (default port+1)"
    )
    parser.add_argument(
        "--deploy-dir",
        type=Path,
        default=s,
        help="directory with pom.xml and the config templates (default <repo>/deploy/kafka)",
    )
    parser.add_argument(
        "--lib-dir",
        type=Path,
        default=s,
        help="jar directory (env STEPLINE_KAFKA_LIB_DIR; default <state-dir>/lib)",
    )
    parser.add_argument(
        "--sasl",
        action="store_true",
        default=s,
        help="SASL/SCRAM-SHA-512 listener, StandardAuthorizer ACLs, an admin super user and one "
        "user per service, created when the storage is first formatted (env "
        "STEPLINE_KAFKA_LOCAL_SASL=1; use its own --state-dir). A state dir formatted this way "
        "stays secured.",
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", default=s, help="show Kafka client logs"
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m stepline_localkafka",
        description="Single-node KRaft Apache Kafka on loopback, from Maven Central jars.",
    )
    _common_options(parser)
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="start the broker (idempotent) and wait until ready")
    up.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds to wait for readiness (env STEPLINE_KAFKA_START_TIMEOUT; default 90)",
    )
    commands.add_parser("down", help="stop the broker recorded in the pid file")
    commands.add_parser("status", help="exit 0 if up and ready, 3 if down")
    credentials = commands.add_parser(
        "credentials",
        help="print the STEPLINE_KAFKA_* login of a SCRAM user of a --sasl broker (shell exports)",
    )
    credentials.add_argument(
        "user",
        nargs="?",
        default=None,
        help=f"admin (default) or one of {', '.join(SERVICE_USERS)}",
    )
    run = commands.add_parser(
        "run", help="run CMD against a ready broker, starting and stopping one if needed"
    )
    run.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    tool = commands.add_parser(
        "tool",
        help="run one of Kafka's own tools (kafka-topics, kafka-consumer-groups, …) against the "
        "broker; without a name, list them",
    )
    tool.add_argument("name", nargs="?", choices=sorted(TOOLS), metavar="NAME")
    tool.add_argument("args", nargs=argparse.REMAINDER, help="the tool's own arguments")
    for sub in (up, commands.choices["down"], commands.choices["status"], credentials, run, tool):
        _common_options(sub)
    for name, text in (
        ("cluster-up", "start a three-node cluster (RF 3, min ISR 2) and wait until ready"),
        ("cluster-down", "stop the three-node cluster"),
    ):
        cluster = commands.add_parser(name, help=text)
        cluster.add_argument(
            "--state-dir",
            type=Path,
            default=None,
            help="cluster state directory (default <repo>/.local/kafka-cluster)",
        )
        cluster.add_argument(
            "--base-port",
            type=int,
            default=DEFAULT_BASE_PORT,
            help=f"node n listens on base+2(n-1), its controller on the next port "
            f"(default {DEFAULT_BASE_PORT})",
        )
        cluster.add_argument(
            "--timeout", type=float, default=None, help="seconds to wait for readiness"
        )
    return parser


def _cluster(args: argparse.Namespace) -> int:
    cluster = LocalCluster(args.state_dir, base_port=args.base_port, echo=default_echo_stderr)
    if args.command == "cluster-up":
        cluster.up(args.timeout)
        print(f"export STEPLINE_KAFKA_BOOTSTRAP={cluster.bootstrap}")
        print("export STEPLINE_REPLICATION_FACTOR=3")
    else:
        cluster.down()
    return 0


def _settings(args: argparse.Namespace) -> KafkaSettings:
    return KafkaSettings.resolve(
        state_dir=getattr(args, "state_dir", None),
        port=getattr(args, "port", None),
        controller_port=getattr(args, "controller_port", None),
        deploy_dir=getattr(args, "deploy_dir", None),
        lib_dir=getattr(args, "lib_dir", None),
        sasl=True if getattr(args, "sasl", False) else None,
    )


def _throwaway(kafka: LocalKafka) -> LocalKafka:
    """The broker `run` starts for its command: an empty log of its own, deleted afterwards.

    What a command leaves behind (a test suite creates thousands of partitions) must neither
    reach the next run nor the `up` broker's state, whose start it would slow past its timeout.
    """
    settings = kafka.settings
    state_dir = settings.state_dir / "run"
    shutil.rmtree(state_dir, ignore_errors=True)
    return LocalKafka(
        replace(settings, state_dir=state_dir, lib_dir=settings.lib_dir), echo=default_echo_stderr
    )


def _run(kafka: LocalKafka, cmd: Sequence[str]) -> int:
    """Run ``cmd`` with STEPLINE_KAFKA_BOOTSTRAP set; start/stop a broker around it if needed."""
    started = False
    child: subprocess.Popen[bytes] | None = None
    stopping = False

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        if child is not None and child.poll() is None:
            # SIGINT from a terminal already reached the child (same process group).
            if signum != signal.SIGINT:
                child.send_signal(signum)
            return
        if not stopping:
            stopping = True
            raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        bootstrap = kafka.bootstrap
        credentials = kafka.credentials()
        auth = credentials.client_kwargs() if credentials else None
        if asyncio.run(is_ready(bootstrap, 10.0, auth=auth)):
            default_echo_stderr(f"kafka already ready at {bootstrap}; not starting one")
        else:
            kafka = _throwaway(kafka)
            started = kafka.up()
            credentials = kafka.credentials()
        env = {**os.environ, ENV_BOOTSTRAP: kafka.bootstrap}
        if credentials is not None:
            # CMD logs in as the admin (super user); services log in as themselves.
            env.update(credentials.env())
        try:
            child = subprocess.Popen(list(cmd), env=env)
        except OSError as exc:
            default_echo_stderr(f"cannot run {cmd[0]}: {exc}")
            return 127
        code = child.wait()
        return 128 - code if code < 0 else code
    except KeyboardInterrupt:
        default_echo_stderr("interrupted")
        return 130
    finally:
        if started:
            for sig in previous:
                signal.signal(sig, signal.SIG_IGN)
            kafka.down()
            # The log goes; the broker's own logs stay for a look at what happened.
            shutil.rmtree(kafka.settings.data_dir, ignore_errors=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = _parser().parse_args(argv)
    if not getattr(args, "verbose", False):
        # aiokafka logs every refused connection while the broker starts.
        logging.getLogger("aiokafka").addHandler(logging.NullHandler())
        logging.getLogger("aiokafka").propagate = False
    try:
        if args.command in ("cluster-up", "cluster-down"):
            return _cluster(args)
        if args.command == "up":
            LocalKafka(_settings(args)).up(args.timeout)
            return 0
        if args.command == "down":
            LocalKafka(_settings(args)).down()
            return 0
        if args.command == "credentials":
            found = LocalKafka(_settings(args)).credentials()
            if found is None:
                print(
                    "error: this broker is not in SASL mode; start one with `up --sasl` "
                    "(and its own --state-dir)",
                    file=sys.stderr,
                )
                return EXIT_ERROR
            for name, value in found.env(args.user).items():
                print(f"export {name}={shlex.quote(value)}")
            return 0
        if args.command == "tool":
            settings = _settings(args)
            if args.name is None:
                print(describe_tools(settings))
                return 0
            command = tool_command(settings, args.name, args.args)
            return subprocess.run(command, check=False).returncode
        if args.command == "status":
            status = LocalKafka(_settings(args)).status()
            pid = status.pid if status.pid is not None else "-"
            print(f"{status.state} pid={pid} bootstrap={status.bootstrap} ({status.detail})")
            return status.exit_code
        cmd = list(args.cmd)
        if cmd and cmd[0] == "--":
            cmd = cmd[1:]
        if not cmd:
            print("usage: python -m stepline_localkafka run -- CMD [ARGS...]", file=sys.stderr)
            return EXIT_ERROR
        return _run(LocalKafka(_settings(args), echo=default_echo_stderr), cmd)
    except LocalKafkaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR

"""Kafka ACLs per Stepline service principal: each reads and writes only its own topics.

Every service logs in as its own principal (SASL/SCRAM user or TLS certificate name) and gets:
READ on the topics it consumes, WRITE on the topics it produces, DESCRIBE and CREATE on both (the
services create their topics idempotently at start), READ/DESCRIBE on its consumer group(s),
IDEMPOTENT_WRITE on the cluster (idempotent producers), and for transactional services (the
planner) WRITE/DESCRIBE on their transactional ids (prefix ``<namespace.><name>-``). Everything
comes from the installed service specs (``stepline_runtime.service.discover``: each service's
``spec.py``) and the deployment's namespace; nothing here lists services or topics. Nothing else is
granted; the broker must run with ``allow.everyone.if.no.acl.found=false``.

The ACLs are applied with Kafka's own ``org.apache.kafka.tools.AclCommand`` (aiokafka 0.14 has no
public ACL admin API), run on the broker jars of ``deploy/kafka/pom.xml`` plus the tools jar of
``deploy/kafka/tools/pom.xml`` (both resolved from Maven Central on first use):

    uv run python scripts/kafka_acls.py --dry-run                  # print the grants and commands
    uv run python scripts/kafka_acls.py --bootstrap-server HOST:9092 \\
        --command-config admin.properties [--namespace staging] [--service model-router ...]

``--command-config`` is a Kafka client config logging in as a super user (for the local broker
started with ``python -m stepline_localkafka up --sasl``: ``<state-dir>/sasl/admin.properties``).
Adding an ACL that exists already is a no-op, so the script is safe to re-run.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from stepline_localkafka import KafkaSettings, LocalKafkaError
from stepline_localkafka.broker import java_executable
from stepline_localkafka.security import KEY_ADMIN_USER
from stepline_localkafka.tools import TOOL_JVM_OPTS
from stepline_localkafka.tools import classpath as tools_classpath
from stepline_runtime.catalog import CATALOG, Topics
from stepline_runtime.service import ServiceSpec, discover
from stepline_runtime.settings import namespaced

__all__ = [
    "ACCESS",
    "ACL_COMMAND",
    "Access",
    "Binding",
    "access",
    "access_of",
    "acl_command",
    "apply",
    "bindings",
    "classpath",
    "main",
    "render",
]

ACL_COMMAND = "org.apache.kafka.tools.AclCommand"
ResourceType = Literal["topic", "group", "transactional-id", "cluster"]
PatternType = Literal["literal", "prefixed"]


@dataclass(frozen=True)
class Access:
    """What one service principal may do; names are un-namespaced catalog names."""

    service: str
    reads: frozenset[str]
    writes: frozenset[str]
    groups: tuple[str, ...] = ()
    transactional_id_prefix: str | None = None
    idempotent: bool = True

    @property
    def principal(self) -> str:
        """The Kafka principal: a SCRAM user (or TLS name) equal to the service name."""
        return f"User:{self.service}"


def access_of(spec: ServiceSpec) -> Access:
    """A service's grants, straight from its spec."""
    return Access(
        spec.name,
        reads=spec.read_topics,
        writes=frozenset(spec.writes),
        groups=(spec.group,) if spec.group else (),
        # TransactionalProcessor: transactional.id = f"{app_id}-{partition}", app_id the group.
        transactional_id_prefix=spec.transactional_id_prefix,
    )


def access(extra: Sequence[ServiceSpec] = ()) -> tuple[Access, ...]:
    """Grants of every installed service (plus `extra` specs)."""
    return tuple(access_of(spec) for spec in discover(extra))


# Principals that are not services. `stepline keys …` (the key admin) issues and revokes API
# keys: whoever holds this principal can mint keys, so grant it to administrators only.
KEY_ADMIN = Access(
    KEY_ADMIN_USER,
    reads=frozenset({Topics.KEYS}),
    writes=frozenset({Topics.KEYS}),
)

# Every installed service's grants (see `stepline_runtime.service.discover`), then the others.
ACCESS: tuple[Access, ...] = (*access(), KEY_ADMIN)


@dataclass(frozen=True)
class Binding:
    """One AclCommand invocation: allow ``operations`` on ``names`` of one resource type."""

    principal: str
    resource_type: ResourceType
    names: tuple[str, ...]
    operations: tuple[str, ...]
    pattern: PatternType = "literal"

    def describe(self) -> str:
        """One human-readable line."""
        what = "cluster" if self.resource_type == "cluster" else self.resource_type
        names = "" if self.resource_type == "cluster" else " " + ", ".join(self.names)
        prefix = " (prefix)" if self.pattern == "prefixed" else ""
        return f"{self.principal}: {'/'.join(self.operations)} on {what}{names}{prefix}"


def _check_catalog(access: Iterable[Access]) -> None:
    known = {t.name for t in CATALOG}
    for entry in access:
        unknown = (entry.reads | entry.writes) - known
        if unknown:
            raise ValueError(f"{entry.service}: topics not in the catalog: {sorted(unknown)}")


def bindings(access: Iterable[Access] = ACCESS, namespace: str = "") -> list[Binding]:
    """The ACL bindings of ``access`` for the topics, groups and ids of ``namespace``."""
    entries = list(access)
    _check_catalog(entries)
    result: list[Binding] = []
    for entry in entries:
        p = entry.principal
        # Topics grouped by the exact operation set they need, one AclCommand call per set.
        by_ops: dict[tuple[str, ...], list[str]] = {}
        for name in sorted(entry.reads | entry.writes):
            needed = (
                *(["Read"] if name in entry.reads else []),
                *(["Write"] if name in entry.writes else []),
                "Describe",
                "Create",
            )
            by_ops.setdefault(needed, []).append(namespaced(name, namespace))
        for ops, names in sorted(by_ops.items()):
            result.append(Binding(p, "topic", tuple(names), ops))
        if entry.groups:
            groups = tuple(namespaced(g, namespace) for g in entry.groups)
            result.append(Binding(p, "group", groups, ("Read", "Describe")))
        if entry.transactional_id_prefix:
            prefix = namespaced(entry.transactional_id_prefix, namespace)
            result.append(
                Binding(p, "transactional-id", (prefix,), ("Write", "Describe"), "prefixed")
            )
        if entry.idempotent:
            result.append(Binding(p, "cluster", ("kafka-cluster",), ("IdempotentWrite",)))
    return result


def acl_command(
    binding: Binding, bootstrap: str, command_config: Path | None, cp: str
) -> list[str]:
    """The ``java ... AclCommand --add`` command line of one binding."""
    command = [
        java_executable(),
        *TOOL_JVM_OPTS,
        "-cp",
        cp,
        ACL_COMMAND,
        "--bootstrap-server",
        bootstrap,
    ]
    if command_config is not None:
        command += ["--command-config", str(command_config)]
    command += ["--add", "--allow-principal", binding.principal]
    for operation in binding.operations:
        command += ["--operation", operation]
    if binding.resource_type == "cluster":
        command.append("--cluster")
    else:
        for name in binding.names:
            command += [f"--{binding.resource_type}", name]
    command += ["--resource-pattern-type", binding.pattern]
    return command


def classpath(settings: KafkaSettings) -> str:
    """Broker jars plus the tools jar, resolving either with Maven if missing."""
    return tools_classpath(settings)


def render(found: Sequence[Binding]) -> str:
    """The grants, one per line."""
    return "\n".join(b.describe() for b in found)


def apply(
    found: Sequence[Binding],
    bootstrap: str,
    command_config: Path | None,
    cp: str,
    *,
    echo: bool = True,
) -> None:
    """Run AclCommand for every binding; RuntimeError with Kafka's output on the first failure."""
    for binding in found:
        command = acl_command(binding, bootstrap, command_config, cp)
        result = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        # AclCommand exits 0 even when the request failed; it reports on stderr/stdout.
        output = (result.stdout + result.stderr).strip()
        failed = result.returncode != 0 or "Error while executing" in output
        if failed:
            raise RuntimeError(
                f"granting {binding.describe()} failed (exit {result.returncode}):\n{output}"
            )
        if echo:
            print(f"granted {binding.describe()}", flush=True)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python scripts/kafka_acls.py",
        description="Grant each Stepline service principal access to its own topics only.",
    )
    parser.add_argument(
        "--bootstrap-server",
        default=os.environ.get("STEPLINE_KAFKA_BOOTSTRAP", "127.0.0.1:9092"),
        help="brokers (default STEPLINE_KAFKA_BOOTSTRAP or 127.0.0.1:9092)",
    )
    parser.add_argument(
        "--command-config",
        type=Path,
        default=None,
        help="Kafka client config of a super user (security.protocol, sasl.jaas.config, ...)",
    )
    parser.add_argument(
        "--namespace",
        default=os.environ.get("STEPLINE_TOPIC_NAMESPACE", ""),
        help="topic namespace of the deployment (default STEPLINE_TOPIC_NAMESPACE; none)",
    )
    parser.add_argument(
        "--service",
        action="append",
        choices=[a.service for a in ACCESS],
        help="only this service's principal (repeatable; default: all)",
    )
    parser.add_argument(
        "--lib-dir",
        type=Path,
        default=None,
        help="Kafka broker jars (env STEPLINE_KAFKA_LIB_DIR; default .local/kafka/lib)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print the grants and the commands; change nothing"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    args = _parser().parse_args(argv)
    selected = [a for a in ACCESS if not args.service or a.service in args.service]
    found = bindings(selected, args.namespace)
    where = f"namespace {args.namespace!r}" if args.namespace else "no namespace"
    print(f"ACLs for {', '.join(a.service for a in selected)} ({where}):")
    print(render(found))
    try:
        settings = KafkaSettings.resolve(lib_dir=args.lib_dir)
        if args.dry_run:
            cp = settings.tools_classpath
            print("\ncommands (dry run, nothing changed):")
            for binding in found:
                print(
                    shlex.join(acl_command(binding, args.bootstrap_server, args.command_config, cp))
                )
            return 0
        if args.command_config is not None and not args.command_config.is_file():
            print(f"error: --command-config {args.command_config} not found", file=sys.stderr)
            return 2
        apply(found, args.bootstrap_server, args.command_config, classpath(settings))
    except (LocalKafkaError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

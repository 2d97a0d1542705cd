"""What a Stepline service is, declared once: `ServiceSpec`, and the specs installed here.

A spec is plain data, cheap to import (no Kafka, gRPC or HTTP client), so the supervisor behind
`stepline up`, the ACL script and the deployment checks can read every service's facts without
starting or even importing it. How the service is built and configured is named by reference
(`"package.module:attribute"`) and loaded only by `stepline_runtime.lifecycle.run_service`.

Each service package declares its spec as a Python entry point in its `pyproject.toml`:

    [project.entry-points."stepline.services"]
    billing = "stepline_billing.spec:SPEC"

so adding a service means one new folder with its spec; nothing else lists services.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from types import MappingProxyType
from typing import Any

from stepline_runtime.catalog import CATALOG

__all__ = [
    "ENTRY_POINT_GROUP",
    "ServiceSpec",
    "SpecError",
    "discover",
    "load_reference",
    "service_names",
]

ENTRY_POINT_GROUP = "stepline.services"
_NAME = re.compile(r"^[a-z][a-z0-9-]{0,30}[a-z0-9]$")
_REFERENCE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


class SpecError(ValueError):
    """A service spec is inconsistent (unknown topic, bad name, port taken twice…)."""


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    """One service: its name, entry module, topics, Kafka identities, ports and build.

    `name` is the one spelling of the service everywhere: log `service` field, CloudEvents
    `ce_source`, Kafka client ids, consumer group, transactional id prefix, SASL user,
    supervisor process and Kubernetes deployment.
    """

    name: str
    # `python -m <module>` runs the service.
    module: str
    # "package.module:function": the build function, `(ServiceContext) -> async context
    # manager of Running`; imported only when the service runs.
    build: str
    # "package.module:Class": the service's `ServiceSettings` subclass.
    settings: str = "stepline_runtime.settings:ServiceSettings"
    # Topics its consumer group reads (lag is measured and scaled on these).
    consumes: tuple[str, ...] = ()
    # Other topics it reads without a group (tables, changelogs, registries).
    reads: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()
    # Exactly-once producer: transactional ids `<name>-<partition>`.
    transactional: bool = False
    # Default Prometheus port (STEPLINE_METRICS_PORT overrides; None: the service has none).
    metrics_port: int | None = None
    # Other default listening ports by name, e.g. {"grpc": 50061}.
    ports: Mapping[str, int] = field(default_factory=dict, hash=False)
    # The settings field that moves each of `ports` (a port, or a host:port address), e.g.
    # {"grpc": "grpc_port"}: how a supervisor gives a second instance on one host its own ports.
    port_settings: Mapping[str, str] = field(default_factory=dict, hash=False)
    # Settings that must be set before a second instance may run, with the reason, e.g.
    # {"billing_dsn": "the SQLite ledger is one instance's file"} (`stepline up --scale`).
    scale_needs: Mapping[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise SpecError(f"service name {self.name!r}: lowercase letters, digits and '-'")
        for reference in (self.build, self.settings):
            if not _REFERENCE.fullmatch(reference):
                raise SpecError(f"{self.name}: {reference!r} is not 'package.module:attribute'")
        known = {t.name for t in CATALOG}
        unknown = sorted(set(self.topics) - known)
        if unknown:
            raise SpecError(f"{self.name}: topics not in the catalog: {unknown}")
        unknown_ports = sorted(set(self.port_settings) - set(self.ports))
        if unknown_ports:
            raise SpecError(f"{self.name}: port_settings for ports it lacks: {unknown_ports}")
        object.__setattr__(self, "ports", MappingProxyType(dict(self.ports)))
        object.__setattr__(self, "port_settings", MappingProxyType(dict(self.port_settings)))
        object.__setattr__(self, "scale_needs", MappingProxyType(dict(self.scale_needs)))

    @property
    def group(self) -> str | None:
        """Its consumer group (before namespacing): the name, when it consumes anything."""
        return self.name if self.consumes else None

    @property
    def transactional_id_prefix(self) -> str | None:
        """Prefix of its transactional ids (before namespacing), when it has any."""
        return f"{self.name}-" if self.transactional else None

    @property
    def read_topics(self) -> frozenset[str]:
        """Every topic it reads, with or without its group."""
        return frozenset(self.consumes) | frozenset(self.reads)

    @property
    def topics(self) -> tuple[str, ...]:
        """Every topic it uses (created idempotently at its start), in catalog order."""
        used = self.read_topics | frozenset(self.writes)
        return tuple(t.name for t in CATALOG if t.name in used) + tuple(
            sorted(used - {t.name for t in CATALOG})
        )

    def listening_ports(self) -> dict[str, int]:
        """Every default port it listens on, metrics included, by name."""
        found = dict(self.ports)
        if self.metrics_port is not None:
            found["metrics"] = self.metrics_port
        return found

    def load_build(self) -> Any:
        """The build function (imports the service's composition root)."""
        return load_reference(self.build)

    def load_settings(self) -> Any:
        """The settings class."""
        return load_reference(self.settings)


def load_reference(reference: str) -> Any:
    """The object `package.module:attribute` names."""
    module, _, attribute = reference.partition(":")
    try:
        return getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError) as error:
        raise SpecError(f"cannot load {reference}: {error}") from error


def service_names() -> tuple[str, ...]:
    """Names of the installed services, sorted, without importing their specs."""
    return tuple(sorted({point.name for point in entry_points(group=ENTRY_POINT_GROUP)}))


def discover(extra: Iterable[ServiceSpec] = ()) -> tuple[ServiceSpec, ...]:
    """Every installed service's spec (entry points `stepline.services`), sorted by name.

    `extra` adds specs not installed as packages (tests). Names and default ports are checked
    to be unique, and each entry point's name to equal its spec's name.
    """
    specs: list[ServiceSpec] = []
    for point in entry_points(group=ENTRY_POINT_GROUP):
        spec = point.load()
        if not isinstance(spec, ServiceSpec):
            raise SpecError(f"entry point {point.name} = {point.value} is not a ServiceSpec")
        if spec.name != point.name:
            raise SpecError(f"entry point {point.name} names service {spec.name!r}")
        specs.append(spec)
    specs += extra
    _check_unique(specs)
    return tuple(sorted(specs, key=lambda s: s.name))


def _check_unique(specs: list[ServiceSpec]) -> None:
    names: set[str] = set()
    ports: dict[int, str] = {}
    for spec in specs:
        if spec.name in names:
            raise SpecError(f"two services are named {spec.name!r}")
        names.add(spec.name)
        for kind, port in spec.listening_ports().items():
            other = ports.setdefault(port, f"{spec.name} {kind}")
            if other != f"{spec.name} {kind}":
                raise SpecError(f"port {port}: {other} and {spec.name} {kind}")

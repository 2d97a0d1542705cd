"""deploy/k8s rendered and validated offline: Kubernetes schemas, the KEDA CRD, and our wiring."""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate  # type: ignore[import-untyped]
import pytest

from stepline_runtime.service import ServiceSpec, discover
from stepline_runtime.topics import CATALOG
from tests.deploy.render import K8S, Rendered, load_yaml_documents, render

# The oldest Kubernetes minor still supported upstream when this was written; gRPC probes are GA.
KUBERNETES_VERSION = "1.33.0"
KEDA_SCHEMA = Path(__file__).parent / "schemas" / "keda-scaledobject-v1alpha1.json"
# Every installed service has a deployment; each one with a consumer group is scaled on it.
SPECS = {spec.name: spec for spec in discover()}
CONSUMERS = {name: spec for name, spec in SPECS.items() if spec.group is not None}
Resource = dict[str, Any]
# A service whose spec needs a setting to scale out, and whose manifests scale it out.
BILLING_SCALES_OUT = "billing"


@pytest.fixture(scope="module")
def rendered() -> Rendered:
    """`kustomize build deploy/k8s`, rendered in Python."""
    return render()


@pytest.fixture(scope="module")
def keda() -> jsonschema.Draft202012Validator:
    """The vendored KEDA ScaledObject schema."""
    schema = json.loads(KEDA_SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _k8s_errors(resource: Resource) -> str | None:
    try:
        kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        path = ".".join(str(p) for p in error.path)
        return f"{resource['kind']}/{resource['metadata']['name']}: {path}: {error.message}"
    return None


def _keda_errors(validator: jsonschema.Draft202012Validator, resource: Resource) -> list[str]:
    errors = [
        f"{'.'.join(str(p) for p in e.absolute_path)}: {e.message}"
        for e in validator.iter_errors(resource)
    ]
    # The CRD leaves these to the API server, which always requires them.
    for field in ("apiVersion", "kind", "metadata"):
        if field not in resource:
            errors.append(f"{field} is required")
    return errors


def _containers(rendered: Rendered) -> list[tuple[str, Resource]]:
    return [
        (d["metadata"]["name"], c)
        for d in rendered.of("Deployment")
        for c in d["spec"]["template"]["spec"]["containers"]
    ]


def _env(container: Resource) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env") or []}


def _env_config(rendered: Rendered) -> dict[str, str]:
    data: dict[str, str] = rendered.get("ConfigMap", "stepline-env")["data"]
    return data


# --- schemas -----------------------------------------------------------------------------------


def test_every_builtin_object_is_valid_for_kubernetes(rendered: Rendered) -> None:
    builtin = [o for o in rendered.objects if o["apiVersion"] != "keda.sh/v1alpha1"]
    kinds = {o["kind"] for o in builtin}
    assert {"Namespace", "Deployment", "Service", "ConfigMap"} <= kinds
    errors = [e for e in map(_k8s_errors, builtin) if e]
    assert errors == []


def test_the_kubernetes_validator_rejects_a_broken_deployment(rendered: Rendered) -> None:
    broken = copy.deepcopy(rendered.get("Deployment", "planner"))
    container = broken["spec"]["template"]["spec"]["containers"][0]
    container["readinessProbe"]["httpGet"]["prot"] = 9101  # a typo: unknown field
    container["resources"]["limits"]["memory"] = ["512Mi"]  # wrong type
    error = _k8s_errors(broken)
    assert error is not None
    assert "Deployment/planner" in error


def test_every_scaled_object_is_valid_for_the_keda_crd(
    rendered: Rendered, keda: jsonschema.Draft202012Validator
) -> None:
    scaled = rendered.of("ScaledObject")
    assert {s["metadata"]["name"] for s in scaled} == set(CONSUMERS)
    assert {s["metadata"]["name"]: _keda_errors(keda, s) for s in scaled} == {
        name: [] for name in CONSUMERS
    }


def test_the_keda_schema_rejects_a_broken_scaled_object(
    rendered: Rendered, keda: jsonschema.Draft202012Validator
) -> None:
    broken = copy.deepcopy(rendered.get("ScaledObject", "model-router"))
    broken["spec"]["maxReplicas"] = broken["spec"].pop("maxReplicaCount")  # the HPA's name
    del broken["spec"]["triggers"][0]["type"]
    errors = _keda_errors(keda, broken)
    assert any("maxReplicas" in e for e in errors), errors
    assert any("'type' is a required property" in e for e in errors), errors


# --- probes, resources, references --------------------------------------------------------------


def _port(container: Resource, ref: int | str) -> int:
    if isinstance(ref, int):
        return ref
    named = {p["name"]: p["containerPort"] for p in container.get("ports", []) if "name" in p}
    assert ref in named, f"probe port {ref!r} is not a named port of {container['name']}"
    return int(named[ref])


def test_every_container_has_probes_on_a_port_it_serves(rendered: Rendered) -> None:
    for deployment, container in _containers(rendered):
        env = _env(container)
        served = {p["containerPort"] for p in container.get("ports", [])}
        for kind in ("readinessProbe", "livenessProbe"):
            probe = container.get(kind)
            assert probe, f"{deployment}: no {kind}"
            (handler,) = [k for k in ("httpGet", "grpc", "tcpSocket", "exec") if k in probe]
            assert handler != "exec", f"{deployment}: {kind} should probe a port"
            port = _port(container, probe[handler]["port"])
            assert port in served, f"{deployment}: {kind} probes {port}, not a container port"
            if handler == "httpGet":
                # The metrics endpoint: the service must serve it on that port, to the pod IP.
                assert probe["httpGet"]["path"] == "/metrics"
                assert env.get("STEPLINE_METRICS_PORT") == str(port), deployment
                assert env.get("STEPLINE_METRICS_HOST") == "0.0.0.0", deployment
            if handler == "grpc":
                assert env.get("STEPLINE_GRPC_PORT") == str(port), deployment
                assert env.get("STEPLINE_GRPC_HOST") == "0.0.0.0", deployment


def test_every_container_requests_cpu_and_memory_and_caps_memory(rendered: Rendered) -> None:
    for deployment, container in _containers(rendered):
        resources = container.get("resources", {})
        assert {"cpu", "memory"} <= set(resources.get("requests", {})), deployment
        assert "memory" in resources.get("limits", {}), deployment


def test_config_files_and_env_resolve_inside_the_pods(rendered: Rendered) -> None:
    env_config = _env_config(rendered)
    files = rendered.get("ConfigMap", "stepline-config")["data"]
    configmaps = {c["metadata"]["name"] for c in rendered.of("ConfigMap")}
    for deployment in rendered.of("Deployment"):
        name = deployment["metadata"]["name"]
        pod = deployment["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for volume in volumes.values():
            if "configMap" in volume:
                assert volume["configMap"]["name"] in configmaps, name
        for container in pod["containers"]:
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    assert source["configMapRef"]["name"] in configmaps, name
            mounts = {m["name"]: m["mountPath"] for m in container.get("volumeMounts", [])}
            assert set(mounts) <= set(volumes), name
            config_mounts = [
                path for volume, path in mounts.items() if "configMap" in volumes[volume]
            ]
            for key, value in env_config.items():
                if not value.startswith("/"):
                    continue
                # Only services that mount the config read these files.
                if config_mounts:
                    folder, _, file = value.rpartition("/")
                    assert folder in config_mounts, f"{name}: {key}={value} is not mounted"
                    assert file in files, f"{key}={value}: no such file in stepline-config"
            for key in ("STEPLINE_EXECUTOR_DATA_DIR", "STEPLINE_BILLING_DATA_DIR"):
                if key in _env(container):
                    # The image runs as uid 10001 and cannot write under /app: a volume it can.
                    assert _env(container)[key] in mounts.values(), f"{name}: {key} not a volume"


def test_services_select_a_deployment_and_target_its_ports(rendered: Rendered) -> None:
    deployments = {d["metadata"]["name"]: d["spec"]["template"] for d in rendered.of("Deployment")}
    for service in rendered.of("Service"):
        selector = service["spec"]["selector"]
        targets = [
            t for t in deployments.values() if selector.items() <= t["metadata"]["labels"].items()
        ]
        assert len(targets) == 1, service["metadata"]["name"]
        (container,) = targets[0]["spec"]["containers"]
        for port in service["spec"]["ports"]:
            _port(container, port["targetPort"])


# --- KEDA: the right group, topic, broker and bounds -------------------------------------------


def test_scaled_objects_follow_each_consumer_group_and_topic(rendered: Rendered) -> None:
    env_config = _env_config(rendered)
    topics = {t.name for t in CATALOG}
    deployments = {d["metadata"]["name"] for d in rendered.of("Deployment")}
    for name, spec in CONSUMERS.items():
        scaled = rendered.get("ScaledObject", name)
        assert scaled["spec"]["scaleTargetRef"]["name"] in deployments
        (trigger,) = scaled["spec"]["triggers"]
        assert trigger["type"] == "kafka"
        meta = trigger["metadata"]
        assert meta["bootstrapServers"] == env_config["STEPLINE_KAFKA_BOOTSTRAP"], name
        assert meta["consumerGroup"] == spec.group, name
        if len(spec.consumes) > 1:
            # Several co-partitioned inputs: the trigger names none, KEDA sums the group's lag.
            assert "topic" not in meta, name
        else:
            assert meta["topic"] == spec.consumes[0], name
            assert meta["topic"] in topics, name
        assert int(meta["lagThreshold"]) > 0


def test_replica_bounds_stay_within_the_partition_count(rendered: Rendered) -> None:
    partitions = int(_env_config(rendered)["STEPLINE_PARTITIONS"])
    for scaled in rendered.of("ScaledObject"):
        name, spec = scaled["metadata"]["name"], scaled["spec"]
        # Never to zero: the planner's timers fire without input; router and billing serve gRPC.
        assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"] <= partitions, name
        # No service keeps state in one pod: each one may scale out (issue 15).
        assert spec["maxReplicaCount"] > 1, f"{name} is held at one replica"


def _required_env(container: Resource) -> dict[str, str]:
    """Env variables a pod cannot start without: literal values and non-optional secret keys."""
    found = {}
    for entry in container.get("env") or []:
        secret = entry.get("valueFrom", {}).get("secretKeyRef")
        if entry.get("value") or (secret and not secret.get("optional", False)):
            found[entry["name"]] = entry.get("value", f"secret {secret and secret['name']}")
    return found


def test_services_scaled_beyond_one_replica_have_what_their_spec_needs(rendered: Rendered) -> None:
    # The same rule as `stepline up --scale` (ServiceSpec.scale_needs), derived from the specs.
    for name, spec in SPECS.items():
        deployment = rendered.get("Deployment", name)
        most = deployment["spec"].get("replicas", 1)
        if spec.group is not None:
            most = max(most, rendered.get("ScaledObject", name)["spec"]["maxReplicaCount"])
        if most < 2:
            continue
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        required = _required_env(container)
        for setting in spec.scale_needs:
            assert f"STEPLINE_{setting.upper()}" in required, f"{name}: {most} replicas"
    # Not vacuous: billing needs its DSN to scale out, and its manifests do scale it out.
    assert SPECS[BILLING_SCALES_OUT].scale_needs


# --- the manifests follow the service specs ------------------------------------------------------


def _ports(container: Resource) -> dict[str, int]:
    return {p["name"]: int(p["containerPort"]) for p in container.get("ports", []) if "name" in p}


def _spec_mismatches(rendered: Rendered, specs: Mapping[str, ServiceSpec]) -> list[str]:
    """Where deploy/k8s disagrees with the service specs (names, modules, ports, groups)."""
    errors = []
    deployments = {d["metadata"]["name"]: d for d in rendered.of("Deployment")}
    if set(deployments) != set(specs):
        errors.append(f"deployments {sorted(deployments)} but services {sorted(specs)}")
    scaled = {s["metadata"]["name"] for s in rendered.of("ScaledObject")}
    grouped = {name for name, spec in specs.items() if spec.group is not None}
    if scaled != grouped:
        errors.append(f"scaled objects {sorted(scaled)} but consumer groups {sorted(grouped)}")
    resources = set(load_yaml_documents(K8S / "kustomization.yaml")[0]["resources"])
    for name, spec in specs.items():
        if f"{name}.yaml" not in resources:
            errors.append(f"{name}: no {name}.yaml in kustomization.yaml")
        if name not in deployments:
            continue
        template = deployments[name]["spec"]["template"]
        (container,) = template["spec"]["containers"]
        if container.get("args") != ["python", "-m", spec.module]:
            errors.append(f"{name}: runs {container.get('args')}, not -m {spec.module}")
        if _ports(container) != spec.listening_ports():
            errors.append(f"{name}: ports {_ports(container)} but spec {spec.listening_ports()}")
        env = _env(container)
        if spec.metrics_port is not None:
            port = str(spec.metrics_port)
            if env.get("STEPLINE_METRICS_PORT") != port:
                errors.append(f"{name}: STEPLINE_METRICS_PORT is not {port}")
            if template["metadata"].get("annotations", {}).get("prometheus.io/port") != port:
                errors.append(f"{name}: prometheus.io/port is not {port}")
        for key, value in env.items():
            # A listen address (host:port) in the env names a port of the spec.
            host, _, bound = value.rpartition(":")
            if host == "0.0.0.0" and int(bound) not in spec.listening_ports().values():
                errors.append(f"{name}: {key}={value} is not a port of its spec")
    return errors


def test_the_manifests_follow_the_service_specs(rendered: Rendered) -> None:
    assert _spec_mismatches(rendered, SPECS) == []


def test_a_new_service_without_manifests_is_reported(rendered: Rendered) -> None:
    extra = ServiceSpec(
        "summarizer",
        "stepline_summarizer",
        build="stepline_summarizer.app:build",
        consumes=(CATALOG[0].name,),
        metrics_port=9199,
    )
    specs = {spec.name: spec for spec in discover([extra])}
    errors = _spec_mismatches(rendered, specs)
    assert len(errors) == 3, errors
    assert all("summarizer" in e for e in errors), errors

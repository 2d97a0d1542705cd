"""Render deploy/k8s the way `kustomize build` does, for the parts our kustomization uses."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

__all__ = ["CLUSTER_SCOPED", "K8S", "Rendered", "load_yaml_documents", "render"]

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
CLUSTER_SCOPED = frozenset({"Namespace", "ClusterRole", "ClusterRoleBinding"})
_SUPPORTED = {"apiVersion", "kind", "namespace", "resources", "configMapGenerator"}

Resource = dict[str, Any]


@dataclass(frozen=True)
class Rendered:
    """The objects `kustomize build deploy/k8s` produces, keyed (kind, name)."""

    objects: list[Resource]

    def of(self, kind: str) -> list[Resource]:
        """Every object of `kind`."""
        return [o for o in self.objects if o["kind"] == kind]

    def get(self, kind: str, name: str) -> Resource:
        """The object `kind`/`name`; KeyError when there is none."""
        for o in self.of(kind):
            if o["metadata"]["name"] == name:
                return o
        raise KeyError(f"{kind}/{name}")


def load_yaml_documents(path: Path) -> list[Resource]:
    """The non-empty documents of a multi-document YAML file."""
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]


def render(directory: Path = K8S) -> Rendered:
    """Resources with the namespace applied, plus the generated ConfigMaps (without hash)."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(kustomization) - _SUPPORTED
    if unknown:
        # A new kustomize feature must be rendered here too, or the tests check less than ships.
        raise AssertionError(f"render() does not support kustomization fields {sorted(unknown)}")
    namespace = kustomization.get("namespace")
    objects: list[Resource] = []
    for resource in kustomization.get("resources", []):
        objects += load_yaml_documents(directory / resource)
    for generator in kustomization.get("configMapGenerator", []):
        data: dict[str, str] = {}
        for file in generator.get("files", []):
            key, _, source = file.rpartition("=") if "=" in file else ("", "", file)
            data[key or Path(source).name] = (directory / source).read_text(encoding="utf-8")
        for literal in generator.get("literals", []):
            key, _, value = literal.partition("=")
            data[key] = value
        objects.append(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": generator["name"]},
                "data": data,
            }
        )
    if namespace:
        for o in objects:
            if o["kind"] not in CLUSTER_SCOPED:
                o["metadata"]["namespace"] = namespace
    return Rendered(objects)

"""docker-compose.yml against the compose-spec schema, and the one Dockerfile's build arguments."""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from stepline_client.supervisor import SERVICES
from tests.deploy.render import ROOT, render

COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
COMPOSE_SCHEMA = Path(__file__).parent / "schemas" / "compose-spec.json"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """docker-compose.yml with its anchors and merge keys resolved."""
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    """The vendored compose-spec schema."""
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _errors(validator: jsonschema.Draft202012Validator, document: dict[str, Any]) -> list[str]:
    return [
        f"{'.'.join(str(p) for p in e.absolute_path)}: {e.message}"
        for e in validator.iter_errors(document)
    ]


def test_compose_file_is_valid_for_the_compose_spec(
    compose: dict[str, Any], validator: jsonschema.Draft202012Validator
) -> None:
    assert _errors(validator, compose) == []
    # Kafka plus every service the local supervisor runs.
    assert set(compose["services"]) == {"kafka"} | {s.name for s in SERVICES}


def test_the_compose_schema_rejects_a_broken_file(
    compose: dict[str, Any], validator: jsonschema.Draft202012Validator
) -> None:
    broken = copy.deepcopy(compose)
    broken["services"]["planner"]["depends_on"]["kafka"]["condition"] = "service_up"
    broken["services"]["kafka"]["healthcheck"]["retry"] = 20
    errors = _errors(validator, broken)
    assert any("service_up" in e for e in errors), errors
    assert any("'retry'" in e for e in errors), errors


def _dockerfile_args() -> set[str]:
    return set(re.findall(r"^ARG (\w+)", DOCKERFILE.read_text(), re.MULTILINE))


def _workspace_packages() -> dict[str, Path]:
    packages = {}
    for pyproject in [*ROOT.glob("services/*/pyproject.toml"), *ROOT.glob("libs/*/pyproject.toml")]:
        packages[tomllib.loads(pyproject.read_text())["project"]["name"]] = pyproject.parent
    return packages


def test_compose_build_args_name_a_workspace_package_and_its_module(
    compose: dict[str, Any],
) -> None:
    packages = _workspace_packages()
    modules = {s.name: s.module for s in SERVICES}
    for name, service in compose["services"].items():
        if "build" not in service:
            continue
        build = service["build"]
        assert (ROOT / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
        args = build["args"]
        assert set(args) == _dockerfile_args(), name
        assert args["SERVICE"] in packages, f"{name}: no workspace package {args['SERVICE']}"
        # The module the image runs is the one `stepline up` runs, and it lives in that package.
        assert args["MODULE"] == modules[name], name
        spec = importlib.util.find_spec(args["MODULE"])
        assert spec is not None, args["MODULE"]
        assert spec.origin is not None, args["MODULE"]
        assert Path(spec.origin).resolve().is_relative_to(packages[args["SERVICE"]]), name


def test_dockerfile_usage_comment_and_k8s_images_run_the_same_modules(
    compose: dict[str, Any],
) -> None:
    text = DOCKERFILE.read_text()
    documented = dict(re.findall(r"(stepline-[a-z-]+) /\s*(?:#\s*)?(stepline_[a-z_.]+)", text))
    documented.update(
        re.findall(r"SERVICE=(stepline-[a-z-]+) \\\n#\s+--build-arg MODULE=(\S+)", text)
    )
    built = {
        s["build"]["args"]["SERVICE"]: s["build"]["args"]["MODULE"]
        for s in compose["services"].values()
        if "build" in s
    }
    assert documented == built
    modules = {s.name: s.module for s in SERVICES}
    for deployment in render().of("Deployment"):
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        command = container.get("command", []) + container.get("args", [])
        assert command == ["python", "-m", modules[deployment["metadata"]["name"]]]

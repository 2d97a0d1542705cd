"""The AsyncAPI document is generated from the catalog; `check` fails when they drift."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from types import ModuleType

import pytest

from stepline_runtime.topics import CATALOG, Topic

REPO_ROOT = Path(__file__).resolve().parents[3]
SCRIPT = REPO_ROOT / "scripts" / "asyncapi.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("stepline_asyncapi_script", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


asyncapi = _load()


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, check=False
    )


def test_committed_document_is_up_to_date() -> None:
    result = _run("check")
    assert result.returncode == 0, result.stderr


def test_every_topic_and_payload_is_documented() -> None:
    document = asyncapi.build(CATALOG, asyncapi.DESCRIPTOR_SET.read_bytes())
    assert document["asyncapi"] == "3.0.0"
    assert set(document["channels"]) == {t.name for t in CATALOG}
    messages = document["components"]["messages"]
    for topic in CATALOG:
        for payload in topic.payloads:
            name = payload.removeprefix("stepline.v1.")
            assert messages[name]["name"] == payload
            assert messages[name]["payload"] == {"$ref": f"#/components/schemas/{name}"}
    goal = document["components"]["schemas"]["GoalSubmitted"]
    assert "runId" in goal["properties"]
    assert goal["description"]


def test_check_fails_when_the_catalog_changes(tmp_path: Path) -> None:
    output = tmp_path / "asyncapi.yaml"
    output.write_text(asyncapi.generate_text(), encoding="utf-8")
    assert asyncapi.check(output) == []
    changed: tuple[Topic, ...] = (
        *CATALOG[:-1],
        replace(CATALOG[-1], key="a different key"),
    )
    problems = asyncapi.check(output, changed)
    assert len(problems) == 1
    assert "out of date" in problems[0]


def test_check_command_fails_on_a_stale_document(tmp_path: Path) -> None:
    stale = tmp_path / "asyncapi.yaml"
    fewer = asyncapi.render(asyncapi.build(CATALOG[1:], asyncapi.DESCRIPTOR_SET.read_bytes()))
    stale.write_text(fewer, encoding="utf-8")
    result = _run("check", "--output", str(stale))
    assert result.returncode == 1
    assert "scripts/asyncapi.py generate" in result.stderr
    assert _run("check", "--output", str(tmp_path / "missing.yaml")).returncode == 1


def test_a_payload_missing_from_the_descriptors_is_an_error() -> None:
    bogus = (Topic("stepline.bogus.v1", "k", ("stepline.v1.NoSuchMessage",)),)
    with pytest.raises(asyncapi.AsyncApiError, match="NoSuchMessage"):
        asyncapi.build(bogus, asyncapi.DESCRIPTOR_SET.read_bytes())

"""The service scaffold: specs, their discovery, and the lifecycle `run_service` drives."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from stepline_client.supervisor import SERVICES
from stepline_localkafka.security import KEY_ADMIN_USER, SERVICE_USERS
from stepline_runtime import faults, tracing
from stepline_runtime.catalog import Topics
from stepline_runtime.lifecycle import (
    PartEndedError,
    Running,
    ServiceContext,
    TaskPart,
    serve,
)
from stepline_runtime.service import (
    ENTRY_POINT_GROUP,
    ServiceSpec,
    SpecError,
    discover,
    service_names,
)
from stepline_runtime.settings import ServiceSettings


def _spec(name: str = "summarizer", **fields: object) -> ServiceSpec:
    return ServiceSpec(name, f"stepline_{name}", build=f"stepline_{name}.app:build", **fields)  # type: ignore[arg-type]


# --- specs ---------------------------------------------------------------------------------------


def test_a_spec_derives_its_group_transactional_prefix_and_topics() -> None:
    spec = _spec(
        consumes=(Topics.TOOL_RESULTS, Topics.GOALS),
        reads=(Topics.BUDGETS,),
        writes=(Topics.RUNS, Topics.GOALS),
        transactional=True,
        metrics_port=9199,
        ports={"grpc": 50099},
    )
    assert spec.group == "summarizer"
    assert spec.transactional_id_prefix == "summarizer-"
    # Catalog order, each once.
    assert spec.topics == (Topics.GOALS, Topics.TOOL_RESULTS, Topics.RUNS, Topics.BUDGETS)
    assert spec.read_topics == {Topics.TOOL_RESULTS, Topics.GOALS, Topics.BUDGETS}
    assert spec.listening_ports() == {"grpc": 50099, "metrics": 9199}
    assert _spec(writes=(Topics.GOALS,)).group is None
    assert _spec().transactional_id_prefix is None


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"consumes": ("stepline.nope.v1",)}, "not in the catalog"),
        ({"name": "Bad_Name"}, "lowercase"),
        ({"build": "no-colon"}, "package.module:attribute"),
    ],
)
def test_an_inconsistent_spec_is_refused(fields: dict[str, object], error: str) -> None:
    values: dict[str, object] = {
        "name": "summarizer",
        "module": "stepline_summarizer",
        "build": "stepline_summarizer.app:build",
        **fields,
    }
    with pytest.raises(SpecError, match=error):
        ServiceSpec(**values)  # type: ignore[arg-type]


def test_discovery_finds_every_installed_service_once() -> None:
    points = {p.name: p.value for p in entry_points(group=ENTRY_POINT_GROUP)}
    specs = discover()
    assert [s.name for s in specs] == sorted(points)
    assert service_names() == tuple(sorted(points))
    assert {"planner", "model-router", "tool-executor", "billing", "frontdoor"} <= set(points)
    # Planner is the only exactly-once service; every at-least-once consumer has a group.
    assert [s.name for s in specs if s.transactional] == ["planner"]


def test_discovery_refuses_a_second_service_with_the_same_name_or_port() -> None:
    with pytest.raises(SpecError, match="two services are named 'planner'"):
        discover([_spec("planner")])
    with pytest.raises(SpecError, match="port 9101"):
        discover([_spec(metrics_port=9101)])
    assert "summarizer" in [s.name for s in discover([_spec(metrics_port=9199)])]


def test_supervisor_sasl_users_and_specs_agree() -> None:
    specs = discover()
    assert specs == SERVICES
    # Plus the one principal that is not a service: `stepline keys …`.
    assert (*(s.name for s in specs), KEY_ADMIN_USER) == SERVICE_USERS


def test_specs_import_no_client_library() -> None:
    script = (
        "import sys\n"
        "from stepline_runtime.service import discover\n"
        "discover()\n"
        "heavy = {'aiokafka', 'grpc', 'faststream', 'httpx', 'mcp', 'psycopg'}\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & heavy))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert out.strip() == "[]"


# --- lifecycle -----------------------------------------------------------------------------------


@pytest.fixture
def untraced(monkeypatch: pytest.MonkeyPatch) -> None:
    """`serve` configures tracing for its service; restore the unconfigured runtime after."""
    for name in ("_provider", "_tracer", "_configured"):
        monkeypatch.setattr(tracing, name, getattr(tracing, name))
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)


class _Recorder:
    """A part that records its calls; optionally ends on its own."""

    def __init__(self, name: str, events: list[str], ends: asyncio.Event | None = None) -> None:
        self.name = name
        self._events = events
        self._ends = ends

    async def start(self) -> None:
        self._events.append(f"start {self.name}")

    async def stop(self) -> None:
        self._events.append(f"stop {self.name}")

    async def wait(self) -> None:
        await (self._ends or asyncio.Event()).wait()


_BARE = _spec()  # no topics: the lifecycle needs no broker
_SETTINGS = ServiceSettings(metrics_port=0)


async def test_parts_start_in_order_and_stop_in_reverse_before_the_build_closes(
    untraced: None, tmp_path: Path
) -> None:
    events: list[str] = []
    stop = asyncio.Event()
    ready_file = tmp_path / "run" / "summarizer.ready"
    settings = ServiceSettings(metrics_port=0, ready_file=ready_file)

    @asynccontextmanager
    async def build(context: ServiceContext[ServiceSettings]) -> AsyncIterator[Running]:
        assert context.spec is _BARE
        events.append("build")
        try:
            yield Running([_Recorder("a", events), _Recorder("b", events)])
        finally:
            events.append("closed")

    def ready(running: Running) -> None:
        # The supervisor's signal: written once every part started.
        assert ready_file.read_text() == f"{os.getpid()}\n"
        events.append("ready")
        stop.set()

    await asyncio.wait_for(serve(_BARE, settings, stop, ready=ready, build=build), 10)
    assert events == ["build", "start a", "start b", "ready", "stop b", "stop a", "closed"]
    assert not ready_file.exists()


async def test_a_critical_part_that_ends_stops_the_service_with_an_error(untraced: None) -> None:
    events: list[str] = []

    async def crash() -> None:
        await asyncio.sleep(0.05)
        raise RuntimeError("processor lost its producer")

    @asynccontextmanager
    async def build(context: ServiceContext[ServiceSettings]) -> AsyncIterator[Running]:
        yield Running([_Recorder("kafka", events), TaskPart("processor", crash)])

    with pytest.raises(PartEndedError, match="processor lost its producer"):
        await asyncio.wait_for(serve(_BARE, _SETTINGS, asyncio.Event(), build=build), 10)
    assert events == ["start kafka", "stop kafka"]


async def test_a_background_task_that_fails_is_logged_and_the_service_goes_on(
    untraced: None, caplog: pytest.LogCaptureFixture
) -> None:
    stop = asyncio.Event()
    finished = asyncio.Event()

    async def flaky() -> None:
        raise ConnectionError("registry topic unreachable")

    async def loop() -> None:
        await finished.wait()

    @asynccontextmanager
    async def build(context: ServiceContext[ServiceSettings]) -> AsyncIterator[Running]:
        yield Running(
            [
                TaskPart("announcer", flaky, critical=False),
                TaskPart("loop", loop, stop=finished.set),
            ]
        )

    async def stop_soon() -> None:
        await asyncio.sleep(0.3)
        stop.set()

    stopper = asyncio.create_task(stop_soon())
    await asyncio.wait_for(serve(_BARE, _SETTINGS, stop, build=build), 10)
    await stopper
    assert finished.is_set()
    assert "background task failed; the service goes on" in caplog.text
    assert "registry topic unreachable" in caplog.text


# --- fault hook ----------------------------------------------------------------------------------


def test_the_fault_hook_kills_after_the_nth_handled_record() -> None:
    killed: list[int] = []
    faults.install(2, kill=lambda: killed.append(1))
    try:
        faults.record_handled(10)
        assert killed == []
        faults.record_handled(11)
        assert killed == [1]
    finally:
        faults.install(0)
    faults.record_handled(12)
    assert killed == [1]


def test_invalid_settings_end_the_process_with_one_json_line_and_exit_code_2() -> None:
    env = {**os.environ, "STEPLINE_PARTITIONS": "0", "STEPLINE_KAFKA_BOOTSTRAP": "127.0.0.1:9"}
    result = subprocess.run(
        [sys.executable, "-m", "stepline_billing"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.splitlines()
    entry = json.loads(line)
    assert entry["service"] == "billing"
    assert entry["message"] == "invalid settings"
    assert "partitions" in entry["error"]

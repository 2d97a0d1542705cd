"""`stepline status` with two planner instances: each row shows the partitions the group gave it."""

from __future__ import annotations

import asyncio
import io
import os
import re
import uuid
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from stepline_client.cli import main
from stepline_client.supervisor import Supervisor
from stepline_planner.spec import SPEC as PLANNER
from stepline_runtime.groups import describe_group
from stepline_runtime.settings import KafkaSettings, namespaced

pytestmark = pytest.mark.kafka

PARTITIONS = 4


async def test_status_shows_every_instance_with_its_partitions_and_lag(
    kafka: KafkaSettings,
    admin: AIOKafkaAdminClient,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    namespace = f"t{uuid.uuid4().hex[:10]}"
    env = {
        **os.environ,
        "STEPLINE_TOPIC_NAMESPACE": namespace,
        "STEPLINE_PARTITIONS": str(PARTITIONS),
        "STEPLINE_METRICS_PORT": "0",
        "STEPLINE_LOG_FORMAT": "text",
    }
    supervisor = Supervisor(tmp_path, (PLANNER,), {PLANNER.name: 2})
    try:
        statuses = await asyncio.to_thread(supervisor.up, env)
        assert [(s.instance, s.running) for s in statuses] == [
            ("planner", True),
            ("planner-2", True),
        ], [s.log.read_text() for s in statuses]
        group = namespaced(PLANNER.name, namespace)
        deadline = asyncio.get_running_loop().time() + 60
        while True:
            state, members = await describe_group(admin, group)
            if state == "Stable" and sum(1 for m in members if m.partitions) == 2:
                break
            assert asyncio.get_running_loop().time() < deadline, (state, members)
            await asyncio.sleep(0.3)

        monkeypatch.setenv("STEPLINE_STATE_DIR", str(tmp_path))
        monkeypatch.setenv("STEPLINE_TOPIC_NAMESPACE", namespace)
        out = io.StringIO()
        # Other services are not running here: status says so (exit 3) and lists them stopped.
        assert await asyncio.to_thread(main, ["status"], out) == 3
    finally:
        await asyncio.to_thread(supervisor.down)
    text = out.getvalue()
    held: dict[str, set[int]] = {}
    for instance in ("planner", "planner-2"):
        row = re.search(rf"^planner\s+{instance}\s+ready\s+\d+\s+(.+?)\s+(\d+)\s+\S+$", text, re.M)
        assert row, text
        assert row.group(2) == "0"  # nothing was submitted: no lag
        goals = re.search(r"goals\.v1:([\d,]+)", row.group(1))
        assert goals, text
        held[instance] = {int(p) for p in goals.group(1).split(",")}
    # The range assignor splits the co-partitioned inputs between the two instances.
    assert held["planner"] | held["planner-2"] == set(range(PARTITIONS))
    assert not held["planner"] & held["planner-2"]
    assert re.search(r"^billing\s+billing\s+stopped\s+-", text, re.M), text

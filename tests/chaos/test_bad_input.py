"""`scripts/bad_input.py` against the whole stack: nothing refused is lost, nothing goes down."""

from __future__ import annotations

from pathlib import Path

import pytest

from scripts.bad_input import run_bad_input
from stepline_runtime.settings import KafkaSettings

pytestmark = pytest.mark.kafka


async def test_bad_input_ends_in_the_dlq_or_failed_runs_and_every_service_stays_up(
    kafka: KafkaSettings, tmp_path: Path
) -> None:
    report = await run_bad_input(tmp_path / "stack")
    print(report.table())
    assert report.ok, report.table()
    # The script checks these too; spelled out so a regression names itself.
    assert all(o.observed in o.case.expect for o in report.outcomes)
    assert report.pids_after == report.pids_before
    assert not any(report.lag.values())
    assert report.valid_result.startswith("completed")

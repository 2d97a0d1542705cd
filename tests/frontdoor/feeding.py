"""Feed protobuf run events and usage records into a read store the way the projector does."""

from __future__ import annotations

from collections.abc import Iterable

from stepline.v1 import runs_pb2, usage_pb2
from stepline_frontdoor.convert import attempt_row, rollup_row, run_fact
from stepline_frontdoor.store import Position, ReadStore
from tests.frontdoor.factories import T0

__all__ = ["feed"]


def feed(
    store: ReadStore,
    events: Iterable[runs_pb2.RunEvent] = (),
    usage: Iterable[usage_pb2.UsageRecorded] = (),
    rollups: Iterable[usage_pb2.UsageRollup] = (),
) -> None:
    """Apply every event, usage record and rollup at consecutive offsets of partition 0."""
    start = store.positions().get(("runs", 0), 0)
    for offset, event in enumerate(events, start):
        store.apply_run_event(run_fact(event, T0), Position("runs", 0, offset))
    start = store.positions().get(("usage", 0), 0)
    for offset, record in enumerate(usage, start):
        store.apply_attempt(attempt_row(record, T0), Position("usage", 0, offset))
    start = store.positions().get(("rollups", 0), 0)
    for offset, rollup in enumerate(rollups, start):
        store.apply_rollup(rollup_row(rollup, T0), Position("rollups", 0, offset))

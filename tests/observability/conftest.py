"""Fixtures of the observability tests: tracing switched on for one test only."""

from __future__ import annotations

import pytest

from stepline_runtime import tracing


@pytest.fixture
def traced(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tracing configured as a service does (no exporter); restored afterwards."""
    # Restored so later tests see the unconfigured runtime (untraced records stay untraced).
    for name in ("_provider", "_tracer", "_configured", "_exporting"):
        monkeypatch.setattr(tracing, name, getattr(tracing, name))
    assert tracing.configure_tracing("test-service", environ={}) is False

"""The planner's settings (`STEPLINE_*` environment variables)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from stepline_runtime.settings import ServiceSettings

__all__ = ["Settings"]


class Settings(ServiceSettings):
    """Everything the planner reads from its environment."""

    service_name: str = "stepline-planner"
    agents_path: Path | None = Field(
        default=None,
        validation_alias="STEPLINE_AGENTS",
        description="agents.toml (profiles, routes, policy); default deploy/config/agents.toml.",
    )
    tick_interval_s: float = Field(default=0.5, gt=0, description="How often timers are checked.")
    session_timeout_ms: int = Field(default=10_000, ge=6_000)
    max_batch: int = Field(default=200, ge=1)
    # Prometheus `/metrics` (STEPLINE_METRICS_PORT, 0 disables); 0.0.0.0 to let others scrape.
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(default=9101, ge=0, le=65535)

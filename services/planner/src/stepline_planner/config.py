"""The planner's settings (`STEPLINE_*` environment variables)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from stepline_runtime.settings import ServiceSettings

__all__ = ["Settings"]


class Settings(ServiceSettings):
    """Everything the planner reads from its environment."""

    agents_path: Path | None = Field(
        default=None,
        validation_alias="STEPLINE_AGENTS",
        description="agents.toml (profiles, routes, policy); default deploy/config/agents.toml.",
    )
    tick_interval_s: float = Field(default=0.5, gt=0, description="How often timers are checked.")
    session_timeout_ms: int = Field(default=10_000, ge=6_000)
    max_batch: int = Field(default=200, ge=1)

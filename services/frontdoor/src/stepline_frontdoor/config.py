"""Front-door settings (`STEPLINE_*` / `STEPLINE_FRONTDOOR_*`)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from stepline_frontdoor.spec import SPEC
from stepline_runtime.settings import ServiceSettings

__all__ = ["Settings"]

_REPO_ROOT = Path(__file__).resolve().parents[4]


class Settings(ServiceSettings):
    """Everything the front door reads from the environment."""

    service_name: str = "frontdoor"
    frontdoor_host: str = Field(
        default="127.0.0.1", description="Interface the console listens on (loopback by default)."
    )
    frontdoor_port: int = Field(default=8470, ge=0, le=65535, description="0 picks a free port.")
    frontdoor_grpc_address: str = Field(
        default=f"127.0.0.1:{SPEC.ports['grpc']}",
        description="host:port of the gRPC GatewayService (port 0 picks a free one).",
    )
    frontdoor_data_dir: Path = Field(
        default=_REPO_ROOT / ".local" / "frontdoor",
        description="Folder of the SQLite read model (runs.sqlite3) when no DSN is set.",
    )
    frontdoor_dsn: str = Field(
        default="",
        description="PostgreSQL DSN of the read model; empty: SQLite under frontdoor_data_dir.",
    )
    frontdoor_keys_file: Path = Field(
        default=_REPO_ROOT / ".local" / "frontdoor" / "keys.toml",
        description="Local API keys (SHA-256 of each secret, tenant, scopes) beside the registry.",
    )

    @property
    def sqlite_path(self) -> Path:
        """The SQLite read-model file; one per topic namespace, since it follows their offsets."""
        suffix = f"-{self.topic_namespace}" if self.topic_namespace else ""
        return self.frontdoor_data_dir / f"runs{suffix}.sqlite3"

"""Settings (environment) and the tools file (`deploy/config/tools.toml`)."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from stepline_executor.executor import DEFAULT_START_FLOOR_S
from stepline_runtime.settings import ServiceSettings
from stepline_vocab import ConfigurationError

__all__ = [
    "AgentConfig",
    "HttpConfig",
    "McpConfig",
    "SavedQueryConfig",
    "SearchConfig",
    "Settings",
    "SqlConfig",
    "TenantConfig",
    "ToolLimits",
    "ToolsConfig",
    "ToolsConfigError",
    "WebhookConfig",
    "default_tools_config",
]


def default_tools_config() -> Path:
    """`deploy/config/tools.toml` of this checkout (override with STEPLINE_TOOLS_CONFIG)."""
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "deploy" / "config" / "tools.toml"
        if candidate.is_file():
            return candidate
    return Path("deploy/config/tools.toml")


class Settings(ServiceSettings):
    """Executor settings; `STEPLINE_*` environment variables."""

    tools_config: Path = Field(default_factory=default_tools_config)
    executor_data_dir: Path = Field(
        default=Path(".local/tool-executor"),
        description="The built demo database lives here (outcomes live in their changelog topic).",
    )
    executor_start_floor_s: float = Field(
        default=DEFAULT_START_FLOOR_S,
        ge=0,
        description="A non-idempotent call with less of its deadline left is not started"
        " (reported as a not-started TIMED_OUT the model may safely retry).",
    )
    executor_cancel_listener: bool = Field(
        default=True, description="Watch cancellations of in-flight calls as they are produced."
    )


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ToolLimits(_Strict):
    """Per-tool limits; unset values come from `[defaults]`."""

    enabled: bool = True
    timeout_s: float | None = Field(default=None, gt=0)
    max_concurrency: int | None = Field(default=None, ge=1)
    max_output_bytes: int | None = Field(default=None, ge=256)

    def resolved(self, defaults: ToolLimits) -> dict[str, Any]:
        """ToolSpec keyword arguments."""
        return {
            "timeout_s": self.timeout_s or defaults.timeout_s or 30.0,
            "max_concurrency": self.max_concurrency or defaults.max_concurrency or 8,
            "max_output_bytes": self.max_output_bytes or defaults.max_output_bytes or 16_384,
        }


class HttpConfig(ToolLimits):
    """`[http_request]`."""

    # CIDRs reachable despite the private-address block. For tests and demos only.
    allow_networks: list[str] = Field(default_factory=list)
    max_response_bytes: int = Field(default=256 * 1024, ge=1)
    max_redirects: int = Field(default=5, ge=0, le=20)


class SearchConfig(ToolLimits):
    """`[search_documents]`; `folder` is relative to the config file."""

    folder: Path = Path("../demo/support-tickets")


class SqlConfig(ToolLimits):
    """`[sql_query]`; `database` is relative to the data dir, `init_script` to the config file."""

    database: Path = Path("crm.sqlite")
    init_script: Path | None = None
    row_limit: int = Field(default=500, ge=1)
    description: str = ""


class SavedQueryConfig(_Strict):
    """`[[sql_queries]]`: a named read-only SELECT whose `:placeholders` are its parameters.

    Runs on `[sql_query]`'s database unless `database` (relative to the data dir) says otherwise.
    """

    name: str = Field(pattern=r"^[a-zA-Z0-9_\-]{1,64}$")
    description: str
    sql: str = Field(min_length=1)
    parameters: dict[str, Any]
    database: Path | None = None
    row_limit: int = Field(default=50, ge=1)
    timeout_s: float | None = Field(default=None, gt=0)
    max_concurrency: int | None = Field(default=None, ge=1)
    max_output_bytes: int | None = Field(default=None, ge=256)


class WebhookConfig(_Strict):
    """`[[webhooks]]`: a tool that POSTs its arguments to `url`."""

    name: str = Field(pattern=r"^[a-zA-Z0-9_\-]{1,64}$")
    description: str
    url: str
    parameters: dict[str, Any]
    requires_approval: bool = False
    idempotent: bool = False
    timeout_s: float | None = Field(default=None, gt=0)
    max_concurrency: int | None = Field(default=None, ge=1)
    max_output_bytes: int | None = Field(default=None, ge=256)
    # Header name → environment variable holding its value (secrets stay out of the file).
    headers_from_env: dict[str, str] = Field(default_factory=dict)


class McpConfig(_Strict):
    """`[[mcp_servers]]`."""

    name: str = Field(pattern=r"^[a-zA-Z0-9_\-]{1,32}$")
    transport: Literal["stdio", "http"]
    command: str = ""
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    cwd: Path | None = None
    url: str = ""
    idempotent: bool = False
    requires_approval: bool = False
    timeout_s: float = Field(default=30.0, gt=0)
    max_concurrency: int = Field(default=4, ge=1)
    max_output_bytes: int = Field(default=16_384, ge=256)
    tools: list[str] = Field(default_factory=list)


class TenantConfig(_Strict):
    """`[tenants.<id>]` (`"*"` = every other tenant)."""

    tools: list[str] = Field(default_factory=list)
    http_hosts: list[str] = Field(default_factory=list)


class AgentConfig(_Strict):
    """`[agents.<name>]` (`"*"` = every other agent)."""

    tools: list[str] = Field(default_factory=list)


class ToolsConfigError(ConfigurationError):
    """The tools file is missing or malformed; the message says where."""


class ToolsConfig(_Strict):
    """The whole tools file."""

    defaults: ToolLimits = Field(default_factory=ToolLimits)
    calculator: ToolLimits = Field(default_factory=ToolLimits)
    http_request: HttpConfig = Field(default_factory=HttpConfig)
    search_documents: SearchConfig = Field(default_factory=SearchConfig)
    sql_query: SqlConfig = Field(default_factory=SqlConfig)
    sql_queries: list[SavedQueryConfig] = Field(default_factory=list)
    webhooks: list[WebhookConfig] = Field(default_factory=list)
    mcp_servers: list[McpConfig] = Field(default_factory=list)
    tenants: dict[str, TenantConfig] = Field(default_factory=dict)
    agents: dict[str, AgentConfig] = Field(default_factory=dict)
    # Directory of the file; relative paths in it are resolved against it.
    base_dir: Path = Path()

    @classmethod
    def load(cls, path: Path) -> ToolsConfig:
        """Read and validate the tools file."""
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as error:
            raise ToolsConfigError(f"cannot read {path}: {error.strerror}") from error
        except tomllib.TOMLDecodeError as error:
            raise ToolsConfigError(f"{path}: not valid TOML: {error}") from error
        try:
            return cls.model_validate({**data, "base_dir": path.resolve().parent})
        except ValidationError as error:
            raise ToolsConfigError(f"{path}: {error}") from error

    def path(self, value: Path) -> Path:
        """`value` resolved against the config file's directory."""
        return value if value.is_absolute() else (self.base_dir / value).resolve()

"""The router's settings (`STEPLINE_*` environment variables)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr

from stepline_pricebook import default_path as default_pricebook_path
from stepline_router.spec import SPEC
from stepline_routes import default_path as default_routes_path
from stepline_runtime.settings import ServiceSettings

__all__ = ["Settings"]


class Settings(ServiceSettings):
    """Everything the model router reads from its environment."""

    routes: Path | None = Field(
        default=None,
        description="Routes file (STEPLINE_ROUTES); default deploy/config/routes.toml.",
    )
    pricebook: Path | None = Field(
        default=None, description="Price book (STEPLINE_PRICEBOOK); default the shared one."
    )
    secrets_dir: Path | None = Field(
        default=None, description="Directory of secret files named like the credential variable."
    )
    tenant_limits: Path | None = Field(
        default=None,
        description="TOML of tenant spend limits for API-key quotas (STEPLINE_TENANT_LIMITS).",
    )
    grpc_enabled: bool = True
    # Loopback by default; a deployment that serves other hosts sets STEPLINE_GRPC_HOST.
    grpc_host: str = "127.0.0.1"
    grpc_port: int = Field(default=SPEC.ports["grpc"], ge=0, le=65535)
    # The OpenAI/Anthropic-compatible HTTP gateway; loopback unless STEPLINE_HTTP_HOST says so.
    http_enabled: bool = True
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=SPEC.ports["http"], ge=0, le=65535)
    dev_api_key: SecretStr | None = Field(
        default=None,
        description="STEPLINE_DEV_API_KEY: the one key the gateway accepts without a key registry.",
    )
    dev_tenant: str = "dev"
    reload_interval_s: float = Field(default=2.0, gt=0)
    max_connections: int = Field(default=200, ge=1)
    image_fetch_private: bool = Field(
        default=False,
        description=(
            "STEPLINE_IMAGE_FETCH_PRIVATE: let the router fetch image URLs that Bedrock and "
            "Gemini need as bytes from private and loopback addresses too (off: SSRF)."
        ),
    )

    def routes_path(self) -> Path:
        """The routes file to load."""
        return self.routes or default_routes_path()

    def pricebook_path(self) -> Path:
        """The price book to load."""
        return self.pricebook or default_pricebook_path()

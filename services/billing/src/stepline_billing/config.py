"""Billing settings (`STEPLINE_*` / `STEPLINE_BILLING_*`) and its budget file."""

from __future__ import annotations

import tomllib
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from pydantic import Field

from stepline_billing.budgets import BudgetConfig, Limits
from stepline_billing.spec import SPEC
from stepline_runtime.settings import ServiceSettings
from stepline_vocab import ConfigurationError

__all__ = ["ConfigError", "Settings", "load_budgets"]

_REPO_ROOT = Path(__file__).resolve().parents[4]


class ConfigError(ConfigurationError):
    """The billing config file is malformed; the message says where and how to fix it."""


class Settings(ServiceSettings):
    """Everything billing reads from the environment."""

    billing_data_dir: Path = Field(
        default=_REPO_ROOT / ".local" / "billing",
        description="Folder of the SQLite ledger (billing.sqlite3) when no DSN is set.",
    )
    billing_dsn: str = Field(
        default="",
        description="PostgreSQL DSN (postgresql://…); empty: SQLite under billing_data_dir.",
    )
    billing_config: Path = Field(
        default=_REPO_ROOT / "deploy" / "config" / "billing.toml",
        description="Budget limits file (TOML).",
    )
    billing_grpc_address: str = Field(
        default=f"127.0.0.1:{SPEC.ports['grpc']}",
        description="host:port of the BillingService gRPC server.",
    )

    @property
    def sqlite_path(self) -> Path:
        """The SQLite ledger file."""
        return self.billing_data_dir / "billing.sqlite3"


def load_budgets(path: Path) -> BudgetConfig:
    """Read budget limits: `[defaults]` and `[tenants.<id>]` with decimal-string limits."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigError(f"cannot read billing config {path}: {error.strerror}") from error
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from error
    defaults = _limits(data.get("defaults", {}), f"{path}: [defaults]", Limits())
    tenants = {
        tenant: _limits(entry, f"{path}: [tenants.{tenant}]", defaults)
        for tenant, entry in data.get("tenants", {}).items()
    }
    return BudgetConfig(defaults, tenants)


def _limits(entry: dict[str, Any], where: str, fallback: Limits) -> Limits:
    return Limits(
        daily=_amount(entry, "daily_limit", where, fallback.daily),
        monthly=_amount(entry, "monthly_limit", where, fallback.monthly),
        run=_amount(entry, "run_limit", where, fallback.run),
    )


def _amount(
    entry: dict[str, Any], name: str, where: str, fallback: Decimal | None
) -> Decimal | None:
    raw = entry.get(name)
    if raw is None:
        return fallback
    if raw == "none":
        return None
    if not isinstance(raw, str):
        raise ConfigError(f'{where}: `{name}` must be a decimal string like "10.00", not {raw!r}')
    try:
        value = Decimal(raw)
    except InvalidOperation as error:
        raise ConfigError(f"{where}: `{name}` = {raw!r} is not a decimal number") from error
    if value < 0 or not value.is_finite():
        raise ConfigError(f"{where}: `{name}` must be a finite, non-negative amount")
    return value

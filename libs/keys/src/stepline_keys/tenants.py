"""Tenant spend limits for the doors' quotas, from a small TOML file.

```toml
[tenants.acme]
daily_spend = "50.00"     # in the price book's currency
monthly_spend = "800.00"
```
A tenant's limits span all its keys; tenants not listed have none.
"""

from __future__ import annotations

import tomllib
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from stepline_keys.model import Limits

__all__ = ["TenantLimitsError", "load_tenant_limits", "parse_tenant_limits"]

_FIELDS = {"daily_spend", "monthly_spend"}


class TenantLimitsError(ValueError):
    """The tenant limits file is not valid; the message says where."""


def _amount(value: Any, where: str) -> Decimal:
    try:
        amount = Decimal(str(value))
    except InvalidOperation as error:
        raise TenantLimitsError(f"{where}: {value!r} is not an amount") from error
    if not amount.is_finite() or amount < 0:
        raise TenantLimitsError(f"{where}: {value!r} must be a non-negative amount")
    return amount


def parse_tenant_limits(text: str, origin: str = "tenant limits") -> dict[str, Limits]:
    """Limits per tenant from TOML text."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise TenantLimitsError(f"{origin}: {error}") from error
    tenants = data.get("tenants", {})
    if not isinstance(tenants, dict) or set(data) - {"tenants"}:
        raise TenantLimitsError(f"{origin}: only [tenants.<id>] tables are allowed")
    found = {}
    for tenant, entry in tenants.items():
        where = f"{origin}: tenants.{tenant}"
        if not isinstance(entry, dict) or set(entry) - _FIELDS:
            raise TenantLimitsError(f"{where}: allowed keys are {sorted(_FIELDS)}")
        found[tenant] = Limits(
            daily_spend=_amount(entry["daily_spend"], where) if "daily_spend" in entry else None,
            monthly_spend=(
                _amount(entry["monthly_spend"], where) if "monthly_spend" in entry else None
            ),
        )
    return found


def load_tenant_limits(path: Path | None) -> dict[str, Limits]:
    """Limits per tenant from `path` (none when `path` is None)."""
    if path is None:
        return {}
    return parse_tenant_limits(path.read_text(encoding="utf-8"), str(path))

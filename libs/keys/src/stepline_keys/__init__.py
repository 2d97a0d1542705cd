"""API keys as events, the in-memory view each front door folds from them, and quotas."""

from stepline_keys.access import (
    Authenticator,
    AuthError,
    PermissionDeniedError,
    Principal,
    Quotas,
    RateLimitedError,
    Reservation,
    Scope,
    UnauthenticatedError,
)
from stepline_keys.model import Grant, Key, KeyEvent, Limits
from stepline_keys.quotas import KeyQuotas
from stepline_keys.registry import KeyRegistry

__all__ = [
    "AuthError",
    "Authenticator",
    "Grant",
    "Key",
    "KeyEvent",
    "KeyQuotas",
    "KeyRegistry",
    "Limits",
    "PermissionDeniedError",
    "Principal",
    "Quotas",
    "RateLimitedError",
    "Reservation",
    "Scope",
    "UnauthenticatedError",
]

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

__all__ = [
    "AuthError",
    "Authenticator",
    "PermissionDeniedError",
    "Principal",
    "Quotas",
    "RateLimitedError",
    "Reservation",
    "Scope",
    "UnauthenticatedError",
]

"""The routes file as the router uses it: the one parser, shared with the planner."""

from stepline_routes.config import (
    Capabilities,
    Deployment,
    RateLimits,
    RetryPolicy,
    Route,
    RoutesConfig,
    RoutesError,
    Strategy,
    Timeouts,
    parse_routes,
)

__all__ = [
    "Capabilities",
    "Deployment",
    "RateLimits",
    "RetryPolicy",
    "Route",
    "RoutesConfig",
    "RoutesError",
    "Strategy",
    "Timeouts",
    "parse_routes",
]

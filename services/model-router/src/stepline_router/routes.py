"""The routes file as the router uses it: the one parser, shared with the planner."""

from stepline_routes.config import (
    Capabilities,
    Deployment,
    RateLimits,
    RetryPolicy,
    Route,
    RoutesConfig,
    RoutesError,
    SchemaStyle,
    Strategy,
    Timeouts,
    ToolMode,
    parse_routes,
)
from stepline_routes.resolve import map_deployments, resolve_capabilities

__all__ = [
    "Capabilities",
    "Deployment",
    "RateLimits",
    "RetryPolicy",
    "Route",
    "RoutesConfig",
    "RoutesError",
    "SchemaStyle",
    "Strategy",
    "Timeouts",
    "ToolMode",
    "map_deployments",
    "parse_routes",
    "resolve_capabilities",
]

"""The model routes file, shared by the router (routing) and the planner (route economics)."""

from stepline_routes.config import (
    BreakerPolicy,
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
    default_path,
    load_routes,
    parse_routes,
)
from stepline_routes.economics import RouteEconomics, route_economics, routes_economics
from stepline_routes.presets import PRESETS, Preset
from stepline_routes.resolve import resolve_capabilities, resolved_deployment

__all__ = [
    "PRESETS",
    "BreakerPolicy",
    "Capabilities",
    "Deployment",
    "Preset",
    "RateLimits",
    "RetryPolicy",
    "Route",
    "RouteEconomics",
    "RoutesConfig",
    "RoutesError",
    "SchemaStyle",
    "Strategy",
    "Timeouts",
    "ToolMode",
    "default_path",
    "load_routes",
    "parse_routes",
    "resolve_capabilities",
    "resolved_deployment",
    "route_economics",
    "routes_economics",
]

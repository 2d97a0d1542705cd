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
    Strategy,
    Timeouts,
    default_path,
    load_routes,
    parse_routes,
)
from stepline_routes.economics import RouteEconomics, route_economics, routes_economics
from stepline_routes.presets import PRESETS, Preset

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
    "Strategy",
    "Timeouts",
    "default_path",
    "load_routes",
    "parse_routes",
    "route_economics",
    "routes_economics",
]

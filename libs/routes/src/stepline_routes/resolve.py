"""Deployments as the router sees them: the routes file's capabilities over the model catalog's."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from stepline_pricebook import PriceBook
from stepline_routes.config import Deployment, RoutesConfig

__all__ = ["map_deployments", "resolve_capabilities", "resolved_deployment"]


def resolved_deployment(deployment: Deployment, book: PriceBook) -> Deployment:
    """`deployment` with the capabilities its routes entry leaves unsaid taken from `book`."""
    entry = book.model_entry(deployment.provider, deployment.model)
    if entry is None:
        return deployment
    caps = deployment.capabilities.with_catalog(entry.context_window, entry.capabilities)
    return deployment if caps is deployment.capabilities else replace(deployment, capabilities=caps)


def resolve_capabilities(config: RoutesConfig, book: PriceBook) -> RoutesConfig:
    """Every deployment of `config` resolved against `book` (routes keep their order)."""
    return map_deployments(config, lambda d: resolved_deployment(d, book))


def map_deployments(
    config: RoutesConfig, change: Callable[[Deployment], Deployment]
) -> RoutesConfig:
    """`config` with `change` applied to every deployment, in the routes too."""
    deployments = {name: change(d) for name, d in config.deployments.items()}
    routes = {
        name: replace(route, deployments=tuple(deployments[d.name] for d in route.deployments))
        for name, route in config.routes.items()
    }
    return replace(config, routes=routes, deployments=deployments)

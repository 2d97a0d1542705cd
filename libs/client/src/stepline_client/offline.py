"""Which routes `stepline up` gives the router: the shipped ones, or every route served offline.

On a developer's machine (the broker on loopback) with no provider key set, the shipped routes
would fail every call, so `stepline up` writes an offline copy into its state dir: the same
route names, each served by the shipped `local` deployment, the deterministic stand-in (not an
LLM). Anywhere else, or once a key is set, the shipped routes stand, and a missing key fails
each call loudly instead of falling through to a template engine billed as a model.
"""

from __future__ import annotations

import ipaddress
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stepline_client.demo import render_toml

__all__ = ["ROUTES_FILE", "RoutesChoice", "choose_routes", "offline_routes"]

ROUTES_FILE = Path("deploy/config/routes.toml")
"""The shipped routes file, relative to the repository root."""
_LOCAL = "local"  # the provider kind of the offline stand-in


@dataclass(frozen=True, slots=True)
class RoutesChoice:
    """What to add to the services' environment, and one line telling the user why."""

    note: str
    env: dict[str, str] = field(default_factory=dict)


def offline_routes(shipped: Mapping[str, Any]) -> dict[str, Any]:
    """The shipped routes document with every route served by its `local` deployments only."""
    deployments = shipped.get("deployments", {})
    local = {n: d for n, d in deployments.items() if d.get("provider") == _LOCAL}
    offline = {k: v for k, v in shipped.items() if k not in ("deployments", "routes")}
    offline["deployments"] = local
    offline["routes"] = {
        name: {"deployments": list(local), "strategy": "priority"}
        for name in shipped.get("routes", {})
    }
    return offline


def _credentials(shipped: Mapping[str, Any]) -> list[str]:
    """The credential variables the shipped deployments name, in order, once each."""
    names = (d.get("credential_env", "") for d in shipped.get("deployments", {}).values())
    return list(dict.fromkeys(n for n in names if n))


def _reachable(shipped: Mapping[str, Any], env: Mapping[str, str]) -> list[str]:
    """Shipped deployments of real models that could answer with this environment."""
    secrets = env.get("STEPLINE_SECRETS_DIR")
    found = []
    for name, deployment in shipped.get("deployments", {}).items():
        if deployment.get("provider") == _LOCAL:
            continue
        key = deployment.get("credential_env", "")
        if not key or env.get(key) or (secrets and (Path(secrets) / key).is_file()):
            found.append(name)
    return found


def _on_loopback(bootstrap: str) -> bool:
    """True when every broker of `bootstrap` is on this machine."""
    for server in bootstrap.split(","):
        host = server.strip().rsplit(":", 1)[0].strip("[]")
        if host == "localhost":
            continue
        try:
            if not ipaddress.ip_address(host).is_loopback:
                return False
        except ValueError:
            return False
    return True


def choose_routes(env: Mapping[str, str], *, shipped: Path, state_dir: Path) -> RoutesChoice:
    """The routes for a `stepline up` with `env`; writes the offline copy when it is chosen."""
    if env.get("STEPLINE_ROUTES"):
        return RoutesChoice(f"routes: {env['STEPLINE_ROUTES']} (STEPLINE_ROUTES)")
    document = tomllib.loads(shipped.read_text(encoding="utf-8"))
    keys = " or ".join(_credentials(document)) or "a provider key"
    if _reachable(document, env):
        return RoutesChoice(f"routes: {shipped}")
    if not _on_loopback(env.get("STEPLINE_KAFKA_BOOTSTRAP", "")):
        return RoutesChoice(
            f"routes: {shipped} — no provider key is set: model calls will fail until {keys} "
            "is set for the model router"
        )
    target = state_dir / "config" / "routes.toml"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(
        f"# Written by `stepline up`: every route of {shipped} served offline (no key set).\n"
        + render_toml(offline_routes(document)),
        encoding="utf-8",
    )
    return RoutesChoice(
        f"routes: no provider key set, so every route is served by the offline `local` model "
        f"(a deterministic stand-in, not an LLM; {target}). For real models set {keys}, "
        "then `stepline down` and `stepline up`.",
        {"STEPLINE_ROUTES": str(target)},
    )

"""`stepline keys …`: issue, list, revoke and rotate API keys; the bootstrap key of `up`.

Admin actions are published to `stepline.keys.v1` as events (who, when, what; hashes only), so
the authority to run them is the Kafka principal allowed to write that topic (`key-admin` in
scripts/kafka_acls.py). A secret is printed once, when it is created, and never again.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TextIO

import grpc

from stepline_keys import Grant, KeyEvent, KeyRegistry, Limits, Scope, UnauthenticatedError
from stepline_keys.admin import NewKey, issue
from stepline_keys.credentials import KEY_FILE_NAME, load_api_key, write_key_file
from stepline_keys.feeds import KafkaKeyLog, follow_keys
from stepline_keys.grpcdoor import call_metadata
from stepline_keys.manage import (
    KeyAdmin,
    KeyAdminError,
    UnknownKeyError,
    keys_of,
    parse_scopes,
    status_of,
)
from stepline_runtime.settings import ServiceSettings
from stepline_runtime.topics import Topics, ensure_service_topics

__all__ = [
    "REFUSALS",
    "ensure_bootstrap_key",
    "key_metadata",
    "refusal_text",
    "register",
    "run",
]

EXIT_USAGE = 2
# `stepline submit` defaults to this tenant too, so the bootstrap key fits the quick start.
BOOTSTRAP_TENANT = os.environ.get("STEPLINE_BOOTSTRAP_TENANT", "demo")


class KeysCliError(Exception):
    """A failure the user can fix; the message says how."""


def _now() -> datetime:
    return datetime.now(UTC)


def _actor() -> str:
    return os.environ.get("USER", "") or "cli"


REFUSALS = frozenset({grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED})


def refusal_text(error: grpc.aio.AioRpcError) -> str:
    """What to do when a door refuses the caller's key."""
    return (
        f"{error.details()} ({error.code().name}) — set STEPLINE_API_KEY (or "
        "STEPLINE_API_KEY_FILE) to a key of the right tenant and scope; `stepline up` stores "
        "a development key in its state dir"
    )


def key_metadata(state_dir: Path) -> tuple[tuple[str, str], ...]:
    """gRPC metadata proving the caller's key (`STEPLINE_API_KEY`, a key file); () when none."""
    secret = load_api_key(state_dir / KEY_FILE_NAME)
    return call_metadata(secret) if secret else ()


async def _registry(settings: ServiceSettings) -> KeyRegistry:
    """Every key as of now (read to the end of the keys topic)."""
    await ensure_service_topics(settings, {Topics.KEYS}, "stepline-cli-keys")
    registry = KeyRegistry(_now)
    follower = await follow_keys(settings, registry, client_id="stepline-cli")
    await follower.stop()
    return registry


async def _publish(settings: ServiceSettings, *events: KeyEvent) -> None:
    async with KafkaKeyLog(settings, source="stepline-cli") as log:
        for event in events:
            await log.publish(event)


async def ensure_bootstrap_key(settings: ServiceSettings, state_dir: Path, out: TextIO) -> None:
    """On first start: an admin key for loopback callers, printed once, kept in the state dir."""
    path = state_dir / KEY_FILE_NAME
    registry = await _registry(settings)
    existing = load_api_key(path, env={})
    if existing:
        with contextlib.suppress(UnauthenticatedError):
            registry.authenticate(existing)
            print(f"api key: {path}", file=out)
            return
    new = issue(
        BOOTSTRAP_TENANT,
        Grant(frozenset({Scope.ADMIN}), label="bootstrap (loopback only)"),
        actor="bootstrap",
        now=_now(),
        loopback_only=True,
    )
    await _publish(settings, new.event)
    write_key_file(path, new.secret)
    print(
        f"bootstrap API key {new.key_id} (tenant {BOOTSTRAP_TENANT}, admin, loopback only), "
        f"shown once and stored in {path} (0600):\n  {new.secret}",
        file=out,
    )


def _amount(text: str | None, flag: str) -> Decimal | None:
    if text is None:
        return None
    try:
        value = Decimal(text)
    except InvalidOperation as error:
        raise KeysCliError(f"{flag} {text!r} is not an amount; use e.g. {flag} 5.00") from error
    if not value.is_finite() or value < 0:
        raise KeysCliError(f"{flag} must be a non-negative amount")
    return value


def _scopes(text: str) -> frozenset[Scope]:
    try:
        return parse_scopes(text.split(","))
    except KeyAdminError as error:
        raise KeysCliError(f"--scopes {text!r}: {error}") from error


def _names(text: str | None) -> frozenset[str]:
    return frozenset(n.strip() for n in (text or "").split(",") if n.strip())


def _print_new(new: NewKey, tenant: str, out: TextIO) -> None:
    print(f"key {new.key_id} for tenant {tenant}", file=out)
    print("secret (shown once, store it now):", file=out)
    print(f"  {new.secret}", file=out)


async def _create(args: argparse.Namespace, settings: ServiceSettings, out: TextIO) -> int:
    expires = _now() + timedelta(days=args.expires_in_days) if args.expires_in_days else None
    grant = Grant(
        scopes=_scopes(args.scopes),
        agents=_names(args.agents),
        routes=_names(args.routes),
        models=_names(args.models),
        limits=Limits(
            daily_spend=_amount(args.daily_limit, "--daily-limit"),
            monthly_spend=_amount(args.monthly_limit, "--monthly-limit"),
            rpm=args.rpm,
            tpm=args.tpm,
        ),
        expires_at=expires,
        label=args.label or "",
    )
    await ensure_service_topics(settings, {Topics.KEYS}, "stepline-cli-keys")
    async with KafkaKeyLog(settings, source="stepline-cli") as log:
        new = await KeyAdmin(KeyRegistry(_now), log, _now).create(
            args.tenant, grant, actor=_actor()
        )
    _print_new(new, args.tenant, out)
    return 0


def _limits(limits: Limits) -> str:
    parts = [
        f"day {limits.daily_spend:f}" if limits.daily_spend is not None else "",
        f"month {limits.monthly_spend:f}" if limits.monthly_spend is not None else "",
        f"rpm {limits.rpm}" if limits.rpm else "",
        f"tpm {limits.tpm}" if limits.tpm else "",
    ]
    return ", ".join(p for p in parts if p) or "-"


async def _list(args: argparse.Namespace, settings: ServiceSettings, out: TextIO) -> int:
    registry = await _registry(settings)
    now = _now()
    rows = [
        (
            k.key_id,
            k.tenant_id,
            status_of(k, now).value,
            ",".join(sorted(s.value for s in k.grant.scopes)),
            _limits(k.grant.limits),
            k.grant.expires_at.strftime("%Y-%m-%d") if k.grant.expires_at else "-",
            k.grant.label or "-",
            f"{k.issued_by} {k.issued_at:%Y-%m-%d %H:%M}",
        )
        for k in keys_of(registry, now, tenant=args.tenant, include_inactive=args.all)
    ]
    header = ("key", "tenant", "status", "scopes", "limits", "expires", "label", "issued")
    widths = [max(len(c) for c in col) for col in zip(header, *rows, strict=False)]
    for row in (header, *rows):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)), file=out)
    return 0


async def _revoke(args: argparse.Namespace, settings: ServiceSettings, out: TextIO) -> int:
    registry = await _registry(settings)
    async with KafkaKeyLog(settings, source="stepline-cli") as log:
        key = await KeyAdmin(registry, log, _now).revoke(
            args.key_id, actor=_actor(), reason=args.reason
        )
    print(f"revoked {key.key_id} (tenant {key.tenant_id})", file=out)
    return 0


async def _rotate(args: argparse.Namespace, settings: ServiceSettings, out: TextIO) -> int:
    registry = await _registry(settings)
    async with KafkaKeyLog(settings, source="stepline-cli") as log:
        fresh, key = await KeyAdmin(registry, log, _now).rotate(args.key_id, actor=_actor())
    _print_new(fresh, key.tenant_id, out)
    print(f"revoked {key.key_id}", file=out)
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `keys create|list|revoke|rotate` to the `stepline` command line."""
    keys = sub.add_parser("keys", help="API keys: create, list, revoke, rotate")
    actions = keys.add_subparsers(dest="keys", required=True, metavar="ACTION")
    create = actions.add_parser("create", help="issue a key (its secret is printed once)")
    create.add_argument("--tenant", required=True)
    create.add_argument(
        "--scopes", required=True, help="comma-separated: " + ", ".join(s.value for s in Scope)
    )
    create.add_argument("--agents", help="only these agents (comma-separated)")
    create.add_argument("--routes", help="only these model routes (comma-separated)")
    create.add_argument("--models", help="only these deployments (comma-separated)")
    create.add_argument("--daily-limit", help="spend limit per UTC day, e.g. 5.00")
    create.add_argument("--monthly-limit", help="spend limit per UTC month")
    create.add_argument("--rpm", type=int, help="requests per minute")
    create.add_argument("--tpm", type=int, help="tokens per minute")
    create.add_argument("--expires-in-days", type=float)
    create.add_argument("--label")
    listing = actions.add_parser("list", help="keys without their secrets")
    listing.add_argument("--tenant")
    listing.add_argument("--all", action="store_true", help="revoked and expired keys too")
    rev = actions.add_parser("revoke", help="revoke a key everywhere within seconds")
    rev.add_argument("key_id")
    rev.add_argument("--reason", default="revoked from the CLI")
    rot = actions.add_parser("rotate", help="a new secret for a key's grant; the old key ends")
    rot.add_argument("key_id")


_ACTIONS = {"create": _create, "list": _list, "revoke": _revoke, "rotate": _rotate}


async def run(args: argparse.Namespace, settings: ServiceSettings, out: TextIO) -> int:
    """Run one `stepline keys` action."""
    try:
        return await _ACTIONS[args.keys](args, settings, out)
    except UnknownKeyError as error:
        print(f"stepline: {error}; `stepline keys list --all` shows every key", file=sys.stderr)
        return EXIT_USAGE
    except (KeysCliError, KeyAdminError) as error:
        print(f"stepline: {error}", file=sys.stderr)
        return EXIT_USAGE

"""An `Authenticator` over a fixed set of keys: the test twin, and a TOML file for local use.

Only the SHA-256 of each secret is kept. The key registry of the keys issue (keys as events on
`stepline.keys.v1`) replaces the file in production; both satisfy `stepline_keys.Authenticator`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import secrets
import sys
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path

from stepline_keys import Principal, Scope, UnauthenticatedError

__all__ = ["StaticAuthenticator", "add_key", "fingerprint", "issue", "key_file_entry", "main"]


def fingerprint(secret: str) -> str:
    """The SHA-256 (hex) a key is stored under."""
    return hashlib.sha256(secret.encode()).hexdigest()


def issue(prefix: str = "sk-stepline") -> str:
    """A new random secret."""
    return f"{prefix}-{secrets.token_urlsafe(24)}"


def key_file_entry(secret: str, principal: Principal) -> str:
    """The TOML `[[keys]]` entry of `principal` under `secret`'s fingerprint."""
    # JSON strings are valid TOML basic strings: quotes and backslashes stay escaped.
    scopes = ", ".join(json.dumps(s.value) for s in sorted(principal.scopes))
    return (
        "[[keys]]\n"
        f"id = {json.dumps(principal.key_id)}\n"
        f"sha256 = {json.dumps(fingerprint(secret))}\n"
        f"tenant = {json.dumps(principal.tenant_id)}\n"
        f"scopes = [{scopes}]\n"
        f"label = {json.dumps(principal.label)}\n"
    )


class StaticAuthenticator:
    """Principals by the fingerprint of their secret."""

    def __init__(self, keys: Mapping[str, Principal]) -> None:
        self._by_fingerprint = dict(keys)

    @classmethod
    def of(cls, pairs: Iterable[tuple[str, Principal]]) -> StaticAuthenticator:
        """From (secret, principal) pairs."""
        return cls({fingerprint(secret): principal for secret, principal in pairs})

    @classmethod
    def from_file(cls, path: Path) -> StaticAuthenticator:
        """Read `[[keys]]` entries (id, sha256, tenant, scopes, label); a missing file: no keys."""
        if not path.exists():
            return cls({})
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        keys = {}
        for entry in data.get("keys", []):
            try:
                scopes = frozenset(Scope(s) for s in entry["scopes"])
                keys[entry["sha256"]] = Principal(
                    key_id=entry["id"],
                    tenant_id=entry["tenant"],
                    scopes=scopes,
                    label=entry.get("label", ""),
                )
            except (KeyError, ValueError) as error:
                raise ValueError(f"{path}: bad [[keys]] entry: {error}") from error
        return cls(keys)

    def __len__(self) -> int:
        """How many keys it knows."""
        return len(self._by_fingerprint)

    def authenticate(self, secret: str | None) -> Principal:
        """The key's principal; `UnauthenticatedError` if missing or unknown."""
        if not secret:
            raise UnauthenticatedError("missing API key: send `Authorization: Bearer <key>`")
        principal = self._by_fingerprint.get(fingerprint(secret))
        if principal is None:
            raise UnauthenticatedError("unknown, expired or revoked API key")
        return principal


def add_key(path: Path, principal: Principal) -> str:
    """Issue a secret for `principal`, append it to the key file; returns the secret."""
    secret = issue()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as out:
        out.write(key_file_entry(secret, principal) + "\n")
    path.chmod(0o600)
    StaticAuthenticator.from_file(path)  # refuse to leave a file the service cannot read
    return secret


def main(argv: list[str] | None = None) -> int:
    """`python -m stepline_frontdoor.keyfile issue --file F --tenant T --scope S…`: print a key."""
    parser = argparse.ArgumentParser(prog="python -m stepline_frontdoor.keyfile")
    commands = parser.add_subparsers(dest="command", required=True)
    add = commands.add_parser("issue", help="add a key to the file and print its secret once")
    add.add_argument("--file", type=Path, required=True)
    add.add_argument("--tenant", required=True)
    add.add_argument("--scope", action="append", choices=[s.value for s in Scope], required=True)
    add.add_argument("--label", default="")
    args = parser.parse_args(argv)
    key_id = f"key-{secrets.token_hex(4)}"
    principal = Principal(
        key_id, args.tenant, frozenset(Scope(s) for s in args.scope), label=args.label or key_id
    )
    print(add_key(args.file, principal))
    return 0


if __name__ == "__main__":
    sys.exit(main())

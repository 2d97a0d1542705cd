"""API key secrets: `sk-stl-<key id>_<256 random bits>`, stored only as a hash.

Why SHA-256 and not a password hash (bcrypt, scrypt, Argon2): a password hash is slow on
purpose because people pick guessable passwords. An API secret here carries 256 bits from the
operating system's CSPRNG, so nothing can be guessed and a slow hash would only make every
request pay for it; a single SHA-256 is the standard for high-entropy tokens (GitHub, Stripe
do the same). It is unkeyed on purpose: every front door must verify keys from the topic alone,
without sharing one more secret (a pepper) among services. The key id in the secret makes the
lookup O(1) (no scan over hashes) and the hash comparison runs in constant time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import Callable

__all__ = [
    "PREFIX",
    "hash_secret",
    "key_id_of",
    "new_key_id",
    "new_secret",
    "secret_matches",
]

PREFIX = "sk-stl-"
_HASH_SCHEME = "sha256:"
_SECRET_BYTES = 32  # 256 bits
_KEY_ID = re.compile(r"^key_[0-9a-f]{16}$")
_SECRET = re.compile(r"^sk-stl-(key_[0-9a-f]{16})_([A-Za-z0-9_-]{43})$")


def new_key_id(random_bytes: Callable[[int], bytes] = secrets.token_bytes) -> str:
    """A fresh key id, `key_` + 16 hex digits (public: listed, logged, used as topic key)."""
    return "key_" + random_bytes(8).hex()


def new_secret(key_id: str, random_bytes: Callable[[int], bytes] = secrets.token_bytes) -> str:
    """A fresh secret for `key_id`: shown once, never stored."""
    if not _KEY_ID.match(key_id):
        raise ValueError(f"not a key id: {key_id!r}")
    token = base64.urlsafe_b64encode(random_bytes(_SECRET_BYTES)).decode().rstrip("=")
    return f"{PREFIX}{key_id}_{token}"


def key_id_of(secret: str) -> str | None:
    """The key id a well-formed secret names; None when it is not a Stepline secret."""
    found = _SECRET.match(secret)
    return found.group(1) if found else None


def hash_secret(secret: str) -> str:
    """The stored form of a secret: `sha256:` + hex digest (the scheme prefix allows a move)."""
    return _HASH_SCHEME + hashlib.sha256(secret.encode()).hexdigest()


def secret_matches(secret: str, stored_hash: str) -> bool:
    """True when `secret` hashes to `stored_hash`, compared in constant time."""
    return hmac.compare_digest(hash_secret(secret).encode(), stored_hash.encode())

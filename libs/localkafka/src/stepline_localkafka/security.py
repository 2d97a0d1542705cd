"""SASL/SCRAM mode of the local broker: users, passwords and the client settings to use them."""

from __future__ import annotations

import json
import os
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stepline_runtime.service import service_names

from .errors import LocalKafkaError

__all__ = [
    "ADMIN_USER",
    "KEY_ADMIN_USER",
    "MECHANISM",
    "SECURITY_PROTOCOL",
    "SERVICE_USERS",
    "ScramCredentials",
]

MECHANISM = "SCRAM-SHA-512"
SECURITY_PROTOCOL = "SASL_PLAINTEXT"
ADMIN_USER = "admin"
# One SCRAM user per installed Stepline service, named like it (scripts/kafka_acls.py grants
# each its own topics).
# `stepline keys …` writes the keys topic as its own principal, not as a service.
KEY_ADMIN_USER = "key-admin"
SERVICE_USERS = (*service_names(), KEY_ADMIN_USER)
_NAME = re.compile(r"^[A-Za-z0-9._-]+$")


def _check_name(name: str) -> str:
    # StorageTool's --add-scram parser splits on "," and "=", and JAAS needs no quoting then.
    if not _NAME.fullmatch(name):
        raise LocalKafkaError(f"SCRAM user name {name!r} may only use letters, digits, . _ -")
    return name


@dataclass(frozen=True)
class ScramCredentials:
    """SCRAM users of one local broker (admin first), with generated passwords."""

    passwords: dict[str, str] = field(default_factory=dict)
    admin: str = ADMIN_USER

    @classmethod
    def generate(cls, users: Iterable[str] = SERVICE_USERS) -> ScramCredentials:
        """The admin plus ``users``, each with a fresh random password."""
        names = [ADMIN_USER, *(u for u in users if u != ADMIN_USER)]
        # token_urlsafe uses only [A-Za-z0-9_-]: safe in --add-scram and in a JAAS string.
        return cls({_check_name(n): secrets.token_urlsafe(24) for n in names})

    @classmethod
    def load(cls, path: Path) -> ScramCredentials | None:
        """The credentials recorded in ``path``, or None if the broker is not in SASL mode."""
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise LocalKafkaError(f"cannot read SASL credentials {path}: {exc}") from None
        if data.get("mechanism") != MECHANISM or not isinstance(data.get("users"), dict):
            raise LocalKafkaError(f"{path} is not a credentials file of this tool")
        return cls({str(k): str(v) for k, v in data["users"].items()}, str(data["admin"]))

    def save(self, path: Path) -> None:
        """Write the credentials readable by the owner only."""
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {"mechanism": MECHANISM, "admin": self.admin, "users": self.passwords}
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(payload, handle, indent=2)
            handle.write("\n")

    def password(self, user: str) -> str:
        """The password of ``user``; a clear error if the broker has no such user."""
        try:
            return self.passwords[user]
        except KeyError:
            known = ", ".join(sorted(self.passwords))
            raise LocalKafkaError(
                f"no SCRAM user {user!r} on this broker (users: {known})"
            ) from None

    def format_args(self) -> list[str]:
        """``kafka.tools.StorageTool format`` arguments that create every user."""
        args: list[str] = []
        for name, password in self.passwords.items():
            args += ["--add-scram", f"{MECHANISM}=[name={name},password={password}]"]
        return args

    def template_values(self) -> dict[str, str]:
        """Placeholders of the SASL server.properties template (the broker's own login)."""
        return {"admin_user": self.admin, "admin_password": self.password(self.admin)}

    def client_kwargs(self, user: str | None = None) -> dict[str, Any]:
        """aiokafka keyword arguments that log in as ``user`` (default: the admin)."""
        user = user or self.admin
        return {
            "security_protocol": SECURITY_PROTOCOL,
            "sasl_mechanism": MECHANISM,
            "sasl_plain_username": user,
            "sasl_plain_password": self.password(user),
        }

    def env(self, user: str | None = None) -> dict[str, str]:
        """STEPLINE_KAFKA_* variables a Stepline service reads to log in as ``user``."""
        user = user or self.admin
        return {
            "STEPLINE_KAFKA_SECURITY_PROTOCOL": SECURITY_PROTOCOL,
            "STEPLINE_KAFKA_SASL_MECHANISM": MECHANISM,
            "STEPLINE_KAFKA_SASL_USERNAME": user,
            "STEPLINE_KAFKA_SASL_PASSWORD": self.password(user),
        }

    def java_client_properties(self, user: str | None = None) -> str:
        """A Kafka client config (``--command-config``) for the Kafka CLI tools."""
        user = user or self.admin
        return (
            f"security.protocol={SECURITY_PROTOCOL}\n"
            f"sasl.mechanism={MECHANISM}\n"
            "sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required "
            f'username="{user}" password="{self.password(user)}";\n'
        )

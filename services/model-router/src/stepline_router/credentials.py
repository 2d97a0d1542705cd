"""Credentials port: secrets come from the environment or secret files, looked up by name."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

__all__ = ["Credentials", "EnvCredentials", "StaticCredentials"]


class Credentials(Protocol):
    """Resolves a credential name (e.g. `OPENAI_API_KEY`) to its secret value."""

    def get(self, name: str) -> str | None:
        """The secret, or None when it is not set."""
        ...


class EnvCredentials:
    """Environment variables first, then `<secrets_dir>/<NAME>` files (Kubernetes/Docker style)."""

    def __init__(self, environ: Mapping[str, str], secrets_dir: Path | None = None) -> None:
        self._environ = environ
        self._secrets_dir = secrets_dir

    def get(self, name: str) -> str | None:
        """The secret named `name`, stripped of surrounding whitespace, or None."""
        value = self._environ.get(name)
        if value:
            return value.strip()
        if self._secrets_dir is not None:
            path = self._secrets_dir / name
            if path.is_file():
                return path.read_text(encoding="utf-8").strip() or None
        return None


class StaticCredentials:
    """In-memory twin for tests."""

    def __init__(self, values: Mapping[str, str] | None = None) -> None:
        self._values = dict(values or {})

    def get(self, name: str) -> str | None:
        """The configured value, or None."""
        return self._values.get(name)

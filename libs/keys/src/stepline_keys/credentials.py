"""Where a client finds its API key: `STEPLINE_API_KEY`, `STEPLINE_API_KEY_FILE` or a file."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

__all__ = ["KEY_FILE_NAME", "load_api_key", "write_key_file"]

KEY_FILE_NAME = "api-key"


def load_api_key(default_file: Path | None, env: Mapping[str, str] | None = None) -> str | None:
    """The key from the environment, else from `STEPLINE_API_KEY_FILE` or `default_file`."""
    env = os.environ if env is None else env
    if env.get("STEPLINE_API_KEY"):
        return env["STEPLINE_API_KEY"].strip()
    named = env.get("STEPLINE_API_KEY_FILE")
    path = Path(named) if named else default_file
    if path is None:
        return None
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        return None


def write_key_file(path: Path, secret: str) -> None:
    """Store a secret readable by its owner only (0600 from the first byte)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret + "\n")
    os.chmod(path, 0o600)

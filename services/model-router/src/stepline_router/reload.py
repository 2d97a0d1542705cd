"""Hot reload of a config file: a changed file replaces the active version only if it is valid."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

__all__ = ["ConfigFile"]

log = logging.getLogger(__name__)

T = TypeVar("T")


class ConfigFile(Generic[T]):
    """A parsed file that reloads when it changes; a bad new version is refused, the old stays."""

    def __init__(self, path: Path, parse: Callable[[str, str], T], what: str) -> None:
        self.path = path
        self._parse = parse
        self._what = what
        # Fails loudly at start: a service must not come up without a valid file.
        self._stamp = self._stat()
        text = path.read_text(encoding="utf-8")
        self._digest = hashlib.sha256(text.encode()).hexdigest()
        self._value = parse(text, str(path))
        self.last_error: str | None = None

    def current(self) -> T:
        """The active (last good) version."""
        return self._value

    def _stat(self) -> tuple[int, int]:
        stat = self.path.stat()
        return stat.st_mtime_ns, stat.st_size

    def check(self) -> bool:
        """Reload if the file changed; True when a new version became active."""
        try:
            stamp = self._stat()
            if stamp == self._stamp:
                return False
            text = self.path.read_text(encoding="utf-8")
        except OSError as error:
            return self._refuse(f"cannot read {self.path}: {error.strerror}")
        self._stamp = stamp
        digest = hashlib.sha256(text.encode()).hexdigest()
        if digest == self._digest:
            return False
        try:
            value = self._parse(text, str(self.path))
        except ValueError as error:
            return self._refuse(str(error))
        self._value, self._digest, self.last_error = value, digest, None
        log.info("reloaded %s", self._what, extra={"path": str(self.path), "digest": digest[:12]})
        return True

    def _refuse(self, reason: str) -> bool:
        if reason != self.last_error:
            log.error(
                "refused a new %s; the last good version stays active",
                self._what,
                extra={"path": str(self.path), "reason": reason},
            )
        self.last_error = reason
        return False

    async def watch(self, interval_s: float) -> None:
        """Check for changes every `interval_s` seconds until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            self.check()

"""PostgreSQL fixtures (billing, front door): a throwaway cluster started by deploy/postgres/pg.sh.

Registered for every test by `tests/conftest.py` (`pytest_plugins`). `PrivatePostgres` is a
cluster of its own on another port, for long runs that must not share the tests' cluster (which
a test session stops when it started it): `make chaos-scaled`, the scale-out benchmark.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

__all__ = ["PrivatePostgres", "postgres_dsn", "postgres_server"]

SCRIPT = Path(__file__).resolve().parents[1] / "deploy" / "postgres" / "pg.sh"


class PrivatePostgres:
    """A cluster of its own on loopback `port`, data under /tmp (removed by `stop`)."""

    def __init__(self, port: int) -> None:
        # Under /tmp: as root the server runs as `postgres`, who cannot traverse a mode-700
        # temporary directory.
        self.dir = Path(f"/tmp/stepline-pg-{uuid.uuid4().hex[:8]}")
        self._env = {
            **os.environ,
            "STEPLINE_POSTGRES_PORT": str(port),
            "STEPLINE_POSTGRES_DIR": str(self.dir),
        }

    def start(self, database: str) -> str:
        """Install if needed, start, create `database`; its DSN."""
        done = subprocess.run(
            ["bash", str(SCRIPT), "start"], env=self._env, capture_output=True, text=True
        )
        if done.returncode != 0:
            raise RuntimeError(f"PostgreSQL did not start (deploy/postgres/pg.sh):\n{done.stderr}")
        server = done.stdout.strip().splitlines()[-1]
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute(f"CREATE DATABASE {database}")
        return server.rsplit("/", 1)[0] + f"/{database}"

    def stop(self) -> None:
        """Stop it and remove its data."""
        subprocess.run(["bash", str(SCRIPT), "stop"], env=self._env, check=False)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """DSN of the test cluster; installs PostgreSQL from Debian's packages when missing."""
    was_running = subprocess.run(["bash", str(SCRIPT), "status"], check=False).returncode == 0
    started = time.monotonic()
    done = subprocess.run(
        ["bash", str(SCRIPT), "start"], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        pytest.fail(
            "cannot install or start PostgreSQL for the tests (deploy/postgres/pg.sh "
            f"start exited {done.returncode}):\n{done.stderr}",
            pytrace=False,
        )
    print(f"\npostgres ready in {time.monotonic() - started:.1f}s: {done.stderr.strip()}")
    try:
        yield done.stdout.strip().splitlines()[-1]
    finally:
        if not was_running:
            subprocess.run(["bash", str(SCRIPT), "stop"], check=False)


@pytest.fixture
def postgres_dsn(postgres_server: str) -> Iterator[str]:
    """A fresh, empty database on the test cluster (dropped afterwards)."""
    name = f"test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(postgres_server, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    try:
        yield postgres_server.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(postgres_server, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

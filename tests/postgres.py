"""PostgreSQL fixtures (billing, front door): a throwaway cluster started by deploy/postgres/pg.sh.

Registered for every test by `tests/conftest.py` (`pytest_plugins`).
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "deploy" / "postgres" / "pg.sh"


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

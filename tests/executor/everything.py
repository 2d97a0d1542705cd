"""The reference MCP server `@modelcontextprotocol/server-everything`, pinned for the tests.

`tests/executor/everything/package.json` and its lock file pin the version; `install()` copies
them to `.local/mcp-everything` and runs `npm ci` there when the installed lock differs (a clean
clone installs on first use; later runs reuse the cache). Needs Node.js >= 18 and npm.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["ROOT", "free_port", "install", "serve_http", "wait_listening"]

ROOT = Path(__file__).resolve().parents[2]
_PINNED = Path(__file__).resolve().parent / "everything"
_HOME = ROOT / ".local" / "mcp-everything"
_LOCK = "package-lock.json"


def install() -> Path:
    """Path of the server's `dist/index.js`, installing the pinned package when needed."""
    entry = _HOME / "node_modules" / "@modelcontextprotocol" / "server-everything" / "dist"
    lock = (_PINNED / _LOCK).read_bytes()
    installed = _HOME / _LOCK
    if entry.is_dir() and installed.is_file() and installed.read_bytes() == lock:
        return entry / "index.js"
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm not found on PATH: install Node.js (>= 18) for the MCP tests")
    _HOME.mkdir(parents=True, exist_ok=True)
    for name in ("package.json", _LOCK):
        shutil.copyfile(_PINNED / name, _HOME / name)
    env = {**os.environ, "CI": "true", "npm_config_update_notifier": "false"}
    done = subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund"],
        cwd=_HOME,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    if done.returncode != 0 or not entry.is_dir():
        raise RuntimeError(f"npm ci of the MCP reference server failed:\n{done.stderr[-2000:]}")
    return entry / "index.js"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_listening(port: int, timeout_s: float = 30) -> None:
    """Return once something accepts connections on `port`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port} after {timeout_s} s")


@contextmanager
def serve_http(port: int) -> Iterator[subprocess.Popen[bytes]]:
    """The server on streamable HTTP at `http://127.0.0.1:<port>/mcp` until the block ends."""
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("node not found on PATH: install Node.js (>= 18) for the MCP tests")
    process = subprocess.Popen(
        [node, str(install()), "streamableHttp"],
        env={**os.environ, "PORT": str(port)},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_listening(port)
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)

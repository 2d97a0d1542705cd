"""The real inference server of the tests: llama.cpp's OpenAI-compatible server (llama-cpp-python
[server]) running SmolLM2-135M-Instruct, from the env deploy/llama/env.sh keeps outside the repo.

`make test` builds that env first (`make llama-env`, once per machine); a test run without it
builds it here, the same way, on first use.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

__all__ = ["LlamaServer", "llama_env"]

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "deploy" / "llama" / "env.sh"
# The model's name at the server (what its answers report).
MODEL_ALIAS = "smollm2-135m-instruct"
_READY_S = 120.0


def llama_env() -> tuple[str, str]:
    """(python of the llama env, path of the GGUF), building the env when it is missing."""
    env = {**os.environ, "UV": str(ROOT / ".local" / "tools" / "bin" / "uv")}
    started = time.monotonic()
    built = subprocess.run(
        ["bash", str(SCRIPT), "ensure"], capture_output=True, text=True, env=env, check=False
    )
    if built.returncode != 0:
        pytest.fail(
            f"cannot build the llama.cpp server env (deploy/llama/env.sh ensure exited "
            f"{built.returncode}):\n{built.stderr[-3000:]}",
            pytrace=False,
        )
    if time.monotonic() - started > 5:
        print(f"\nllama env built in {time.monotonic() - started:.0f}s")
    python = built.stdout.strip().splitlines()[-1]
    model = subprocess.run(
        ["bash", str(SCRIPT), "model"], capture_output=True, text=True, check=True
    ).stdout.strip()
    return python, model


@dataclass
class LlamaServer:
    """One `python -m llama_cpp.server` process on a loopback port (restartable on that port)."""

    python: str
    model: str
    port: int
    log: Path
    n_ctx: int = 512
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        """The OpenAI base URL (`…/v1`)."""
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> LlamaServer:
        """Start the server and wait until it answers `GET /v1/models`."""
        command = [
            self.python,
            "-m",
            "llama_cpp.server",
            "--model",
            self.model,
            "--model_alias",
            MODEL_ALIAS,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--n_ctx",
            str(self.n_ctx),
            # One thread: on a shared 2-core machine llama.cpp's spinning threads fight the rest
            # of the test run (24 tokens took 40 s with 2 threads under load, 0.9 s with 1).
            "--n_threads",
            "1",
            "--n_threads_batch",
            "1",
            "--verbose",
            "false",
        ]
        with self.log.open("ab") as sink:
            self.process = subprocess.Popen(command, stdout=sink, stderr=sink)
        deadline = time.monotonic() + _READY_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"llama server exited {self.process.returncode}: {self._tail()}")
            try:
                if httpx.get(f"{self.url}/models", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"llama server not ready within {_READY_S:.0f}s: {self._tail()}")

    def kill(self) -> None:
        """SIGKILL the server (a crash: no goodbye on open connections)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        """Stop the server if it runs."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    def _tail(self) -> str:
        return self.log.read_text(errors="replace")[-2000:]

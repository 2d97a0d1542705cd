"""The local real model: llama.cpp's OpenAI-compatible server (llama-cpp-python[server]) running
SmolLM2-135M-Instruct from the env `deploy/llama/env.sh` keeps outside the checkout.

Used by `make demo LOCAL_LLM=1` and by the tests that exercise the router against a real
inference server. Building the env (once per machine) is the script's job: `make llama-env`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

__all__ = ["MODEL_ALIAS", "LlamaServer", "llama_env"]

# The model's name at the server (what its answers report, what routes name).
MODEL_ALIAS = "smollm2-135m-instruct"
_READY_S = 120.0


def llama_env(root: Path) -> tuple[str, str]:
    """(python of the llama env, path of the GGUF) of checkout `root`; builds the env if missing.

    Raises `RuntimeError` with the script's output when it cannot be built.
    """
    script = root / "deploy" / "llama" / "env.sh"
    env = {**os.environ, "UV": os.environ.get("UV", str(root / ".local" / "tools" / "bin" / "uv"))}
    built = subprocess.run(
        ["bash", str(script), "ensure"], capture_output=True, text=True, env=env, check=False
    )
    if built.returncode != 0:
        raise RuntimeError(
            f"cannot build the llama.cpp server env ({script} ensure exited "
            f"{built.returncode}):\n{built.stderr[-3000:]}"
        )
    python = built.stdout.strip().splitlines()[-1]
    model = subprocess.run(
        ["bash", str(script), "model"], capture_output=True, text=True, check=True
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

    def start(self) -> Self:
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
            # One thread: on a shared 2-core machine llama.cpp's spinning threads fight the
            # rest of the load (24 tokens took 40 s with 2 threads under load, 0.9 s with 1).
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
                with urllib.request.urlopen(f"{self.url}/models", timeout=1.0) as answer:
                    if answer.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
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

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.stop()

    def _tail(self) -> str:
        return self.log.read_text(errors="replace")[-2000:]

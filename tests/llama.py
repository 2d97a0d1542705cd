"""The real inference server of the tests (see `stepline_client.llama`): `make test` builds its
env first (`make llama-env`, once per machine); a run without it builds it here on first use."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from stepline_client.llama import MODEL_ALIAS, LlamaServer
from stepline_client.llama import llama_env as _build

__all__ = ["LLAMA_N_CTX", "MODEL_ALIAS", "LlamaServer", "llama_env"]

ROOT = Path(__file__).resolve().parents[1]
# The test server's context window: small, so a prompt over it is cheap to build.
LLAMA_N_CTX = 512


def llama_env() -> tuple[str, str]:
    """(python, GGUF path) of the llama env; the test fails with the build's output if it cannot."""
    started = time.monotonic()
    try:
        found = _build(ROOT)
    except RuntimeError as error:
        pytest.fail(str(error), pytrace=False)
    if time.monotonic() - started > 5:
        print(f"\nllama env built in {time.monotonic() - started:.0f}s")
    return found

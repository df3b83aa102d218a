#!/usr/bin/env bash
# Installs llama.cpp's OpenAI-compatible server (llama-cpp-python[server] from PyPI, pinned;
# built from source, a few minutes on 2 cores) into a venv outside the work tree, so later runs
# on the same machine reuse it. Prints the venv's python.
set -euo pipefail
venv="${SHIELDGATE_LLAMA_VENV:-${HOME}/.cache/shieldgate/llama-venv-0.3.36}"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import llama_cpp.server" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip >&2
  CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF" \
    "$venv/bin/pip" install -q "llama-cpp-python[server]==0.3.36" >&2
fi
echo "$venv/bin/python"

#!/usr/bin/env bash
# Builds llama.cpp's own OpenAI-compatible server (`llama-server`) from the llama.cpp sources
# that the llama-cpp-python sdist on PyPI vendors (pinned), with CMake and Ninja from PyPI, into
# a cache outside the work tree (a few minutes on 2 cores, once per machine). Prints the
# server's path. Unlike llama-cpp-python's Python server, it takes prompts as token ids.
# SHIELDGATE_LLAMA_SERVER_ROOT moves the cache.
set -euo pipefail
version=0.3.36
root="${SHIELDGATE_LLAMA_SERVER_ROOT:-${HOME}/.cache/shieldgate/llama-server-$version}"
server="$root/build/bin/llama-server"
# Portable CPU code (no -march=native), no UI assets, no downloads at build time.
cmake_args=(-G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF -DLLAMA_CURL=OFF
  -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF
  -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON)
stamp="$version ${cmake_args[*]}"
if [ -x "$server" ] && [ "$(cat "$root/built" 2>/dev/null)" == "$stamp" ]; then
  echo "$server"
  exit 0
fi
mkdir -p "$root"
rm -rf "$root/src" "$root/build" "$root/tools" "$root/built"
python3 -m venv "$root/tools"
"$root/tools/bin/pip" install -q --disable-pip-version-check cmake==4.4.5 ninja==1.13.2 >&2
# The sdist alone: its own build (a Python extension) is not wanted.
"$root/tools/bin/pip" download -q --disable-pip-version-check --no-deps \
  --no-binary llama-cpp-python "llama-cpp-python==$version" -d "$root/src" >&2
tar -xzf "$root/src/llama_cpp_python-$version.tar.gz" -C "$root/src" \
  "llama_cpp_python-$version/vendor/llama.cpp"
export PATH="$root/tools/bin:$PATH"
cmake -S "$root/src/llama_cpp_python-$version/vendor/llama.cpp" -B "$root/build" \
  "${cmake_args[@]}" >&2
cmake --build "$root/build" --target llama-server -j "$(nproc)" >&2
echo "$stamp" > "$root/built"
echo "$server"

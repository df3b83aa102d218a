#!/usr/bin/env bash
# Installs llama-cpp-python from PyPI (pinned; built from source, a few minutes on 2 cores) into a
# venv outside the work tree, so later runs on the same machine reuse it, for the peer benchmark
# (scripts/bench-peers.sh). Prints the venv's python.
#   scripts/llama-venv.sh native   built for this CPU's vector extensions (AVX2, AVX-512, VNNI,
#                                  BF16 where /proc/cpuinfo lists them), plus tokenizers. AMX
#                                  stays off: llama-cpp-python 0.3.36's AMX kernels die with
#                                  SIGILL (tileloadd) on this project's VMs.
#   scripts/llama-venv.sh avx2     the same, capped at AVX2 (no AVX-512): how an AVX2-only CPU
#                                  of this core runs it.
# The remote-scorer tests use llama.cpp's own server instead (scripts/llama-server.sh).
set -euo pipefail
version=0.3.36
cpu_args=""
isa="${1:-native}"
extensions="avx:AVX avx2:AVX2 fma:FMA f16c:F16C bmi2:BMI2"
case "$isa" in
  native) extensions+=" avx512f:AVX512 avx512vbmi:AVX512_VBMI avx512_vnni:AVX512_VNNI
    avx512_bf16:AVX512_BF16 avx_vnni:AVX_VNNI" ;;
  avx2) ;;
  *) echo "usage: scripts/llama-venv.sh [native|avx2]" >&2; exit 2 ;;
esac
venv_var="SHIELDGATE_LLAMA_${isa^^}_VENV"
venv="${!venv_var:-${HOME}/.cache/shieldgate/llama-venv-$isa-$version}"
flags=$(grep -m1 '^flags' /proc/cpuinfo)
package="llama-cpp-python==$version" extra="tokenizers==0.23.3 numpy"
for pair in $extensions; do
  if [[ " $flags " == *" ${pair%%:*} "* ]]; then cpu_args+=" -DGGML_${pair#*:}=ON"; fi
done
probe="import llama_cpp, tokenizers"
# GGML_NATIVE stays off: the build names its CPU flags itself (see above).
cmake_args="-DGGML_NATIVE=OFF$cpu_args -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF"
# The build arguments are kept in the venv: a venv built with other ones is rebuilt.
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "$probe" 2>/dev/null \
  || [ "$(cat "$venv/cmake-args" 2>/dev/null)" != "$cmake_args" ]; then
  python3 -m venv --clear "$venv"
  "$venv/bin/pip" install -q --upgrade pip >&2
  # --no-cache-dir: pip's wheel cache ignores CMAKE_ARGS and would hand back the other build.
  CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
    CMAKE_ARGS="$cmake_args" "$venv/bin/pip" install -q --no-cache-dir "$package" $extra >&2
  echo "$cmake_args" > "$venv/cmake-args"
fi
echo "$venv/bin/python"

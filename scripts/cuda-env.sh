#!/usr/bin/env bash
# Installs what `cargo build --features cuda` needs on a machine without a GPU or a CUDA toolkit,
# into a cache outside the work tree (reused by later runs), and prints the environment to use:
#   eval "$(scripts/cuda-env.sh)" && cargo build --release --features cuda
# From PyPI, pinned to CUDA 13.0 (newer PTX would not load under a 13.0 driver): the compiler
# driver (nvcc, cudafe++, ptxas, NVVM), the runtime headers and libraries, CCCL, cuBLAS, cuRAND
# and NVRTC. The driver library libcuda.so comes with the GPU's driver, never from here: the
# build links against a stub made from CUDA 13.0's own cuda.h, so a binary that needs a driver
# function 13.0 lacks fails to link here instead of failing to start on the GPU machine.
# SHIELDGATE_CUDA_ROOT moves the cache; CUDA_COMPUTE_CAP (default 90: H100, H200) picks the
# architecture candle's kernels are compiled for.
set -euo pipefail
root="${SHIELDGATE_CUDA_ROOT:-${HOME}/.cache/shieldgate/cuda-13.0}"
wheels=(nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88
  nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 nvidia-cublas==13.0.2.14
  nvidia-curand==10.4.0.35 nvidia-cuda-nvrtc==13.0.88)
stamp="${wheels[*]} stub-3"
toolkit="$root/site/nvidia/cu13"
if [ "$(cat "$root/installed" 2>/dev/null)" != "$stamp" ]; then
  rm -rf "$root/site" "$root/installed"
  mkdir -p "$root"
  python3 -m pip install -q --disable-pip-version-check --no-deps --only-binary=:all: \
    --target "$root/site" "${wheels[@]}" >&2
  # Unversioned names for the linker (the wheels ship only the versioned ones).
  for lib in cublas cublasLt curand nvrtc cudart; do
    versioned=$(cd "$toolkit/lib" && ls "lib$lib.so."* | grep -E "^lib$lib\.so\.[0-9]+$" | head -1)
    ln -sf "$versioned" "$toolkit/lib/lib$lib.so"
  done
  # The driver stub: every function CUDA 13.0's cuda.h declares (old entry points included),
  # each answering CUDA_ERROR_NO_DEVICE (100), in a library named like the driver's. Loaded at
  # run time it stands for a machine with a driver and no GPU (tests/cuda.rs).
  mkdir -p "$toolkit/lib/stubs"
  printf '#define __CUDA_API_VERSION_INTERNAL 1\n#include "cuda.h"\n' \
    | gcc -E -P -I "$toolkit/include" -x c - \
    | grep -oE '\bcu[A-Z][A-Za-z0-9_]*[[:space:]]*\(' | tr -d ' \t(' | sort -u \
    | sed 's/.*/int &(void) { return 100; }/' > "$root/libcuda-stub.c"
  gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$toolkit/lib/stubs/libcuda.so" \
    "$root/libcuda-stub.c"
  ln -sf libcuda.so "$toolkit/lib/stubs/libcuda.so.1"
  "$toolkit/bin/nvcc" --version >/dev/null
  echo "$stamp" > "$root/installed"
fi
cat <<ENV
export CUDA_ROOT="$toolkit"
export CUDA_HOME="$toolkit"
export CUDA_PATH="$toolkit"
export PATH="$toolkit/bin:\$PATH"
export CUDA_COMPUTE_CAP="\${CUDA_COMPUTE_CAP:-90}"
ENV

#!/usr/bin/env bash
# Builds shieldgate with the `cuda` feature on any x86-64 machine, GPU or not (the toolkit comes
# from scripts/cuda-env.sh). Prints the binary's path. Arguments go to cargo (e.g. --offline).
# The build lives outside the work tree (SHIELDGATE_CUDA_TARGET, default a per-machine cache),
# so a fresh clone on the same machine reuses the compiled CUDA kernels and dependencies.
# Like every build (.cargo/config.toml), the binary runs on any x86-64-v3 (AVX2) host, as it
# must: it is shipped to GPU machines whose processors differ from the building one's.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/cuda-env.sh)"
target="${SHIELDGATE_CUDA_TARGET:-${HOME}/.cache/shieldgate/cuda-target}"
cargo build --release --locked --features cuda --target-dir "$target" "$@" >&2
echo "$target/release/shieldgate"

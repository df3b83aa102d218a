#!/usr/bin/env bash
# Builds shieldgate with the `cuda` feature on any x86-64 machine, GPU or not (the toolkit comes
# from scripts/cuda-env.sh), into target/cuda/ so the CPU build is left alone. Prints the
# binary's path. Arguments go to cargo (e.g. --offline).
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/cuda-env.sh)"
cargo build --release --locked --features cuda --target-dir target/cuda "$@" >&2
echo "$PWD/target/cuda/release/shieldgate"

#!/usr/bin/env bash
# Prepares the GPU proof's payload in .gpu/ (ignored by git, carried to the GPU machine): the
# CUDA build of shieldgate, stripped, and the Gemma tokenizer, both xz-compressed (the GPU
# machine has no Rust and no network). Then, on the GPU machine, from the repository root:
#   scripts/gpu/proof.sh      (writes proof.json and proof.md to $OUT)
set -euo pipefail
cd "$(dirname "$0")/../.."
binary=$(scripts/cuda-build.sh)
scripts/fetch-tokenizer.sh
mkdir -p .gpu
strip -o .gpu/shieldgate "$binary"
xz -T2 -6 -f .gpu/shieldgate
xz -T2 -6 -kc tests/assets/tokenizer.json > .gpu/tokenizer.json.xz
ls -l .gpu >&2

#!/usr/bin/env bash
# Rehearses the GPU proof on this machine's CPU, so the prepared run cannot rot: the CUDA build
# (scripts/cuda-build.sh) with CUDA 13.0's libraries and the driver stub of scripts/cuda-env.sh,
# transformers from scripts/torch-venv.sh, the small test shape, short phases. Every step of
# scripts/gpu/proof.py runs; its numbers mean nothing here. Writes to ${1:-target/gpu-rehearsal}.
set -euo pipefail
cd "$(dirname "$0")/../.."
binary=$(scripts/cuda-build.sh)
python=$(scripts/torch-venv.sh)
eval "$(scripts/cuda-env.sh)"
LD_LIBRARY_PATH="$CUDA_ROOT/lib/stubs:$CUDA_ROOT/lib" "$python" scripts/gpu/proof.py \
  --bin "$binary" --tokenizer tests/assets/tokenizer.json --out "${1:-target/gpu-rehearsal}" \
  --device cpu --preset tiny --phase-s 1 --latency-checks 3 --batch-tokens 8192 \
  --prefill-chunk 512 --max-batch 16

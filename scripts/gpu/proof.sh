#!/usr/bin/env bash
# The GPU proof, run on the GPU machine from the repository root after scripts/gpu/pack.sh
# made .gpu/ here: parity, speed and the transformers peer in one run (scripts/gpu/proof.py).
# Writes proof.json, proof.md and the logs to $OUT (default ./gpu-proof).
set -uo pipefail
cd "$(dirname "$0")/../.."
out="${OUT:-$PWD/gpu-proof}"
mkdir -p "$out"
nvidia-smi > "$out/nvidia-smi.txt" 2>&1
PYTHONUNBUFFERED=1 python3 scripts/gpu/proof.py --bin .gpu/shieldgate.xz \
  --tokenizer .gpu/tokenizer.json.xz --out "$out" "$@" 2>&1 | tee "$out/proof.log"
exit "${PIPESTATUS[0]}"

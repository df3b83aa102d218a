#!/usr/bin/env bash
# Peer benchmark (engine-speed issue): one 4-policy check in shieldgate, transformers and
# llama.cpp, in one run, on one random-weight model of the exact ShieldGemma-2B shape, same
# token ids, same threads. Prints markdown tables (scripts/peers/bench.py says what is in them).
#
#   scripts/bench-peers.sh [bench.py options, e.g. --engines shieldgate:q8_0,llama:q8_0 --rounds 4]
#
# Installs what it needs outside the work tree (~/.cache/shieldgate: llama-cpp-python built for
# this CPU, torch + transformers; SHIELDGATE_TORCH_PYTHON reuses a python that has them) and
# writes the model once into SHIELDGATE_PEERS_DIR (default ~/.cache/shieldgate/peers, ~15 GB):
# a Hugging Face folder in bf16 (transformers; shieldgate f32/bf16) and GGUF files exported from
# it (Q8_0, Q4_K_M, F16: llama.cpp and shieldgate read the same files). A full run takes about an
# hour on 2 cores; SHIELDGATE_PEERS_PRESET=tiny makes a quick smoke run.
# SHIELDGATE_PEERS_ISA=avx2 caps every engine at AVX2 (shieldgate's tiles, candle, llama.cpp's
# build, torch and oneDNN), so that an AVX-512 machine runs them as an AVX2-only CPU of the
# same core would; its results go to results-avx2.json.
set -euo pipefail
cd "$(dirname "$0")/.."
preset="${SHIELDGATE_PEERS_PRESET:-2b}"
dir="${SHIELDGATE_PEERS_DIR:-${HOME}/.cache/shieldgate/peers}/$preset"
tokenizer=tests/assets/tokenizer.json
isa="${SHIELDGATE_PEERS_ISA:-native}"
results="$dir/results.json"
case "$isa" in
  native) ;;
  avx2)
    export SHIELDGATE_KERNELS=avx2 MISTRALRS_FORCE_AVX2=1 ATEN_CPU_CAPABILITY=avx2 \
      ONEDNN_MAX_CPU_ISA=AVX2
    results="$dir/results-avx2.json" ;;
  *) echo "bench-peers: SHIELDGATE_PEERS_ISA is native or avx2, not '$isa'" >&2; exit 2 ;;
esac
scripts/fetch-tokenizer.sh
cargo build --release --locked --quiet
bin=target/release/shieldgate
llama_python=$(scripts/llama-venv.sh "$isa")
torch_python=$(scripts/torch-venv.sh)
mkdir -p "$dir"
# Each file is written under a temporary name and renamed, so an interrupted run never leaves
# a half-written model behind for the next one to trust.
if [ ! -f "$dir/hf/config.json" ]; then
  rm -rf "$dir/hf.partial"
  "$bin" export --model "synthetic:$preset" --tokenizer "$tokenizer" --dtype bf16 \
    --out "$dir/hf.partial" >&2
  mv "$dir/hf.partial" "$dir/hf"
fi
gguf=()
for type in q8_0 q4_k_m f16; do
  file="$dir/model-$type.gguf"
  if [ ! -f "$file" ]; then
    "$bin" export --model "$dir/hf" --dtype "$type" --out "$dir/partial.gguf" --force >&2
    mv "$dir/partial.gguf" "$file"
  fi
  gguf+=(--gguf "$type=$file")
done
exec "$llama_python" scripts/peers/bench.py --shieldgate "$bin" --tokenizer "$tokenizer" \
  --hf "$dir/hf" "${gguf[@]}" --torch-python "$torch_python" --llama-python "$llama_python" \
  --json "$results" --isa "$isa" "$@"

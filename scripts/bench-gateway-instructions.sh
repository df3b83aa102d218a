#!/usr/bin/env bash
# The gateway's user-space instructions per request, counted by valgrind (callgrind): a
# deterministic figure, unlike times on a shared machine, for comparing two builds of the
# gateway. Each target is run alone (beside the "direct" target, which the benchmark always
# runs) and then "direct" alone; the difference in the whole process's instructions, divided
# by the requests, is what going through that proxy costs: its own threads plus the extra
# work of the client and upstream. System calls and the kernel are not counted.
#
# Usage: scripts/bench-gateway-instructions.sh [REQUESTS]   (default 2000 per target)
# Builds in target/valgrind with a portable CPU target (valgrind decodes neither AVX-512 nor
# AMD's SSE4a nor the SHA instructions). Installs valgrind from Debian if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
requests="${1:-2000}"
scripts/apt-install.sh valgrind valgrind
export CARGO_TARGET_DIR=target/valgrind
RUSTFLAGS="-C target-cpu=x86-64-v3" cargo build -q --release --bench gateway --features valgrind
bench=$(ls -t target/valgrind/release/deps/gateway-* | grep -v '\.d$' | head -1)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
# Instructions of the whole process (all threads) for one set of targets.
instructions() {
    SHIELDGATE_BENCH_CONCURRENCY=8 SHIELDGATE_BENCH_REQUESTS="$requests" SHIELDGATE_BENCH_ROUNDS=2 \
        SHIELDGATE_BENCH_TARGETS="$1" \
        valgrind --tool=callgrind --callgrind-out-file="$out/callgrind.out" "$bench" --bench \
        >"$out/log" 2>&1 || { cat "$out/log" >&2; exit 1; }
    grep -E '^(summary|totals):' "$out/callgrind.out" | head -1 | awk '{print $2}'
}
base=$(instructions "direct")
echo "instructions per request through each proxy (callgrind, $requests requests, concurrency 8)"
echo "| target | instructions/request |"
echo "|---|---|"
for target in "hyper proxy (floor)" "shieldgate" "shieldgate, parallel input check"; do
    total=$(instructions "$target")
    echo "| $target | $(( (total - base) / requests )) |"
done

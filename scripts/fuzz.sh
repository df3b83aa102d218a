#!/usr/bin/env bash
# Fuzzes the parsers with libFuzzer (cargo fuzz): the SSE parser and frame writer, each protocol
# adapter, the config and policy loaders, the audit readers (fuzz/fuzz_targets/).
#   scripts/fuzz.sh [SECONDS | runs=N] [TARGET ...]    all targets if none
# SECONDS per target (default 30) explores for that long; runs=N runs N inputs per target from a
# fixed seed (repeatable: what CI runs).
# Starts from the committed corpus (fuzz/corpus/TARGET, read only); new inputs go to
# target/fuzz-corpus/TARGET. A crash stops the run with the failing input under
# fuzz/artifacts/TARGET/: make it a regression test, fix, rerun.
# cargo fuzz needs nightly flags: RUSTC_BOOTSTRAP lets the stable toolchain take them. The code
# under test is safe Rust, so it runs without a sanitizer (panics and assertion failures are
# what is looked for); add --sanitizer address by hand for unsafe code.
set -euo pipefail
cd "$(dirname "$0")/.."
budget="${1:-30}"
shift || true
case "$budget" in
  runs=*) limit=(-runs="${budget#runs=}" -seed=1) ;;
  *) limit=(-max_total_time="$budget") ;;
esac
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(sse adapters config audit_records)
fi
if ! cargo fuzz --version 2>/dev/null | grep -q '0.13.2'; then
    cargo install cargo-fuzz --version 0.13.2 --locked
fi
export RUSTC_BOOTSTRAP=1
(cd fuzz && cargo fuzz build --sanitizer none)
status=0
for target in "${targets[@]}"; do
    work="target/fuzz-corpus/$target"
    log="target/fuzz-corpus/$target.log"
    mkdir -p "$work"
    echo "fuzz: $target ($budget)"
    if ! (cd fuzz && cargo fuzz run --sanitizer none "$target" "../$work" "corpus/$target" -- \
        "${limit[@]}" -max_len=8192 -timeout=10 -print_final_stats=1) >"$log" 2>&1; then
        status=1
        grep -E -A12 'panicked|ERROR|SUMMARY|Test unit written' "$log" || tail -20 "$log"
    fi
    grep -E 'stat::number_of_executed_units|stat::peak_rss_mb' "$log" | tr '\n' ' '
    echo
done
exit "$status"

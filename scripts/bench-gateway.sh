#!/usr/bin/env bash
# Gateway overhead benchmark against nginx (installed from Debian if missing); prints a table.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then
    apt-get install -y -q nginx-light >/dev/null 2>&1 || apt-get install -y -q nginx >/dev/null
fi
export SHIELDGATE_BENCH_NGINX="${SHIELDGATE_BENCH_NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}"
cargo bench --bench gateway

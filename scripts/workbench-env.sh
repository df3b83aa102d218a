#!/usr/bin/env bash
# Installs what the workbench browser test needs: Debian's chromium (apt, as root) and
# playwright-core from npm (tests/workbench/node_modules, pinned by package-lock.json).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v chromium >/dev/null; then
  if [ "$(id -u)" != 0 ]; then
    echo "chromium is missing: install Debian's chromium package (apt-get install chromium)" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi
if [ ! -d tests/workbench/node_modules/playwright-core ]; then
  (cd tests/workbench && npm ci --no-audit --no-fund --loglevel=error)
fi

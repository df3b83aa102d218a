#!/usr/bin/env bash
# Installs what the workbench browser test needs: Debian's chromium (apt, as root) and
# playwright-core from npm (tests/workbench/node_modules, pinned by package-lock.json).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/apt-install.sh chromium chromium
if [ ! -d tests/workbench/node_modules/playwright-core ]; then
  (cd tests/workbench && npm ci --no-audit --no-fund --loglevel=error)
fi

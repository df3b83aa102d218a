#!/usr/bin/env bash
# The official OpenAI and Anthropic Python SDKs (pinned in tests/sdk/requirements.txt), in a
# virtual environment under target/sdk-venv, for the test that drives the gateway with them.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/sdk-venv
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/sdk/requirements.txt

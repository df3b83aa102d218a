#!/usr/bin/env bash
# Installs Hugging Face transformers and torch from PyPI (pinned; a few GB) into a venv outside
# the work tree, for the peer benchmark and for regenerating the parity fixture. Prints the venv's
# python. SHIELDGATE_TORCH_PYTHON names an existing python that has them instead.
set -euo pipefail
if [ -n "${SHIELDGATE_TORCH_PYTHON:-}" ]; then
  echo "$SHIELDGATE_TORCH_PYTHON"
  exit 0
fi
venv="${SHIELDGATE_TORCH_VENV:-${HOME}/.cache/shieldgate/torch-venv}"
probe="import torch, transformers, tokenizers, safetensors, numpy"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "$probe" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip >&2
  "$venv/bin/pip" install -q torch==2.15.0 transformers==5.24.0 tokenizers==0.23.3 \
    safetensors numpy >&2
fi
echo "$venv/bin/python"

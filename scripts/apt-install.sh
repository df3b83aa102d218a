#!/usr/bin/env bash
# Installs a Debian package when its command is missing:  scripts/apt-install.sh COMMAND PACKAGE
set -euo pipefail
command="$1"
package="$2"
if command -v "$command" >/dev/null; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "$command is missing: install Debian's $package package (apt-get install $package)" >&2
  exit 1
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$package" >/dev/null

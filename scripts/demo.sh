#!/usr/bin/env bash
# Installs the package in .venv and runs `chargepoint demo`: the whole controller on simulated hardware
# against a central system embedded in the demo, both on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! python3 -c "import venv, ensurepip" 2>/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q .
exec .venv/bin/chargepoint demo "$@"

#!/usr/bin/env bash
# Installs the package in .venv and runs `chargepoint demo`: the whole controller on simulated hardware
# against a central system embedded in the demo, both on 127.0.0.1.
#
# The install is editable, so a change to the sources needs no reinstall; it is redone only when what an
# install records changes: pyproject.toml (dependencies, entry points, version), the top-level packages,
# or the interpreter behind .venv. A stamp in .venv remembers what the last install was made from.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! python3 -c "import venv, ensurepip" 2>/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
fi
[ -x .venv/bin/python ] || python3 -m venv .venv

stamp=.venv/.chargepoint-demo-install
installed_from() {
  {
    cat pyproject.toml
    cat .venv/pyvenv.cfg 2>/dev/null || true
    for d in chargepoint* hal*; do
      if [ -f "$d/__init__.py" ]; then printf 'package %s\n' "$d"; fi
    done
  } | sha256sum | cut -d' ' -f1
}
want="$(installed_from)"
if [ ! -x .venv/bin/chargepoint ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  rm -f "$stamp"
  .venv/bin/python -m pip install -q -e .
  printf '%s\n' "$want" >"$stamp" # written only after the install succeeded
fi
exec .venv/bin/chargepoint demo "$@"

#!/usr/bin/env bash
# Installs everything the tests need (Debian packages when run as root, Python packages in .venv) and runs
# the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  python3-venv python3-dev gcc pkg-config   # a virtual environment, and building C extensions
  libsystemd-dev                            # systemd-python (journal, sd_notify)
  libpcsclite-dev swig pcscd vsmartcard-vpcd # pyscard and a real PC/SC stack with a virtual reader
  socat                                     # pseudo-terminal pairs for Modbus RTU and RAPI emulators
  systemd                                   # systemd-analyze verify/security for the unit file
  shellcheck                                # lint of deploy/install.sh
  librsvg2-bin                              # renders hardware-docs/wiring.svg to check it is readable
  ngspice                                   # simulates the pilot board (tests/test_pilot_circuit.py)
  chromium chromium-driver                  # the web UI in a real headless browser (Selenium; never downloaded)
  mosquitto mosquitto-clients               # a real MQTT broker for tests/test_mqtt*.py (started by the tests)
)

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing Debian packages: ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
elif ! command -v socat >/dev/null 2>&1; then
  echo "note: not root; tests that need socat, pcscd or systemd-analyze skip with a reason" >&2
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e ".[pcsc,systemd,test]"
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"

"""systemd/chargepoint.service: `systemd-analyze verify` is clean and the hardening score stays low."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "systemd" / "chargepoint.service"
SECURITY_THRESHOLD = 2.5  # "OK" band; the unit scored 1.9 when written

analyze = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    analyze is None, reason="systemd-analyze not installed (apt-get install -y systemd)"
)


def unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        settings.setdefault(key, []).append(value)
    return settings


@pytest.fixture
def installed_unit(tmp_path: Path) -> Path:
    """The unit with /opt/chargepoint pointing into tmp_path, where executables really exist.

    verify checks that ExecStart's binary exists, so the test builds the release layout the
    installer creates (a real executable behind venv -> current/venv) instead of weakening the unit.
    """
    opt = tmp_path / "opt"
    bin_dir = opt / "releases" / "0.1.0" / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    exe = bin_dir / "chargepoint"
    exe.write_text("#!/bin/sh\nexit 0\n")
    exe.chmod(0o755)
    (opt / "current").symlink_to("releases/0.1.0")
    (opt / "venv").symlink_to("current/venv")
    text = UNIT.read_text().replace("/opt/chargepoint", str(opt))
    assert str(opt / "venv/bin/chargepoint") in text
    out = tmp_path / "chargepoint.service"  # the file name is the unit name
    out.write_text(text)
    return out


@needs_analyze
def test_systemd_analyze_verify_is_clean(installed_unit: Path) -> None:
    proc = subprocess.run(
        [analyze, "verify", "--man=no", str(installed_unit)], capture_output=True, text=True, timeout=60
    )
    # Unknown keys, bad values and missing binaries are only warnings on stderr: any output is a failure.
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "", proc.stderr


@needs_analyze
def test_verify_would_catch_a_typo(installed_unit: Path) -> None:
    """Guards the test above: a misspelt key must produce output."""
    installed_unit.write_text(installed_unit.read_text().replace("WatchdogSec=", "WatchDogSecs="))
    proc = subprocess.run(
        [analyze, "verify", "--man=no", str(installed_unit)], capture_output=True, text=True, timeout=60
    )
    assert "WatchDogSecs" in proc.stderr


@needs_analyze
def test_security_exposure_below_threshold(installed_unit: Path) -> None:
    proc = subprocess.run(
        [analyze, "security", "--offline=yes", "--no-pager", str(installed_unit)],
        capture_output=True, text=True, timeout=60,
    )
    m = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", proc.stdout)
    assert m, proc.stdout[-2000:] + proc.stderr
    score = float(m.group(1))
    print(f"systemd-analyze security: exposure {score} (threshold {SECURITY_THRESHOLD})")
    assert score < SECURITY_THRESHOLD


def test_unit_keeps_the_hardware_reachable() -> None:
    s = unit_settings()
    assert s["Type"] == ["notify"]
    assert s["NotifyAccess"] == ["main"]
    assert float(s["WatchdogSec"][0]) > 0
    assert s["Restart"] == ["on-failure"]
    assert s["User"] == ["chargepoint"]
    assert set(s["SupplementaryGroups"][0].split()) >= {"gpio", "dialout", "spi"}
    assert s["ExecStart"] == ["/opt/chargepoint/venv/bin/chargepoint run --config /etc/chargepoint/chargepoint.toml"]
    assert s["StateDirectory"] == ["chargepoint"] and s["RuntimeDirectory"] == ["chargepoint"]
    assert s["WorkingDirectory"] == ["/var/lib/chargepoint"]  # lgpio's FIFOs
    allowed = {v.split()[0] for v in s["DeviceAllow"]}
    assert {"char-gpiochip", "char-ttyUSB", "char-ttyAMA", "char-ttyS", "char-spi"} <= allowed
    assert all(v.split()[1] == "rw" for v in s["DeviceAllow"])
    assert "/sys/class/pwm" in s["ReadWritePaths"]
    assert any("/run/pcscd" in v for v in s["ReadWritePaths"])
    # these would hide or freeze the hardware
    for forbidden in ("PrivateDevices", "ProtectKernelTunables", "ProcSubset"):
        assert forbidden not in s, forbidden
    assert s["NoNewPrivileges"] == ["yes"] and s["ProtectSystem"] == ["strict"]
    assert s["ProtectHome"] == ["yes"] and s["PrivateTmp"] == ["yes"]
    assert s["KillMode"] == ["mixed"] and s["KillSignal"] == ["SIGTERM"]
    assert int(s["TimeoutStopSec"][0]) >= 5


def test_shell_variables_are_escaped_from_systemd() -> None:
    """systemd expands $VAR itself in Exec lines; a shell variable must be written $$VAR."""
    for key in ("ExecStartPre", "ExecStopPost"):
        for line in unit_settings().get(key, []):
            assert re.search(r"(?<!\$)\$(?!\$)[A-Za-z_{]", line.replace("$$", "")) is None, line


def test_unit_parses_as_ini_sections() -> None:
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    cp.read_string(UNIT.read_text())
    assert cp.sections() == ["Unit", "Service", "Install"]
    assert cp["Install"]["WantedBy"] == "multi-user.target"

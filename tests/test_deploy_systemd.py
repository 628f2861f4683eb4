"""systemd/chargepoint.service and chargepoint-local-controller.service: `systemd-analyze verify` is clean and
the hardening score stays low."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "systemd" / "chargepoint.service"
LC_UNIT = REPO / "systemd" / "chargepoint-local-controller.service"
UNIT_FILES = [UNIT, LC_UNIT]
SECURITY_THRESHOLD = 2.5  # "OK" band; the unit scored 1.9 when written

analyze = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    analyze is None, reason="systemd-analyze not installed (apt-get install -y systemd)"
)


def unit_settings(unit: Path = UNIT) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        settings.setdefault(key, []).append(value)
    return settings


@pytest.fixture(params=UNIT_FILES, ids=lambda p: p.stem)
def installed_unit(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
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
    unit: Path = request.param
    text = unit.read_text().replace("/opt/chargepoint", str(opt))
    assert str(opt / "venv/bin/chargepoint") in text
    out = tmp_path / unit.name  # the file name is the unit name
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
    for key in ("ExecStart", "ExecStartPre", "ExecStopPost"):
        for line in unit_settings(UNIT).get(key, []) + unit_settings(LC_UNIT).get(key, []):
            assert re.search(r"(?<!\$)\$(?!\$)[A-Za-z_{]", line.replace("$$", "")) is None, line


@pytest.mark.parametrize("unit", UNIT_FILES, ids=lambda p: p.stem)
def test_unit_parses_as_ini_sections(unit: Path) -> None:
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    cp.read_string(unit.read_text())
    assert cp.sections() == ["Unit", "Service", "Install"]
    assert cp["Install"]["WantedBy"] == "multi-user.target"


def test_local_controller_unit() -> None:
    """The local controller switches nothing: notify + watchdog like the charge point, its own state and
    runtime directories (chargepoint.service removes /run/chargepoint when it stops), a serial port for the
    site meter and nothing else of the hardware."""
    s = unit_settings(LC_UNIT)
    assert s["Type"] == ["notify"] and s["NotifyAccess"] == ["main"]
    assert float(s["WatchdogSec"][0]) >= 3  # the planner feeds it at least once a second
    assert s["Restart"] == ["on-failure"]
    exec_start = s["ExecStart"][0].split()
    assert exec_start[:2] == ["/opt/chargepoint/venv/bin/chargepoint", "local-controller"]
    args = dict(zip(exec_start[2::2], exec_start[3::2], strict=True))
    assert args["--config"] == "/etc/chargepoint/local-controller.toml"
    assert args["--state-dir"] == "/var/lib/" + s["StateDirectory"][0]
    assert args["--status-socket"].startswith("/run/" + s["RuntimeDirectory"][0] + "/")
    assert s["StateDirectory"] != unit_settings(UNIT)["StateDirectory"]
    assert s["RuntimeDirectory"] != unit_settings(UNIT)["RuntimeDirectory"]
    assert s["SupplementaryGroups"] == ["dialout"]
    allowed = {v.split()[0] for v in s["DeviceAllow"]}
    assert allowed == {"char-ttyUSB", "char-ttyACM", "char-ttyAMA", "char-ttyS"}
    assert "ReadWritePaths" not in s  # no release tree, no sysfs
    assert s["ProtectKernelTunables"] == ["yes"] and s["ProtectSystem"] == ["strict"]

"""deploy/install.sh in --root mode: install twice, upgrade, uninstall, purge; plus shellcheck and udev syntax."""

from __future__ import annotations

import hashlib
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "deploy" / "install.sh"
BOOKWORM_CONFIG = """\
# For more options and information see
# http://rptl.io/configtxt
dtparam=audio=on
#dtparam=i2c_arm=on
#dtparam=spi=on
camera_auto_detect=1
display_auto_detect=1
auto_initramfs=1
dtoverlay=vc4-kms-v3d
max_framebuffers=2
disable_fw_kms_setup=1
arm_64bit=1
disable_overscan=1
arm_boost=1

[cm4]
otg_mode=1

[all]
"""
CMDLINE = (
    "console=serial0,115200 console=tty1 root=PARTUUID=abc-02 rootfstype=ext4 fsck.repair=yes rootwait\n"
)
WANTED = ["enable_uart=1", "dtoverlay=disable-bt", "dtoverlay=pwm,pin=18,func=2", "dtparam=spi=on"]


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """A checkout with this repo's deploy files and a stand-in example config (the lead owns the real one)."""
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(REPO / "pyproject.toml", src)
    for d in ("deploy", "systemd", "hardware-docs"):
        if (REPO / d).is_dir():
            shutil.copytree(REPO / d, src / d)
    (src / "hardware-docs").mkdir(exist_ok=True)
    (src / "deploy" / "chargepoint.example.toml").write_text('[chargepoint]\nid = "CP-EXAMPLE"\n')
    return src


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    (r / "boot" / "firmware").mkdir(parents=True)
    (r / "boot" / "firmware" / "config.txt").write_text(BOOKWORM_CONFIG)
    (r / "boot" / "firmware" / "cmdline.txt").write_text(CMDLINE)
    set_model(r, "Raspberry Pi 4 Model B Rev 1.5")
    return r


def set_model(root: Path, model: str | None) -> None:
    """What the kernel shows in /proc/device-tree/model: the model string, NUL-terminated."""
    f = root / "proc" / "device-tree" / "model"
    if model is None:
        f.unlink(missing_ok=True)
        return
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_bytes(model.encode() + b"\0")


def run(root: Path, source: Path, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        ["bash", str(SCRIPT), "--root", str(root), "--source", str(source), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if ok:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def tree(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = "-> " + str(p.readlink())
        elif p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            out[rel] = "dir"
    return out


def active_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def test_install_twice_is_idempotent(root: Path, source: Path) -> None:
    first = run(root, source)
    assert "REBOOT REQUIRED" in first.stdout
    boot = root / "boot" / "firmware" / "config.txt"
    lines = active_lines(boot.read_text())
    for want in WANTED:
        assert lines.count(want) == 1, want
    assert "console=serial0" not in (root / "boot/firmware/cmdline.txt").read_text()
    assert "console=tty1" in (root / "boot/firmware/cmdline.txt").read_text()
    assert (root / "boot/firmware/config.txt.chargepoint-backup").read_text() == BOOKWORM_CONFIG

    config = root / "etc/chargepoint/chargepoint.toml"
    assert config.read_text() == '[chargepoint]\nid = "CP-EXAMPLE"\n'
    assert stat.S_IMODE(config.stat().st_mode) == 0o640
    assert stat.S_IMODE((root / "etc/chargepoint").stat().st_mode) == 0o750
    assert stat.S_IMODE((root / "var/lib/chargepoint").stat().st_mode) == 0o750
    assert (root / "etc/systemd/system/chargepoint.service").read_bytes() == (
        source / "systemd/chargepoint.service"
    ).read_bytes()
    assert (root / "etc/udev/rules.d/99-chargepoint.rules").is_file()
    blacklist = (root / "etc/modprobe.d/chargepoint-blacklist-nfc.conf").read_text()
    assert "blacklist pn533" in blacklist and "blacklist nfc" in blacklist
    assert (
        "org.debian.pcsc-lite.access_pcsc" in (root / "etc/polkit-1/rules.d/50-chargepoint.rules").read_text()
    )
    opt = root / "opt/chargepoint"
    assert (opt / "current").readlink() == Path("releases/0.1.0")
    assert (opt / "venv").readlink() == Path("current/venv")
    assert (opt / "releases/0.1.0/.complete").read_text() == "0.1.0"
    # what --root mode does not do itself, it prints
    for planned in (
        "apt-get install",
        "useradd --system",
        "python3 -m venv --system-site-packages",
        "systemctl enable chargepoint.service",
        "chown root:chargepoint",
    ):
        assert planned in first.stdout, planned
    assert "systemctl start" not in first.stdout  # reboot pending: starts at boot

    config.write_text('[chargepoint]\nid = "CP-EDITED"\n')  # the operator edits the config
    before = tree(root)
    second = run(root, source)
    assert "REBOOT REQUIRED" not in second.stdout
    assert "already has UART, PWM and SPI" in second.stdout
    assert "keeping existing /etc/chargepoint/chargepoint.toml" in second.stdout
    assert tree(root) == before  # nothing changed, nothing duplicated
    assert "systemctl start chargepoint.service" in second.stdout


def test_only_missing_boot_lines_are_added(root: Path, source: Path) -> None:
    boot = root / "boot/firmware/config.txt"
    boot.write_text(BOOKWORM_CONFIG + "enable_uart=1\n  dtparam=spi=on\n")
    run(root, source)
    lines = active_lines(boot.read_text())
    for want in WANTED:
        assert lines.count(want) == 1, want


def test_upgrade_keeps_config_and_restores_shipped_files(root: Path, source: Path) -> None:
    run(root, source)
    config = root / "etc/chargepoint/chargepoint.toml"
    config.write_text("# mine\n")
    unit = root / "etc/systemd/system/chargepoint.service"
    unit.write_text("[Service]\nExecStart=/bin/false\n")
    up = run(root, source, "--upgrade")
    assert config.read_text() == "# mine\n"
    assert unit.read_bytes() == (source / "systemd/chargepoint.service").read_bytes()
    assert "systemctl try-restart chargepoint.service" in up.stdout


def test_upgrade_to_a_new_version_keeps_the_previous_release(root: Path, source: Path) -> None:
    run(root, source)
    pyproject = source / "pyproject.toml"
    pyproject.write_text(re.sub(r'(?m)^version = ".*"$', 'version = "0.2.0"', pyproject.read_text()))
    run(root, source, "--upgrade")
    opt = root / "opt/chargepoint"
    assert (opt / "current").readlink() == Path("releases/0.2.0")
    assert (opt / "previous").readlink() == Path("releases/0.1.0")
    assert (opt / "releases/0.2.0/.complete").is_file()


def test_upgrade_without_install_is_refused(root: Path, source: Path) -> None:
    proc = run(root, source, "--upgrade", ok=False)
    assert proc.returncode == 1
    assert "nothing to upgrade" in proc.stderr


def test_uninstall_keeps_config_and_state_purge_removes_all(root: Path, source: Path) -> None:
    run(root, source)
    link = root / "usr/local/bin/chargepoint"  # `chargepoint status` works from any shell
    assert link.is_symlink() and str(link.readlink()) == "/opt/chargepoint/venv/bin/chargepoint"
    (root / "var/lib/chargepoint/store.sqlite").write_text("state")
    out = run(root, source, "--uninstall").stdout
    assert "systemctl disable --now chargepoint.service" in out
    for gone in (
        "etc/systemd/system/chargepoint.service",
        "etc/udev/rules.d/99-chargepoint.rules",
        "etc/modprobe.d/chargepoint-blacklist-nfc.conf",
        "opt/chargepoint",
    ):
        assert not (root / gone).exists(), gone
    assert not link.is_symlink()
    assert (root / "etc/chargepoint/chargepoint.toml").is_file()
    assert (root / "var/lib/chargepoint/store.sqlite").read_text() == "state"
    assert active_lines((root / "boot/firmware/config.txt").read_text()).count("enable_uart=1") == 1

    out = run(root, source, "--uninstall", "--purge").stdout
    assert not (root / "etc/chargepoint").exists()
    assert not (root / "var/lib/chargepoint").exists()
    assert "userdel chargepoint" in out
    assert (root / "boot/firmware/config.txt").read_text() == BOOKWORM_CONFIG


def test_dry_run_changes_nothing(root: Path, source: Path) -> None:
    before = tree(root)
    out = run(root, source, "--dry-run").stdout
    assert "dry run" in out and "would run: install" in out
    assert tree(root) == before


def test_bad_options_are_explained(root: Path, source: Path) -> None:
    proc = run(root, source, "--frobnicate", ok=False)
    assert proc.returncode == 2
    assert "unknown option" in proc.stderr and "usage:" in proc.stderr
    proc = run(root, source, "--purge", ok=False)
    assert proc.returncode == 1 and "--purge only goes with --uninstall" in proc.stderr


def test_missing_example_config_is_a_clear_error(root: Path, source: Path) -> None:
    (source / "deploy/chargepoint.example.toml").unlink()
    proc = run(root, source, ok=False)
    assert proc.returncode == 1
    assert "chargepoint.example.toml is missing" in proc.stderr


def test_shellcheck() -> None:
    exe = shutil.which("shellcheck")
    if exe is None:
        pytest.skip("shellcheck not installed (apt-get install -y shellcheck)")
    proc = subprocess.run([exe, "--severity=style", str(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout


_UDEV_TOKEN = re.compile(
    r'^(?P<key>[A-Z_]+)(?:\{(?P<attr>[^}]+)\})?\s*(?P<op>==|!=|\+=|-=|:=|=)\s*"(?P<value>[^"]*)"$'
)
_UDEV_MATCH_KEYS = {
    "ACTION",
    "KERNEL",
    "KERNELS",
    "SUBSYSTEM",
    "SUBSYSTEMS",
    "DRIVER",
    "DRIVERS",
    "ATTR",
    "ATTRS",
    "ENV",
    "TAG",
    "PROGRAM",
}
_UDEV_ASSIGN_KEYS = {"SYMLINK", "GROUP", "MODE", "OWNER", "RUN", "TAG", "ENV", "NAME"}


def test_udev_rules_parse_and_name_the_devices() -> None:
    text = (REPO / "deploy/99-chargepoint.rules").read_text()
    symlinks = set()
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        assert not line.rstrip().endswith("\\"), f"line {n}: continuation lines are not used here"
        tokens = re.findall(r'[A-Z_]+(?:\{[^}]+\})?\s*(?:==|!=|\+=|-=|:=|=)\s*"[^"]*"', line)
        rest = re.sub(r'[A-Z_]+(?:\{[^}]+\})?\s*(?:==|!=|\+=|-=|:=|=)\s*"[^"]*"', "", line)
        assert set(rest) <= {",", " "}, f"line {n}: cannot parse {rest!r}"
        has_match = False
        for tok in tokens:
            m = _UDEV_TOKEN.match(tok)
            assert m, f"line {n}: {tok!r}"
            key, op = m["key"], m["op"]
            if op in ("==", "!="):
                assert key in _UDEV_MATCH_KEYS, f"line {n}: {key} cannot be matched"
                has_match = True
            else:
                assert key in _UDEV_ASSIGN_KEYS, f"line {n}: {key} cannot be assigned"
            if key == "SYMLINK":
                symlinks.add(m["value"])
            if key == "MODE":
                assert re.fullmatch(r"0[0-7]{3}", m["value"]), f"line {n}: MODE {m['value']}"
        assert has_match, f"line {n}: a rule without a match applies to every device"
    assert symlinks == {"chargepoint-meter", "chargepoint-evse", "chargepoint-rfid"}


# ---------------------------------------------------------------- one boot configuration per board

PI5_WANTED = ["dtparam=uart0=on", "dtoverlay=pwm,pin=18,func=2", "dtparam=spi=on"]
BCM_WANTED = WANTED  # Pi 3, Pi 4, Zero 2 W: PL011 freed from Bluetooth, PWM0 channel 0 on GPIO18


@pytest.mark.parametrize(
    ("model", "wanted", "unwanted"),
    [
        ("Raspberry Pi 5 Model B Rev 1.0", PI5_WANTED, ["dtoverlay=disable-bt", "enable_uart=1"]),
        ("Raspberry Pi 4 Model B Rev 1.5", BCM_WANTED, ["dtparam=uart0=on"]),
        ("Raspberry Pi 3 Model B Plus Rev 1.3", BCM_WANTED, ["dtparam=uart0=on"]),
        ("Raspberry Pi Zero 2 W Rev 1.0", BCM_WANTED, ["dtparam=uart0=on"]),
    ],
)
def test_boot_configuration_follows_the_board(root: Path, source: Path, model: str, wanted: list[str],
                                              unwanted: list[str]) -> None:
    set_model(root, model)
    out = run(root, source, "--no-start")
    assert model in out.stdout
    # which device the header's UART is on this board (on a Pi 5 serial0 is the debug connector)
    assert 'port = "/dev/ttyAMA0"' in out.stdout
    assert ("debug connector" in out.stdout) == model.startswith("Raspberry Pi 5")
    lines = active_lines((root / "boot/firmware/config.txt").read_text())
    for want in wanted:
        assert lines.count(want) == 1, (model, want)
    for line in unwanted:
        assert line not in lines, (model, line)
    second = run(root, source, "--no-start")  # idempotent for every board
    assert active_lines((root / "boot/firmware/config.txt").read_text()) == lines
    assert "REBOOT REQUIRED" not in second.stdout


def test_pi5_keeps_the_debug_console_and_bluetooth(root: Path, source: Path) -> None:
    """On a Pi 5 serial0 is the debug connector (ttyAMA10), not GPIO14/15: its console is no conflict,
    one on ttyAMA0 (GPIO14/15) is; Bluetooth has its own UART, so hciuart stays."""
    set_model(root, "Raspberry Pi 5 Model B Rev 1.0")
    cmdline = root / "boot/firmware/cmdline.txt"
    out = run(root, source, "--no-start")
    assert cmdline.read_text() == CMDLINE
    assert "hciuart" not in out.stdout
    cmdline.write_text("console=ttyAMA0,115200 " + CMDLINE)
    run(root, source, "--no-start")
    assert cmdline.read_text() == CMDLINE


def test_pi4_frees_the_uart_from_console_and_bluetooth(root: Path, source: Path) -> None:
    out = run(root, source, "--no-start")
    assert "console=serial0" not in (root / "boot/firmware/cmdline.txt").read_text()
    assert "systemctl disable hciuart.service" in out.stdout


@pytest.mark.parametrize("model", [None, "Raspberry Pi Model B Rev 2", "Radxa ROCK 5B"])
def test_unknown_board_gets_a_warning_and_no_overlay_guesswork(root: Path, source: Path,
                                                                model: str | None) -> None:
    set_model(root, model)
    out = run(root, source, "--no-start")
    assert "board not recognised" in out.stderr
    lines = active_lines((root / "boot/firmware/config.txt").read_text())
    assert "dtparam=spi=on" in lines  # the same on every Pi
    assert not [line for line in lines if line.startswith("dtoverlay=pwm") or "uart" in line
                or line == "dtoverlay=disable-bt"]
    assert (root / "boot/firmware/cmdline.txt").read_text() == CMDLINE


def test_charge_point_install_ships_the_local_controller_unit_disabled(root: Path, source: Path) -> None:
    out = run(root, source).stdout
    unit = root / "etc/systemd/system/chargepoint-local-controller.service"
    assert unit.read_bytes() == (REPO / "systemd/chargepoint-local-controller.service").read_bytes()
    assert "enable chargepoint-local-controller.service" not in out
    assert not (root / "etc/chargepoint/local-controller.toml").exists()
    assert (root / "opt/chargepoint/doc/local-controller.example.toml").is_file()  # the unit's Documentation=


def test_local_controller_beside_the_charge_point(root: Path, source: Path) -> None:
    out = run(root, source, "--local-controller").stdout
    lc_config = root / "etc/chargepoint/local-controller.toml"
    assert lc_config.read_bytes() == (REPO / "deploy/local-controller.example.toml").read_bytes()
    assert stat.S_IMODE(lc_config.stat().st_mode) == 0o640
    assert "systemctl enable chargepoint.service" in out
    assert "systemctl enable chargepoint-local-controller.service" in out
    # not started on the example: its passwords are public
    assert "systemctl start chargepoint-local-controller.service" not in out
    assert "not started: edit /etc/chargepoint/local-controller.toml" in out
    assert "chargepoint status --socket /run/chargepoint-lc/status.sock" in out
    # an edited configuration survives a second run (which starts it) and an upgrade
    lc_config.write_text("# edited\n")
    out = run(root, source, "--local-controller").stdout
    assert "systemctl start chargepoint-local-controller.service" in out
    out = run(root, source, "--upgrade").stdout
    assert lc_config.read_text() == "# edited\n"
    assert "systemctl try-restart chargepoint-local-controller.service" in out
    assert "systemctl try-restart chargepoint.service" in out


def test_local_controller_only_leaves_the_charger_setup_alone(root: Path, source: Path) -> None:
    out = run(root, source, "--local-controller-only").stdout
    assert (root / "etc/chargepoint/local-controller.toml").is_file()
    assert not (root / "etc/chargepoint/chargepoint.toml").exists()
    assert (root / "boot/firmware/config.txt").read_text() == BOOKWORM_CONFIG  # no UART/PWM/SPI lines
    assert "console=serial0" in (root / "boot/firmware/cmdline.txt").read_text()
    assert "REBOOT REQUIRED" not in out
    assert re.search(r"systemctl \S+( --now)? chargepoint\.service", out) is None, out
    assert "systemctl enable chargepoint-local-controller.service" in out
    # a plain repair run and a plain --upgrade keep it that way
    for args in ((), ("--upgrade",)):
        out = run(root, source, *args).stdout
        assert "it stays alone" in out
        assert re.search(r"systemctl \S+( --now)? chargepoint\.service", out) is None, out
        assert "systemctl start chargepoint-local-controller.service" in out
        assert not (root / "etc/chargepoint/chargepoint.toml").exists()
        assert (root / "boot/firmware/config.txt").read_text() == BOOKWORM_CONFIG
    assert re.search(r"systemctl \S+( --now)? chargepoint\.service", out) is None, out
    assert not (root / "etc/chargepoint/chargepoint.toml").exists()
    assert "systemctl try-restart chargepoint-local-controller.service" in out


def test_uninstall_removes_the_local_controller_purge_its_state(root: Path, source: Path) -> None:
    run(root, source, "--local-controller")
    (root / "var/lib/chargepoint-lc").mkdir(parents=True)
    (root / "var/lib/chargepoint-lc/lc.sqlite").write_text("state")
    out = run(root, source, "--uninstall").stdout
    assert "systemctl disable --now chargepoint-local-controller.service" in out
    assert not (root / "etc/systemd/system/chargepoint-local-controller.service").exists()
    assert (root / "etc/chargepoint/local-controller.toml").is_file()
    assert (root / "var/lib/chargepoint-lc/lc.sqlite").is_file()
    run(root, source, "--uninstall", "--purge")
    assert not (root / "var/lib/chargepoint-lc").exists()
    assert not (root / "etc/chargepoint").exists()

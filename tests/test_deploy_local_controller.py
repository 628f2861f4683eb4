"""The local controller as a systemd service: its example configuration, check-config, and the sd_notify
protocol its unit (systemd/chargepoint-local-controller.service, Type=notify, WatchdogSec=) relies on, spoken
to a real datagram socket as systemd's."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chargepoint.localcontroller.config import load, parse
from chargepoint.localcontroller.server import LocalController
from chargepoint.localcontroller.store import LcStore

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "deploy" / "local-controller.example.toml"
UNIT = ROOT / "systemd" / "chargepoint-local-controller.service"

pytestmark = pytest.mark.timeout(60)


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "chargepoint", "check-config", str(path)], capture_output=True,
                          text=True, timeout=30, cwd=ROOT)


def test_the_example_configuration_is_valid_and_matches_the_unit() -> None:
    lc = load(EXAMPLE)
    assert lc.listen_port == 9100  # what install.sh tells the installer the boxes connect to
    assert [c.spec.id for c in lc.charge_points] == ["CP-1", "CP-2"]
    passwords = [c.password for c in lc.charge_points]
    assert all(passwords) and len(set(passwords)) == len(passwords)  # one per box, none left open
    proc = check_config(EXAMPLE)
    assert proc.returncode == 0, proc.stderr
    assert "OK — local controller LC-GARAGE, 2 charge point(s) (CP-1, CP-2), site fuse 63/63/63 A" in proc.stdout
    assert "/etc/chargepoint/local-controller.toml" in UNIT.read_text()


def test_check_config_names_a_bad_local_controller_key(tmp_path: Path) -> None:
    bad = tmp_path / "lc.toml"
    bad.write_text(EXAMPLE.read_text().replace("site_limit_a = 63", "site_limit_a = -5"))
    proc = check_config(bad)
    assert proc.returncode == 2
    assert "problem(s) in [local_controller]" in proc.stderr and "site_limit_a" in proc.stderr
    assert "unknown section" not in proc.stderr  # not judged as a charge point's file


class FakeSystemd:
    """The notify socket systemd creates for a Type=notify unit: collects the datagrams."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.messages: list[str] = []

    def drain(self) -> list[str]:
        while True:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return self.messages

    async def wait_for(self, prefix: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            msgs = self.drain()
            for m in msgs[seen:]:
                if m.startswith(prefix):
                    return m
            seen = len(msgs)
            await asyncio.sleep(0.05)
        raise AssertionError(f"no {prefix!r} within {timeout} s; got {self.messages}")


async def test_ready_watchdog_status_and_stopping(tmp_path: Path) -> None:
    # a short path: AF_UNIX names are limited to 108 bytes
    sockdir = Path(os.environ.get("TMPDIR", "/tmp")) / f"lc-notify-{os.getpid()}"
    sockdir.mkdir(exist_ok=True)
    systemd = FakeSystemd(sockdir / "notify")
    cfg = tmp_path / "lc.toml"
    cfg.write_text('[local_controller]\nid = "LC-SD"\ncsms_url = "ws://127.0.0.1:9"\nlisten = "127.0.0.1:0"\n'
                   'site_limit_a = 32\n[[local_controller.charge_points]]\nid = "CP-1"\npassword = "pw-1"\n')
    env = {**os.environ, "NOTIFY_SOCKET": str(systemd.path), "WATCHDOG_USEC": "1000000"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "chargepoint", "local-controller", "--config", str(cfg), "--state-dir",
        str(tmp_path / "state"), env=env, cwd=ROOT, stdout=asyncio.subprocess.PIPE,
        stderr=(tmp_path / "lc.log").open("wb"))
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        assert "listening on ws://127.0.0.1:" in line, (line, (tmp_path / "lc.log").read_text())
        await systemd.wait_for("READY=1", 10)
        status = await systemd.wait_for("STATUS=", 10)
        assert status == "STATUS=CSMS offline · 0/1 boxes connected · 0 charging · site 32/32 A", status
        # fed by the planner: every 0.5 s for WatchdogSec=1 s, i.e. several within 2 s
        await asyncio.sleep(2.0)
        pings = [m for m in systemd.drain() if m == "WATCHDOG=1"]
        assert len(pings) >= 3, systemd.messages
        assert systemd.messages.index("READY=1") < systemd.messages.index("WATCHDOG=1")
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 15) == 0
        assert systemd.drain()[-1] == "STOPPING=1"
        assert "withholding WATCHDOG=1" not in (tmp_path / "lc.log").read_text()  # never withheld: the planner kept ticking
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        systemd.sock.close()
        systemd.path.unlink(missing_ok=True)
        sockdir.rmdir()


async def test_a_dead_planner_is_a_health_problem() -> None:
    """The watchdog's problem(): with the site planner gone nothing would lower an allocation any more, so the
    ping stops and systemd restarts the unit (the boxes keep their safe defaults meanwhile)."""
    config = parse({"local_controller": {"id": "LC-H", "csms_url": "ws://127.0.0.1:9", "listen": "127.0.0.1:0",
                                         "site_limit_a": 32, "charge_points": [{"id": "CP-1"}]}})
    store = LcStore.open(None)
    lc = LocalController(config, store)
    await lc.start()
    try:
        assert lc.health_problem() is None
        planner = next(t for t in lc._tasks if t.get_name() == "site planner")
        planner.cancel()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert lc.health_problem() == "essential task 'site planner' ended"
    finally:
        await lc.stop()
        store.close()


def test_set_password_writes_the_site_pages_table(tmp_path: Path) -> None:
    """`chargepoint set-password --config local-controller.toml` sets [local_controller.web], not a [web] table
    the local controller would refuse: the site page is then on, with that password."""
    from chargepoint.frontends.web.auth import verify_password

    cfg = tmp_path / "local-controller.toml"
    cfg.write_text(EXAMPLE.read_text())
    cfg.chmod(0o640)
    proc = subprocess.run([sys.executable, "-m", "chargepoint", "set-password", "--stdin", "--config", str(cfg)],
                          input="a-long-site-password\n", capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "[local_controller.web] password_hash set" in proc.stdout
    assert "systemctl restart chargepoint-local-controller" in proc.stdout
    assert (cfg.stat().st_mode & 0o777) == 0o640
    lc = load(cfg)
    assert lc.web is not None and lc.web.enabled
    assert verify_password("a-long-site-password", lc.web.password_hash)
    assert not verify_password("another-password", lc.web.password_hash)
    assert check_config(cfg).returncode == 0
    # a second run replaces the line instead of adding a table
    proc = subprocess.run([sys.executable, "-m", "chargepoint", "set-password", "--stdin", "--config", str(cfg)],
                          input="a-second-password\n", capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert cfg.read_text().splitlines().count("[local_controller.web]") == 1
    assert verify_password("a-second-password", load(cfg).web.password_hash)  # type: ignore[union-attr]


def test_status_table_names_a_box_without_its_safe_default() -> None:
    """`chargepoint status --socket …` is what the commissioning checklist reads: a box whose safe default is not
    installed (it refused it, or never answered) must stand out."""
    from chargepoint.localcontroller.status import format_site

    def box(cp: str, installed: bool) -> dict[str, object]:
        return {"id": cp, "connected": True, "upstream": "connected", "statuses": {"1": "Charging"},
                "allocation_a": 16.0, "measured_a": [15.5, 15.4, 15.6], "safe_default_a": 10.5,
                "safe_default_installed": installed, "queued": 0, "why": "fair share"}

    text = format_site({"id": "LC", "url": "ws://127.0.0.1:9100", "csms": "connected", "boot": "Accepted",
                        "queued": 0, "site": {"limit_a": [32, 32, 32], "fuse_a": [32, 32, 32],
                                              "committed_a": [32, 32, 32], "limit_source": "fuse"},
                        "charge_points": [box("CP-OK", True), box("CP-BAD", False)]})
    rows = {line.split()[0]: line for line in text.splitlines() if line.startswith("CP-")}
    assert "10.5" in rows["CP-OK"] and "not installed" not in rows["CP-OK"]
    assert "10.5 (not installed)" in rows["CP-BAD"]
    assert "15.5/15.4/15.6" in rows["CP-OK"] and "fair share" in rows["CP-OK"]

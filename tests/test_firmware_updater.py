"""FirmwareUpdater (UpdateFirmware.req) end to end: loopback HTTP/FTP, a temporary release root, recorded
FirmwareStatusNotification sequences, a recorded or real process restart."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections import namedtuple
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fakes_firmware import (
    FakeClock,
    FtpServer,
    HttpServer,
    Recorder,
    build_project_wheel,
    closed_port,
    extract_installer,
    failing_installer,
    make_sdist,
    make_wheel,
)

from chargepoint.firmware.update import (
    FirmwareUpdater,
    InstallFailed,
    InvalidRelease,
    ReleaseManager,
    cli_update,
    pip_venv_installer,
    release_file_name,
)

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
WHEEL2 = "pi_chargepoint-2.0.0-py3-none-any.whl"
FAILED_DOWNLOAD = ["Downloading", "DownloadFailed"]
FAILED_INSTALL = ["Downloading", "Downloaded", "InstallationFailed"]
Usage = namedtuple("Usage", "total used free")


def snapshot(root: Path) -> dict[str, bytes]:
    d = root / "releases" / "1.0.0"
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


class Env:
    """A charger with release 1.0.0 running, a recorded notify and restart, virtual time."""

    def __init__(self, tmp: Path, installer=extract_installer) -> None:
        self.tmp = tmp
        self.root = tmp / "root"
        self.installer = installer
        mgr = ReleaseManager(self.root, installer=installer)
        mgr.switch_to(mgr.install(make_wheel(tmp / "art", "1.0.0")))
        self.before = snapshot(self.root)
        self.clock = FakeClock(T0)
        self.restarts = 0
        self.idle = True

    def updater(self, notify: Recorder | None = None, **kw) -> tuple[FirmwareUpdater, Recorder]:
        rec = notify or Recorder()

        async def restart() -> None:
            self.restarts += 1

        kw.setdefault("confirm_timeout_s", 300)
        u = FirmwareUpdater(ReleaseManager(self.root, installer=self.installer), notify=rec,
                            connectors_idle=lambda: self.idle, restart=restart, clock=self.clock.now,
                            sleep=self.clock.sleep, default_retry_interval_s=10, idle_poll_s=5, **kw)
        return u, rec

    def assert_untouched(self) -> None:
        mgr = ReleaseManager(self.root)
        assert mgr.current_version() == "1.0.0"
        assert snapshot(self.root) == self.before
        assert self.restarts == 0


@pytest.fixture
def env(tmp_path):
    return Env(tmp_path)


@pytest.fixture
def http(tmp_path):
    with HttpServer() as srv:
        srv.files[f"/fw/{WHEEL2}"] = make_wheel(tmp_path / "serve", "2.0.0").read_bytes()
        yield srv


async def test_update_happy_path_waits_for_retrieve_date_and_idle(env, http):
    idle_calls = 0
    seen_while_busy = []

    def connectors_idle() -> bool:
        nonlocal idle_calls
        idle_calls += 1
        seen_while_busy.append(u.last_status)
        return idle_calls > 3  # a transaction is running for the first three polls

    u, rec = env.updater()
    u._idle = connectors_idle
    assert u.last_status == "Idle"
    task = u.schedule(f"{http.base}/fw/{WHEEL2}", T0 + timedelta(hours=2), retries=2, retry_interval=30)
    await task
    assert rec.statuses == ["Downloading", "Downloaded", "Installing", "Installed"]
    assert env.clock.sleeps[0] == 7200  # waited for retrieveDate
    assert env.clock.sleeps.count(5) == 3  # polled idle while the transaction ran, did not interrupt it
    assert seen_while_busy[0] == "Downloaded"  # TriggerMessage while waiting reports the real state
    assert env.restarts == 1
    mgr = ReleaseManager(env.root)
    assert (mgr.current_version(), mgr.previous_version()) == ("2.0.0", "1.0.0")
    p = mgr.pending()
    assert p is not None and p.version == "2.0.0" and p.deadline == env.clock.now() + timedelta(seconds=300)
    assert snapshot(env.root) == env.before  # the old release is untouched, ready to roll back to
    assert u.last_status == "Idle"
    assert not list((env.root / "downloads").iterdir())


async def test_update_over_ftp(env, tmp_path):
    root = tmp_path / "ftp"
    (root / "fw").mkdir(parents=True)
    make_wheel(root / "fw", "2.0.0")
    with FtpServer(root) as ftp:
        u, rec = env.updater()
        await u.schedule(ftp.url("fw", "fwpass", f"fw/{WHEEL2}"), T0)
    assert rec.statuses == ["Downloading", "Downloaded", "Installing", "Installed"]
    assert ReleaseManager(env.root).current_version() == "2.0.0"


async def test_unreachable_url(env):
    u, rec = env.updater()
    await u.schedule(f"http://127.0.0.1:{closed_port()}/fw/{WHEEL2}", T0, retries=3)
    assert rec.statuses == FAILED_DOWNLOAD
    assert "connection refused" in u.last_error and "gave up after 3 attempts" in u.last_error
    assert env.clock.sleeps == [10, 10]
    env.assert_untouched()
    assert u.last_status == "Idle"


async def test_404_is_retried_as_often_as_the_request_says(env, http):
    """§6.51 retries: "how many times Charge Point must try to download the firmware before giving up"."""
    u, rec = env.updater()
    await u.schedule(f"{http.base}/fw/pi_chargepoint-3.0.0-py3-none-any.whl", T0, retries=3)
    assert rec.statuses == FAILED_DOWNLOAD and "HTTP 404" in u.last_error
    assert http.hits["/fw/pi_chargepoint-3.0.0-py3-none-any.whl"] == 3 and env.clock.sleeps == [10, 10]
    assert "gave up after 3 attempts" in u.last_error
    env.assert_untouched()


async def test_file_published_after_the_first_attempt_is_installed(env, http, tmp_path):
    """A 404 is often a file the central system has not published yet: the next attempt finds it."""
    path = "/fw/pi_chargepoint-3.0.0-py3-none-any.whl"
    u, rec = env.updater()

    async def publish_while_waiting(seconds: float) -> None:
        http.files[path] = make_wheel(tmp_path / "late", "3.0.0").read_bytes()
        await env.clock.sleep(seconds)

    u._sleep = publish_while_waiting
    await u.schedule(f"{http.base}{path}", T0, retries=2, retry_interval=30)
    assert rec.statuses == ["Downloading", "Downloaded", "Installing", "Installed"]
    assert http.hits[path] == 2 and env.clock.sleeps[0] == 30
    assert ReleaseManager(env.root).current_version() == "3.0.0"


async def test_release_is_recognised_by_its_content_not_the_url(env, http):
    """A central system may serve the firmware as …/download?id=42: the wheel's metadata says what it is."""
    http.files["/download"] = http.files[f"/fw/{WHEEL2}"]
    u, rec = env.updater()
    await u.schedule(f"{http.base}/download?id=42", T0)
    assert rec.statuses == ["Downloading", "Downloaded", "Installing", "Installed"], u.last_error
    mgr = ReleaseManager(env.root)
    assert mgr.current_version() == "2.0.0"
    assert (env.root / "releases/2.0.0/artifact" / WHEEL2).is_file()  # kept under the name pip needs
    assert not list((env.root / "downloads").iterdir())


def test_release_file_name_comes_from_the_content(tmp_path):
    wheel = make_wheel(tmp_path / "w", "1.2.3").rename(tmp_path / "download")
    assert release_file_name(wheel) == "pi_chargepoint-1.2.3-py3-none-any.whl"
    sdist = make_sdist(tmp_path / "s", "1.2.4").rename(tmp_path / "firmware.bin")
    assert release_file_name(sdist) == "pi_chargepoint-1.2.4.tar.gz"
    named_like_a_release = make_wheel(tmp_path / "o", "1.0.0", metadata_name="other")
    with pytest.raises(InvalidRelease, match="names the package 'other'"):
        release_file_name(named_like_a_release)
    page = tmp_path / "pi_chargepoint-1.0.0-py3-none-any.whl"
    page.write_bytes(b"<html>login required</html>")
    with pytest.raises(InvalidRelease, match="neither a wheel"):
        release_file_name(page)


async def test_truncated_download(env, http):
    http.truncate[f"/fw/{WHEEL2}"] = 100
    u, rec = env.updater()
    await u.schedule(f"{http.base}/fw/{WHEEL2}", T0, retries=2)
    assert rec.statuses == FAILED_DOWNLOAD and "truncated" in u.last_error
    assert http.hits[f"/fw/{WHEEL2}"] == 2
    env.assert_untouched()


async def test_corrupt_archive(env, http):
    """The transfer completed (Downloaded, §7.25): a broken file is a failed installation, not a failed
    download, and it is not fetched again."""
    good = http.files[f"/fw/{WHEEL2}"]
    http.files[f"/fw/{WHEEL2}"] = good[: len(good) - 40]  # complete transfer of a broken file
    env.idle = False  # no need to wait for the transaction to end to say the file is bad
    u, rec = env.updater()
    await u.schedule(f"{http.base}/fw/{WHEEL2}", T0, retries=3)
    assert rec.statuses == FAILED_INSTALL and "not a valid zip archive" in u.last_error
    assert http.hits[f"/fw/{WHEEL2}"] == 1
    env.assert_untouched()
    assert not list((env.root / "downloads").iterdir())


async def test_not_a_release_of_this_project(env, http, tmp_path):
    http.files["/fw/pi_chargepoint-2.0.0-py3-none-any.whl"] = make_wheel(
        tmp_path / "other", "2.0.0", metadata_name="someone-else").read_bytes()
    u, rec = env.updater()
    await u.schedule(f"{http.base}/fw/{WHEEL2}", T0)
    assert rec.statuses == FAILED_INSTALL and "someone-else" in u.last_error
    env.assert_untouched()
    assert u.last_status == "Idle"


async def test_full_disk(env, http):
    u, rec = env.updater(disk_usage=lambda p: Usage(10**9, 10**9 - 1000, 1000))
    await u.schedule(f"{http.base}/fw/{WHEEL2}", T0, retries=5)
    assert rec.statuses == FAILED_DOWNLOAD and "not enough free disk space" in u.last_error
    assert http.hits[f"/fw/{WHEEL2}"] == 0
    env.assert_untouched()


async def test_installation_failure(tmp_path, http):
    env = Env(tmp_path)
    env.installer = failing_installer
    u, rec = env.updater()
    await u.schedule(f"{http.base}/fw/{WHEEL2}", T0)
    assert rec.statuses == ["Downloading", "Downloaded", "Installing", "InstallationFailed"]
    assert "simulated" in u.last_error
    env.assert_untouched()
    assert not (env.root / "releases" / "2.0.0").exists()


async def test_same_version_is_reported_installed_without_restart(env, http, tmp_path):
    http.files["/fw/pi_chargepoint-1.0.0-py3-none-any.whl"] = make_wheel(tmp_path / "same", "1.0.0").read_bytes()
    u, rec = env.updater()
    await u.schedule(f"{http.base}/fw/pi_chargepoint-1.0.0-py3-none-any.whl", T0)
    assert rec.statuses == ["Downloading", "Downloaded", "Installing", "Installed"]
    env.assert_untouched()


async def test_new_request_replaces_a_waiting_one(env, http):
    u, rec = env.updater()
    gate = asyncio.Event()

    async def slow_sleep(s: float) -> None:  # retrieveDate wait that only ends when we say so
        await gate.wait()

    u._sleep = slow_sleep
    first = u.schedule(f"{http.base}/fw/nothing.whl", T0 + timedelta(days=1))
    await asyncio.sleep(0)
    u._sleep = env.clock.sleep
    second = u.schedule(f"{http.base}/fw/{WHEEL2}", T0)
    await second
    assert first.cancelled()
    assert rec.statuses == ["Downloading", "Downloaded", "Installing", "Installed"]
    assert http.hits["/fw/nothing.whl"] == 0


async def test_release_that_never_confirms_is_rolled_back_and_reported(env, http):
    u, rec = env.updater()
    await u.schedule(f"{http.base}/fw/{WHEEL2}", T0)
    assert env.restarts == 1

    # "new process": the 2.0.0 release starts, its BootNotification is never accepted
    booted, rec2 = env.updater()
    assert await booted.boot() == "pending"
    await booted.watchdog  # virtual time runs to the deadline
    assert env.restarts == 2
    mgr = ReleaseManager(env.root)
    assert (mgr.current_version(), mgr.pending()) == ("1.0.0", None)
    assert rec2.statuses == []  # the failed release reports nothing itself

    # "next process": the restored 1.0.0 reports the failed installation exactly once
    restored, rec3 = env.updater()
    assert await restored.boot() == "confirmed"
    assert rec3.statuses == ["InstallationFailed"]
    assert "rolled back 2.0.0 -> 1.0.0" in restored.last_error
    assert restored.last_status == "Idle"
    again, rec4 = env.updater()
    assert await again.boot() == "confirmed" and rec4.statuses == []
    assert snapshot(env.root) == env.before


async def test_boot_after_deadline_rolls_back_immediately(env, http):
    u, _ = env.updater()
    await u.schedule(f"{http.base}/fw/{WHEEL2}", T0)
    env.clock.t += timedelta(hours=1)  # e.g. the new release hung until systemd's watchdog killed it
    late, rec = env.updater()
    assert await late.boot() == "rolled_back"
    assert env.restarts == 2 and rec.statuses == []
    assert ReleaseManager(env.root).current_version() == "1.0.0"


async def test_confirmed_release_stays(env, http):
    u, _ = env.updater()
    await u.schedule(f"{http.base}/fw/{WHEEL2}", T0)
    booted, rec = env.updater()

    async def time_stands_still(s: float) -> None:
        await asyncio.Event().wait()

    booted._sleep = time_stands_still  # the deadline is not reached before the CSMS accepts
    assert await booted.boot() == "pending"
    await asyncio.sleep(0.05)
    assert not booted.watchdog.done()
    assert await booted.confirm_healthy() is True  # BootNotification accepted
    await asyncio.sleep(0)
    assert booted.watchdog.cancelled()
    env.clock.t += timedelta(days=1)
    nxt, rec2 = env.updater()
    assert await nxt.boot() == "confirmed"
    assert ReleaseManager(env.root).current_version() == "2.0.0"
    assert rec.statuses == rec2.statuses == [] and env.restarts == 1


# ---------------------------------------------------------------------------------------------------------
# The real project wheel, a real venv, a real process restart


def _start_process(root: Path) -> dict:
    """What systemd does with ExecStart=<root>/current/venv/bin/chargepoint: the console script's shebang
    names releases/<version>/venv/bin/python (the real path), so a running process keeps its own release
    even after ``current`` is switched.  The process runs its boot check and says which version it is."""
    shebang = (root / "current" / "venv" / "bin" / "chargepoint").read_text().splitlines()[0]
    python = shebang[2:].strip()
    assert python == str((root / "current").resolve() / "venv" / "bin" / "python")
    code = ("import json, io, contextlib, sys, importlib.metadata as m, chargepoint\n"
            "running = m.version('pi-chargepoint')\n"
            "from chargepoint.firmware.update import main\n"
            "buf = io.StringIO()\n"
            "with contextlib.redirect_stdout(buf): main(['check-boot', '--root', sys.argv[1]])\n"
            "out = json.loads(buf.getvalue()); out['running'] = running; out['file'] = chargepoint.__file__\n"
            "import ocpp, websockets; out['deps'] = [ocpp.__file__, websockets.__file__]\n"
            "print(json.dumps(out))")
    proc = subprocess.run([python, "-c", code, str(root)], capture_output=True, text=True, timeout=120, cwd=str(root),
                          check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _system_site(venv: Path) -> bool:
    cfg = (venv / "pyvenv.cfg").read_text() if (venv / "pyvenv.cfg").exists() else ""
    return "include-system-site-packages = true" in cfg or not cfg


async def test_real_wheel_update_process_restart_and_rollback(tmp_path):
    old = build_project_wheel("0.1.0")
    new = build_project_wheel("0.1.1")
    root = tmp_path / "opt-chargepoint"
    mgr = ReleaseManager(root, installer=pip_venv_installer())
    await asyncio.to_thread(lambda: mgr.switch_to(mgr.install(old)))
    starts: list[dict] = []

    async def restart() -> None:
        starts.append(await asyncio.to_thread(_start_process, root))

    rec = Recorder()
    with HttpServer() as http:
        http.files[f"/fw/{new.name}"] = new.read_bytes()
        u = FirmwareUpdater(ReleaseManager(root, installer=pip_venv_installer()), notify=rec,
                            connectors_idle=lambda: True, restart=restart, max_boots=1)
        await u.schedule(f"{http.base}/fw/{new.name}", datetime.now(UTC))
    assert rec.statuses == ["Downloading", "Downloaded", "Installing", "Installed"]
    assert starts[0]["running"] == "0.1.1" and starts[0]["outcome"] == "pending"
    assert starts[0]["file"].startswith(str(root / "releases" / "0.1.1" / "venv"))
    # The dependencies come with the release (from the controller's own venv, not from the base interpreter,
    # which has none on a fresh machine), so removing the release it was installed from cannot break it.
    assert all(f.startswith(str(root / "releases" / "0.1.1" / "venv")) for f in starts[0]["deps"])
    assert _system_site(root / "releases" / "0.1.1" / "venv") == _system_site(Path(sys.prefix))

    # the new release crashes before its BootNotification is accepted; systemd starts it again
    await restart()
    assert starts[1] == {**starts[1], "running": "0.1.1", "outcome": "rolled_back", "current": "0.1.0"}
    await restart()
    assert starts[2]["running"] == "0.1.0" and starts[2]["outcome"] == "confirmed"
    rec2 = Recorder()
    restored = FirmwareUpdater(ReleaseManager(root), notify=rec2, connectors_idle=lambda: True, restart=restart)
    assert await restored.boot() == "confirmed"
    assert rec2.statuses == ["InstallationFailed"]


def test_real_wheel_with_missing_dependency_is_not_switched_to(tmp_path):
    """A release that needs a dependency the base environment lacks fails at install, not at boot."""
    wheel = build_project_wheel("0.1.2", extra_dependency="cp-test-only-dep>=1.0")
    root = tmp_path / "root"
    mgr = ReleaseManager(root, installer=pip_venv_installer())
    with pytest.raises(InstallFailed, match=r"lacks: cp-test-only-dep is not installed \(needs cp-test-only-dep>=1.0"):
        mgr.install(wheel)
    assert mgr.installed_versions() == [] and not (root / "releases" / "0.1.2").exists()

    # the same dependency provided by a separate dependency environment (a .pth file points at it)
    deps = tmp_path / "deps-site-packages"
    (deps / "cp_test_only_dep-1.3.dist-info").mkdir(parents=True)
    (deps / "cp_test_only_dep-1.3.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: cp-test-only-dep\nVersion: 1.3\n")
    mgr = ReleaseManager(root, installer=pip_venv_installer(extra_site_packages=[deps]))
    assert mgr.install(wheel) == "0.1.2"


async def test_no_rollback_while_the_central_system_was_never_reached(env, http):
    """A network outage says nothing about the new release: past the deadline it stays pending."""
    u, _ = env.updater()
    await u.schedule(f"{http.base}/fw/{WHEEL2}", T0)
    reached = False
    booted, _ = env.updater(can_judge_health=lambda: reached)
    assert await booted.boot() == "pending"
    await asyncio.sleep(0)
    for _ in range(40):  # virtual time: well past the 300 s deadline
        await asyncio.sleep(0)
        if env.clock.now() > T0 + timedelta(seconds=900):
            break
        env.clock.t += timedelta(seconds=30)
    assert env.restarts == 1 and ReleaseManager(env.root).current_version() == "2.0.0"
    reached = True  # connected, and still no BootNotification accepted: now it is judged
    await booted.watchdog
    assert env.restarts == 2 and ReleaseManager(env.root).current_version() == "1.0.0"


async def test_rollback_waits_for_a_running_transaction(env, http):
    u, _ = env.updater()
    await u.schedule(f"{http.base}/fw/{WHEEL2}", T0)
    booted, _ = env.updater()
    assert await booted.boot() == "pending"
    env.idle = False  # an offline transaction started
    env.clock.t += timedelta(seconds=400)
    await asyncio.sleep(0.05)
    assert env.restarts == 1  # not restarted under a running transaction
    env.idle = True
    await booted.watchdog
    assert env.restarts == 2


def test_cli_update_from_a_url_without_a_file_name(tmp_path, capsys):
    root = tmp_path / "root"
    with HttpServer() as http:
        http.files["/download"] = make_wheel(tmp_path / "s", "3.0.0").read_bytes()
        assert cli_update(f"{http.base}/download?id=42", root, installer=extract_installer) == 0
        http.files["/junk"] = b"<html>not found</html>"
        assert cli_update(f"{http.base}/junk", root, installer=extract_installer) == 1
    assert "is not a release of pi-chargepoint" in capsys.readouterr().err
    assert ReleaseManager(root).current_version() == "3.0.0"
    assert not list((root / "downloads").iterdir())

"""ReleaseManager: artifact verification, install beside, atomic switch, pruning, rollback, boot check."""

from __future__ import annotations

import io
import os
import tarfile
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fakes_firmware import extract_installer, failing_installer, make_sdist, make_wheel

from chargepoint.firmware.update import (
    InstallFailed,
    InvalidRelease,
    ReleaseManager,
    RollbackFailed,
    verify_artifact,
)

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def tree_snapshot(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture
def mgr(tmp_path: Path) -> ReleaseManager:
    m = ReleaseManager(tmp_path / "root", keep=3, installer=extract_installer)
    v1 = m.install(make_wheel(tmp_path / "art", "1.0.0"), now=T0)
    m.switch_to(v1)
    return m


# ---------------------------------------------------------------------------------------------------------
# verification


def test_verify_accepts_wheel_and_sdist(tmp_path):
    a = verify_artifact(make_wheel(tmp_path, "1.2.3"))
    assert (a.kind, a.version) == ("wheel", "1.2.3")
    s = verify_artifact(make_sdist(tmp_path, "1.2.4"))
    assert (s.kind, s.version) == ("sdist", "1.2.4")


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda d: make_wheel(d, "1.0.0", filename="firmware.bin"), "is not a release of pi-chargepoint"),
        (lambda d: make_wheel(d, "1.0.0", filename="other_pkg-1.0.0-py3-none-any.whl"), "not a release"),
        (lambda d: make_wheel(d, "1.0.0", metadata_name="evil-package"), "names the package 'evil-package'"),
        (lambda d: make_wheel(d, "1.0.0", metadata_version="9.9.9"), "says version '9.9.9'"),
        (lambda d: make_wheel(d, "../../etc", filename="pi_chargepoint-..-py3-none-any.whl"),
         "not a valid version"),
        (lambda d: make_sdist(d, "1.0.0", metadata_name="other"), "names the package 'other'"),
    ],
)
def test_verify_rejects_wrong_releases(tmp_path, make, reason):
    with pytest.raises(InvalidRelease, match=reason):
        verify_artifact(make(tmp_path))


def test_verify_rejects_corrupt_archives(tmp_path):
    good = make_wheel(tmp_path / "g", "1.0.0").read_bytes()
    trunc = tmp_path / "pi_chargepoint-1.0.0-py3-none-any.whl"
    trunc.write_bytes(good[: len(good) // 2])
    with pytest.raises(InvalidRelease, match="not a valid zip archive"):
        verify_artifact(trunc)

    # flip a byte inside a member's compressed data: the zip directory is fine, the CRC is not
    crc = tmp_path / "c" / "pi_chargepoint-1.0.0-py3-none-any.whl"
    crc.parent.mkdir()
    with zipfile.ZipFile(crc, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("chargepoint/__init__.py", "X" * 200)
        zf.writestr("pi_chargepoint-1.0.0.dist-info/METADATA", "Name: pi-chargepoint\nVersion: 1.0.0\n")
    data = bytearray(crc.read_bytes())
    data[data.index(b"XXXX")] = ord("Y")
    crc.write_bytes(bytes(data))
    with pytest.raises(InvalidRelease, match="fails its CRC check"):
        verify_artifact(crc)

    sd = make_sdist(tmp_path / "s", "1.0.0")
    sd.write_bytes(sd.read_bytes()[:-12])
    with pytest.raises(InvalidRelease, match="not a valid tar.gz"):
        verify_artifact(sd)

    with pytest.raises(InvalidRelease, match="does not exist"):
        verify_artifact(tmp_path / "nope.whl")


def test_verify_rejects_unsafe_sdist(tmp_path):
    p = tmp_path / "pi_chargepoint-1.0.0.tar.gz"
    with tarfile.open(p, "w:gz") as tf:
        for name in ("pi_chargepoint-1.0.0/PKG-INFO", "pi_chargepoint-1.0.0/../../escape"):
            data = b"Name: pi-chargepoint\nVersion: 1.0.0\n"
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    with pytest.raises(InvalidRelease, match="unsafe path"):
        verify_artifact(p)


# ---------------------------------------------------------------------------------------------------------
# install / switch / prune


def test_install_beside_running_then_switch(mgr, tmp_path):
    running = tree_snapshot(mgr.release_dir("1.0.0"))
    v2 = mgr.install(make_wheel(tmp_path / "art", "2.0.0"))
    assert v2 == "2.0.0"
    assert mgr.current_version() == "1.0.0"  # install never switches
    assert tree_snapshot(mgr.release_dir("1.0.0")) == running
    assert (mgr.release_dir("2.0.0") / "venv" / "site-packages" / "chargepoint" / "__init__.py").exists()
    mgr.switch_to("2.0.0")
    assert os.readlink(mgr.current_link) == "releases/2.0.0"  # relative: root can be moved
    assert os.readlink(mgr.previous_link) == "releases/1.0.0"
    assert (mgr.current_link / "venv" / "bin" / "chargepoint").read_text().endswith("2.0.0\n")
    assert not [p for p in mgr.root.iterdir() if ".tmp" in p.name]


def test_never_installs_over_the_running_release(mgr, tmp_path):
    before = tree_snapshot(mgr.release_dir("1.0.0"))
    with pytest.raises(InstallFailed, match="1.0.0 is the running release"):
        mgr.install(make_wheel(tmp_path / "again", "1.0.0", marker="different"))
    assert tree_snapshot(mgr.release_dir("1.0.0")) == before


def test_failed_install_leaves_nothing_behind(mgr, tmp_path):
    before = tree_snapshot(mgr.root / "releases")
    bad = ReleaseManager(mgr.root, installer=failing_installer)
    with pytest.raises(InstallFailed, match="simulated"):
        bad.install(make_wheel(tmp_path / "art", "2.0.0"))
    assert tree_snapshot(mgr.root / "releases") == before
    assert mgr.current_version() == "1.0.0" and mgr.installed_versions() == ["1.0.0"]
    with pytest.raises(InstallFailed, match="not .*installed"):
        mgr.switch_to("2.0.0")


def test_keep_last_n_never_prunes_current_or_previous(mgr, tmp_path):
    for v in ("2.0.0", "3.0.0", "4.0.0", "5.0.0"):
        mgr.install(make_wheel(tmp_path / "art", v))
        mgr.switch_to(v)
    assert mgr.installed_versions() == ["3.0.0", "4.0.0", "5.0.0"]
    assert sorted(p.name for p in (mgr.root / "releases").iterdir()) == ["3.0.0", "4.0.0", "5.0.0"]
    # roll back to 4, then install two more without switching: 4 (current) and 5 (previous) must survive
    assert mgr.rollback() == "4.0.0"
    mgr.install(make_wheel(tmp_path / "art", "6.0.0"))
    mgr.install(make_wheel(tmp_path / "art", "7.0.0"))
    assert set(mgr.installed_versions()) >= {"4.0.0", "5.0.0", "7.0.0"}
    assert len(mgr.installed_versions()) == 3


def test_rollback_swaps_and_needs_a_previous(mgr, tmp_path):
    with pytest.raises(RollbackFailed, match="no previous release"):
        mgr.rollback()
    mgr.install(make_wheel(tmp_path / "art", "2.0.0"))
    mgr.switch_to("2.0.0")
    assert mgr.rollback() == "1.0.0"
    assert (mgr.current_version(), mgr.previous_version()) == ("1.0.0", "2.0.0")
    assert mgr.take_rollback_report() is None  # manual rollbacks are not reported as failures


def test_reinstall_of_previous_version_replaces_its_copy(mgr, tmp_path):
    mgr.install(make_wheel(tmp_path / "art", "2.0.0"))
    mgr.switch_to("2.0.0")
    mgr.install(make_wheel(tmp_path / "new", "1.0.0", marker="rebuilt"))
    init = mgr.release_dir("1.0.0") / "venv" / "site-packages" / "chargepoint" / "__init__.py"
    assert "rebuilt" in init.read_text()
    assert mgr.current_version() == "2.0.0"


def test_half_installed_release_is_cleaned_and_not_switchable(mgr, tmp_path):
    half = mgr.root / "releases" / "9.9.9"
    (half / "venv").mkdir(parents=True)
    with pytest.raises(InstallFailed):
        mgr.switch_to("9.9.9")
    mgr.prune()
    assert not half.exists()


# ---------------------------------------------------------------------------------------------------------
# health confirmation


@pytest.fixture
def pending(mgr, tmp_path):
    mgr.install(make_wheel(tmp_path / "art", "2.0.0"))
    mgr.switch_to("2.0.0")
    mgr.mark_pending_confirmation("2.0.0", T0 + timedelta(minutes=10), max_boots=2)
    return mgr


def test_confirmed_boot(pending):
    assert pending.check_boot(T0 + timedelta(seconds=5)) == "pending"
    assert pending.confirm_healthy() is True
    assert pending.check_boot(T0 + timedelta(hours=1)) == "confirmed"
    assert pending.current_version() == "2.0.0" and pending.pending() is None
    assert pending.confirm_healthy() is False


def test_deadline_missed_rolls_back_and_reports_once(pending):
    assert pending.check_boot(T0 + timedelta(minutes=1)) == "pending"
    assert pending.check_boot(T0 + timedelta(minutes=10)) == "rolled_back"
    assert pending.current_version() == "1.0.0"
    report = pending.take_rollback_report()
    assert report is not None and (report.from_version, report.to_version) == ("2.0.0", "1.0.0")
    assert "did not confirm its health" in report.reason
    assert pending.take_rollback_report() is None
    assert pending.check_boot(T0 + timedelta(minutes=11)) == "confirmed"
    assert pending.confirm_healthy() is False  # the old release has nothing pending


def test_crash_loop_rolls_back_before_deadline(pending):
    assert pending.check_boot(T0) == "pending"
    assert pending.check_boot(T0) == "pending"
    assert pending.check_boot(T0) == "rolled_back"  # third start of a max_boots=2 release
    assert "started 2 times without confirming" in pending.take_rollback_report().reason


def test_expire_pending_does_not_count_boots(pending):
    assert pending.expire_pending(T0 + timedelta(minutes=9)) is False
    assert pending.expire_pending(T0 + timedelta(minutes=9)) is False
    assert pending.pending().boots == 0
    assert pending.expire_pending(T0 + timedelta(minutes=10)) is True


def test_manual_switch_clears_pending(pending):
    pending.switch_to("1.0.0")
    assert pending.check_boot(T0 + timedelta(days=1)) == "confirmed"
    assert pending.current_version() == "1.0.0" and pending.take_rollback_report() is None


def test_no_release_means_none(tmp_path):
    m = ReleaseManager(tmp_path / "empty", installer=extract_installer)
    assert m.check_boot(T0) == "none"
    with pytest.raises(InstallFailed, match="not current"):
        m.mark_pending_confirmation("1.0.0", T0)


def test_pending_needs_a_fallback(tmp_path):
    m = ReleaseManager(tmp_path / "r", installer=extract_installer)
    m.switch_to(m.install(make_wheel(tmp_path / "a", "1.0.0")))
    with pytest.raises(InstallFailed, match="no previous release"):
        m.mark_pending_confirmation("1.0.0", T0)


def test_state_survives_a_new_manager_instance(pending):
    again = ReleaseManager(pending.root, installer=extract_installer)
    p = again.pending()
    assert p is not None and (p.version, p.deadline, p.max_boots) == ("2.0.0", T0 + timedelta(minutes=10), 2)

"""cli_update / cli_rollback: exit codes and messages a technician reads."""

from __future__ import annotations

from datetime import UTC, datetime

from fakes_firmware import HttpServer, closed_port, extract_installer, make_wheel

from chargepoint.firmware.update import ReleaseManager, cli_rollback, cli_update, main


def test_cli_update_from_file_then_rollback(tmp_path, capsys):
    root = tmp_path / "root"
    assert cli_update(str(make_wheel(tmp_path / "a", "1.0.0")), root, installer=extract_installer) == 0
    out = capsys.readouterr().out
    assert "installed 1.0.0 beside nothing" in out and "systemctl restart chargepoint" in out

    restarted = []
    rc = cli_update(str(make_wheel(tmp_path / "a", "1.1.0")), root, installer=extract_installer,
                    confirm_timeout_s=120, restart=lambda: restarted.append(True))
    out = capsys.readouterr().out
    assert rc == 0 and restarted == [True]
    assert "within 120 s, otherwise it rolls back to 1.0.0 automatically" in out
    mgr = ReleaseManager(root)
    assert mgr.current_version() == "1.1.0" and mgr.pending().version == "1.1.0"

    assert cli_rollback(root) == 0
    assert "rolled back from 1.1.0 to 1.0.0" in capsys.readouterr().out
    assert mgr.current_version() == "1.0.0" and mgr.pending() is None


def test_cli_update_from_url(tmp_path, capsys):
    root = tmp_path / "root"
    with HttpServer() as http:
        http.files["/pi_chargepoint-3.0.0-py3-none-any.whl"] = make_wheel(tmp_path / "s", "3.0.0").read_bytes()
        rc = cli_update(f"{http.base}/pi_chargepoint-3.0.0-py3-none-any.whl", root, installer=extract_installer)
    assert rc == 0 and ReleaseManager(root).current_version() == "3.0.0"
    assert not list((root / "downloads").iterdir())


def test_cli_update_errors(tmp_path, capsys):
    root = tmp_path / "root"
    cli_update(str(make_wheel(tmp_path / "a", "1.0.0")), root, installer=extract_installer)
    capsys.readouterr()

    assert cli_update(str(tmp_path / "nope.whl"), root) == 2
    assert "nope.whl does not exist" in capsys.readouterr().err

    bogus = tmp_path / "firmware.zip"
    bogus.write_bytes(b"PK\x03\x04 not really")
    assert cli_update(str(bogus), root, installer=extract_installer) == 1
    err = capsys.readouterr().err
    assert "is not a release of pi-chargepoint" in err and "running release (1.0.0) is unchanged" in err

    rc = cli_update(f"http://127.0.0.1:{closed_port()}/pi_chargepoint-2.0.0-py3-none-any.whl", root, retries=1)
    assert rc == 1 and "connection refused" in capsys.readouterr().err

    assert cli_update("gopher://h/x.whl", root) == 1
    assert "unsupported URL scheme 'gopher'" in capsys.readouterr().err
    assert ReleaseManager(root).current_version() == "1.0.0"


def test_cli_rollback_without_previous(tmp_path, capsys):
    root = tmp_path / "root"
    assert cli_rollback(root) == 1
    assert "no previous release" in capsys.readouterr().err


def test_module_main_status_and_check_boot(tmp_path, capsys):
    root = tmp_path / "root"
    cli_update(str(make_wheel(tmp_path / "a", "1.0.0")), root, installer=extract_installer)
    cli_update(str(make_wheel(tmp_path / "a", "2.0.0")), root, installer=extract_installer)
    capsys.readouterr()
    assert main(["status", "--root", str(root)]) == 0
    assert '"current": "2.0.0"' in capsys.readouterr().out
    mgr = ReleaseManager(root)
    mgr.mark_pending_confirmation("2.0.0", datetime(2000, 1, 1, tzinfo=UTC))  # deadline long past
    assert main(["check-boot", "--root", str(root)]) == 0
    assert '"outcome": "rolled_back", "current": "1.0.0"' in capsys.readouterr().out

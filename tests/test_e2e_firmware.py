"""Firmware Management end to end: the loopback central system sends UpdateFirmware / GetDiagnostics to the
whole controller; files move over a real HTTP server on 127.0.0.1; releases are installed into a release tree
in tmp_path (the happy path with the real pip-into-a-venv installer). No TriggerMessage is involved: every
status must arrive on its own."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import re
import tarfile
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import Station, running_station
from fakes_firmware import HttpServer, extract_installer, make_wheel

from chargepoint.config import simulated_config
from chargepoint.controller import Controller
from chargepoint.csms import CentralSystem
from chargepoint.firmware.update import ReleaseManager
from chargepoint.services.firmware import FirmwareService

FW_FLOW = ["Downloading", "Downloaded", "Installing", "Installed"]


def iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def statuses(csms: CentralSystem, action: str) -> list[str]:
    return [p["status"] for p in csms.received(action)]


async def wait_statuses(csms: CentralSystem, action: str, expected: list[str], timeout: float = 20.0) -> None:
    try:
        await csms.wait_for(lambda: len(statuses(csms, action)) >= len(expected), timeout)
    except TimeoutError:
        pass
    assert statuses(csms, action) == expected


@pytest.fixture
def release_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A release tree with 0.1.0 installed and current (made with the fast installer)."""
    root = tmp_path / "opt"
    mgr = ReleaseManager(root, installer=extract_installer)
    mgr.switch_to(mgr.install(make_wheel(tmp_path / "seed", "0.1.0")))
    monkeypatch.setenv("CHARGEPOINT_RELEASE_ROOT", str(root))
    monkeypatch.setattr(FirmwareService, "firmware_idle_poll_s", 0.05)
    return root


@pytest.fixture
def http() -> Iterator[HttpServer]:
    with HttpServer() as server:
        yield server


@contextlib.asynccontextmanager
async def station_with_csms(tmp_path: Path, csms: CentralSystem, restarts: list[str]) -> AsyncIterator[Controller]:
    config = simulated_config(charge_point_id="CP-FW", csms_url=csms.url, state_dir=tmp_path / "state",
                              ev_reaction_s=0.0)
    controller = Controller(config, restart=restarts.append)
    await controller.start()
    try:
        yield controller
    finally:
        await controller.stop()


# ---------------------------------------------------------------------------------------------- UpdateFirmware


async def test_update_firmware_installs_switches_and_restarts(tmp_path: Path, release_root: Path,
                                                              http: HttpServer) -> None:
    wheel = make_wheel(tmp_path / "dist", "0.2.0")
    http.files["/fw/" + wheel.name] = wheel.read_bytes()
    restarts: list[str] = []
    async with running_station(tmp_path, restart=restarts.append) as st:
        conf = await st.call("UpdateFirmware", {"location": f"{http.base}/fw/{wheel.name}",
                                                "retrieveDate": iso(datetime.now(UTC))})
        assert conf == {}
        await wait_statuses(st.csms, "FirmwareStatusNotification", FW_FLOW, timeout=60)
        await st.csms.wait_for(lambda: restarts == ["Firmware"], 10)
        assert st.controller.stopped.is_set()  # stopped (outputs safe) before the restart callback
        assert not st.controller.connectors[1].hw.contactor.is_closed
    mgr = ReleaseManager(release_root)
    assert mgr.current_version() == "0.2.0"
    assert mgr.previous_version() == "0.1.0"
    pending = mgr.pending()
    assert pending is not None and pending.version == "0.2.0"  # must confirm after its own boot
    assert (release_root / "releases/0.2.0/venv/bin/python").exists()  # the real pip installer ran
    assert not list((tmp_path / "state/firmware").glob("*"))  # the download was cleaned up


async def test_installation_waits_for_the_transaction_to_end(tmp_path: Path, release_root: Path,
                                                             http: HttpServer,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(FirmwareService, "firmware_installer", extract_installer)
    wheel = make_wheel(tmp_path / "dist", "0.3.0")
    http.files["/" + wheel.name] = wheel.read_bytes()
    restarts: list[str] = []
    async with running_station(tmp_path, restart=restarts.append) as st:
        await st.start_charging()
        await st.call("UpdateFirmware", {"location": f"{http.base}/{wheel.name}",
                                         "retrieveDate": iso(datetime.now(UTC))})
        await wait_statuses(st.csms, "FirmwareStatusNotification", ["Downloading", "Downloaded"])
        await asyncio.sleep(0.5)
        assert statuses(st.csms, "FirmwareStatusNotification") == ["Downloading", "Downloaded"]
        assert st.controller.firmware.status() == "Downloaded"  # what a TriggerMessage would report
        assert ReleaseManager(release_root).current_version() == "0.1.0"
        st.bench.ev(1).unplug()
        await st.csms.wait_for_message("StopTransaction")
        await wait_statuses(st.csms, "FirmwareStatusNotification", FW_FLOW)
        await st.csms.wait_for(lambda: restarts == ["Firmware"], 10)
    assert ReleaseManager(release_root).current_version() == "0.3.0"


async def test_bad_downloads_and_bad_files_are_reported_and_change_nothing(tmp_path: Path, release_root: Path,
                                                                           http: HttpServer) -> None:
    http.files["/junk/pi_chargepoint-9.9.9-py3-none-any.whl"] = b"not a zip"
    restarts: list[str] = []
    async with running_station(tmp_path, restart=restarts.append) as st:
        await st.call("UpdateFirmware", {"location": f"{http.base}/missing.whl", "retries": 2,
                                         "retryInterval": 0, "retrieveDate": iso(datetime.now(UTC))})
        await wait_statuses(st.csms, "FirmwareStatusNotification", ["Downloading", "DownloadFailed"])
        assert http.hits["/missing.whl"] == 2  # retries honoured for a 404 too (§6.51)
        # A file that downloads completely but is no release of this project did download (§7.25: DownloadFailed
        # is "failed to download"): Downloaded, then it cannot be installed.
        await st.call("UpdateFirmware", {"location": f"{http.base}/junk/pi_chargepoint-9.9.9-py3-none-any.whl",
                                         "retries": 1, "retrieveDate": iso(datetime.now(UTC))})
        await wait_statuses(st.csms, "FirmwareStatusNotification",
                            ["Downloading", "DownloadFailed", "Downloading", "Downloaded", "InstallationFailed"])
        assert st.controller.firmware.status() == "Idle"
        assert st.controller.connectors[1].state.status == "Available"  # still charging-capable
    assert restarts == []
    assert ReleaseManager(release_root).current_version() == "0.1.0"


async def test_firmware_served_under_a_url_without_a_file_name(tmp_path: Path, release_root: Path,
                                                               http: HttpServer,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(FirmwareService, "firmware_installer", extract_installer)
    http.files["/api/firmware/download"] = make_wheel(tmp_path / "dist", "0.6.0").read_bytes()
    restarts: list[str] = []
    async with running_station(tmp_path, restart=restarts.append) as st:
        await st.call("UpdateFirmware", {"location": f"{http.base}/api/firmware/download?id=42",
                                         "retrieveDate": iso(datetime.now(UTC))})
        await wait_statuses(st.csms, "FirmwareStatusNotification", FW_FLOW)
        await st.csms.wait_for(lambda: restarts == ["Firmware"], 10)
    assert ReleaseManager(release_root).current_version() == "0.6.0"


async def test_retrieve_date_in_the_future_waits(tmp_path: Path, release_root: Path, http: HttpServer) -> None:
    wheel = make_wheel(tmp_path / "dist", "0.4.0")
    http.files["/" + wheel.name] = wheel.read_bytes()
    async with running_station(tmp_path) as st:
        await st.call("UpdateFirmware", {"location": f"{http.base}/{wheel.name}",
                                         "retrieveDate": iso(datetime.now(UTC) + timedelta(hours=1))})
        await asyncio.sleep(0.5)
        assert statuses(st.csms, "FirmwareStatusNotification") == []
        assert http.hits[f"/{wheel.name}"] == 0


async def test_unreadable_retrieve_date_is_a_callerror(tmp_path: Path, release_root: Path) -> None:
    async with running_station(tmp_path) as st:
        conf = await st.call("UpdateFirmware", {"location": "http://127.0.0.1:1/x.whl",
                                                "retrieveDate": "next tuesday"})
        assert conf.get("__error__") in ("FormationViolation", "FormatViolation", "TypeConstraintViolation")
        await asyncio.sleep(0.2)
        assert statuses(st.csms, "FirmwareStatusNotification") == []


async def test_dev_run_without_release_tree_answers_and_reports_installation_failed(
        tmp_path: Path, http: HttpServer, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "no-such-opt"
    monkeypatch.setenv("CHARGEPOINT_RELEASE_ROOT", str(missing))
    wheel = make_wheel(tmp_path / "dist", "0.5.0")
    http.files["/" + wheel.name] = wheel.read_bytes()
    restarts: list[str] = []
    async with running_station(tmp_path, restart=restarts.append) as st:
        await st.call("UpdateFirmware", {"location": f"{http.base}/{wheel.name}",
                                         "retrieveDate": iso(datetime.now(UTC))})
        await wait_statuses(st.csms, "FirmwareStatusNotification",
                            ["Downloading", "Downloaded", "Installing", "InstallationFailed"])
    assert restarts == []
    assert not missing.exists()  # nothing created outside the state directory


# ---------------------------------------------------------------------------------------------- boot-time reports


async def test_rollback_report_waits_for_boot_notification_accepted(tmp_path: Path, release_root: Path) -> None:
    """A status produced at start (the previous boot rolled back) is held until BootNotification is
    Accepted (§4.2: nothing before that), here after a Pending registration."""
    mgr = ReleaseManager(release_root, installer=extract_installer)
    mgr.switch_to(mgr.install(make_wheel(tmp_path / "dist", "0.2.0")))
    mgr.rollback("did not confirm", report=True)
    restarts: list[str] = []
    async with CentralSystem() as csms:
        csms.behaviour.boot_status = "Pending"
        csms.behaviour.boot_interval = 1
        async with station_with_csms(tmp_path, csms, restarts) as controller:
            await csms.wait_for_message("BootNotification")
            await asyncio.sleep(0.3)
            assert statuses(csms, "FirmwareStatusNotification") == []  # not while Pending
            csms.behaviour.boot_status = "Accepted"
            await csms.wait_for(lambda: controller.boot_accepted, 10)
            await wait_statuses(csms, "FirmwareStatusNotification", ["InstallationFailed"], timeout=10)
    ins = [r.action for r in csms.records if r.direction == "in"]
    boots = [i for i, a in enumerate(ins) if a == "BootNotification"]
    assert len(boots) >= 2
    assert ins.index("FirmwareStatusNotification") > boots[-1]
    assert restarts == []


async def test_pending_release_confirms_when_boot_is_accepted(tmp_path: Path, release_root: Path) -> None:
    mgr = ReleaseManager(release_root, installer=extract_installer)
    mgr.switch_to(mgr.install(make_wheel(tmp_path / "dist", "0.2.0")))
    mgr.mark_pending_confirmation("0.2.0", datetime.now(UTC) + timedelta(minutes=10))
    async with running_station(tmp_path) as st:
        assert st.controller.firmware.boot_outcome == "pending"
        await st.csms.wait_for(lambda: ReleaseManager(release_root).pending() is None, 10)
    assert json.loads((release_root / "firmware-state.json").read_text())["last_confirmed"] == "0.2.0"
    assert mgr.current_version() == "0.2.0"


async def test_status_undelivered_at_stop_is_sent_by_the_next_start(tmp_path: Path, release_root: Path,
                                                                    http: HttpServer) -> None:
    """``Installed`` is followed by a restart: what could not be delivered survives it."""
    async with CentralSystem() as csms:
        csms.behaviour.silent_actions.add("BootNotification")  # never registered
        async with station_with_csms(tmp_path, csms, []) as controller:
            await controller.firmware._queue_notice("FirmwareStatusNotification", "Installed")
            await asyncio.sleep(0.2)
        assert statuses(csms, "FirmwareStatusNotification") == []
    assert (tmp_path / "state/pending-status-notifications.json").exists()
    async with running_station(tmp_path) as st:
        await wait_statuses(st.csms, "FirmwareStatusNotification", ["Installed"], timeout=10)
        # received is not yet answered: wait until the charge point has the answer (at-least-once delivery
        # keeps a message whose answer was cut off by the stop)
        await st.csms.wait_for(lambda: not st.controller.firmware.pending_notices(), 5)
    assert not (tmp_path / "state/pending-status-notifications.json").exists()


# ---------------------------------------------------------------------------------------------- GetDiagnostics


def _members(data: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tf:
        return {m.name: m for m in tf.getmembers()}


async def test_get_diagnostics_uploads_the_archive(tmp_path: Path, http: HttpServer) -> None:
    async with running_station(tmp_path, cp_id="CP-DIAG") as st:
        await st.start_charging()  # the store holds a transaction worth diagnosing
        since = iso(datetime.now(UTC) - timedelta(hours=1))
        conf = await st.call("GetDiagnostics", {"location": f"{http.base}/diag/", "retries": 1,
                                                "startTime": since})
        name = conf["fileName"]
        assert re.fullmatch(r"diagnostics-CP-DIAG-\d{8}T\d{6}Z\.tar\.gz", name)
        await wait_statuses(st.csms, "DiagnosticsStatusNotification", ["Uploading", "Uploaded"])
        assert st.controller.firmware.diagnostics_status() == "Idle"
        # The conf went out before the first status (the fileName must be known first).
        outs = [(r.direction, r.action) for r in st.csms.records
                if r.action in ("GetDiagnostics", "DiagnosticsStatusNotification")]
        assert outs[0] == ("out", "GetDiagnostics")
    body = http.received[f"/diag/{name}"]
    members = _members(body)
    assert "diagnostics/manifest.json" in members
    assert "diagnostics/state/state.db" in members
    with tarfile.open(fileobj=io.BytesIO(body), mode="r:gz") as tf:
        manifest = json.load(tf.extractfile("diagnostics/manifest.json"))  # type: ignore[arg-type]
        versions = json.load(tf.extractfile("diagnostics/versions.json"))  # type: ignore[arg-type]
        hardware = json.load(tf.extractfile("diagnostics/hardware.json"))  # type: ignore[arg-type]
    assert manifest["journal_window"]["since"].startswith(since[:16])
    assert "chargepoint" in versions
    assert hardware["snapshot_at_request"]["connectors"][0]["status"] == "Charging"
    assert not list((tmp_path / "state/diagnostics").glob("*"))  # the local copy is removed


async def test_get_diagnostics_upload_refused_reports_upload_failed(tmp_path: Path, http: HttpServer) -> None:
    http.upload_status = 500
    async with running_station(tmp_path) as st:
        conf = await st.call("GetDiagnostics", {"location": f"{http.base}/diag/", "retries": 1,
                                                "retryInterval": 0})
        assert conf["fileName"].endswith(".tar.gz")
        await wait_statuses(st.csms, "DiagnosticsStatusNotification", ["Uploading", "UploadFailed"])
        assert st.controller.firmware.diagnostics_status() == "Idle"
    assert http.received == {}


async def test_diagnostics_statuses_survive_a_dropped_link(tmp_path: Path, http: HttpServer) -> None:
    async with running_station(tmp_path) as st:
        station: Station = st
        conf = await station.call("GetDiagnostics", {"location": f"{http.base}/d/", "retries": 1})
        await station.csms.drop_connections()
        await station.csms.wait_for(lambda: not station.controller.firmware.diagnostics_running(), 20)
        await station.csms.wait_for(
            lambda: statuses(station.csms, "DiagnosticsStatusNotification")[-1:] == ["Uploaded"], 20)
        # At least once, in order: a status whose answer was lost with the link is sent again.
        got = statuses(station.csms, "DiagnosticsStatusNotification")
        assert [s for i, s in enumerate(got) if i == 0 or got[i - 1] != s] == ["Uploading", "Uploaded"]
        assert f"/d/{conf['fileName']}" in http.received

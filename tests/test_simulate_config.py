"""`chargepoint simulate --config FILE`: an installer rehearses their own configuration, every device
simulated, with the same limits, keys and station settings, and `chargepoint status` works against it."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from chargepoint.config import ConfigError, load_config, simulated_from
from chargepoint.csms import CentralSystem

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "deploy" / "chargepoint.example.toml"


@pytest.fixture
def sockdir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="cpsim-", dir="/tmp"))  # AF_UNIX paths are at most 108 bytes
    yield d
    shutil.rmtree(d, ignore_errors=True)


def installer_file(tmp_path: Path, sock: Path, url: str = "wss://csms.example.com/ocpp") -> Path:
    """The reference Pi build with the installer's own choices: 16 A fuse, 2 connectors, 1 phase, keys."""
    text = EXAMPLE.read_text()
    connector = text[text.index("[[connectors]]"):text.index("# RFID readers")]
    text = (
        text.replace('id = "CP-0001"', 'id = "SITE-7"')
        .replace('status_socket = "/run/chargepoint/status.sock"', f'status_socket = "{sock}"')
        .replace("wss://csms.example.com/ocpp", url)
        .replace("max_current_a = 32                # the installation", "max_current_a = 16  # the installation")
        .replace("HeartbeatInterval = 300", "HeartbeatInterval = 123")
        .replace("MeterValueSampleInterval = 60", "MeterValueSampleInterval = 1")
        .replace("phases = 3 ", "phases = 1 ")
    )
    second = (connector.replace("id = 1", "id = 2").replace("phases = 3 ", "phases = 1 ")
              .replace("max_current_a = 32 ", "max_current_a = 20 "))
    for a, b in (("relay_pin = 17", "relay_pin = 4"), ("mirror_pin = 27", "mirror_pin = 7"),
                 ("lock_pin = 22", "lock_pin = 13"), ("unlock_pin = 23", "unlock_pin = 19"),
                 ("feedback_pin = 24", "feedback_pin = 26"), ("fault_pin = 5", "fault_pin = 25"),
                 ('test_pin = 6', 'test_pin = "none"')):
        second = second.replace(a, b)
    second = "\n".join(line for line in second.splitlines()
                       if not line.startswith(("pilot =", "indicator =", "meter =")))
    second += '\npilot = { driver = "sim" }\nmeter = { driver = "sim" }\n'
    text = text.replace("# RFID readers", second + "\n# RFID readers")
    path = tmp_path / "site.toml"
    path.write_text(text)
    return path


def test_simulated_from_keeps_everything_but_the_devices(tmp_path: Path, sockdir: Path) -> None:
    installed = load_config(installer_file(tmp_path, sockdir / "s.sock"))
    sim = simulated_from(installed, state_dir=tmp_path / "sim-state")
    assert sim.charge_point_id == "SITE-7" and sim.csms == installed.csms and sim.station == installed.station
    assert sim.ocpp_keys == installed.ocpp_keys and sim.status_socket == str(sockdir / "s.sock")
    assert [(c.id, c.max_current_a, c.min_current_a, c.phases, c.ventilation) for c in sim.connectors] == [
        (c.id, c.max_current_a, c.min_current_a, c.phases, c.ventilation) for c in installed.connectors]
    for real, simulated in zip(installed.connectors, sim.connectors, strict=True):
        assert set(simulated.devices) == set(real.devices)
        assert all(opts["driver"] == "sim" for opts in simulated.devices.values())
    assert len(sim.readers) == len(installed.readers) and all(r["driver"] == "sim" for r in sim.readers)
    assert sim.state_dir == tmp_path / "sim-state" != installed.state_dir
    with pytest.raises(ConfigError, match="--key NumberOfConnectors"):
        simulated_from(installed, state_dir=tmp_path, ocpp_keys={"NumberOfConnectors": "3"})
    with pytest.raises(ConfigError, match="--csms"):
        simulated_from(installed, state_dir=tmp_path, csms_url="http://nope")


async def test_simulate_with_the_installers_file_and_status(tmp_path: Path, sockdir: Path) -> None:
    sock = sockdir / "status.sock"
    async with CentralSystem() as cs:
        cfg = installer_file(tmp_path, sock, url=cs.url)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "chargepoint", "simulate", "--config", str(cfg), "--state-dir",
            str(tmp_path / "state"),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            cwd=ROOT,
        )
        assert proc.stdin is not None and proc.stdout is not None
        try:
            boot = await cs.wait_for_message("BootNotification", timeout=15)
            assert boot["chargePointModel"] == "PiEVSE" and boot["chargePointSerialNumber"] == "PIEVSE-0001"
            assert "SITE-7" in cs.sessions
            proc.stdin.write(b"plug 2\ntap CARD42\n")
            await proc.stdin.drain()
            start = await cs.wait_for_message("StartTransaction", timeout=10)
            assert start["connectorId"] == 2
            await cs.wait_for_message("MeterValues", timeout=10)  # MeterValueSampleInterval = 1 from the file
            status = None
            for _ in range(100):  # the pilot offer follows the station limit within a few control ticks
                out = await asyncio.to_thread(
                    subprocess.run,
                    [sys.executable, "-m", "chargepoint", "status", "--socket", str(sock), "--json"],
                    capture_output=True, text=True, cwd=ROOT, timeout=30,
                )
                assert out.returncode == 0, out.stderr
                status = json.loads(out.stdout)
                if status["connectors"][1]["status"] == "Charging":
                    break
                await asyncio.sleep(0.1)
            assert status is not None
            c2 = status["connectors"][1]
            assert c2["status"] == "Charging" and c2["contactor"] == "closed"
            assert c2["offered_a"] == 16.0  # the file's 16 A station fuse limit, not the 32 A default
            assert len(status["connectors"]) == 2
            proc.stdin.write(b"quit\n")
            await proc.stdin.drain()
            _, err = await asyncio.wait_for(proc.communicate(), 15)
            assert proc.returncode == 0, err.decode()
            assert b"Traceback" not in err
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


def test_simulate_needs_csms_and_id_or_a_config() -> None:
    out = subprocess.run([sys.executable, "-m", "chargepoint", "simulate", "--id", "X"], capture_output=True,
                         text=True, cwd=ROOT, timeout=30, stdin=subprocess.DEVNULL)
    assert out.returncode == 2 and "--config FILE" in out.stderr and "Traceback" not in out.stderr


async def test_tap_without_a_reader_is_an_error_answer_not_a_crash() -> None:
    from types import SimpleNamespace

    from chargepoint.simulate import Simulator
    from hal.sim.board import SimBench

    controller = SimpleNamespace(build_context=SimpleNamespace(shared={"sim_bench": SimBench()}), connectors={1: None})
    with pytest.raises(ValueError, match="no RFID reader"):
        await Simulator(controller).execute("tap CARD1")  # type: ignore[arg-type]


async def test_simulate_carries_on_when_the_services_socket_is_taken(tmp_path: Path, sockdir: Path) -> None:
    """`simulate --config /etc/chargepoint/chargepoint.toml` on a Pi whose service runs: its socket path is
    served already; the rehearsal runs without a socket instead of crashing."""
    from chargepoint.status_socket import StatusServer

    sock = sockdir / "taken.sock"
    async with CentralSystem() as cs, StatusServer(sock, lambda: {"connectors": []}):
        cfg = installer_file(tmp_path, sock, url=cs.url)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "chargepoint", "simulate", "--config", str(cfg), "--state-dir",
            str(tmp_path / "state"),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            cwd=ROOT,
        )
        assert proc.stdin is not None
        try:
            await cs.wait_for_message("BootNotification", timeout=15)
            proc.stdin.write(b"quit\n")
            await proc.stdin.drain()
            _, err = await asyncio.wait_for(proc.communicate(), 15)
            assert proc.returncode == 0, err.decode()
            assert b"already serves" in err and b"Traceback" not in err
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()

"""check-hardware walk-through with the real drivers against the test-side emulators.

The ``ask`` callback plays the installer: it answers questions and, when told to, sets the EV test
adapter (the MCP3008 input voltage), taps a card (writes an RDM6300 frame) and so on.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import serial
from gpiozero import Device
from gpiozero.pins.mock import MockFactory

from chargepoint.commissioning import Timeouts, check_hardware
from hal.interfaces import ConnectorHardware, StationHardware
from hal.rdm6300 import make_frame
from hal.registry import BuildContext, build
from tests.fakes.gpio_rig import FakeContactor, FakeLockMotor, FakeRcm
from tests.fakes.mcp3008 import FakeMCP3008
from tests.fakes.modbus_meters import free_port, image, pty_pair, serve_tcp, sim_device
from tests.fakes.pilot_circuit import PilotCircuit
from tests.test_hal_pilot_pwm import make_sysfs

pytestmark = pytest.mark.hardware_stack
ROOT = Path(__file__).resolve().parents[1]

FAST = Timeouts(tag_s=1.0, adapter_s=1.0, settle_s=0.3)


@dataclass
class Bench:
    station: StationHardware
    contactor: FakeContactor
    lock: FakeLockMotor
    rcm: FakeRcm
    cp: PilotCircuit
    card_port: serial.Serial
    factory: MockFactory


@contextlib.asynccontextmanager
async def bench(tmp_path: Path, meter_up: bool = True) -> AsyncIterator[Bench]:
    factory = MockFactory()
    old = Device.pin_factory
    Device.pin_factory = factory
    make_sysfs(tmp_path / "sys")
    fc, regs = image("sdm630")
    port = free_port()
    with pty_pair(tmp_path) as (module_end, host_end):
        server = serve_tcp(port, [sim_device(1, fc, regs)]) if meter_up else contextlib.nullcontext()
        async with server:
            rigs = FakeContactor(factory), FakeLockMotor(factory), FakeRcm(factory)
            cp = PilotCircuit(FakeMCP3008(pin_factory=factory), tmp_path / "sys" / "pwmchip0" / "pwm0")
            ctx = BuildContext(gpio_pin_factory=factory)
            k = "connectors[0]"
            conn = ConnectorHardware(
                connector_id=1,
                pilot=build("pilot", {"driver": "pwm", "sysfs_root": str(tmp_path / "sys"), "poll_hz": 100},
                            f"{k}.pilot", 1, ctx),
                contactor=build("contactor", {"driver": "gpio", "weld_check_s": 0.2}, f"{k}.contactor", 1, ctx),
                meter=build("meter", {"driver": "modbus", "model": "sdm630", "host": "127.0.0.1", "port": port,
                                      "timeout": 0.3, "retries": 0}, f"{k}.meter", 1, ctx),
                lock=build("lock", {"driver": "gpio", "pulse_s": 0.3, "min_interval_s": 1.0, "retries": 0}, f"{k}.lock", 1, ctx),
                rcm=build("rcm", {"driver": "gpio"}, f"{k}.rcm", 1, ctx),
            )
            reader = build("reader", {"driver": "rdm6300", "port": host_end}, "readers[0]", 0, ctx)
            card_port = serial.Serial(module_end, 9600)
            try:
                yield Bench(StationHardware([conn], [reader]), *rigs, cp, card_port, factory)
            finally:
                card_port.close()
                cp.close()
                factory.reset()
                Device.pin_factory = old


def installer(b: Bench, answers: dict[str, str] | None = None, adapter: bool = True) -> tuple[
        Callable[[str], str], list[str]]:
    asked: list[str] = []
    answers = answers or {}

    def ask(q: str) -> str:
        asked.append(q)
        for key, answer in answers.items():
            if key in q:
                return answer
        if "state B" in q and adapter:
            b.cp.vehicle = "B"
        elif "state C" in q and adapter:
            b.cp.vehicle = "C"
        elif "back to A" in q:
            b.cp.vehicle = "A"
        elif "Tap a card" in q:
            b.card_port.write(make_frame(bytes.fromhex("0A12345678")))
            return ""
        return "y"

    return ask, asked


def lines_with(out: list[str], status: str) -> list[str]:
    return [line for line in out if line.startswith(f"[{status}]")]


async def test_everything_passes(tmp_path: Path) -> None:
    async with bench(tmp_path) as b:
        ask, asked = installer(b)
        out: list[str] = []
        ok = await check_hardware(b.station, ask=ask, say=out.append, assume_yes=False, timeouts=FAST)
        text = "\n".join(out)
        assert ok, text
        assert lines_with(out, "FAIL") == []
        for step in ("meter", "nothing plugged in", "unavailable", "test adapter in B", "test adapter in C",
                     "contactor", "residual current monitor", "socket lock", "RFID reader 0"):
            assert any(step in line for line in lines_with(out, "PASS")), (step, text)
        assert "230.1 V / 231.2 V / 229.3 V" in text and "12345.600 kWh" in text
        assert "tag 1234…78" in text  # masked
        assert any("switch the contactor ON" in q for q in asked)
        assert b.contactor.relay.state is False  # left open
        assert [s.state for s in b.contactor.relay.states].count(True) == 1  # switched exactly once


async def test_contactor_not_switched_without_confirmation(tmp_path: Path) -> None:
    async with bench(tmp_path) as b:
        ask, _ = installer(b, {"switch the contactor ON": "n"})
        out: list[str] = []
        ok = await check_hardware(b.station, ask=ask, say=out.append, assume_yes=False, timeouts=FAST)
        assert ok
        assert any("contactor" in line and "no confirmation" in line for line in lines_with(out, "SKIP"))
        assert True not in [s.state for s in b.contactor.relay.states]  # never energized


async def test_failures_say_what_to_check(tmp_path: Path) -> None:
    async with bench(tmp_path, meter_up=False) as b:
        b.rcm.dead = True
        b.lock.jammed = True
        ask, _ = installer(b, {"Tap a card": ""}, adapter=False)
        out: list[str] = []
        ok = await check_hardware(b.station, ask=ask, say=out.append, assume_yes=False, timeouts=FAST)
        text = "\n".join(out)
        assert not ok
        failed = lines_with(out, "FAIL")
        for step in ("meter", "test adapter in B", "residual current monitor", "socket lock", "RFID reader 0"):
            assert any(step in line for line in failed), (step, text)
        # The hints name the configured driver: this meter is on Modbus TCP (no RS-485, no baud rate) ...
        assert "127.0.0.1:" in text and "device_id = 1" in text and "Modbus TCP" in text
        assert "RS-485" not in text and "baud rate" not in text
        # ... and the reader is an RDM6300 on its serial port (no PC/SC advice)
        assert "GPIO6" in text and "GPIO24" in text and "9600 baud" in text and "RDM6300: port" in text
        assert "PC/SC" not in text and "pcsc_scan" not in text
        assert b.lock.unlock_out.state is False and b.contactor.relay.state is False


async def test_welded_contactor_is_never_switched(tmp_path: Path) -> None:
    async with bench(tmp_path) as b:
        ask, asked = installer(b)
        b.contactor.weld()
        out: list[str] = []
        ok = await check_hardware(b.station, ask=ask, say=out.append, assume_yes=False, timeouts=FAST)
        assert not ok
        assert any("contactor" in line and "welded" in line for line in lines_with(out, "FAIL"))
        assert not any("switch the contactor ON" in q for q in asked)
        assert True not in [s.state for s in b.contactor.relay.states]


async def test_assume_yes_without_anyone_there(tmp_path: Path) -> None:
    async with bench(tmp_path) as b:
        def nobody(q: str) -> Any:
            raise AssertionError(f"asked {q!r} despite --yes")

        out: list[str] = []
        ok = await check_hardware(b.station, ask=nobody, say=out.append, assume_yes=True, timeouts=FAST)
        text = "\n".join(out)
        assert ok, text
        skipped = lines_with(out, "SKIP")
        assert any("test adapter in B" in line for line in skipped)
        assert any("RFID reader 0" in line for line in skipped)
        assert any("contactor" in line for line in lines_with(out, "PASS"))  # --yes confirms switching


def _sim_station(ctx: BuildContext, meter: dict[str, Any], rcm: dict[str, Any] | None = None) -> StationHardware:
    k = "connectors[0]"
    conn = ConnectorHardware(
        connector_id=1,
        pilot=build("pilot", {"driver": "sim"}, f"{k}.pilot", 1, ctx),
        contactor=build("contactor", {"driver": "sim"}, f"{k}.contactor", 1, ctx),
        meter=build("meter", meter, f"{k}.meter", 1, ctx),
        rcm=build("rcm", rcm, f"{k}.rcm", 1, ctx) if rcm else None,
    )
    return StationHardware([conn], [])


async def test_hints_name_the_configured_rtu_meter_and_pins(tmp_path: Path) -> None:
    """An RS-485 meter that does not answer and an RCM on non-default pins: the hints say those."""
    factory = MockFactory()
    ctx = BuildContext(gpio_pin_factory=factory)
    with pty_pair(tmp_path) as (meter_end, _nobody):
        station = _sim_station(
            ctx,
            {"driver": "modbus", "model": "sdm630", "port": meter_end, "baudrate": 19200, "parity": "E",
             "device_id": 7, "timeout": 0.3, "retries": 0},
            {"driver": "gpio", "fault_pin": 25, "test_pin": 26},
        )
        out: list[str] = []
        ok = await check_hardware(station, ask=lambda q: "s" if "[Enter" in q else "y", say=out.append,
                                  assume_yes=False, timeouts=FAST)
    factory.reset()
    text = "\n".join(out)
    assert not ok
    assert "RS-485 wiring" in text and f"{meter_end} at 19200 baud, parity E" in text and "device_id = 7" in text
    assert "GPIO25" in text and "GPIO26" in text
    assert "GPIO5)" not in text and "GPIO6)" not in text  # not the reference build's defaults


async def test_standard_input_closing_ends_questions_without_a_traceback(tmp_path: Path) -> None:
    async with bench(tmp_path) as b:
        asked: list[str] = []

        def closed(q: str) -> str:
            asked.append(q)
            raise EOFError

        out: list[str] = []
        ok = await check_hardware(b.station, ask=closed, say=out.append, assume_yes=False, timeouts=FAST)
        text = "\n".join(out)
        assert not ok  # incomplete is not a pass
        assert len(asked) == 1  # nobody is asked again after the input ended
        assert "standard input closed" in text and "Incomplete" in text
        assert any("contactor" in line for line in lines_with(out, "SKIP"))
        assert True not in [s.state for s in b.contactor.relay.states]  # never switched without a person


SIM_CONFIG = """
[chargepoint]
id = "HW-1"
state_dir = "{state}"
[csms]
url = "ws://127.0.0.1:9/ocpp"
[[connectors]]
pilot = {{ driver = "sim" }}
contactor = {{ driver = "sim" }}
meter = {{ driver = "sim" }}
"""


def test_check_hardware_cli_with_closed_stdin(tmp_path: Path) -> None:
    cfg = tmp_path / "cp.toml"
    cfg.write_text(SIM_CONFIG.format(state=tmp_path / "state"))
    out = subprocess.run([sys.executable, "-m", "chargepoint", "check-hardware", "--config", str(cfg)],
                         stdin=subprocess.DEVNULL, capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert "Traceback" not in out.stderr and "EOFError" not in out.stderr, out.stderr
    assert out.returncode == 1
    assert "standard input closed" in out.stdout and "Result:" in out.stdout


def test_check_hardware_keeps_its_report_for_the_web_ui(tmp_path: Path) -> None:
    cfg = tmp_path / "cp.toml"
    cfg.write_text(SIM_CONFIG.format(state=tmp_path / "state"))
    (tmp_path / "state").mkdir()
    out = subprocess.run([sys.executable, "-m", "chargepoint", "check-hardware", "--config", str(cfg)],
                         stdin=subprocess.DEVNULL, capture_output=True, text=True, cwd=ROOT, timeout=60)
    kept = (tmp_path / "state" / "check-hardware.txt").read_text()
    assert kept.startswith("check-hardware ") and "FAILED" in kept.splitlines()[0]
    assert "Result:" in kept and out.stdout.strip().splitlines()[-1] in kept


async def test_check_hardware_refuses_while_the_service_runs(tmp_path: Path) -> None:
    import asyncio
    import shutil
    import tempfile

    from chargepoint.status_socket import StatusServer

    sockdir = Path(tempfile.mkdtemp(prefix="cph-", dir="/tmp"))  # short: AF_UNIX paths are ≤ 108 bytes
    try:
        cfg = tmp_path / "cp.toml"
        cfg.write_text(SIM_CONFIG.format(state=tmp_path / "state").replace(
            'id = "HW-1"', f'id = "HW-1"\nstatus_socket = "{sockdir / "s.sock"}"'))
        async with StatusServer(sockdir / "s.sock", lambda: {"connectors": []}):
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "chargepoint", "check-hardware", "--config", str(cfg), "--yes",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT)
            out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 2, err.decode()
        assert b"sudo systemctl stop chargepoint" in err and b"Hardware check" not in out
    finally:
        shutil.rmtree(sockdir, ignore_errors=True)

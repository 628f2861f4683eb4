"""check-hardware walk-through with the real drivers against the test-side emulators.

The ``ask`` callback plays the installer: it answers questions and, when told to, sets the EV test
adapter (the MCP3008 input voltage), taps a card (writes an RDM6300 frame) and so on.
"""

from __future__ import annotations

import contextlib
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
        assert "baud rate" in text and "device_id" in text  # meter hints
        assert "GPIO6" in text and "GPIO24" in text and "9600 baud" in text
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

"""Modbus meters against real pymodbus servers: RTU over a socat pty pair and TCP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from pymodbus import FramerType
from pymodbus.server import ModbusSerialServer

from hal.interfaces import FaultCleared, FaultKind, FaultRaised, HalEvent, HardwareConfigError, MeterError
from hal.modbus import ModbusMeter, available_models, load_model
from hal.registry import BuildContext, build
from tests.fakes.modbus_meters import (
    VALUES,
    Silencer,
    free_port,
    image,
    pty_pair,
    serve_rtu,
    serve_tcp,
    sim_device,
)

MODELS = ["sdm630", "sdm72dm", "sdm120", "abb_b23", "em340"]


def check_reading(reading: object, phases: int) -> None:
    r = reading
    assert r.energy_wh == pytest.approx(VALUES["energy_kwh"] * 1000, rel=1e-6)  # type: ignore[attr-defined]
    assert r.power_w == pytest.approx(VALUES["power"], rel=1e-6)  # type: ignore[attr-defined]
    assert r.frequency_hz == pytest.approx(VALUES["frequency"], rel=1e-6)  # type: ignore[attr-defined]
    for i in range(phases):
        assert r.voltage_v[i] == pytest.approx(VALUES["voltage"][i], rel=1e-6)  # type: ignore[attr-defined]
        assert r.current_a[i] == pytest.approx(VALUES["current"][i], rel=1e-6)  # type: ignore[attr-defined]
    for i in range(phases, 3):
        assert r.voltage_v[i] is None and r.current_a[i] is None  # type: ignore[attr-defined]


def test_every_shipped_model_is_tested() -> None:
    assert available_models() == sorted(MODELS)


@pytest.mark.parametrize("model", MODELS)
async def test_each_model_over_tcp(model: str) -> None:
    fc, regs = image(model)
    port = free_port()
    async with serve_tcp(port, [sim_device(7, fc, regs)]):
        meter = build("meter", {"driver": "modbus", "model": model, "host": "127.0.0.1", "port": port,
                                "device_id": 7, "request_gap_ms": 0}, "connectors.1.meter", 1, BuildContext())
        events: list[HalEvent] = []
        await meter.start(events.append)
        check_reading(await meter.read(), meter.phases)
        assert meter.phases == (1 if model == "sdm120" else 3)
        assert events == []
        await meter.stop()


@pytest.mark.hardware_stack
async def test_two_meters_share_one_rtu_line_with_request_gap(tmp_path: Path) -> None:
    with pty_pair(tmp_path) as (client_end, server_end):
        arrivals: list[float] = []

        def trace(sending: bool, data: bytes) -> bytes:
            if not sending and data:
                arrivals.append(time.monotonic())
            return data

        fc1, r1 = image("sdm630")
        fc2, r2 = image("sdm120")
        server = ModbusSerialServer([sim_device(1, fc1, r1), sim_device(2, fc2, r2)], framer=FramerType.RTU,
                                    port=server_end, baudrate=9600, trace_packet=trace)
        task = asyncio.create_task(server.serve_forever())
        await asyncio.sleep(0.1)
        try:
            ctx = BuildContext()
            base = {"driver": "modbus", "port": client_end, "baudrate": 9600, "request_gap_ms": 50}
            m1 = build("meter", {**base, "model": "sdm630", "device_id": 1}, "connectors.1.meter", 1, ctx)
            m2 = build("meter", {**base, "model": "sdm120", "device_id": 2}, "connectors.2.meter", 2, ctx)
            assert m1.bus is m2.bus
            await m1.start(lambda e: None)
            await m2.start(lambda e: None)
            r_a, r_b = await asyncio.gather(m1.read(), m2.read())
            check_reading(r_a, 3)
            check_reading(r_b, 1)
            assert len(arrivals) == 2 + 2  # each meter in two blocks (0x00-0x0D/0x0B and 0x34/0x46-0x49)
            gaps = [b - a for a, b in zip(arrivals, arrivals[1:], strict=False)]
            assert min(gaps) >= 0.045
            await m1.stop()
        finally:
            await server.shutdown()
            task.cancel()


@pytest.mark.hardware_stack
async def test_rtu_meter_stops_answering_then_comes_back(tmp_path: Path) -> None:
    with pty_pair(tmp_path) as (client_end, server_end):
        fc, regs = image("sdm630")
        silencer = Silencer()
        async with serve_rtu(server_end, [sim_device(1, fc, regs)], silencer=silencer):
            meter = build("meter", {"driver": "modbus", "model": "sdm630", "port": client_end, "timeout": 0.2,
                                    "retries": 0, "request_gap_ms": 0}, "connectors.1.meter", 1, BuildContext())
            events: list[HalEvent] = []
            await meter.start(events.append)
            check_reading(await meter.read(), 3)
            silencer.silent = True
            for _ in range(2):
                with pytest.raises(MeterError, match="no answer"):
                    await meter.read()
            assert len(events) == 1  # one fault per outage, not one per read
            assert isinstance(events[0], FaultRaised) and events[0].kind == FaultKind.METER
            assert not events[0].latched and events[0].connector_id == 1
            silencer.silent = False
            check_reading(await meter.read(), 3)
            assert events[1:] == [FaultCleared(1, FaultKind.METER)]
            check_reading(await meter.read(), 3)
            assert len(events) == 2
            await meter.stop()


async def test_tcp_meter_goes_away_and_returns() -> None:
    fc, regs = image("em340")
    port = free_port()
    meter = build("meter", {"driver": "modbus", "model": "em340", "host": "127.0.0.1", "port": port,
                            "timeout": 0.3, "retries": 0, "request_gap_ms": 0}, "m", 1, BuildContext())
    events: list[HalEvent] = []
    await meter.start(events.append)
    async with serve_tcp(port, [sim_device(1, fc, regs)]):
        check_reading(await meter.read(), 3)
    with pytest.raises(MeterError):
        await meter.read()
    assert [type(e) for e in events] == [FaultRaised]
    async with serve_tcp(port, [sim_device(1, fc, regs)]):
        check_reading(await meter.read(), 3)
    assert events[-1] == FaultCleared(1, FaultKind.METER)
    await meter.stop()


async def test_wrong_device_id_is_a_meter_error() -> None:
    fc, regs = image("sdm120")
    port = free_port()
    async with serve_tcp(port, [sim_device(5, fc, regs)]):
        meter = build("meter", {"driver": "modbus", "model": "sdm120", "host": "127.0.0.1", "port": port,
                                "device_id": 6, "timeout": 0.3, "retries": 0}, "m", 1, BuildContext())
        events: list[HalEvent] = []
        await meter.start(events.append)
        with pytest.raises(MeterError):
            await meter.read()
        assert [e.kind for e in events if isinstance(e, FaultRaised)] == [FaultKind.METER]
        await meter.stop()


async def test_abb_all_ones_means_not_available() -> None:
    fc, regs = image("abb_b23")
    regs[0x5B2C] = 0xFFFF  # frequency not available
    port = free_port()
    async with serve_tcp(port, [sim_device(1, fc, regs)]):
        meter = build("meter", {"driver": "modbus", "model": "abb_b23", "host": "127.0.0.1", "port": port,
                                "request_gap_ms": 0}, "m", 1, BuildContext())
        await meter.start(lambda e: None)
        reading = await meter.read()
        assert reading.frequency_hz is None and reading.power_w == pytest.approx(VALUES["power"])
        await meter.stop()
    for a in range(0x5000, 0x5004):
        regs[a] = 0xFFFF  # the energy register itself invalid: no reading at all
    async with serve_tcp(port, [sim_device(1, fc, regs)]):
        await meter.start(lambda e: None)
        with pytest.raises(MeterError, match="invalid"):
            await meter.read()
        await meter.stop()


def test_block_planning_respects_max_block() -> None:
    root = Path(__file__).resolve().parents[1] / "hal" / "meters"
    sdm630 = load_model(root / "sdm630.toml", "m")
    assert [(fc, start, count) for fc, start, count, _ in sdm630.blocks()] == [(4, 0, 12), (4, 0x34, 22)]
    sdm72 = load_model(root / "sdm72dm.toml", "m")
    assert all(count <= 12 for _, _, count, _ in sdm72.blocks())
    abb = load_model(root / "abb_b23.toml", "m")
    assert [(fc, start) for fc, start, _, _ in abb.blocks()] == [(3, 0x5000), (3, 0x5B00), (3, 0x5B2C)]


async def test_a_new_meter_is_a_new_file(tmp_path: Path) -> None:
    (tmp_path / "mymeter.toml").write_text(
        'name = "Test meter"\nphases = 1\nfunction = 4\n[registers]\n'
        'energy_import = { address = 0x48, type = "float32", unit = "kWh" }\n'
        'voltage_l1 = { address = 0x00, type = "float32", unit = "V" }\n'
        'temperature_board = { address = 0x06, type = "float32", unit = "C" }\n'
    )
    fc, regs = image("sdm120")
    port = free_port()
    async with serve_tcp(port, [sim_device(1, fc, regs)]):
        meter = build("meter", {"driver": "modbus", "map_file": str(tmp_path / "mymeter.toml"),
                                "host": "127.0.0.1", "port": port}, "m", 1, BuildContext())
        assert isinstance(meter, ModbusMeter) and meter.phases == 1
        await meter.start(lambda e: None)
        r = await meter.read()
        assert r.energy_wh == pytest.approx(VALUES["energy_kwh"] * 1000)
        assert r.extra["temperature_board"] == pytest.approx(VALUES["current"][0])
        await meter.stop()


@pytest.mark.parametrize(
    ("options", "key", "allowed"),
    [
        ({"model": "sdm999", "port": "/dev/ttyUSB0"}, "m.model", "'sdm630'"),
        ({"model": "sdm630"}, "m.port", "/dev/ttyUSB0"),
        ({"model": "sdm630", "port": "/dev/ttyUSB0", "device_id": 0}, "m.device_id", "1 to 247"),
        ({"model": "sdm630", "port": "/dev/ttyUSB0", "parity": "X"}, "m.parity", "'E', 'N', 'O'"),
        ({"model": "sdm630", "port": "/dev/ttyUSB0", "baud": 9600}, "m.baud", "unknown option"),
    ],
)
def test_option_errors(options: dict, key: str, allowed: str) -> None:
    with pytest.raises(HardwareConfigError) as exc:
        build("meter", {"driver": "modbus", **options}, "m", 1, BuildContext())
    assert exc.value.key == key and allowed in exc.value.allowed


def test_meters_on_one_line_must_agree() -> None:
    ctx = BuildContext()
    build("meter", {"driver": "modbus", "model": "sdm630", "port": "/dev/ttyX", "baudrate": 9600}, "a", 1, ctx)
    with pytest.raises(HardwareConfigError) as exc:
        build("meter", {"driver": "modbus", "model": "sdm630", "port": "/dev/ttyX", "baudrate": 19200,
                        "device_id": 2}, "b", 2, ctx)
    assert exc.value.key == "b.baudrate"
    with pytest.raises(HardwareConfigError) as exc:
        build("meter", {"driver": "modbus", "model": "sdm120", "port": "/dev/ttyX"}, "c", 2, ctx)
    assert exc.value.key == "c.device_id" and "a" in exc.value.allowed


def test_bad_map_file_names_the_entry(tmp_path: Path) -> None:
    f = tmp_path / "bad.toml"
    f.write_text('[registers]\nenergy_import = { address = 0x48, type = "float33", unit = "kWh" }\n')
    with pytest.raises(HardwareConfigError) as exc:
        build("meter", {"driver": "modbus", "map_file": str(f), "port": "/dev/ttyX"}, "m", 1, BuildContext())
    assert "registers.energy_import.type" in exc.value.key and "float32" in exc.value.allowed


async def test_missing_serial_port_is_a_meter_error(tmp_path: Path) -> None:
    meter = build("meter", {"driver": "modbus", "model": "sdm630", "port": str(tmp_path / "nope")}, "m", 1,
                  BuildContext())
    events: list[HalEvent] = []
    await meter.start(events.append)
    with pytest.raises(MeterError, match="cannot open"):
        await meter.read()
    assert [e.kind for e in events if isinstance(e, FaultRaised)] == [FaultKind.METER]


def test_no_shipped_map_has_a_temperature_register_and_the_docs_say_so() -> None:
    """Issue 12: the meter's temperature counts "where the register map has one". None of the shipped maps
    has one (hardware-docs/drivers.md names the sources); a map that gains one must update that paragraph."""
    import tomllib

    maps = Path(__file__).resolve().parents[1] / "hal" / "meters"
    with_temperature = [p.stem for p in sorted(maps.glob("*.toml"))
                        if "temperature" in tomllib.loads(p.read_text(encoding="utf-8"))["registers"]]
    docs = (Path(__file__).resolve().parents[1] / "hardware-docs" / "drivers.md").read_text(encoding="utf-8")
    assert with_temperature == [] and "**None of the shipped maps has one**" in docs

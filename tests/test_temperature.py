"""Temperature: the NTC's Beta model and fail-safe sensor check, derating and stop with hysteresis (pure),
the MCP3008 driver on gpiozero's mock SPI, and the whole controller (NTC, meter temperature, `fault C overtemp`)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from gpiozero import Device
from gpiozero.pins.mock import MockFactory

from chargepoint.config import ConfigError, parse_config
from chargepoint.simulate import Simulator
from chargepoint.thermal import ThermalGuard, ThermalLevel, ThermalLimits, next_level
from hal.interfaces import FaultCleared, FaultKind, FaultRaised, HalEvent, TemperatureReading
from hal.registry import BuildContext, build
from hal.temperature import ADC_MAX, NtcCircuit, NtcMonitor
from tests.conftest import Station, running_station
from tests.fakes.mcp3008 import FakeMCP3008

# ---------------------------------------------------------------- NTC model


def test_beta_model_matches_a_10k_3950_datasheet() -> None:
    ntc = NtcCircuit(r25_ohm=10_000, beta=3950, series_ohm=10_000)
    assert ntc.celsius(0.5) == pytest.approx(25.0, abs=1e-9)  # R = R25
    # datasheet table of a 10 kΩ B3950 NTC: 60 °C ≈ 2.49 kΩ, 0 °C ≈ 33.6 kΩ (Beta model within ~1 %)
    for celsius, ohm in ((60.0, 2490.0), (0.0, 33_600.0)):
        fraction = ohm / (ohm + 10_000)
        assert ntc.celsius(fraction) == pytest.approx(celsius, abs=1.0)
    for c in (-20.0, 25.0, 65.0, 120.0):
        assert ntc.celsius(ntc.fraction_at(c)) == pytest.approx(c, abs=1e-6)
    high = NtcCircuit(ntc_low_side=False)
    assert high.celsius(high.fraction_at(70.0)) == pytest.approx(70.0, abs=1e-6)
    assert high.fraction_at(70.0) > 0.5  # hot NTC on the high side pulls the input up


def test_open_or_shorted_ntc_is_a_fault_not_a_temperature() -> None:
    ntc = NtcCircuit()
    m = NtcMonitor(1, ntc, fault_samples=3)
    good = round(ntc.fraction_at(30.0) * ADC_MAX)
    [ev] = m.sample(good, 0.0)
    assert isinstance(ev, TemperatureReading) and ev.celsius == pytest.approx(30.0, abs=0.2)
    for kind, counts in (("open", ADC_MAX), ("shorted", 0)):
        assert m.sample(counts, 1.0) == [] and m.sample(counts, 1.5) == []
        [fault] = m.sample(counts, 2.0)
        assert isinstance(fault, FaultRaised) and fault.kind == FaultKind.TEMP_SENSOR and kind in fault.info
        assert m.sample(counts, 2.5) == []  # once
        assert m.sample(good, 3.0) == [] and m.sample(good, 3.5) == []
        events = m.sample(good, 4.0)
        assert isinstance(events[0], FaultCleared) and isinstance(events[1], TemperatureReading)
    m2 = NtcMonitor(1, ntc, fault_samples=2)
    assert m2.sample(None, 0.0, "spi") == []
    [fault] = m2.sample(None, 0.5, "spi")
    assert isinstance(fault, FaultRaised) and "ADC read failed" in fault.info


def test_readings_are_filtered_and_reported_on_change_or_periodically() -> None:
    ntc = NtcCircuit()
    m = NtcMonitor(1, ntc, window=4, report_delta_c=0.5, report_every_s=10.0)
    c40 = round(ntc.fraction_at(40.0) * ADC_MAX)
    assert len(m.sample(c40, 0.0)) == 1
    assert m.sample(c40, 1.0) == [] and m.sample(c40 + 1, 2.0) == []  # noise: not reported
    [ev] = m.sample(c40, 10.5)
    assert isinstance(ev, TemperatureReading)  # but at least every 10 s
    c60 = round(ntc.fraction_at(60.0) * ADC_MAX)
    assert any(isinstance(e, TemperatureReading) and e.celsius > 44 for e in m.sample(c60, 11.0))


# ---------------------------------------------------------------- derating and stop, with hysteresis

LIMITS = ThermalLimits(derate_c=60.0, stop_c=70.0, hysteresis_c=5.0)


@pytest.mark.parametrize(
    ("level", "celsius", "expected"),
    [
        (ThermalLevel.NORMAL, 59.9, ThermalLevel.NORMAL),
        (ThermalLevel.NORMAL, 60.0, ThermalLevel.DERATED),
        (ThermalLevel.DERATED, 55.1, ThermalLevel.DERATED),
        (ThermalLevel.DERATED, 55.0, ThermalLevel.NORMAL),
        (ThermalLevel.DERATED, 69.9, ThermalLevel.DERATED),
        (ThermalLevel.DERATED, 70.0, ThermalLevel.STOPPED),
        (ThermalLevel.NORMAL, 75.0, ThermalLevel.STOPPED),
        (ThermalLevel.STOPPED, 65.1, ThermalLevel.STOPPED),
        (ThermalLevel.STOPPED, 65.0, ThermalLevel.DERATED),
        (ThermalLevel.STOPPED, 55.1, ThermalLevel.DERATED),
        (ThermalLevel.STOPPED, 50.0, ThermalLevel.NORMAL),
    ],
)
def test_levels_with_hysteresis(level: ThermalLevel, celsius: float, expected: ThermalLevel) -> None:
    assert next_level(level, celsius, LIMITS) == expected


def test_guard_takes_the_hottest_sensor_and_claims() -> None:
    g = ThermalGuard(LIMITS)
    assert g.update("socket", 40.0) == ThermalLevel.NORMAL and g.claim(32, 6) is None
    assert g.update("meter", 62.0) == ThermalLevel.DERATED
    amps, source = g.claim(32, 6)  # type: ignore[misc]
    assert amps == 16.0 and "meter 62.0 °C" in source and "derating" in source
    assert ThermalGuard(replace(LIMITS, derate_current_a=10.0), ThermalLevel.DERATED, {"s": 61}).claim(32, 6)[0] == 10
    assert ThermalGuard(LIMITS, ThermalLevel.DERATED, {"s": 61}).claim(10, 6)[0] == 6.0  # never below minimum
    assert g.update("socket", 71.0) == ThermalLevel.STOPPED and g.claim(32, 6)[0] is None  # type: ignore[index]
    assert g.forget("socket") == ThermalLevel.DERATED  # the meter still reads 62 °C


# ---------------------------------------------------------------- the driver on mock SPI


@pytest.fixture
def factory() -> Iterator[MockFactory]:
    f = MockFactory()
    old = Device.pin_factory
    Device.pin_factory = f
    yield f
    f.reset()
    Device.pin_factory = old


async def _until(cond: Any, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, "condition not met"
        await asyncio.sleep(0.01)


async def test_ntc_driver_on_mock_spi(factory: MockFactory) -> None:
    adc = FakeMCP3008(pin_factory=factory)
    ntc = NtcCircuit()
    adc.channels[3] = ntc.fraction_at(45.0) * adc.vref
    events: list[HalEvent] = []
    dev = build("temperature", {"driver": "ntc", "channel": 3, "poll_hz": 20}, "connectors[0].temperature", 1,
                BuildContext(gpio_pin_factory=factory))
    await dev.start(events.append)
    try:
        await _until(lambda: any(isinstance(e, TemperatureReading) for e in events))
        reading = next(e for e in events if isinstance(e, TemperatureReading))
        assert reading.celsius == pytest.approx(45.0, abs=0.5) and reading.sensor == "socket"
        adc.channels[3] = adc.vref  # the NTC's wire came off: open
        await _until(lambda: any(isinstance(e, FaultRaised) for e in events))
        fault = next(e for e in events if isinstance(e, FaultRaised))
        assert fault.kind == FaultKind.TEMP_SENSOR and "open" in fault.info
        adc.channels[3] = ntc.fraction_at(30.0) * adc.vref
        await _until(lambda: any(isinstance(e, FaultCleared) for e in events))
    finally:
        await dev.stop()


def test_configuration_of_the_temperature_input() -> None:
    base: dict[str, Any] = {"chargepoint": {"id": "CP-1"}, "csms": {"url": "ws://127.0.0.1:9/ocpp"}}
    conn = {"pilot": {"driver": "sim"}, "contactor": {"driver": "sim"}, "meter": {"driver": "sim"}}
    cfg = parse_config({**base, "connectors": [{**conn, "temperature": {
        "driver": "ntc", "channel": 3, "beta": 3435, "derate_c": 55, "stop_c": 65, "derate_current_a": 10}}]})
    c = cfg.connectors[0]
    assert (c.temperature.derate_c, c.temperature.stop_c, c.temperature.derate_current_a) == (55, 65, 10)
    assert c.devices["temperature"] == {"driver": "ntc", "channel": 3, "beta": 3435}  # thresholds are not driver options
    meter_only = parse_config({**base, "connectors": [{**conn, "temperature": {"driver": "none", "stop_c": 80}}]})
    assert "temperature" not in meter_only.connectors[0].devices and meter_only.connectors[0].temperature.stop_c == 80
    with pytest.raises(ConfigError) as err:
        parse_config({**base, "connectors": [{**conn, "temperature": {"driver": "none", "derate_c": 70,
                                                                      "stop_c": 65, "derate_current_a": 99}}]})
    assert sorted(p.key for p in err.value.problems) == [
        "connectors[0].temperature.derate_current_a", "connectors[0].temperature.stop_c"]


# ---------------------------------------------------------------- end to end


def _c(st: Station) -> dict[str, Any]:
    return st.controller.snapshot()["connectors"][0]


async def test_derate_then_stop_then_recover_with_hysteresis(tmp_path: Path) -> None:
    async with running_station(tmp_path, keys={"MeterValueSampleInterval": 0}) as st:
        # not testing the 5 s duty rate limit here (a derating step waits for it like any decrease)
        st.controller.limits.set_duty_min_interval(0.0)
        sim = Simulator(st.controller)
        await st.start_charging()
        rt = st.controller.connectors[1]
        assert rt.hw.pilot.offered_amps == 32.0
        await sim.execute("temp 1 62")
        await st.csms.wait_for(lambda: rt.hw.pilot.offered_amps == 16.0, 8)
        assert "temperature derating (socket 62.0 °C" in _c(st)["limit_source"]
        await sim.execute("temp 1 72")
        sn = await st.csms.wait_for_message("StatusNotification", where=lambda p: p["status"] == "Faulted")
        assert sn["errorCode"] == "HighTemperature"
        assert not rt.hw.contactor.is_closed and rt.tx is not None  # suspended, not ended
        await sim.execute("temp 1 66")  # above stop - hysteresis: stays stopped
        await asyncio.sleep(0.3)
        assert st.status() == "Faulted" and _c(st)["temperature"]["level"] == "stopped"
        await sim.execute("temp 1 64")  # below 65 °C: the stop ends, still derated (above 55 °C)
        await st.wait_status("Charging", timeout=8)
        assert rt.hw.pilot.offered_amps == 16.0 and _c(st)["temperature"]["level"] == "derated"
        await sim.execute("temp 1 50")
        await st.csms.wait_for(lambda: rt.hw.pilot.offered_amps == 32.0, 8)


async def test_broken_ntc_stops_charging(tmp_path: Path) -> None:
    async with running_station(tmp_path) as st:
        await st.start_charging()
        sensor = st.controller.build_context.shared["sim_temperatures"][1]  # type: ignore[union-attr]
        sensor.fail(True)
        sn = await st.csms.wait_for_message("StatusNotification", where=lambda p: p["status"] == "Faulted")
        assert sn["errorCode"] == "InternalError" and sn["vendorErrorCode"] == "TemperatureSensor"
        assert not st.controller.connectors[1].hw.contactor.is_closed
        sensor.fail(False)
        await st.wait_status("Charging", timeout=8)


async def test_meter_temperature_counts_and_fault_overtemp_keeps_working(tmp_path: Path) -> None:
    async with running_station(tmp_path) as st:
        rt = st.controller.connectors[1]
        meter = rt.hw.meter
        original = meter.read
        hot = {"c": 75.0}

        async def read_with_temperature() -> Any:
            return replace(await original(), temperature_c=hot["c"])

        meter.read = read_with_temperature  # type: ignore[method-assign]
        await st.controller.transactions.read_meter(rt)
        await st.wait_status("Faulted")
        assert any("over-temperature stop (meter 75.0 °C" in c["source"] for c in _c(st)["limit_claims"])
        # the simulator's own over-temperature fault: its clear does not end the meter's stop ...
        sim = Simulator(st.controller)
        await sim.execute("fault 1 overtemp")
        await sim.execute("clear 1 overtemp")
        await asyncio.sleep(0.2)
        assert st.status() == "Faulted"
        # ... and cooling down does not end the simulator's fault
        await sim.execute("fault 1 overtemp")
        hot["c"] = 30.0
        await st.controller.transactions.read_meter(rt)
        await asyncio.sleep(0.2)
        assert st.status() == "Faulted" and _c(st)["temperature"]["level"] == "normal"
        await sim.execute("clear 1 overtemp")
        await st.wait_status("Available")
        assert math.isclose(_c(st)["temperature"]["sensors"]["meter"], 30.0)


@pytest.mark.parametrize(("fraction", "expected"), [(NtcCircuit().fraction_at(23.0), "PASS"), (1.0, "FAIL")])
async def test_commissioning_checks_the_ntc(factory: MockFactory, fraction: float, expected: str) -> None:
    from chargepoint.commissioning import Session, Timeouts, check_temperature
    from hal.interfaces import ConnectorHardware, StationHardware

    adc = FakeMCP3008(pin_factory=factory)
    adc.channels[3] = fraction * adc.vref
    dev = build("temperature", {"driver": "ntc", "channel": 3, "poll_hz": 20}, "connectors[0].temperature", 1,
                BuildContext(gpio_pin_factory=factory))
    conn = ConnectorHardware(1, pilot=None, contactor=None, meter=None, temperature=dev)  # type: ignore[arg-type]
    out: list[str] = []
    s = Session(StationHardware([conn]), lambda q: "", out.append, False, Timeouts(settle_s=0.5))
    await dev.start(s.events.append)
    try:
        assert await check_temperature(s, conn) == expected, out
    finally:
        await dev.stop()

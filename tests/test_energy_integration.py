"""[energy] end to end: config checks, the claims in the arbiter, a phase switch with the simulated car."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from chargepoint.config import ConfigError, hardware_problems, parse_config, simulated_config
from chargepoint.controller import Controller
from chargepoint.csms import CentralSystem
from chargepoint.energy.config import EnergyConfig, PhaseSwitchSettings


def _data(energy: dict[str, Any], grid: bool = True) -> dict[str, Any]:
    sim = {"driver": "sim"}
    data: dict[str, Any] = {
        "chargepoint": {"id": "CP-E", "state_dir": "/tmp/cp-e"},
        "csms": {"url": "ws://127.0.0.1:9/ocpp"},
        "station": {},
        "connectors": [{"id": 1, "pilot": dict(sim), "contactor": {"driver": "gpio", "relay_pin": 17},
                        "meter": dict(sim)}],
        "energy": energy,
    }
    if grid:
        data["station"]["grid"] = {"meter": dict(sim), "limit_a": 35}
    return data


def _problems(energy: dict[str, Any], grid: bool = True) -> dict[str, str]:
    with pytest.raises(ConfigError) as err:
        parse_config(_data(energy, grid))
    return {p.key: p.allowed for p in err.value.problems}


def test_energy_config_parses_with_defaults() -> None:
    cfg = parse_config(_data({"mode": "surplus", "phase_switch": {"driver": "gpio", "pin": 26},
                              "schedule": {"windows": ["mon-fri 22:00-06:00"], "timezone": "Europe/London"},
                              "dimming": {"input": {"driver": "gpio", "pin": 13}}}))
    e = cfg.energy
    assert e.mode == "surplus" and e.start_delay_s == 60 and e.stop_delay_s == 300
    assert e.phase_switch.device == {"driver": "gpio", "pin": 26} and e.phase_switch.settle_s == 5
    assert e.schedule.random_delay_s == 600 and e.dimming.power_w == 4200
    assert parse_config(_data({})).energy.enabled is False


def test_check_config_names_each_energy_problem() -> None:
    p = _problems({"mode": "surplus"}, grid=False)
    assert "grid meter" in p["energy.mode"]
    p = _problems({"schedule": {"windows": ["mon-fri 22:00-06:00", "tue 05:00-07:00"], "random_delay_s": 4000}})
    assert "overlap" in p["energy.schedule.windows"] and "3600" in p["energy.schedule.random_delay_s"]
    p = _problems({"start_delay_s": 7200, "mode": "sunny", "typo": 1})
    assert "3600" in p["energy.start_delay_s"] and "energy.mode" in p and "energy.typo" in p
    p = _problems({"phase_switch": {"driver": "gpio", "settle_s": 2}, "schedule": {"windows": ["22-06"]}})
    assert "energy.phase_switch.settle_s" in p and "energy.schedule.windows[0]" in p


def test_a_phase_switch_on_a_pin_in_use_is_named() -> None:
    data = _data({"phase_switch": {"driver": "gpio", "pin": 17}})
    problems = {p.key: p.allowed for p in hardware_problems(data)}
    assert "taken by connectors[0].contactor.relay_pin" in problems["energy.phase_switch.pin"]
    data = _data({"phase_switch": {"driver": "gpio", "pin": 26}, "dimming": {"input": {"driver": "gpio",
                                                                                          "pin": 26}}})
    problems = {p.key: p.allowed for p in hardware_problems(data)}
    assert "taken by energy.phase_switch.pin" in problems["energy.dimming.input.pin"]


def test_gpio_relay_starts_de_energized_one_phase_and_switches() -> None:
    import asyncio

    from gpiozero.pins.mock import MockFactory

    from hal.energy_io import GpioControlInput, GpioPhaseSwitch

    async def main() -> None:
        pf = MockFactory()
        relay = GpioPhaseSwitch(pin=26, pin_factory=pf)
        await relay.start(lambda e: None)
        assert relay.phases == 1 and pf.pin(26).state is False
        await relay.set_phases(3)
        assert relay.phases == 3 and pf.pin(26).state is True
        await relay.stop()
        assert relay.phases == 1
        inp = GpioControlInput(pin=13, bounce_s=0, pin_factory=pf)
        seen: list[bool] = []
        inp.on_change(seen.append)
        await inp.start(lambda e: None)
        assert not inp.active
        pf.pin(13).drive_low()  # the control box closes its contact
        await asyncio.sleep(0.05)
        assert inp.active and seen == [True]
        pf.pin(13).drive_high()
        await asyncio.sleep(0.05)
        assert not inp.active and seen == [True, False]
        await inp.stop()

    asyncio.run(asyncio.wait_for(main(), 10))


def _energy(**kw: Any) -> EnergyConfig:
    return EnergyConfig(**kw)


def _surplus_with_phase_switch(cs: CentralSystem, tmp_path: Path) -> Any:
    """A 16 A connector on a 40 A house with a grid meter, surplus mode and a simulated 1p/3p relay."""
    grid = {"meter": {"driver": "sim", "house_a": 0.0}, "limit_a": 40.0, "margin_a": 1.0, "poll_s": 0.5}
    cfg = simulated_config(charge_point_id="CP-PV", csms_url=cs.url, state_dir=tmp_path, ev_reaction_s=0.05,
                           grid=grid, max_current_a=40.0)
    return replace(cfg, connectors=[replace(cfg.connectors[0], max_current_a=16.0)],
                   energy=_energy(mode="surplus", start_delay_s=1.0, stop_delay_s=20.0, margin_w=0.0,
                                  phase_switch=PhaseSwitchSettings({"driver": "sim"}, settle_s=5.0,
                                                                   phase_delay_s=10.0, phase_hysteresis_w=500.0)))


async def test_surplus_phase_switch_end_to_end_with_a_clean_pause(tmp_path: Path) -> None:
    async with CentralSystem() as cs:
        c = Controller(_surplus_with_phase_switch(cs, tmp_path))
        await c.start()
        try:
            c.limits.set_duty_min_interval(0.5)
            assert c.keys["ConnectorSwitch3to1PhaseSupported"] is True
            shared = c.build_context.shared  # type: ignore[union-attr]
            bench, relay = shared["sim_bench"], shared["sim_phase_switches"][1]
            rt = c.connectors[1]
            opens_under_load: list[float] = []
            real_open = rt.hw.contactor.open

            async def watched_open() -> None:
                if rt.hw.contactor.is_closed:
                    opens_under_load.append(bench.ev(1).drawn_a)
                await real_open()

            rt.hw.contactor.open = watched_open  # type: ignore[method-assign]
            await cs.wait_for(lambda: c.boot_accepted, 15)
            assert relay.phases == 1  # de-energized at start; surplus mode chooses the phases when it starts
            bench.grid.pv_w = 9000.0
            bench.ev(1).plug()
            bench.readers[0].present("PV1")
            await cs.wait_for(lambda: rt.hw.contactor.is_closed and (rt.hw.pilot.offered_amps or 0) >= 12, 30)
            assert relay.phases == 3  # switched at rest (contactor open) before the start
            assert any(src.startswith("surplus:") for _, src in c.limits.claims(1))
            # clouds: 2.5 kW — below the 3-phase minimum, enough for one phase: pause, switch, resume on 1
            bench.grid.pv_w = 2500.0
            await cs.wait_for(lambda: any(s.startswith("phase-switch:") for _, s in c.limits.claims(1)), 25)
            assert rt.state.status == "SuspendedEVSE" or not rt.hw.contactor.is_closed
            await cs.wait_for(lambda: relay.phases == 1 and rt.hw.contactor.is_closed
                              and bench.ev(1).drawn_a > 0, 30)
            reading = await rt.hw.meter.read()
            assert reading.current_a[1] == 0.0 and reading.current_a[2] == 0.0
            assert 9.0 <= (rt.hw.pilot.offered_amps or 0) <= 11.0  # 2.5 kW on one phase
            assert relay.switched_under_load == 0
            assert opens_under_load and all(a == 0.0 for a in opens_under_load), opens_under_load
            assert c.energy.snapshot()["phases"] == 1  # type: ignore[union-attr]
        finally:
            await c.stop()


async def test_dimming_claim_status_info_and_schedule(tmp_path: Path) -> None:
    from chargepoint.energy.config import DimmingSettings, ScheduleSettings
    from chargepoint.energy.schedule import parse_window

    async with CentralSystem() as cs:
        cfg = simulated_config(charge_point_id="CP-DIM", csms_url=cs.url, state_dir=tmp_path, ev_reaction_s=0.0)
        cfg = replace(cfg, energy=_energy(dimming=DimmingSettings({"driver": "sim"}, power_w=4200.0),
                                          schedule=ScheduleSettings([parse_window("daily 00:00-00:00")], "UTC",
                                                                    random_delay_s=0.0)))
        c = Controller(cfg)
        await c.start()
        try:
            c.limits.set_duty_min_interval(0.2)
            shared = c.build_context.shared  # type: ignore[union-attr]
            bench, dim = shared["sim_bench"], shared["sim_dimming_input"]
            rt = c.connectors[1]
            await cs.wait_for(lambda: c.boot_accepted, 10)
            bench.ev(1).plug()
            bench.readers[0].present("DIM1")
            await cs.wait_for(lambda: rt.hw.pilot.offered_amps == 32.0, 15)
            dim.set(True)
            await cs.wait_for(lambda: rt.hw.pilot.offered_amps == 6.0, 10)  # 4.2 kW on 3 phases: 6 A, never 0
            assert any(s.startswith("dimming:") for _, s in c.limits.claims(1))
            await cs.wait_for(lambda: any(m.get("info") == "Dimmed §14a EnWG" for m in
                                          cs.received("StatusNotification")), 10)
            dim.set(False)
            await cs.wait_for(lambda: rt.hw.pilot.offered_amps == 32.0, 10)
        finally:
            await c.stop()


async def test_a_failed_phase_switch_is_a_fault_the_central_system_sees(tmp_path: Path) -> None:
    """A relay that does not move (welded, unwired): the meter still shows 3 phases after a switch to 1 —
    a fault (OtherError / PhaseSwitchFailed), the contactor stays open, and unplugging clears it."""
    async with CentralSystem() as cs:
        c = Controller(_surplus_with_phase_switch(cs, tmp_path))
        await c.start()
        try:
            c.limits.set_duty_min_interval(0.5)
            shared = c.build_context.shared  # type: ignore[union-attr]
            bench, relay = shared["sim_bench"], shared["sim_phase_switches"][1]
            rt = c.connectors[1]
            await cs.wait_for(lambda: c.boot_accepted, 15)
            bench.grid.pv_w = 9000.0
            bench.ev(1).plug()
            bench.readers[0].present("PV1")
            await cs.wait_for(lambda: rt.hw.contactor.is_closed and relay.phases == 3
                              and bench.ev(1).drawn_a > 0, 30)
            relay.stuck = True  # from now on the relay ignores its coil
            bench.grid.pv_w = 2500.0  # one phase would do: the switch is tried and fails
            sn = await cs.wait_for_message("StatusNotification", where=lambda p: p["status"] == "Faulted",
                                           timeout=40)
            assert sn["errorCode"] == "OtherError" and sn.get("vendorErrorCode") == "PhaseSwitchFailed"
            assert not rt.hw.contactor.is_closed and relay.switched_under_load == 0
            bench.ev(1).unplug()
            await cs.wait_for(lambda: not rt.state.faults and rt.state.status == "Available"
                              and cs.received("StatusNotification")[-1]["status"] == "Available", 15)
            assert cs.received("StatusNotification")[-1]["errorCode"] == "NoError"
        finally:
            await c.stop()


async def test_charge_now_overrides_the_schedule_through_the_api_and_mqtt_parser(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from chargepoint.api import CommandError
    from chargepoint.energy.config import ScheduleSettings
    from chargepoint.energy.schedule import parse_window
    from chargepoint.frontends.mqtt import Command, parse_command

    far = (datetime.now(UTC).hour + 12) % 24  # a window that is not now
    async with CentralSystem() as cs:
        cfg = simulated_config(charge_point_id="CP-NOW", csms_url=cs.url, state_dir=tmp_path, ev_reaction_s=0.0)
        cfg = replace(cfg, energy=_energy(schedule=ScheduleSettings(
            [parse_window(f"daily {far:02d}:00-{far:02d}:30")], "UTC", random_delay_s=0.0)))
        c = Controller(cfg)
        await c.start()
        try:
            c.limits.set_duty_min_interval(0.2)
            bench, rt = c.build_context.shared["sim_bench"], c.connectors[1]  # type: ignore[union-attr]
            await cs.wait_for(lambda: c.boot_accepted, 10)
            bench.ev(1).plug()
            bench.readers[0].present("NOW1")
            await cs.wait_for_message("StartTransaction", timeout=10)
            await asyncio.sleep(0.5)
            assert not rt.hw.pilot.offered_amps and not rt.hw.contactor.is_closed  # outside the window: waits
            assert any(src.startswith("schedule") for _, src in c.limits.claims(1))
            from tests.web_helpers import client_for, login, post

            async with client_for(c.api) as client:  # the owner presses "Charge now" on the web page
                token = await login(client)
                assert "Charge now" in await (await client.get("/")).text()
                resp = await post(client, "/connectors/1/charge-now", token, on="1")
                assert resp.status == 200, await resp.text()
                assert (await post(client, "/connectors/1/charge-now", token, on="maybe")).status == 400
            await cs.wait_for(lambda: rt.hw.contactor.is_closed and (rt.hw.pilot.offered_amps or 0) >= 6, 10)
            with pytest.raises(CommandError):
                await c.api.charge_now(9, True)  # type: ignore[attr-defined]
        finally:
            await c.stop()
    assert parse_command("cp/X", "cp/X/1/set/charge_now", b"ON", {1: 32.0}) == Command("set/charge_now", 1, True)
    assert parse_command("cp/X", "cp/X/1/set/charge_now", b"maybe", {1: 32.0}).code == "bad_value"  # type: ignore[union-attr]

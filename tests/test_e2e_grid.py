"""Dynamic load management with a grid (whole-house) meter: the charger takes only what the house leaves."""

from __future__ import annotations

from pathlib import Path

from chargepoint.config import simulated_config
from chargepoint.controller import Controller
from chargepoint.csms import CentralSystem


async def test_house_load_lowers_and_pauses_the_charger(tmp_path: Path) -> None:
    grid = {"meter": {"driver": "sim", "house_a": 10.0}, "limit_a": 25.0, "margin_a": 1.0, "poll_s": 0.5}
    async with CentralSystem() as cs:
        cfg = simulated_config(
            charge_point_id="CP-GRID", csms_url=cs.url, state_dir=tmp_path, ev_reaction_s=0.0, grid=grid
        )
        c = Controller(cfg)
        await c.start()
        try:
            await cs.wait_for(lambda: c.boot_accepted, 10)
            bench = c.build_context.shared["sim_bench"]  # type: ignore[union-attr]
            bench.ev(1).plug()
            bench.readers[0].present("GRID1")
            rt = c.connectors[1]
            # 25 A main fuse − 1 A margin − 10 A house = 14 A for the car
            await cs.wait_for(lambda: rt.hw.pilot.offered_amps == 14.0 and rt.hw.contactor.is_closed, 10)
            assert "grid meter" in c.limits.source(rt.id)
            # the house switches on an oven: 20 A, only 4 A left: below 6 A the car pauses
            bench.grid.house_a = 20.0
            await cs.wait_for(lambda: rt.state.status == "SuspendedEVSE", 10)
            assert rt.hw.pilot.offered_amps is None
            # the oven is off again: charging resumes (a change at most every 5 s)
            bench.grid.house_a = 5.0
            await cs.wait_for(lambda: rt.hw.pilot.offered_amps == 19.0, 12)
            # the grid meter goes silent: only the minimum current
            bench.grid.failing = True
            await cs.wait_for(lambda: rt.hw.pilot.offered_amps == 6.0, 20)
        finally:
            await c.stop()


def test_grid_config_errors_name_the_key() -> None:
    import pytest

    from chargepoint.config import ConfigError

    with pytest.raises(ConfigError) as err:
        simulated_config(
            charge_point_id="X",
            csms_url="ws://127.0.0.1:1/o",
            state_dir="/tmp/x",
            grid={"meter": {"driver": "laser"}, "limit_a": 2},
        )
    keys = {p.key for p in err.value.problems}
    assert {"station.grid.meter.driver", "station.grid.limit_a"} <= keys


async def test_the_grid_meter_loop_is_supervised(tmp_path: Path) -> None:
    """Killed, the grid loop comes back and keeps reading the house (else the stale-reading fallback, the
    minimum current, would hold for good)."""
    grid = {"meter": {"driver": "sim", "house_a": 10.0}, "limit_a": 25.0, "margin_a": 1.0, "poll_s": 0.5}
    async with CentralSystem() as cs:
        cfg = simulated_config(
            charge_point_id="CP-GRID", csms_url=cs.url, state_dir=tmp_path, ev_reaction_s=0.0, grid=grid
        )
        c = Controller(cfg)
        await c.start()
        try:
            victim = c.supervisor.task("grid-meter")
            assert victim is not None and not victim.done()
            victim.cancel()
            await cs.wait_for(
                lambda: (t := c.supervisor.task("grid-meter")) not in (None, victim) and not t.done(), 10
            )
            read_at = c.smart.grid_read_at
            await cs.wait_for(lambda: c.smart.grid_read_at > read_at, 5)  # reading again
        finally:
            await c.stop()

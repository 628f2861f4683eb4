"""PV surplus controller (pure): hysteresis, rate limit, following the car, min+PV, phase choice, a house day."""

from __future__ import annotations

from dataclasses import replace

from chargepoint.energy.dimming import Dimming
from chargepoint.energy.phase_switch import Finished, PhaseSwitchConfig, PhaseSwitchSequence, SetRelay
from chargepoint.energy.surplus import SurplusConfig, SurplusController
from hal.sim.sun import SunProfile

CFG = SurplusConfig(mode="surplus", max_current_a=16, phases=3, margin_w=0.0)
V = 230.0


def _run(ctl: SurplusController, t0: float, t1: float, grid_w: float, car_w: float = 0.0,
         car_a: float | None = None) -> float:
    t = t0
    while t <= t1:
        ctl.sample(t, grid_w, car_w, car_a)
        t += 1.0
    return t


def test_start_needs_the_minimum_held_for_the_start_delay() -> None:
    ctl = SurplusController(CFG)
    assert ctl.claim.amps is None and ctl.claim.source == "surplus"
    _run(ctl, 0, 30, grid_w=-(3 * 6 * V) + 10)  # just below 4.14 kW export
    assert ctl.claim.amps is None and "waiting for surplus" in ctl.claim.detail
    _run(ctl, 31, 89, grid_w=-4200)
    assert ctl.claim.amps is None and "held" in ctl.claim.detail
    ctl.sample(91, -4200, 0)
    assert ctl.claim.amps == 6 and ctl.charging and ctl.cycles_last_hour == 1


def test_a_dip_restarts_the_start_delay() -> None:
    ctl = SurplusController(CFG)
    _run(ctl, 0, 50, grid_w=-5000)
    ctl.sample(51, -1000, 0)
    _run(ctl, 52, 100, grid_w=-5000)
    assert not ctl.charging
    _run(ctl, 101, 112, grid_w=-5000)
    assert ctl.charging


def test_stop_only_after_the_stop_delay_below_minimum_meanwhile_the_minimum() -> None:
    ctl = SurplusController(CFG)
    _run(ctl, 0, 60, grid_w=-6000)
    assert ctl.charging
    car = 6 * 3 * V
    # a cloud: export falls, the car (6 A) now imports
    _run(ctl, 61, 360, grid_w=1000, car_w=car)
    assert ctl.charging and ctl.claim.amps == 6 and "stops after 300 s" in ctl.claim.detail
    ctl.sample(361, 1000, car)
    assert not ctl.charging and ctl.claim.amps is None and "stopped" in ctl.claim.detail
    # sun back for less than a minute: no restart
    _run(ctl, 362, 400, grid_w=-6000)
    assert not ctl.charging


def test_a_short_cloud_does_not_stop() -> None:
    ctl = SurplusController(CFG)
    _run(ctl, 0, 60, grid_w=-6000)
    _run(ctl, 61, 200, grid_w=500, car_w=6 * 3 * V)
    _run(ctl, 201, 230, grid_w=-2000, car_w=6 * 3 * V)  # surplus back above the minimum
    assert ctl.charging
    _run(ctl, 231, 500, grid_w=500, car_w=6 * 3 * V)  # the stop delay starts again at 231
    assert ctl.charging


def test_offer_follows_surplus_at_most_every_5_s_and_raises_wait_for_the_car() -> None:
    ctl = SurplusController(replace(CFG, follow_timeout_s=15))
    _run(ctl, 0, 60, grid_w=-4200)
    assert ctl.claim.amps == 6
    # surplus 11 kW: 15.9 A → 15 A; the car still draws 6 A (it follows with a lag)
    ctl.sample(62, -11000 + 6 * 3 * V, 6 * 3 * V, 6.0)
    assert ctl.claim.amps == 6  # < 5 s since the start
    ctl.sample(66, -11000 + 6 * 3 * V, 6 * 3 * V, 6.0)
    assert ctl.claim.amps == 15
    # the surplus rises further but the car has not followed the 15 A yet: the raise waits
    ctl.sample(72, -16000 + 6 * 3 * V, 6 * 3 * V, 6.0)
    assert ctl.claim.amps == 15 and "waits for the car" in ctl.claim.detail
    ctl.sample(73, -16000 + 15 * 3 * V, 15 * 3 * V, 15.0)  # followed
    assert ctl.claim.amps == 16  # capped at the connector maximum
    # a drop is applied after 5 s even though the car did not follow the last raise
    ctl.sample(75, 2000, 16 * 3 * V, 16.0)
    assert ctl.claim.amps == 16
    ctl.sample(78, 2000, 16 * 3 * V, 16.0)
    assert ctl.claim.amps == 13  # (11040 - 2000) / 690 = 13.1


def test_a_car_that_limits_itself_does_not_block_raises_forever() -> None:
    ctl = SurplusController(replace(CFG, follow_timeout_s=15))
    _run(ctl, 0, 60, grid_w=-4200)
    ctl.sample(70, -8000 + 4 * 3 * V, 4 * 3 * V, 4.0)  # car draws 4 A of 6 A: not followed
    assert ctl.claim.amps == 6
    ctl.sample(76, -8000 + 4 * 3 * V, 4 * 3 * V, 4.0)
    assert ctl.claim.amps == 11  # 15 s since the last change: raised anyway


def test_changes_below_a_step_are_ignored() -> None:
    ctl = SurplusController(CFG)
    _run(ctl, 0, 60, grid_w=-7000)
    a = ctl.claim.amps
    ctl.sample(100, -7000 - 300, 0, a)  # +0.4 A
    assert ctl.claim.amps == a


def test_min_plus_pv_never_stops_and_starts_at_once() -> None:
    ctl = SurplusController(replace(CFG, mode="minpv"))
    ctl.sample(0, 500, 0)
    assert ctl.charging and ctl.claim.amps == 6
    _run(ctl, 1, 2000, grid_w=3000, car_w=6 * 3 * V)
    assert ctl.claim.amps == 6
    _run(ctl, 2001, 2030, grid_w=-5000, car_w=6 * 3 * V, car_a=6.0)
    assert ctl.claim.amps == 13  # (5000 + 4140) / 690


def test_no_grid_reading_is_no_surplus() -> None:
    ctl = SurplusController(CFG)
    _run(ctl, 0, 100, grid_w=None)  # type: ignore[arg-type]
    assert not ctl.charging and "no grid meter reading" in ctl.claim.detail


SW = replace(CFG, can_switch=True, phase_delay_s=120, phase_min_interval_s=300)


def test_switchable_starts_on_one_phase_below_the_three_phase_minimum() -> None:
    ctl = SurplusController(SW, phases=3)
    _run(ctl, 0, 61, grid_w=-2500)  # 2.5 kW: enough for 1 phase (1.38 kW), not for 3 (4.14 kW)
    assert not ctl.charging and ctl.wanted_phases == 1 and ctl.claim.amps is None
    ctl.phases_changed(65, 1)
    assert ctl.charging and ctl.phases == 1 and ctl.claim.amps == 10  # 2500 / 230 = 10.9


def test_switch_up_with_hysteresis_and_down_before_the_stop() -> None:
    ctl = SurplusController(SW, phases=1)
    _run(ctl, 0, 61, grid_w=-3000)
    assert ctl.charging and ctl.phases == 1
    car = lambda a: a * V  # noqa: E731
    # 4.4 kW: above the 3-phase minimum but not by the 500 W hysteresis: stays on 1 phase (16 A max)
    _run(ctl, 62, 500, grid_w=-4400 + car(16), car_w=car(16), car_a=16)
    assert ctl.wanted_phases == 1 and ctl.claim.amps == 16
    # 5 kW for 120 s: up to 3 phases
    _run(ctl, 501, 620, grid_w=-5000 + car(16), car_w=car(16), car_a=16)
    assert ctl.wanted_phases == 1
    ctl.sample(621, -5000 + car(16), car(16), 16)
    assert ctl.wanted_phases == 3 and ctl.claim.amps is None and "switching to 3" in ctl.claim.detail
    ctl.phases_changed(640, 3)
    assert ctl.claim.amps == 7  # 5000 / 690 = 7.2
    assert ctl.cycles_last_hour == 2
    # a cloud: 3 kW. After 120 s down to 1 phase — but not sooner than 300 s after the last change
    _run(ctl, 641, 939, grid_w=-3000 + 6 * 3 * V, car_w=6 * 3 * V, car_a=6)
    assert ctl.wanted_phases == 3 and ctl.charging
    ctl.sample(940, -3000 + 6 * 3 * V, 6 * 3 * V, 6)
    assert ctl.wanted_phases == 1 and ctl.charging  # switched before the 300 s stop delay ran out


def test_the_contactor_budget_caps_starts_per_hour() -> None:
    ctl = SurplusController(replace(CFG, start_delay_s=10, stop_delay_s=10, max_cycles_per_hour=3))
    t = 0.0
    starts = 0
    for _ in range(10):  # sun and clouds every 40 s: would start 10 times
        t = _run(ctl, t, t + 20, grid_w=-6000)
        starts += 1 if ctl.charging else 0
        t = _run(ctl, t, t + 20, grid_w=2000, car_w=6 * 3 * V)
    assert ctl.cycles_last_hour == 3
    assert "3 starts in the last hour" in ctl.claim.detail or not ctl.charging


def test_dimming_amps_never_zero_and_never_below_minimum() -> None:
    d = Dimming(power_w=4200)
    assert d.claim(3) is None
    assert d.set_active(True, 5.0) and not d.set_active(True, 6.0)
    c = d.claim(3)
    assert c is not None and c.amps == 6.0 and c.source == "dimming" and "4.2 kW" in c.detail  # 6.08 → 6.0
    assert d.claim(1).amps == 18.2  # type: ignore[union-attr]
    assert d.claim(3, sharing=2).amps == 6.0  # type: ignore[union-attr]  # 3.04 A → the 6 A minimum
    assert d.claim(1, sharing=2).amps == 9.1  # type: ignore[union-attr]
    assert Dimming(power_w=11000).claim(3) is None  # not active
    big = Dimming(power_w=11000)
    big.set_active(True, 0)
    assert big.claim(3).amps == 15.9  # type: ignore[union-attr]
    d.set_active(False, 9.0)
    assert d.claim(3) is None and d.since is None


# ---------------------------------------------------------------------- a simulated house day


class _Car:
    """A car that follows the pilot within ~2 s (first order) on 3 phases; draws only with the contactor closed."""

    def __init__(self) -> None:
        self.amps = 0.0

    def step(self, offer: float | None, dt: float) -> None:
        target = offer if offer is not None else 0.0
        self.amps += (target - self.amps) * min(1.0, dt / 2.0)
        if offer is None and self.amps < 0.3:
            self.amps = 0.0


def house_day(sun: SunProfile, cfg: SurplusConfig, *, phases: int = 3) -> dict[str, float]:
    """86,400 one-second samples through the pure models; returns the day's numbers."""
    ctl = SurplusController(cfg, phases=phases)
    seq = PhaseSwitchSequence(PhaseSwitchConfig(), phases=phases)
    car = _Car()
    contactor = False
    closes = 0
    charged_wh = car_import_wh = 0.0
    max_closes_hour = 0
    close_times: list[float] = []
    for t in range(86400):
        now = float(t)
        car_phases = seq.phases
        car_w = car.amps * V * car_phases
        grid_w = -sun.export_w(now) + car_w
        ctl.sample(now, grid_w, car_w, car.amps)
        if ctl.wanted_phases != seq.phases and not seq.busy:
            seq.request(now, ctl.wanted_phases, car_phases_before=car_phases)
        currents = tuple(car.amps if i < car_phases else 0.0 for i in range(3))
        for action in seq.update(now, currents, contactor):
            if isinstance(action, SetRelay):
                assert not contactor and car.amps <= 0.5, "switched under load"
                seq.relay_set(now)
            if isinstance(action, Finished):
                assert action.verified, "the car drew on the new phases"
        if seq.step.value in ("resuming", "idle") and ctl.phases != seq.phases:
            ctl.phases_changed(now, seq.phases)  # relay in place: the offer for the new phase count
        ps = seq.claim(now)
        offer = None if ps is not None else ctl.claim.amps
        if offer is not None and not contactor:
            contactor = True
            closes += 1
            close_times.append(now)
            close_times = [c for c in close_times if now - c < 3600]
            max_closes_hour = max(max_closes_hour, len(close_times))
        elif offer is None and contactor and car.amps <= 0.5:
            contactor = False  # the car went to B: the state machine opens
        car.step(offer if contactor else None, 1.0)
        if contactor:
            charged_wh += car_w / 3600
            house_import = max(0.0, -sun.export_w(now))
            car_import_wh += (max(0.0, grid_w) - house_import) / 3600
    return {"closes": closes, "max_closes_per_hour": max_closes_hour, "charged_kwh": charged_wh / 1000,
            "car_import_kwh": car_import_wh / 1000}


# The stated budgets: the energy the car's session takes from the grid (over what the house imports anyway)
# as a share of the energy charged, with the default delays (60 s start, 300 s stop: most of the import is the
# 6 A minimum during a cloud's stop delay, 4.14 kW on 3 phases, 1.38 kW on 1 phase).
IMPORT_BUDGET_SWITCHING = 0.05  # ≤ 5 % with 1p/3p switching (measured: 3.0 % on 9 kWp, 4.2 % on 5 kWp)
IMPORT_BUDGET_THREE_PHASE = 0.08  # ≤ 8 % on 3 phases only, 9 kWp (measured: 5.8 %)


def test_a_house_day_surplus_three_phase_only() -> None:
    r = house_day(SunProfile(peak_w=9000, seed=16), replace(SurplusConfig(), max_current_a=16))
    assert r["charged_kwh"] > 20
    assert r["car_import_kwh"] <= IMPORT_BUDGET_THREE_PHASE * r["charged_kwh"], r
    assert r["max_closes_per_hour"] <= 6, r


def test_a_house_day_with_phase_switching_and_a_big_roof() -> None:
    cfg = replace(SurplusConfig(), max_current_a=16, can_switch=True)
    r = house_day(SunProfile(peak_w=9000, seed=16), cfg)
    assert r["car_import_kwh"] <= IMPORT_BUDGET_SWITCHING * r["charged_kwh"], r
    assert r["max_closes_per_hour"] <= 6, r


def test_a_house_day_with_phase_switching_and_a_small_roof() -> None:
    cfg = replace(SurplusConfig(), max_current_a=16, can_switch=True)
    r = house_day(SunProfile(peak_w=5000, seed=7, clouds_per_hour=5), cfg)
    assert r["charged_kwh"] > 10
    assert r["car_import_kwh"] <= IMPORT_BUDGET_SWITCHING * r["charged_kwh"], r
    assert r["max_closes_per_hour"] <= 6, r

"""PV surplus charging: the offer follows what the house would otherwise export (pure; time is an argument).

Surplus = export measured by the grid meter (negative import) + what the car draws now. The car's own draw
is added back because it is part of the balance the grid meter sees: when the car takes 1 A more, export
falls by as much, and the surplus stays what it was. The model therefore does not hunt as the car ramps.

Hysteresis (issue 16; the same shape as SmartEVSE "Solar", openWB PV-Überschussladen and evcc's PV mode):

* **start** when the surplus holds at least the minimum (6 A × phases × voltage) for ``start_delay_s``
  (60 s); **stop** when it stays below for ``stop_delay_s`` (300 s); meanwhile the car gets the minimum.
* the offer changes at most every ``change_interval_s`` (5 s: IEC 61851-1 lets the EV take up to 5 s to
  follow a PWM change; the arbiter rate-limits the pilot to the same interval) and a *raise* only after the
  car followed the previous offer (or ``follow_timeout_s`` passed: a car that limits itself, e.g. a full
  battery, never follows) — never more often than the car can follow.
* ``mode = "minpv"`` (min + PV): never stops, always at least the minimum, more with surplus.
* **phases** (connector with a phase switch): 1 phase below the 3-phase minimum (3 × 6 A × 230 V ≈ 4.1 kW),
  3 phases from that plus ``phase_hysteresis_w`` (500 W, EVerest EnergyManager's
  ``switch_3ph1ph_power_hysteresis_W`` default), each held for ``phase_delay_s``. Between two phase
  changes at least ``phase_min_interval_s``.
* **contactor budget**: each start and each phase switch while charging costs one contactor cycle (close +
  open, the unit of a contactor's electrical endurance, IEC 60947-4-1); at most ``max_cycles_per_hour``
  (6) in any sliding hour. A stop is never refused (it lowers the import).

``margin_w`` is kept back from the surplus so that measurement noise and the car's lag land on the export
side rather than the import side.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from chargepoint.energy import EnergyClaim

SOURCE = "surplus"


@dataclass(frozen=True)
class SurplusConfig:
    mode: str = "surplus"  # "surplus" | "minpv"
    voltage_v: float = 230.0
    min_current_a: float = 6.0
    max_current_a: float = 16.0
    phases: int = 3  # how the connector is wired (with a switch: its 3-phase position)
    can_switch: bool = False  # a phase switch is configured on the connector
    start_delay_s: float = 60.0
    stop_delay_s: float = 300.0
    change_interval_s: float = 5.0
    follow_timeout_s: float = 15.0
    follow_tolerance_a: float = 1.0
    step_a: float = 1.0
    margin_w: float = 100.0
    phase_hysteresis_w: float = 500.0
    phase_delay_s: float = 120.0
    phase_min_interval_s: float = 300.0
    max_cycles_per_hour: int = 6

    def min_power_w(self, phases: int) -> float:
        return self.min_current_a * phases * self.voltage_v


class SurplusController:
    """Feed it every grid meter sample (:meth:`sample`); read :attr:`claim` and :attr:`wanted_phases`.

    When :attr:`wanted_phases` differs from the connector's phases, the service runs the phase-switch
    sequence (chargepoint/energy/phase_switch.py) and reports the outcome with :meth:`phases_changed`.
    """

    def __init__(self, cfg: SurplusConfig, *, phases: int | None = None) -> None:
        self.cfg = cfg
        self.phases = phases if phases is not None else cfg.phases  # the hardware's position now
        self.wanted_phases = self.phases
        self.charging = cfg.mode == "minpv"
        self.offer_a: float | None = cfg.min_current_a if self.charging else None
        self.surplus_w = 0.0
        self._above_since: float | None = None
        self._below_since: float | None = None
        self._phase_since: float | None = None  # the phase condition holds since
        self._last_change: float | None = None
        self._last_phase_change: float | None = None
        self._cycles: deque[float] = deque()
        self._starting_after_switch = False
        self._detail = "waiting for the first grid meter sample"
        self._grid_known = False

    # ------------------------------------------------------------------ inputs
    def sample(self, now: float, grid_w: float | None, car_w: float, car_current_a: float | None = None) -> None:
        """One grid meter sample: ``grid_w`` import in W (negative = export; None = no reading), ``car_w``
        what the car draws now, ``car_current_a`` its current per phase (default: from ``car_w``)."""
        cfg = self.cfg
        self._grid_known = grid_w is not None
        self.surplus_w = (-grid_w + max(car_w, 0.0)) if grid_w is not None else 0.0
        avail = self.surplus_w - cfg.margin_w
        if car_current_a is None:
            car_current_a = max(car_w, 0.0) / (self.phases * cfg.voltage_v)
        self._prune(now)
        if self.wanted_phases != self.phases:
            self._detail = f"switching to {self.wanted_phases} phase(s)"
            return  # the sequence runs; nothing to decide until phases_changed
        if not self.charging:
            self._idle(now, avail)
        else:
            self._running(now, avail, car_current_a)

    def phases_changed(self, now: float, phases: int) -> None:
        """The phase switch finished (``phases`` is what the hardware has now; on a failed switch the old)."""
        self.phases = phases
        self.wanted_phases = phases
        if self.charging:  # a switch at rest costs the car and the contactor nothing: no interval from it
            self._last_phase_change = now
        self._phase_since = None
        self._last_change = now
        if self.charging:
            avail = self.surplus_w - self.cfg.margin_w
            self.offer_a = self._amps(avail, phases)
        if self._starting_after_switch:
            self._starting_after_switch = False
            self._start(now, self.surplus_w - self.cfg.margin_w)

    # ------------------------------------------------------------------ output
    @property
    def claim(self) -> EnergyClaim:
        """``amps`` None pauses (no surplus); otherwise the surplus offer per phase."""
        return EnergyClaim(self.offer_a if self.charging and self.wanted_phases == self.phases else None,
                           SOURCE, self._detail)

    @property
    def cycles_last_hour(self) -> int:
        return len(self._cycles)

    # ------------------------------------------------------------------ internals
    def _prune(self, now: float) -> None:
        while self._cycles and now - self._cycles[0] >= 3600.0:
            self._cycles.popleft()

    def _budget_left(self) -> bool:
        return len(self._cycles) < self.cfg.max_cycles_per_hour

    def _amps(self, avail_w: float, phases: int) -> float:
        cfg = self.cfg
        raw = avail_w / (phases * cfg.voltage_v)
        stepped = math.floor(raw / cfg.step_a + 1e-9) * cfg.step_a
        return max(cfg.min_current_a, min(cfg.max_current_a, stepped))

    def _start_phases(self, avail: float) -> int:
        cfg = self.cfg
        if not cfg.can_switch:
            return self.phases
        return 3 if avail >= cfg.min_power_w(3) + cfg.phase_hysteresis_w else 1

    def _kw(self, w: float) -> str:
        return f"{w / 1000:.2f} kW"

    def _idle(self, now: float, avail: float) -> None:
        cfg = self.cfg
        phases = self._start_phases(avail)
        need = cfg.min_power_w(phases)
        if not self._grid_known:
            self._above_since = None
            self._detail = "no grid meter reading: no surplus known"
            return
        if avail < need:
            self._above_since = None
            self._detail = f"waiting for surplus ≥ {self._kw(need + cfg.margin_w)} ({self._kw(self.surplus_w)} now)"
            return
        if self._above_since is None:
            self._above_since = now
        held = now - self._above_since
        if held < cfg.start_delay_s:
            self._detail = (f"surplus {self._kw(self.surplus_w)} held {held:.0f} s of {cfg.start_delay_s:g} s "
                            "before starting")
            return
        if not self._budget_left():
            self._detail = f"surplus {self._kw(self.surplus_w)}, but {cfg.max_cycles_per_hour} starts in the last hour"
            return
        if phases != self.phases:
            self.wanted_phases = phases  # switch at rest (contactor open), then start
            self._starting_after_switch = True
            self._detail = f"switching to {phases} phase(s) before starting"
            return
        self._start(now, avail)

    def _start(self, now: float, avail: float) -> None:
        self.charging = True
        self._cycles.append(now)
        self._below_since = None
        self._phase_since = None
        self.offer_a = self._amps(avail, self.phases)
        self._last_change = now
        self._detail = f"surplus {self._kw(self.surplus_w)} → {self.offer_a:g} A on {self.phases} phase(s)"

    def _stop(self, now: float, why: str) -> None:
        self.charging = False
        self.offer_a = None
        self._above_since = None
        self._below_since = None
        self._phase_since = None
        self._last_change = now
        self._detail = why

    def _running(self, now: float, avail: float, car_current_a: float) -> None:
        cfg = self.cfg
        need = cfg.min_power_w(self.phases)
        below = avail < need
        if cfg.mode == "surplus":
            if below:
                if self._below_since is None:
                    self._below_since = now
                if now - self._below_since >= cfg.stop_delay_s:
                    self._stop(now, f"stopped: surplus below {self._kw(need)} for {cfg.stop_delay_s:g} s")
                    return
            else:
                self._below_since = None
        if self._phase_decision(now, avail):
            return
        target = self._amps(avail, self.phases)
        current = self.offer_a if self.offer_a is not None else cfg.min_current_a
        detail = f"surplus {self._kw(self.surplus_w)} → {target:g} A on {self.phases} phase(s)"
        if below and cfg.mode == "surplus":
            detail += (f" (below the minimum {now - self._below_since:.0f} s; stops after "  # type: ignore[operator]
                       f"{cfg.stop_delay_s:g} s)")
        if abs(target - current) >= cfg.step_a - 1e-9:
            since = now - (self._last_change if self._last_change is not None else -math.inf)
            followed = car_current_a >= current - cfg.follow_tolerance_a or since >= cfg.follow_timeout_s
            if since >= cfg.change_interval_s and (target < current or followed):
                self.offer_a = target
                self._last_change = now
            elif target > current:
                detail += f"; raise to {target:g} A waits for the car to follow {current:g} A"
        if self.offer_a is not None and self.offer_a != target:
            detail = detail.replace(f"→ {target:g} A", f"→ {self.offer_a:g} A (next {target:g} A)")
        self._detail = detail

    def _phase_decision(self, now: float, avail: float) -> bool:
        """While charging on a switchable connector: request the other phase count when its condition held
        for ``phase_delay_s``. True when a switch was requested."""
        cfg = self.cfg
        if not cfg.can_switch:
            return False
        three_min = cfg.min_power_w(3)
        if self.phases == 3:
            want = 1 if avail < three_min else None
        else:
            want = 3 if avail >= three_min + cfg.phase_hysteresis_w else None
        if want is None:
            self._phase_since = None
            return False
        if self._phase_since is None:
            self._phase_since = now
        if now - self._phase_since < cfg.phase_delay_s:
            return False
        if self._last_phase_change is not None and now - self._last_phase_change < cfg.phase_min_interval_s:
            return False
        if not self._budget_left():
            return False
        self.wanted_phases = want
        self._cycles.append(now)
        self._detail = f"surplus {self._kw(self.surplus_w)}: switching to {want} phase(s)"
        return True

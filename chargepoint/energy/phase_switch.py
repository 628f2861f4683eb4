"""The 1-phase/3-phase switching sequence as a pure state machine (time, currents, contactor are inputs).

Sequence (never switch under load)::

    IDLE ──request──▶ PAUSING: claim None → the pilot stops PWM (X1, +12 V), the car goes C → B and the
                      connector state machine opens the main contactor (chargepoint/connector.py; at the latest
                      6 s later, IEC 61851-1 sequence 10.2). Wait until the car's current is 0 on every phase
                      *and* the contactor is open; ``pause_timeout_s`` → FAULT (relay not touched).
           ──────────▶ SWITCHING: SetRelay(phases); the service switches the relay and reports ``relay_set``.
                      A relay that does not report is a FAULT after ``relay_timeout_s``.
           ──────────▶ SETTLING: wait ``settle_s`` (≥ 5 s) with everything open; the contactor closing meanwhile
                      is a FAULT.
           ──────────▶ RESUMING: no claim any more (the offer comes back through the arbiter, the car goes
                      B → C, the state machine closes the contactor under its safety invariant). Once the car
                      draws, after ``verify_s`` the meter's phase count is checked: after a switch to 1 phase
                      current on L2/L3 is a FAULT ("meter still shows 3 phases"); after a switch to 3 phases
                      a car that drew on 3 phases before but now on 1 is a FAULT. A car that does not draw
                      within ``verify_timeout_s`` ends the sequence unverified (it is not asking for energy).
           ──────────▶ IDLE

FAULT pauses the connector (claim None) until :meth:`reset` (unplug or reset-fault).

Sources (read, not copied): openWB core's ``perform_phase_switch`` for its Series 2 / Satellit charge points
(set the EVSE current to 0, poll up to 10 s until the EVSE reports 0 A and abort the switch otherwise,
interrupt CP, switch the relay, wait the configured duration, CP on again) and EVerest everest-core
EvseManager (``switch_3ph1ph_cp_state`` default ``X1``: the pause is a +12 V pilot without PWM;
``switch_3ph1ph_delay_s`` default 10 s between the phases; its docs warn that some cars are damaged by a
1p→3p change under load) with EnergyManager's ``switch_3ph1ph_time_hysteresis_s`` /
``switch_3ph1ph_power_hysteresis_W``. Here the pause is X1 as in EVerest (the car is not disconnected and
sees a clean SuspendedEVSE), the wait defaults to 5 s (issue 16: ≥ 5 s, configurable), and the zero-current
wait is openWB's 10 s.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from chargepoint.energy import EnergyClaim

SOURCE = "phase-switch"


class Step(str, enum.Enum):
    IDLE = "idle"
    PAUSING = "pausing"
    SWITCHING = "switching"
    SETTLING = "settling"
    RESUMING = "resuming"
    FAULT = "fault"


@dataclass(frozen=True)
class PhaseSwitchConfig:
    settle_s: float = 5.0
    pause_timeout_s: float = 10.0
    relay_timeout_s: float = 2.0
    zero_current_a: float = 0.5  # at most this on every phase counts as "no current"
    carrying_a: float = 1.0  # a phase with at least this carries current
    verify_s: float = 3.0
    verify_timeout_s: float = 120.0


@dataclass(frozen=True)
class SetRelay:
    """Switch the phase relay to ``phases`` (the contactor is open and no current flows)."""

    phases: int


@dataclass(frozen=True)
class Finished:
    phases: int
    verified: bool


@dataclass(frozen=True)
class Failed:
    detail: str
    phases: int  # what the hardware has now, as far as is known


Action = SetRelay | Finished | Failed


def _carrying(currents: Sequence[float | None], threshold: float) -> int:
    return sum(1 for a in currents if a is not None and a >= threshold)


class PhaseSwitchSequence:
    """One connector's switching sequence. Feed it :meth:`update` on every meter reading / tick."""

    def __init__(self, cfg: PhaseSwitchConfig, *, phases: int) -> None:
        self.cfg = cfg
        self.phases = phases  # the relay's position as last confirmed
        self.step = Step.IDLE
        self.target = phases
        self.fault_detail = ""
        self._since = 0.0
        self._draw_since: float | None = None
        self._car_phases_before = 0  # phases the car drew on before the switch (0: unknown)

    # ------------------------------------------------------------------ commands
    def request(self, now: float, phases: int, car_phases_before: int = 0) -> bool:
        """Start switching to ``phases``. Refused (False) while a sequence runs or after a fault."""
        if phases not in (1, 3):
            raise ValueError("phases: 1 or 3")
        if self.step is not Step.IDLE or phases == self.phases:
            return False
        self.target = phases
        self._car_phases_before = car_phases_before
        self._enter(Step.PAUSING, now)
        return True

    def reset(self) -> None:
        """Leave FAULT (the car was unplugged or a technician reset the fault); the relay stays where it is."""
        if self.step is Step.FAULT:
            self.step = Step.IDLE
            self.fault_detail = ""

    def relay_set(self, now: float, ok: bool = True, detail: str = "") -> list[Action]:
        """The service switched the relay (``ok``) or the driver failed."""
        if self.step is not Step.SWITCHING:
            return []
        if not ok:
            return self._fail(now, f"relay did not switch to {self.target} phase(s): {detail or 'driver error'}",
                              phases=self.phases)
        self.phases = self.target
        self._enter(Step.SETTLING, now)
        return []

    # ------------------------------------------------------------------ inputs
    def update(self, now: float, currents: Sequence[float | None], contactor_closed: bool) -> list[Action]:
        """``currents`` per phase from the connector's meter (None: not measured)."""
        cfg = self.cfg
        elapsed = now - self._since
        if self.step is Step.PAUSING:
            quiet = all(a is None or a <= cfg.zero_current_a for a in currents)
            if quiet and not contactor_closed:
                self._enter(Step.SWITCHING, now)
                return [SetRelay(self.target)]
            if elapsed >= cfg.pause_timeout_s:
                what = ("the contactor is still closed" if contactor_closed else
                        f"the car still draws {max((a or 0.0) for a in currents):.1f} A")
                return self._fail(now, f"{what} {cfg.pause_timeout_s:g} s after the pause: switch to "
                                       f"{self.target} phase(s) aborted, relay not switched", phases=self.phases)
        elif self.step is Step.SWITCHING:
            if elapsed >= cfg.relay_timeout_s:
                return self._fail(now, "relay did not report its position", phases=self.phases)
        elif self.step is Step.SETTLING:
            if contactor_closed or _carrying(currents, cfg.carrying_a):
                return self._fail(now, "contactor closed while the phase relay was settling", phases=self.phases)
            if elapsed >= cfg.settle_s:
                self._enter(Step.RESUMING, now)
        elif self.step is Step.RESUMING:
            n = _carrying(currents, cfg.carrying_a)
            if n == 0:
                self._draw_since = None
                if elapsed >= cfg.verify_timeout_s:
                    self.step = Step.IDLE
                    return [Finished(self.phases, verified=False)]
                return []
            if self._draw_since is None:
                self._draw_since = now
            if now - self._draw_since < cfg.verify_s:
                return []
            if self.target == 1 and n > 1:
                return self._fail(now, f"meter still shows {n} phases after switching to 1 phase",
                                  phases=n)
            if self.target == 3 and n < 3 and self._car_phases_before == 3:
                return self._fail(now, f"meter shows {n} phase(s) after switching to 3 phases (the car drew on "
                                       "3 before)", phases=n)
            self.step = Step.IDLE
            return [Finished(self.phases, verified=True)]
        return []

    # ------------------------------------------------------------------ output
    @property
    def busy(self) -> bool:
        return self.step not in (Step.IDLE, Step.FAULT)

    def claim(self, now: float) -> EnergyClaim | None:
        """None (no claim) while idle or resuming; a pause while pausing, switching, settling or faulted."""
        elapsed = now - self._since
        arrow = f"{3 if self.target == 1 else 1}→{self.target} phases"
        if self.step is Step.PAUSING:
            return EnergyClaim(None, SOURCE, f"{arrow}: paused, waiting for 0 A and an open contactor "
                                             f"({elapsed:.1f} s of {self.cfg.pause_timeout_s:g} s)")
        if self.step is Step.SWITCHING:
            return EnergyClaim(None, SOURCE, f"{arrow}: switching the relay")
        if self.step is Step.SETTLING:
            return EnergyClaim(None, SOURCE, f"{arrow}: relay switched, waiting {self.cfg.settle_s:g} s "
                                             f"({elapsed:.1f} s)")
        if self.step is Step.FAULT:
            return EnergyClaim(None, SOURCE, f"fault: {self.fault_detail}")
        return None

    # ------------------------------------------------------------------ internals
    def _enter(self, step: Step, now: float) -> None:
        self.step = step
        self._since = now
        self._draw_since = None

    def _fail(self, now: float, detail: str, *, phases: int) -> list[Action]:
        self._enter(Step.FAULT, now)
        self.fault_detail = detail
        self.phases = phases if phases in (1, 3) else self.phases
        return [Failed(detail, self.phases)]

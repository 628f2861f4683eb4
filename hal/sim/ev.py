"""A simulated electric vehicle on one connector.

It behaves as IEC 61851-1 expects of a car: plugged in it shows state B; when the
EVSE offers a PWM current and the car wants energy it moves to C and, after a
short reaction time, draws the offered current (never more than its own
maximum); when the offer disappears it returns to B. The IEC standard gives a
car up to 5 s to follow a duty change; ``reaction_s`` is how long this one takes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from hal.interfaces import CpState


class SimulatedEV:
    def __init__(
        self,
        *,
        max_current_a: float = 32.0,
        phases: int = 3,
        reaction_s: float = 0.05,
        needs_ventilation: bool = False,
    ) -> None:
        self.max_current_a = max_current_a
        self.phases = phases
        self.reaction_s = reaction_s
        self.needs_ventilation = needs_ventilation
        self.plugged = False
        # The cable's PP coding (A) as a socket reads it; 0 = a cable without a valid coding.
        self.cable_a = 32.0
        self.suspended = False  # the car itself does not want energy (full, timer)
        self.diode_ok = True
        self.cp_shorted = False
        self.offered_a: float | None = None  # PWM current the EVSE offers
        self.unavailable = False  # EVSE shows state F
        self.contactor_closed = False
        self.drawn_a = 0.0  # what the car takes now, per phase
        self.overdraw_a = 0.0  # extra current a faulty car draws above the offer
        self._listeners: list[Callable[[], None]] = []
        self._pending: asyncio.TimerHandle | None = None

    # -------------------------------------------------------------- observers
    def subscribe(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def _notify(self) -> None:
        for listener in list(self._listeners):
            listener()

    # -------------------------------------------------------------- what the car shows
    @property
    def cp_state(self) -> CpState:
        if self.cp_shorted:
            return CpState.E
        if self.unavailable:
            return CpState.F
        if not self.plugged:
            return CpState.A
        if self.offered_a is not None and not self.suspended:
            return CpState.D if self.needs_ventilation else CpState.C
        return CpState.B

    # -------------------------------------------------------------- driver (test/user) actions
    def plug(self, cable_a: float | None = None) -> None:
        """Plug in; ``cable_a`` is the cable's rating (PP), 0 for an invalid one; None keeps the last."""
        if cable_a is not None:
            self.cable_a = cable_a
        self.plugged = True
        self._update()

    def unplug(self) -> None:
        self.plugged = False
        self._update()

    def suspend(self) -> None:
        self.suspended = True
        self._update()

    def resume(self) -> None:
        self.suspended = False
        self._update()

    # -------------------------------------------------------------- EVSE side
    def set_offer(self, amps: float | None, unavailable: bool = False) -> None:
        self.offered_a = amps
        self.unavailable = unavailable
        self._update()

    def set_contactor(self, closed: bool) -> None:
        self.contactor_closed = closed
        self._update()

    def _target_draw(self) -> float:
        if not self.contactor_closed or self.cp_state not in (CpState.C, CpState.D):
            return 0.0
        assert self.offered_a is not None
        return min(self.offered_a, self.max_current_a) + self.overdraw_a

    def _update(self) -> None:
        """Apply a change. The car stops drawing at once; it ramps to a new offer after its reaction time."""
        target = self._target_draw()
        if target < self.drawn_a or self.reaction_s <= 0:
            self.drawn_a = target
        elif target > self.drawn_a:
            self._schedule_follow()
        self._notify()

    def _schedule_follow(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.drawn_a = self._target_draw()
            return
        if self._pending is not None:
            self._pending.cancel()
        self._pending = loop.call_later(self.reaction_s, self._follow)

    def _follow(self) -> None:
        self._pending = None
        self.drawn_a = self._target_draw()
        self._notify()

"""Over-current detection as EVerest does it (shared/HARDWARE-FACTS.md, "Timing").

The car may draw up to the offered current + 10 % + 0.5 A. Above that for 7 s in a
row is a fault. The comparison is against the duty cycle *in effect* (the one the
car was given at least its reaction time ago), not the newest target, so a limit
that just went down does not trip a car that is still following it (EVerest PR#762).
"""

from __future__ import annotations

from dataclasses import dataclass

TRIP_AFTER_S = 7.0
CAR_REACTION_S = 5.0  # IEC 61851-1: a car follows a new duty cycle within 5 s


@dataclass
class OvercurrentMonitor:
    trip_after_s: float = TRIP_AFTER_S
    reaction_s: float = CAR_REACTION_S
    _offer_in_effect: float | None = None
    _pending_offer: tuple[float, float | None] | None = None  # (since, amps)
    _over_since: float | None = None

    def offer_changed(self, now: float, amps: float | None) -> None:
        """The pilot now offers ``amps``. A rise applies at once; a fall after the car's reaction time."""
        if amps is not None and (self._offer_in_effect is None or amps >= self._offer_in_effect):
            self._offer_in_effect = amps
            self._pending_offer = None
        else:
            self._pending_offer = (now, amps)

    def allowed(self, now: float) -> float | None:
        if self._pending_offer is not None and now - self._pending_offer[0] >= self.reaction_s:
            self._offer_in_effect = self._pending_offer[1]
            self._pending_offer = None
        if self._offer_in_effect is None:
            return None
        return self._offer_in_effect * 1.1 + 0.5

    def sample(self, now: float, measured_a: float | None) -> bool:
        """Feed one measurement; True when the over-current has lasted ``trip_after_s``."""
        limit = self.allowed(now)
        if measured_a is None or limit is None and measured_a < 0.5:
            self._over_since = None
            return False
        if limit is None:
            limit = 0.5  # nothing offered: anything above noise is too much
        if measured_a <= limit:
            self._over_since = None
            return False
        if self._over_since is None:
            self._over_since = now
        return now - self._over_since >= self.trip_after_s

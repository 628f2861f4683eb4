"""The duty-change rate limit of the control pilot (at most one change per 5 s).

The duty <-> current conversion itself is hal/pilot_duty.py (one module for the drivers and for this
limiter; chargepoint depends on hal, never the reverse); it is re-exported here for the smart-charging
code. Sources: /work/shared/HARDWARE-FACTS.md ("at most one change per 5 s"). Pure; `now` is passed in.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import NamedTuple

from hal.pilot_duty import MAX_AMPS, MIN_AMPS, NO_CURRENT_DUTY, amps_to_duty, duty_to_amps

__all__ = [
    "MAX_AMPS",
    "MIN_AMPS",
    "NO_CURRENT_DUTY",
    "DutyDecision",
    "DutyRateLimiter",
    "amps_to_duty",
    "duty_to_amps",
]


class DutyDecision(NamedTuple):
    """apply_now: set the pilot now. Otherwise call `decide` again at `at`."""

    apply_now: bool
    at: datetime


class DutyRateLimiter:
    """At most one duty-cycle change per `min_interval_s` (EVerest IEC_PWM_MAX_UPDATE_INTERVAL, 5 s).

    `decide(now, current_applied, target)` (currents in amps, None = paused): a change due sooner than
    `min_interval_s` after the previous change waits until the interval is up, and never longer — so
    a lower limit is in effect at most `min_interval_s` after it was asked for. When it answers
    apply_now=True it records `now` as the time of the change (the caller must apply it then).
    Comparison is by duty cycle, so 3 A -> 4 A (both 100 %) is no change. An unchanged target answers
    (True, now) and is not counted as a change.

    `immediate_off` (default True): stopping the PWM current (target paused / below 6 A) is applied
    at once; it is not a current change the EV must follow but the EVSE withdrawing its offer, which
    IEC 61851 lets the EVSE do at any time (the 6 s "EV stays in C" rule then applies).
    `now` should come from a monotonic source; if it goes backwards the limiter forgets the last
    change rather than make a change wait for longer than the interval.
    """

    def __init__(self, min_interval_s: float = 5.0, *, immediate_off: bool = True) -> None:
        if min_interval_s < 0:
            raise ValueError(f"min_interval_s {min_interval_s} must be >= 0")
        self._interval = timedelta(seconds=min_interval_s)
        self._immediate_off = immediate_off
        self._last: datetime | None = None

    @property
    def last_change(self) -> datetime | None:
        return self._last

    def decide(self, now: datetime, current_applied: float | None, target: float | None) -> DutyDecision:
        cur = amps_to_duty(current_applied)
        tgt = amps_to_duty(target)
        if tgt == cur:
            return DutyDecision(True, now)
        if self._last is not None and now < self._last:
            self._last = None
        if (
            self._last is None
            or now >= self._last + self._interval
            or (self._immediate_off and tgt == NO_CURRENT_DUTY)
        ):
            self._last = now
            return DutyDecision(True, now)
        return DutyDecision(False, self._last + self._interval)

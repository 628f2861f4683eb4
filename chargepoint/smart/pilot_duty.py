"""Control-pilot duty cycle <-> current (IEC 61851-1 / SAE J1772) and the duty-change rate limit.

Sources: /work/shared/HARDWARE-FACTS.md ("Duty <-> current", EVerest edge cases, "at most one change
per 5 s"). Pure; `now` is passed in.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import NamedTuple

NO_CURRENT_DUTY = 100.0  # constant +12 V (state X1): no current offered
MIN_AMPS = 6.0
MAX_AMPS = 80.0


def amps_to_duty(amps: float | None) -> float:
    """Duty cycle in percent for offering `amps`; 100 % (no PWM) for None or anything below 5.9 A.

    6-51 A: A / 0.6 (10-85 %); 51-80 A: A / 2.5 + 64 (85-96 %). EVerest's edge cases: below 5.9 A
    -> 100 % (no charging, there is no valid duty under 6 A); 5.9-6.1 A -> 10 %; 51-52.5 A clamped
    to 51 A (85 %), because the upper formula would give less than 85 %, which an EV reads with the
    lower formula as less than 51 A; above 80 A clamped to 80 A (96 %). The duty is rounded DOWN to
    0.01 %, so the current an EV decodes is never above `amps` (apart from float noise and the
    5.9-6 A band, which EVerest deliberately offers as 6 A).
    """
    if amps is None or math.isnan(amps) or amps < 5.9:
        return NO_CURRENT_DUTY
    if amps <= 6.1:
        return 10.0
    if amps <= 51.0:
        duty = amps / 0.6
    elif amps <= 52.5:
        duty = 85.0
    else:
        duty = min(amps, MAX_AMPS) / 2.5 + 64.0
    return math.floor(duty * 100 + 1e-6) / 100


def duty_to_amps(duty: float) -> float:
    """The current an EV reads from `duty` percent (0.0 = no current allowed).

    SAE J1772 / IEC 61851-1 decoding: < 8 % -> 0 (3-7 % means digital communication, 5 % = ISO 15118,
    no current is given by PWM); 8-10 % -> 6 A; 10-85 % (85 included) -> duty x 0.6;
    85-96 % -> (duty - 64) x 2.5; 96-97 % -> 80 A; above 97 % (incl. 100 %) -> 0. HARDWARE-FACTS.md
    states the bands with "<"; the 8-10 % band and the inclusive 85 % boundary follow J1772 (85 % is
    51 A, consistent with amps_to_duty(51) == 85).
    """
    if math.isnan(duty) or duty < 8.0 or duty > 97.0:
        return 0.0
    if duty < 10.0:
        return 6.0
    if duty <= 85.0:
        return duty * 0.6
    if duty <= 96.0:
        return (duty - 64.0) * 2.5
    return 80.0


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

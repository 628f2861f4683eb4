"""Control-pilot duty cycle <-> current (IEC 61851-1 Annex A, SAE J1772): the one conversion everybody uses.

The pilot drivers (hal/pilot_pwm.py) set the duty from it and report what the EV decodes from it; the
smart-charging rate limit (chargepoint/smart/pilot_duty.py) compares duties with it. It lives in hal/
because chargepoint depends on hal and never the reverse. Pure, no I/O.

Sources: /work/shared/HARDWARE-FACTS.md ("Duty <-> current", EVerest's edge cases).
"""

from __future__ import annotations

import math

NO_CURRENT_DUTY = 100.0  # constant +12 V (state X1): no current offered
MIN_AMPS = 6.0
MAX_AMPS = 80.0
DUTY_RESOLUTION = 0.01  # percent; duties are rounded DOWN to it


def amps_to_duty(amps: float | None) -> float:
    """Duty cycle in percent for offering `amps`; 100 % (no PWM) for None or anything below 5.9 A.

    6-51 A: A / 0.6 (10-85 %); 51-80 A: A / 2.5 + 64 (85-96 %). EVerest's edge cases: below 5.9 A
    -> 100 % (no charging, there is no valid duty under 6 A); 5.9-6.1 A -> 10 %; 51-52.5 A clamped
    to 51 A (85 %), because the upper formula would give less than 85 %, which an EV reads with the
    lower formula as less than 51 A; above 80 A clamped to 80 A (96 %). The duty is rounded DOWN to
    0.01 %, so the current an EV decodes is never above `amps` (apart from float noise and the
    5.9-6 A band, which EVerest deliberately offers as 6 A): 16 A is 26.66 %, read back as 15.996 A.
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

    SAE J1772 / IEC 61851-1 Table A.8 decoding: < 8 % -> 0 (3-7 % means digital communication, 5 % =
    ISO 15118, no current is given by PWM); 8-10 % -> 6 A; 10-85 % (85 included) -> duty x 0.6;
    85-96 % (96 included) -> (duty - 64) x 2.5; 96-97 % -> 80 A; above 97 % (incl. 100 %) -> 0.
    HARDWARE-FACTS.md states the bands with "<"; the 8-10 % band and the inclusive 85 % boundary follow
    J1772 (85 % is 51 A, consistent with amps_to_duty(51) == 85). The edges are compared rounded to
    1e-6 %: 51 / 0.6 is 85.00000000000001 in floating point and must still read as 51 A, not 52.5 A.
    """
    if math.isnan(duty):
        return 0.0
    d = round(duty, 6)
    if d < 8.0 or d > 97.0:
        return 0.0
    if d < 10.0:
        return 6.0
    if d <= 85.0:
        return duty * 0.6
    if d <= 96.0:
        return (duty - 64.0) * 2.5
    return 80.0

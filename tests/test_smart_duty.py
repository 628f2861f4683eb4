"""Control-pilot duty cycle <-> current (HARDWARE-FACTS.md, IEC 61851-1 / SAE J1772) and the
one-change-per-5-s rate limit."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chargepoint.smart.pilot_duty import DutyDecision, DutyRateLimiter, amps_to_duty, duty_to_amps

T0 = datetime(2024, 3, 4, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize("amps, duty", [
    (None, 100.0), (0, 100.0), (-3, 100.0), (5.0, 100.0), (5.89, 100.0),  # below 5.9 A: no charging
    (5.9, 10.0), (6.0, 10.0), (6.1, 10.0),                                # EVerest 5.9-6.1 A -> 10 %
    (6.6, 11.0), (16, 26.66), (32, 53.33), (48, 80.0), (51, 85.0),        # A / 0.6, rounded down
    (51.5, 85.0), (52.5, 85.0),                                           # 51-52.5 A clamped to 51 A
    (60, 88.0), (80, 96.0), (100, 96.0),                                  # A / 2.5 + 64, max 80 A
    (float("nan"), 100.0),
])
def test_amps_to_duty(amps, duty) -> None:
    assert amps_to_duty(amps) == pytest.approx(duty, abs=1e-9)


@pytest.mark.parametrize("duty, amps", [
    (100.0, 0.0), (98.0, 0.0), (97.0, 80.0), (96.5, 80.0), (96.0, 80.0), (88.0, 60.0),
    (85.0, 51.0), (50.0, 30.0), (10.0, 6.0), (9.0, 6.0), (8.0, 6.0), (7.9, 0.0), (5.0, 0.0), (0.0, 0.0),
])
def test_duty_to_amps(duty, amps) -> None:
    assert duty_to_amps(duty) == pytest.approx(amps, abs=1e-9)


@given(st.floats(6.11, 80.0))
def test_round_trip_never_offers_more_than_asked(amps: float) -> None:
    got = duty_to_amps(amps_to_duty(amps))
    assert got <= amps + 1e-9
    # 51-52.5 A is offered as 51 A (85 %), and so is anything up to 52.525 A: 85.01 % (the next step of the
    # 0.01 % resolution) would read as 52.525 A, more than asked
    assert got >= min(amps, 51.0 if 51 < amps < 52.525 else amps) - 0.03  # 0.01 % duty resolution


def test_just_above_52_5_a_is_offered_as_51_a_never_more() -> None:
    """The case hypothesis found: 52.515625 A rounds down to 85.00 %, which an EV reads as 51 A."""
    assert amps_to_duty(52.515625) == 85.0 and duty_to_amps(85.0) == 51.0


def test_first_change_applies_at_once_then_once_per_5_s() -> None:
    lim = DutyRateLimiter(5.0)
    assert lim.decide(T0, None, 16) == DutyDecision(True, T0)
    t1 = T0 + timedelta(seconds=2)
    assert lim.decide(t1, 16, 20) == DutyDecision(False, T0 + timedelta(seconds=5))
    # a lower limit also waits for the 5 s, but never longer
    assert lim.decide(t1, 16, 10) == DutyDecision(False, T0 + timedelta(seconds=5))
    t5 = T0 + timedelta(seconds=5)
    assert lim.decide(t5, 16, 10) == DutyDecision(True, t5)
    assert lim.last_change == t5
    assert lim.decide(t5 + timedelta(seconds=4.9), 10, 12).apply_now is False
    assert lim.decide(t5 + timedelta(seconds=7), 10, 12) == DutyDecision(True, t5 + timedelta(seconds=7))


def test_no_change_is_not_counted() -> None:
    lim = DutyRateLimiter(5.0)
    lim.decide(T0, None, 16)
    t = T0 + timedelta(seconds=1)
    assert lim.decide(t, 16, 16) == DutyDecision(True, t)
    assert lim.decide(t, 3, 4) == DutyDecision(True, t)  # both 100 %
    assert lim.last_change == T0


def test_pause_is_immediate_unless_disabled() -> None:
    lim = DutyRateLimiter(5.0)
    lim.decide(T0, None, 16)
    t = T0 + timedelta(seconds=1)
    assert lim.decide(t, 16, None) == DutyDecision(True, t)
    strict = DutyRateLimiter(5.0, immediate_off=False)
    strict.decide(T0, None, 16)
    assert strict.decide(t, 16, None) == DutyDecision(False, T0 + timedelta(seconds=5))


def test_clock_going_backwards_does_not_make_changes_wait_longer() -> None:
    lim = DutyRateLimiter(5.0)
    lim.decide(T0, None, 16)
    back = T0 - timedelta(hours=1)
    assert lim.decide(back, 16, 8) == DutyDecision(True, back)


@given(st.lists(st.tuples(st.floats(0, 30), st.one_of(st.none(), st.floats(0, 80))), max_size=30))
def test_changes_are_at_least_5_s_apart_and_never_wait_longer(steps) -> None:
    lim = DutyRateLimiter(5.0, immediate_off=False)
    now, applied, changes = T0, None, []
    for dt, target in steps:
        now += timedelta(seconds=dt)
        dec = lim.decide(now, applied, target)
        if amps_to_duty(target) == amps_to_duty(applied):
            continue
        if dec.apply_now:
            changes.append(now)
            applied = target
        else:
            assert now < dec.at <= now + timedelta(seconds=5)
    assert all((b - a) >= timedelta(seconds=5) for a, b in zip(changes, changes[1:], strict=False))

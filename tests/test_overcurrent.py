"""Over-current detection (EVerest): offered + 10 % + 0.5 A for 7 s, against the duty cycle in effect."""

from __future__ import annotations

from chargepoint.overcurrent import OvercurrentMonitor


def test_trips_after_seven_seconds_above_the_margin() -> None:
    m = OvercurrentMonitor()
    m.offer_changed(0.0, 16.0)
    assert m.allowed(0.0) == 16.0 * 1.1 + 0.5
    assert not m.sample(1.0, 18.1)  # 18.1 ≤ 18.1: within the margin
    assert not m.sample(2.0, 18.2)
    assert not m.sample(8.9, 18.2)
    assert m.sample(9.0, 18.2)


def test_a_dip_below_the_margin_restarts_the_clock() -> None:
    m = OvercurrentMonitor()
    m.offer_changed(0.0, 10.0)
    assert not m.sample(0.0, 20.0)
    assert not m.sample(5.0, 20.0)
    assert not m.sample(6.0, 11.0)
    assert not m.sample(12.0, 20.0)
    assert m.sample(19.0, 20.0)


def test_a_lowered_offer_applies_only_after_the_cars_reaction_time() -> None:
    m = OvercurrentMonitor()
    m.offer_changed(0.0, 32.0)
    m.offer_changed(100.0, 10.0)  # the car has 5 s to follow
    assert m.allowed(104.9) == 32.0 * 1.1 + 0.5
    for t in range(100, 105):
        assert not m.sample(float(t), 30.0)
    assert m.allowed(105.0) == 10.0 * 1.1 + 0.5
    assert not m.sample(105.0, 30.0)
    assert m.sample(112.0, 30.0)


def test_a_raised_offer_applies_at_once() -> None:
    m = OvercurrentMonitor()
    m.offer_changed(0.0, 6.0)
    m.offer_changed(1.0, 32.0)
    assert m.allowed(1.0) == 32.0 * 1.1 + 0.5


def test_drawing_with_nothing_offered() -> None:
    m = OvercurrentMonitor()
    assert not m.sample(0.0, 0.3)  # noise
    assert not m.sample(1.0, 3.0)
    assert m.sample(8.0, 3.0)

"""Load balancer: sharing, minimums, pausing, turn-taking, unused headroom; properties."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chargepoint.smart.balancer import ConnectorDemand, Offer, balance

NOW = datetime(2024, 3, 4, 12, 0, tzinfo=UTC)


def d(cid: int, *, wants: bool = True, comp: float | None = None, mn: float = 6.0, mx: float = 32.0,
      measured: float | None = None, offered: float | None = None, waiting_min: float | None = None,
      served_min: float | None = None) -> ConnectorDemand:
    return ConnectorDemand(
        connector_id=cid, wants_power=wants, composite_limit_a=comp, min_current_a=mn, max_current_a=mx,
        measured_a=measured, offered_a=offered,
        waiting_since=None if waiting_min is None else NOW - timedelta(minutes=waiting_min),
        served_since=None if served_min is None else NOW - timedelta(minutes=served_min),
    )


def amps(offers: dict[int, Offer]) -> dict[int, float | None]:
    return {k: v.amps for k, v in sorted(offers.items())}


def test_equal_shares_within_caps() -> None:
    assert amps(balance(32, [d(1), d(2)], NOW)) == {1: 16.0, 2: 16.0}
    assert amps(balance(32, [d(1, comp=10), d(2)], NOW)) == {1: 10.0, 2: 22.0}
    assert amps(balance(100, [d(1, mx=16), d(2, comp=20)], NOW)) == {1: 16.0, 2: 20.0}
    # tenths that do not divide evenly go to the first in priority order; the sum is exact
    assert amps(balance(20, [d(1), d(2), d(3)], NOW)) == {1: 6.7, 2: 6.7, 3: 6.6}


def test_not_requesting_and_below_minimum_are_paused() -> None:
    out = balance(32, [d(1, wants=False), d(2, comp=5.0), d(3)], NOW)
    assert amps(out) == {1: None, 2: None, 3: 32.0}
    assert out[1].reason == "not requesting power"
    assert "below minimum" in out[2].reason


def test_pause_instead_of_too_little() -> None:
    # 16 A for three cars with 6 A minimum: two at 8 A, one paused (not three at 5.3 A)
    out = amps(balance(16, [d(1, waiting_min=1), d(2, waiting_min=3), d(3, waiting_min=2)], NOW))
    assert out == {1: None, 2: 8.0, 3: 8.0}
    assert amps(balance(5.9, [d(1)], NOW)) == {1: None}
    assert amps(balance(0, [d(1)], NOW)) == {1: None}
    assert amps(balance(float("nan"), [d(1)], NOW)) == {1: None}


def test_turns_rotate_after_the_rotation_period() -> None:
    # connector 1 has been charging 20 min, connector 2 waits: 2 gets the slot, 1 is paused
    out = balance(10, [d(1, offered=10, measured=9.8, served_min=20), d(2, waiting_min=5)], NOW)
    assert amps(out) == {1: None, 2: 10.0}
    # still inside its 15 min turn: it keeps charging
    out = balance(10, [d(1, offered=10, measured=9.8, served_min=5), d(2, waiting_min=30)], NOW)
    assert amps(out) == {1: 10.0, 2: None}
    assert out[2].reason == "paused: waiting for its turn"
    # a shorter rotation parameter
    out = balance(10, [d(1, offered=10, served_min=5), d(2, waiting_min=1)], NOW, rotation_s=120)
    assert amps(out) == {1: None, 2: 10.0}


def test_longest_waiting_first_and_no_queue_jumping() -> None:
    # 14 A: 3 (min 6, kept) uses 6; head waiter 1 needs 10 and does not fit, 2 (min 6) would fit but
    # must not jump ahead of 1
    out = balance(14, [d(1, mn=10, waiting_min=30), d(2, waiting_min=10), d(3, offered=8, served_min=1)], NOW)
    assert amps(out) == {1: None, 2: None, 3: 14.0}
    # a connector whose minimum can never fit does not hold up the queue
    out = balance(14, [d(1, mn=16, mx=32, waiting_min=30), d(2, waiting_min=10), d(3, offered=8, served_min=1)],
                  NOW)
    assert amps(out) == {1: None, 2: 7.0, 3: 7.0}
    assert "too low for its minimum" in out[1].reason


def test_unused_headroom_goes_to_others_but_min_is_kept() -> None:
    # 1 was offered 16 A and draws only 5: it is capped at 7 A, 2 gets the rest
    out = balance(32, [d(1, offered=16, measured=5.0), d(2, offered=16, measured=15.8)], NOW)
    assert amps(out) == {1: 7.0, 2: 25.0}
    assert "headroom" in out[1].reason
    # the capped offer is stable (7 - 5 = 2 > 1 A margin: still "unused")
    out = balance(32, [d(1, offered=7, measured=5.0), d(2, offered=25, measured=24.6)], NOW)
    assert amps(out) == {1: 7.0, 2: 25.0}
    # when 1 uses its whole offer it gets its full share back
    out = balance(32, [d(1, offered=7, measured=6.8), d(2, offered=25, measured=24.6)], NOW)
    assert amps(out) == {1: 16.0, 2: 16.0}
    # never below its minimum, even when drawing nothing
    out = balance(32, [d(1, offered=16, measured=0.0), d(2, offered=16, measured=15.9)], NOW)
    assert amps(out) == {1: 6.0, 2: 26.0}
    # no contention: nothing is taken away
    out = balance(64, [d(1, offered=32, measured=5.0), d(2, offered=32, measured=31.5)], NOW)
    assert amps(out) == {1: 32.0, 2: 32.0}


def test_a_lone_short_connector_keeps_its_share() -> None:
    # Alone under a limit below its maximum, drawing less (an EV ramping up): nobody else could use the
    # headroom, so it is not taken away (capping it would only slow the ramp to 2 A per round).
    out = balance(16, [d(1, offered=16, measured=6.0)], NOW)
    assert amps(out) == {1: 16.0}
    # The other connector is not short (at its own maximum): the same.
    out = balance(26, [d(1, offered=16, measured=6.0), d(2, mx=10, offered=10, measured=9.9)], NOW)
    assert amps(out) == {1: 16.0, 2: 10.0}
    # The other one is short: then the unused headroom goes to it.
    out = balance(26, [d(1, offered=13, measured=6.0), d(2, offered=13, measured=12.9)], NOW)
    assert amps(out) == {1: 8.0, 2: 18.0}


def test_headroom_must_exceed_margin() -> None:
    with pytest.raises(ValueError, match="headroom_a"):
        balance(32, [d(1)], NOW, unused_margin_a=2.0, headroom_a=2.0)


# ------------------------------------------------------------------ properties

demands = st.lists(
    st.builds(
        lambda cid, wants, comp, mn, mx, measured, offered, waiting, served: d(
            cid, wants=wants, comp=comp, mn=mn, mx=mx, measured=measured, offered=offered,
            waiting_min=waiting, served_min=served if offered is not None else None),
        cid=st.integers(1, 8), wants=st.booleans(),
        comp=st.one_of(st.none(), st.floats(0, 80)), mn=st.floats(6, 16), mx=st.floats(6, 80),
        measured=st.one_of(st.none(), st.floats(0, 80)), offered=st.one_of(st.none(), st.floats(6, 80)),
        waiting=st.one_of(st.none(), st.floats(0, 120)), served=st.one_of(st.none(), st.floats(0, 60)),
    ),
    max_size=8, unique_by=lambda c: c.connector_id,
)


@settings(max_examples=400, deadline=None)
@given(limit=st.floats(0, 200), cs=demands, perm=st.randoms(use_true_random=False))
def test_balance_invariants(limit: float, cs: list[ConnectorDemand], perm) -> None:
    out = balance(limit, cs, NOW)
    assert set(out) == {c.connector_id for c in cs}
    assert sum(o.amps for o in out.values() if o.amps is not None) <= limit + 1e-9
    by_id = {c.connector_id: c for c in cs}
    for cid, o in out.items():
        c = by_id[cid]
        if o.amps is None:
            continue
        assert c.wants_power
        assert o.amps >= c.min_current_a - 1e-9  # never offered below its minimum
        assert o.amps <= c.max_current_a + 1e-9
        if c.composite_limit_a is not None:
            assert o.amps <= c.composite_limit_a + 1e-9
    # deterministic, independent of the order of the input
    shuffled = list(cs)
    perm.shuffle(shuffled)
    assert balance(limit, shuffled, NOW) == out
    # if every eligible connector fits at its minimum, nobody eligible is paused
    def cap(c: ConnectorDemand) -> float:
        return c.max_current_a if c.composite_limit_a is None else min(c.max_current_a, c.composite_limit_a)

    # (offers are whole tenths: a cap less than 0.1 A above the minimum may round below it)
    candidates = [c for c in cs if c.wants_power and cap(c) >= c.min_current_a]
    if sum(c.min_current_a + 0.1 for c in candidates) <= limit - 0.1:
        assert all(out[c.connector_id].amps is not None for c in candidates
                   if cap(c) >= c.min_current_a + 0.1)

"""Local load balancing: share one station current limit among the connectors (pure, deterministic).

The caller computes the station limit (min of the ChargePointMaxProfile composite and the fuse) and
one `ConnectorDemand` per connector; `balance` returns one `Offer` per connector. Rules:

* Each connector is offered at most min(composite limit, hardware/cable max) and never less than its
  minimum (IEC 61851: below 6 A there is no valid duty cycle): a connector that would get less is
  paused (Offer.amps None) instead.
* The sum of the offers never exceeds the station limit. Offers are whole tenths of an amp (computed
  in integer deci-amps, so rounding can never push the sum over the limit).
* Equal shares (water filling): every served connector gets the same current unless its own cap is
  lower or its minimum higher.
* Headroom an EV does not use goes to others, only when someone else is short: a connector that
  draws more than `unused_margin_a` below its offer is capped at measured + `headroom_a` (never below
  its minimum). Because headroom_a > unused_margin_a, such a capped offer is stable; an EV that wants
  more draws its whole offer, is then no longer "below", and gets its full share back next round.
* When not everybody fits at their minimum, connectors take turns: served connectors still inside
  their turn (`rotation_s`, default 15 min, counted from `served_since`) keep their place; then the
  waiting ones, longest-waiting first (`waiting_since`); then the ones whose turn is over. Waiting
  connectors are admitted strictly in order (a later one may not jump ahead of one that does not fit
  yet), so nobody waits forever: capacity is held for the head of the queue until it fits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, slots=True)
class ConnectorDemand:
    """What the balancer needs to know of one connector.

    `offered_a` is what is offered now (None = paused/not offered). `waiting_since`: when it was last
    paused or started waiting for current. `served_since`: when its current stretch of being offered
    current began (the controller records it when it goes from paused to offered); None counts as
    "just now", i.e. inside its turn.
    """

    connector_id: int
    wants_power: bool
    composite_limit_a: float | None
    min_current_a: float = 6.0
    max_current_a: float = 32.0
    measured_a: float | None = None
    offered_a: float | None = None
    waiting_since: datetime | None = None
    served_since: datetime | None = None


@dataclass(frozen=True, slots=True)
class Offer:
    """amps None = paused (no PWM current offered)."""

    amps: float | None
    reason: str


def _dA(x: float, up: bool) -> int:
    """Amps -> integer deci-amps, rounding towards the safe side."""
    if up:
        return math.ceil(x * 10 - 1e-6)
    return math.floor(x * 10 + 1e-6)


def _fill(limit_d: int, mins: list[int], caps: list[int]) -> list[int]:
    """Water filling in deci-amps: offer_i = clamp(level, min_i, cap_i), sum <= limit_d, as equal as
    possible; leftover tenths go to the first connectors in list (priority) order."""
    n = len(mins)
    if sum(caps) <= limit_d:
        return list(caps)

    def total(level: int) -> int:
        return sum(min(max(level, mins[i]), caps[i]) for i in range(n))

    lo, hi = 0, max(caps)
    while lo < hi:  # largest level with total(level) <= limit_d (total(0) = sum(mins) <= limit_d)
        mid = (lo + hi + 1) // 2
        if total(mid) <= limit_d:
            lo = mid
        else:
            hi = mid - 1
    offers = [min(max(lo, mins[i]), caps[i]) for i in range(n)]
    rest = limit_d - sum(offers)
    for i in range(n):
        if rest <= 0:
            break
        if mins[i] <= lo < caps[i]:
            offers[i] += 1
            rest -= 1
    return offers


def balance(
    station_limit_a: float,
    connectors: list[ConnectorDemand],
    now: datetime,
    *,
    rotation_s: float = 900.0,
    unused_margin_a: float = 1.0,
    headroom_a: float = 2.0,
) -> dict[int, Offer]:
    """Share `station_limit_a` among `connectors` (see the module docstring). Deterministic."""
    if headroom_a <= unused_margin_a:
        raise ValueError(
            f"headroom_a ({headroom_a}) must be greater than unused_margin_a ({unused_margin_a})"
        )
    limit_d = _dA(station_limit_a, up=False) if math.isfinite(station_limit_a) and station_limit_a > 0 else 0
    result: dict[int, Offer] = {}
    eligible: list[tuple[ConnectorDemand, int, int, str]] = []  # demand, min_d, cap_d, cap reason
    for c in sorted(connectors, key=lambda c: c.connector_id):
        if not c.wants_power:
            result[c.connector_id] = Offer(None, "not requesting power")
            continue
        cap = c.max_current_a
        why = "hardware max"
        if c.composite_limit_a is not None and c.composite_limit_a < cap:
            cap, why = c.composite_limit_a, "charging profile"
        min_d = _dA(max(c.min_current_a, 0.0), up=True)
        cap_d = _dA(cap, up=False) if math.isfinite(cap) else 0
        if cap_d < min_d or (min_d <= 0 and cap_d <= 0):
            result[c.connector_id] = Offer(None, f"paused: {why} limit {cap:g} A below minimum "
                                                 f"{c.min_current_a:g} A")
            continue
        eligible.append((c, min_d, cap_d, why))

    def served_for(c: ConnectorDemand) -> float:
        if c.offered_a is None or c.served_since is None:
            return 0.0
        return (now - c.served_since).total_seconds()

    def waited(c: ConnectorDemand) -> float:
        return 0.0 if c.waiting_since is None else (now - c.waiting_since).total_seconds()

    keep = [e for e in eligible if e[0].offered_a is not None and served_for(e[0]) < rotation_s]
    waiting = [e for e in eligible if e[0].offered_a is None]
    expired = [e for e in eligible if e[0].offered_a is not None and served_for(e[0]) >= rotation_s]
    keep.sort(key=lambda e: (-served_for(e[0]), e[0].connector_id))
    waiting.sort(key=lambda e: (-waited(e[0]), e[0].connector_id))
    expired.sort(key=lambda e: (served_for(e[0]), e[0].connector_id))

    chosen: list[tuple[ConnectorDemand, int, int, str]] = []
    used = 0
    if sum(e[1] for e in eligible) <= limit_d:
        chosen = keep + waiting + expired
        used = sum(e[1] for e in chosen)
    else:
        blocked = False
        for group, strict in ((keep, False), (waiting, True), (expired, True)):
            for e in group:
                if blocked:
                    result[e[0].connector_id] = Offer(None, "paused: waiting for its turn")
                    continue
                if used + e[1] <= limit_d:
                    chosen.append(e)
                    used += e[1]
                else:
                    # A connector whose minimum can never fit the station does not hold up the queue.
                    if strict and e[1] <= limit_d:
                        blocked = True
                    result[e[0].connector_id] = Offer(
                        None, "paused: station limit too low for its minimum" if e[1] > limit_d
                        else "paused: waiting for its turn"
                    )
    if not chosen:
        return result

    # Priority order for leftover tenths: the order of admission.
    mins = [e[1] for e in chosen]
    caps = [e[2] for e in chosen]
    offers = _fill(limit_d, mins, caps)
    short = any(offers[i] < caps[i] for i in range(len(chosen)))
    reduced = [False] * len(chosen)
    if short:
        caps2 = list(caps)
        for i, (c, min_d, cap_d, _why) in enumerate(chosen):
            if c.measured_a is not None and c.offered_a is not None and \
                    c.measured_a < c.offered_a - unused_margin_a:
                new_cap = max(min_d, min(cap_d, _dA(c.measured_a + headroom_a, up=False)))
                if new_cap < cap_d:
                    caps2[i] = new_cap
                    reduced[i] = True
        if any(reduced):
            offers = _fill(limit_d, mins, caps2)
            caps = caps2
    for i, (c, _min_d, _cap_d, why) in enumerate(chosen):
        amps = offers[i] / 10
        if reduced[i] and offers[i] == caps[i]:
            reason = f"EV uses {c.measured_a:g} A: headroom shared"
        elif offers[i] == caps[i]:
            reason = f"at {why}"
        else:
            reason = "share of station limit"
        result[c.connector_id] = Offer(amps, reason)
    return result

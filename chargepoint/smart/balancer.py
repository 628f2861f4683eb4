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

Several limits at once (`balance_phases`, used by the local controller for a site's fuse per phase): each
demand names the phases (limit indices) it loads; every phase's sum stays under its limit, and the shares
are max-min fair (progressive filling: the level rises for everybody until a phase is full, the
connectors on that phase are frozen, the others go on rising). `balance` is the one-limit case.

Priority (`ConnectorDemand.priority`, a weight > 0, default 1) changes only whose turn it is, never the
share: a waiting connector's wait counts `priority` times (it is admitted earlier) and its turn lasts
`priority x rotation_s`. Since every waiting connector's weighted wait grows without bound, a low
priority connector is still admitted eventually (no starvation).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
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
    #: which limits (indices into `balance_phases`' phase limits) this connector loads; None = all
    phases: tuple[int, ...] | None = None
    #: turn-taking weight (> 0), see the module docstring
    priority: float = 1.0


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
    """Water filling in deci-amps under one limit (see `_fill_multi`)."""
    return _fill_multi([limit_d], [(0,)] * len(mins), mins, caps)


def _fill_multi(limits: list[int], uses: list[tuple[int, ...]], mins: list[int], caps: list[int]) -> list[int]:
    """Progressive filling in deci-amps: offer_i = clamp(level, min_i, cap_i) with one level for all
    connectors still rising; when a limit is reached, the connectors on it are frozen (leftover tenths of
    that round go to the first of them in list (priority) order) and the others rise further.
    Precondition: the minimums fit every limit."""
    n = len(mins)
    offers = [0] * n
    active = list(range(n))
    fixed = [0] * len(limits)

    def clamp(i: int, level: int) -> int:
        return min(max(level, mins[i]), caps[i])

    def totals(level: int) -> list[int]:
        t = list(fixed)
        for i in active:
            v = clamp(i, level)
            for p in uses[i]:
                t[p] += v
        return t

    def fits(level: int) -> bool:
        return all(t <= lim for t, lim in zip(totals(level), limits, strict=True))

    while active:
        top = max(caps[i] for i in active)
        if fits(top):
            for i in active:
                offers[i] = caps[i]
            break
        lo, hi = 0, top
        while lo < hi:  # largest level that fits (fits(0): the minimums fit)
            mid = (lo + hi + 1) // 2
            if fits(mid):
                lo = mid
            else:
                hi = mid - 1
        t_lo, t_up = totals(lo), totals(lo + 1)
        binding = {p for p in range(len(limits)) if t_up[p] > limits[p]}
        frozen = [i for i in active if any(p in binding for p in uses[i])] or list(active)
        rest = [limits[p] - t_lo[p] for p in range(len(limits))]
        for i in frozen:
            offers[i] = clamp(i, lo)
        for i in frozen:
            if mins[i] <= lo < caps[i] and all(rest[p] > 0 for p in uses[i]):
                offers[i] += 1
                for p in uses[i]:
                    rest[p] -= 1
        for i in frozen:
            for p in uses[i]:
                fixed[p] += offers[i]
        active = [i for i in active if i not in frozen]
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
    """Share `station_limit_a` among `connectors` (see the module docstring). Deterministic.
    ``ConnectorDemand.phases`` is ignored: one limit for all."""
    return _balance([station_limit_a], connectors, now, one_limit=True, rotation_s=rotation_s,
                    unused_margin_a=unused_margin_a, headroom_a=headroom_a, what="station")


def balance_phases(
    phase_limits_a: Sequence[float],
    connectors: list[ConnectorDemand],
    now: datetime,
    *,
    rotation_s: float = 900.0,
    unused_margin_a: float = 1.0,
    headroom_a: float = 2.0,
) -> dict[int, Offer]:
    """Share several limits (a site's fuse per phase) among `connectors`, each loading the limits named
    by its ``phases`` (None: all). Every limit's sum of offers stays under it. Deterministic."""
    return _balance(list(phase_limits_a), connectors, now, one_limit=False, rotation_s=rotation_s,
                    unused_margin_a=unused_margin_a, headroom_a=headroom_a, what="site")


def _balance(
    limits_a: list[float],
    connectors: list[ConnectorDemand],
    now: datetime,
    *,
    one_limit: bool,
    rotation_s: float,
    unused_margin_a: float,
    headroom_a: float,
    what: str,
) -> dict[int, Offer]:
    if headroom_a <= unused_margin_a:
        raise ValueError(
            f"headroom_a ({headroom_a}) must be greater than unused_margin_a ({unused_margin_a})"
        )
    limits_d = [_dA(x, up=False) if math.isfinite(x) and x > 0 else 0 for x in limits_a]
    all_phases = tuple(range(len(limits_d)))
    result: dict[int, Offer] = {}
    eligible: list[tuple[ConnectorDemand, int, int, str]] = []  # demand, min_d, cap_d, cap reason
    uses: dict[int, tuple[int, ...]] = {}
    for c in sorted(connectors, key=lambda c: c.connector_id):
        if not c.wants_power:
            result[c.connector_id] = Offer(None, "not requesting power")
            continue
        phases = all_phases if one_limit or c.phases is None else tuple(sorted(set(c.phases)))
        if any(p not in all_phases for p in phases) or not phases:
            raise ValueError(f"connector {c.connector_id}: phases {c.phases} not among {all_phases}")
        uses[c.connector_id] = phases
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

    def weight(c: ConnectorDemand) -> float:
        return c.priority if c.priority > 0 else 1.0

    def served_for(c: ConnectorDemand) -> float:
        if c.offered_a is None or c.served_since is None:
            return 0.0
        return (now - c.served_since).total_seconds()

    def waited(c: ConnectorDemand) -> float:
        return 0.0 if c.waiting_since is None else (now - c.waiting_since).total_seconds() * weight(c)

    def turn_over(c: ConnectorDemand) -> bool:
        return served_for(c) >= rotation_s * weight(c)

    keep = [e for e in eligible if e[0].offered_a is not None and not turn_over(e[0])]
    waiting = [e for e in eligible if e[0].offered_a is None]
    expired = [e for e in eligible if e[0].offered_a is not None and turn_over(e[0])]
    keep.sort(key=lambda e: (-served_for(e[0]), e[0].connector_id))
    waiting.sort(key=lambda e: (-waited(e[0]), e[0].connector_id))
    expired.sort(key=lambda e: (served_for(e[0]), e[0].connector_id))

    def fits(used: list[int], e: tuple[ConnectorDemand, int, int, str]) -> bool:
        return all(used[p] + e[1] <= limits_d[p] for p in uses[e[0].connector_id])

    def never_fits(e: tuple[ConnectorDemand, int, int, str]) -> bool:
        return any(e[1] > limits_d[p] for p in uses[e[0].connector_id])

    def add(used: list[int], e: tuple[ConnectorDemand, int, int, str]) -> None:
        for p in uses[e[0].connector_id]:
            used[p] += e[1]

    chosen: list[tuple[ConnectorDemand, int, int, str]] = []
    used = [0] * len(limits_d)
    everyone = [0] * len(limits_d)
    for e in eligible:
        add(everyone, e)
    if all(everyone[p] <= limits_d[p] for p in all_phases):
        chosen = keep + waiting + expired
    else:
        blocked = False
        for group, strict in ((keep, False), (waiting, True), (expired, True)):
            for e in group:
                if blocked:
                    result[e[0].connector_id] = Offer(None, "paused: waiting for its turn")
                    continue
                if fits(used, e):
                    chosen.append(e)
                    add(used, e)
                else:
                    # A connector whose minimum can never fit the limit does not hold up the queue.
                    if strict and not never_fits(e):
                        blocked = True
                    result[e[0].connector_id] = Offer(
                        None, f"paused: {what} limit too low for its minimum" if never_fits(e)
                        else "paused: waiting for its turn"
                    )
    if not chosen:
        return result

    # Priority order for leftover tenths: the order of admission.
    mins = [e[1] for e in chosen]
    caps = [e[2] for e in chosen]
    ch_uses = [uses[e[0].connector_id] for e in chosen]
    offers = _fill_multi(limits_d, ch_uses, mins, caps)
    short = [offers[i] < caps[i] for i in range(len(chosen))]
    reduced = [False] * len(chosen)
    if any(short):
        caps2 = list(caps)
        for i, (c, min_d, cap_d, _why) in enumerate(chosen):
            # Only for someone else: a connector that is itself the only one short keeps its share.
            others_short = any(short[j] for j in range(len(chosen)) if j != i)
            if others_short and c.measured_a is not None and c.offered_a is not None and \
                    c.measured_a < c.offered_a - unused_margin_a:
                new_cap = max(min_d, min(cap_d, _dA(c.measured_a + headroom_a, up=False)))
                if new_cap < cap_d:
                    caps2[i] = new_cap
                    reduced[i] = True
        if any(reduced):
            offers = _fill_multi(limits_d, ch_uses, mins, caps2)
            caps = caps2
    for i, (c, _min_d, _cap_d, why) in enumerate(chosen):
        amps = offers[i] / 10
        if reduced[i] and offers[i] == caps[i]:
            reason = f"EV uses {c.measured_a:g} A: headroom shared"
        elif offers[i] == caps[i]:
            reason = f"at {why}"
        else:
            reason = f"share of {what} limit"
        result[c.connector_id] = Offer(amps, reason)
    return result

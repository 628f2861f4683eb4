"""The site policy of the local controller: who gets how much of the site's connection (pure, no I/O).

OCPP 1.6 §3.13.? ("Local Smart Charging"): a local controller sets the limits of a group of charge points
behind one supply. Here every downstream charge point is one load on the site phases it is wired to
(``ChargePointSpec.phases``: site phase of its L1, L2, L3; one entry for a single-phase box). The policy:

* The site limit per phase is the fuse (configuration), lowered by the central system's group limit (a
  ChargePointMaxProfile on the local controller's own identity) and, with a site meter, by what the house
  itself draws (meter current minus the charge points' own measured current, minus a margin). A silent site
  meter leaves each charging box its minimum only.
* The shares are the single-station balancer's (``chargepoint.smart.balancer.balance_phases``): equal
  shares, per-phase sums under the limit, minimum current (the box's own and the central system's
  minChargingRate, §7.13) or a pause, turn-taking with the configured priority as weight, headroom a car
  does not use given to the others.
* **Never raise before a lowered one took effect**: what a box may draw is its *committed* current: the
  higher of its old and new limit until the box has accepted the lower one *and* either a meter reading
  taken after that shows it below the new limit, or ``follow_s`` (the box's own pilot rate limit plus the
  EV's reaction time, IEC 61851-1) passed, or it had no transaction when it accepted. A raise is sent only
  when, on each of its phases, the others' committed currents plus the raise fit the site limit; so the
  installed limits never add up to more than the site limit, whatever the cars do.
* A box that is offline, or whose limit is not known, is committed at the highest it may have: its last
  allocation while that is valid, else its safe default (and before any safe default was accepted, its
  maximum).
* Fallback: the allocation is a lease (validTo); below it, a durable safe default (the box's share of the
  fuse: fuse / boxes on the phase) is installed at a lower stack level. When the local controller dies, the
  leases end and the boxes fall back to the safe default; allocations above the safe default end first
  (shorter lease), so even the fallback lowers before it raises.

Time is an argument everywhere (``now``, timezone-aware); nothing here reads a clock.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from chargepoint.smart.balancer import ConnectorDemand, balance_phases

#: Statuses (StatusNotification, §7.7) in which a connector has a car that may want current.
WANTS_POWER = frozenset({"Charging", "SuspendedEV", "SuspendedEVSE"})


@dataclass(frozen=True)
class ChargePointSpec:
    """One downstream charge point as configured."""

    id: str
    phases: tuple[int, ...] = (0, 1, 2)  # site phase (0 = L1) of the box's L1, L2, L3
    max_current_a: float = 32.0
    min_current_a: float = 6.0
    priority: float = 1.0


@dataclass(frozen=True)
class SiteSettings:
    fuse_a: tuple[float, float, float]  # the site's fuse per phase
    meter_margin_a: float = 1.0
    meter_stale_s: float = 10.0
    follow_s: float = 12.0  # box's pilot rate limit (5 s) + EV reaction (5 s) + margin
    lease_s: float = 120.0
    renew_s: float = 40.0
    rotation_s: float = 900.0
    retry_s: float = 30.0


@dataclass(frozen=True)
class Command:
    """Install ``amps`` (per phase; 0 = pause) on ``cp`` as the allocation lease until ``valid_to``."""

    cp: str
    amps: float
    valid_to: datetime
    reason: str


@dataclass
class _Box:
    spec: ChargePointSpec
    index: int
    connected: bool = False
    statuses: dict[int, str] = field(default_factory=dict)
    transactions: set[int] = field(default_factory=set)  # connector ids with an open transaction
    measured: tuple[float | None, ...] = ()  # per box phase
    measured_at: datetime | None = None
    cap_a: float | None = None  # the central system's own profiles for this box
    min_rate_a: float | None = None  # their minChargingRate
    # What is installed: ``installed`` is known accepted; ``pending`` sent, not answered yet.
    installed: float | None = None
    installed_until: datetime | None = None
    pending: float | None = None
    pending_until: datetime | None = None
    previous: float | None = None  # the limit before ``installed``, until the change took effect
    accepted_at: datetime | None = None
    accepted_idle: bool = False
    safe_default_ok: bool = False
    safe_installed_a: float | None = None  # the safe default installed, when lower than the share
    failed_at: datetime | None = None
    target: float | None = None
    reason: str = "not connected yet"
    waiting_since: datetime | None = None
    served_since: datetime | None = None

    def wants_power(self) -> bool:
        return bool(self.transactions) or any(s in WANTS_POWER for s in self.statuses.values())

    def measured_max(self) -> float | None:
        vals = [a for a in self.measured if a is not None]
        return max(vals) if vals else None


class Site:
    """The state the policy needs, fed by the server (events) and asked for commands (``plan``)."""

    def __init__(self, settings: SiteSettings, charge_points: Sequence[ChargePointSpec]) -> None:
        self.settings = settings
        self._boxes = {s.id: _Box(s, i) for i, s in enumerate(charge_points)}
        self._group_limit_a: float | None = None
        self._site_meter: tuple[float | None, ...] | None = None
        self._site_meter_at: datetime | None = None
        self.has_site_meter = False
        self.limits_source = "site fuse"
        self._safe_defaults = {cp: self._safe_default(box.spec) for cp, box in self._boxes.items()}

    # ------------------------------------------------------------------ facts
    def knows(self, cp: str) -> bool:
        return cp in self._boxes

    @property
    def ids(self) -> list[str]:
        return list(self._boxes)

    def safe_default_a(self, cp: str) -> float:
        """The box's share of the fuse: min over its phases of fuse / boxes on that phase (tenths, down).
        Depends on the configuration only: computed once."""
        return self._safe_defaults[cp]

    def _safe_default(self, spec: ChargePointSpec) -> float:
        shares = []
        for p in set(spec.phases):
            n = sum(1 for b in self._boxes.values() if p in b.spec.phases)
            shares.append(self.settings.fuse_a[p] / n)
        return math.floor(min(shares) * 10 + 1e-6) / 10

    def restore(self, cp: str, amps: float | None, valid_to: datetime | None, safe_default_ok: bool,
                safe_a: float | None = None) -> None:
        """What the store says was installed before a restart (the box may still hold it)."""
        box = self._boxes[cp]
        box.installed, box.installed_until = amps, valid_to
        self.safe_default_installed(cp, safe_default_ok, safe_a)

    # ------------------------------------------------------------------ events
    def connected(self, cp: str, now: datetime) -> None:
        box = self._boxes[cp]
        box.connected = True
        box.failed_at = None

    def disconnected(self, cp: str, now: datetime) -> None:
        box = self._boxes[cp]
        box.connected = False
        box.pending = box.pending_until = None
        box.reason = "offline: counted at its last limit, then its safe default"

    def status(self, cp: str, connector_id: int, status: str, now: datetime) -> None:
        box = self._boxes[cp]
        if connector_id == 0:
            return
        box.statuses[connector_id] = status
        if status == "Available":
            box.transactions.discard(connector_id)

    def transaction(self, cp: str, connector_id: int, open_: bool, now: datetime) -> None:
        box = self._boxes[cp]
        if open_:
            box.transactions.add(connector_id)
        else:
            box.transactions.discard(connector_id)

    def open_transactions(self, cp: str) -> list[int]:
        """Connector ids of the box with an open transaction."""
        return sorted(self._boxes[cp].transactions)

    def meter(self, cp: str, currents: Sequence[float | None], now: datetime) -> None:
        """Measured current per box phase (L1, L2, L3 of the box; None = not measured)."""
        box = self._boxes[cp]
        box.measured = tuple(currents)
        box.measured_at = now

    def site_meter(self, currents: Sequence[float | None] | None, now: datetime) -> None:
        self.has_site_meter = True
        if currents is not None:
            self._site_meter, self._site_meter_at = tuple(currents), now

    def group_limit(self, amps: float | None) -> None:
        """The central system's ChargePointMaxProfile on the local controller's own identity (per phase)."""
        self._group_limit_a = amps

    def cap(self, cp: str, amps: float | None, min_rate_a: float | None = None) -> None:
        """The limit the central system's own profiles set on this box now (tracked from what it forwards)."""
        box = self._boxes[cp]
        box.cap_a, box.min_rate_a = amps, min_rate_a

    def safe_default_installed(self, cp: str, ok: bool, amps: float | None = None) -> None:
        """Whether the box holds its safe default; ``amps`` when it was installed below the share (the central
        system's own ChargePointMaxProfile on the box is lower)."""
        box = self._boxes[cp]
        box.safe_default_ok = ok
        share = self.safe_default_a(cp)
        box.safe_installed_a = amps if ok and amps is not None and amps < share else None

    def sent(self, cmd: Command, now: datetime) -> None:
        box = self._boxes[cmd.cp]
        box.pending, box.pending_until = cmd.amps, cmd.valid_to

    def answered(self, cp: str, accepted: bool, now: datetime) -> None:
        """The box answered the last SetChargingProfile (False: Rejected, CALLERROR or no answer)."""
        box = self._boxes[cp]
        if box.pending is None:
            return
        if accepted:
            if box.installed is None or box.pending != box.installed:
                box.previous = self._committed(box, now)
                box.accepted_at = now
                box.accepted_idle = not box.transactions
            box.installed, box.installed_until = box.pending, box.pending_until
            box.failed_at = None
        else:
            box.failed_at = now
        box.pending = box.pending_until = None

    # ------------------------------------------------------------------ policy
    def _installed_safe(self, box: _Box) -> float:
        return box.safe_installed_a if box.safe_installed_a is not None else self.safe_default_a(box.spec.id)

    def _effective_limit(self, box: _Box, now: datetime) -> float:
        """The highest limit the box may apply by itself now (what the store/answers say is installed)."""
        safe = self._installed_safe(box) if box.safe_default_ok else box.spec.max_current_a
        if box.installed is not None and (box.installed_until is None or box.installed_until > now):
            return box.installed
        return safe

    def _took_effect(self, box: _Box, now: datetime) -> bool:
        if box.previous is None or box.accepted_at is None:
            return True
        if box.accepted_idle or now - box.accepted_at >= timedelta(seconds=self.settings.follow_s):
            return True
        m = box.measured_max()
        return (box.measured_at is not None and box.measured_at > box.accepted_at and m is not None
                and m <= (box.installed or 0.0) + 1e-6)

    def _committed(self, box: _Box, now: datetime) -> float:
        """What the box may be drawing at most (see the module docstring)."""
        c = self._effective_limit(box, now)
        if box.pending is not None:
            c = max(c, box.pending)
        if box.previous is not None:
            if self._took_effect(box, now):
                box.previous = None
            else:
                c = max(c, box.previous)
        if not box.connected:
            c = max(c, box.installed or 0.0) if box.installed_until and box.installed_until > now else c
        return min(c, box.spec.max_current_a)

    def limits(self, now: datetime) -> tuple[list[float], str]:
        """The site limit per phase now and what sets it."""
        limits = list(self.settings.fuse_a)
        src = "site fuse"
        if self._group_limit_a is not None and self._group_limit_a < min(limits):
            src = "central system group limit"
        if self._group_limit_a is not None:
            limits = [min(x, self._group_limit_a) for x in limits]
        if self.has_site_meter:
            fresh = (self._site_meter is not None and self._site_meter_at is not None
                     and (now - self._site_meter_at).total_seconds() <= self.settings.meter_stale_s)
            if not fresh:
                for p in range(3):
                    floor = sum(b.spec.min_current_a for b in self._boxes.values()
                                if b.wants_power() and p in b.spec.phases)
                    limits[p] = min(limits[p], floor)
                return limits, "site meter silent: minimum current only"
            assert self._site_meter is not None
            ours = [0.0, 0.0, 0.0]
            for b in self._boxes.values():
                for i, a in enumerate(b.measured[:len(b.spec.phases)]):
                    if a is not None:
                        ours[b.spec.phases[i]] += a
            for p in range(3):
                site = self._site_meter[p] if p < len(self._site_meter) else None
                if site is None:
                    continue
                house = max(site - ours[p], 0.0)
                avail = max(self.settings.fuse_a[p] - house - self.settings.meter_margin_a, 0.0)
                if avail < limits[p]:
                    limits[p], src = avail, "site meter (fuse minus the house's load)"
        return limits, src

    def plan(self, now: datetime) -> list[Command]:
        """The SetChargingProfile allocations to send now: decreases at once, raises when they fit."""
        s = self.settings
        limits, src = self.limits(now)
        self.limits_source = src
        # Offline boxes hold their commitment; the balancer shares the rest among the connected ones.
        pool = list(limits)
        demands: list[ConnectorDemand] = []
        by_index: dict[int, _Box] = {}
        for box in self._boxes.values():
            if not box.connected:
                c = self._committed(box, now)
                for p in set(box.spec.phases):
                    pool[p] -= c
                box.target = None
                continue
            if not box.wants_power():
                box.waiting_since = None
                continue
            if not box.installed and box.waiting_since is None:
                box.waiting_since = now  # waiting for current since it first asked
            mcr = max(box.spec.min_current_a, box.min_rate_a or 0.0)
            offered = box.installed if box.installed else None
            by_index[box.index] = box
            demands.append(ConnectorDemand(
                connector_id=box.index, wants_power=True, composite_limit_a=box.cap_a,
                min_current_a=mcr, max_current_a=box.spec.max_current_a,
                measured_a=box.measured_max() if self._took_effect(box, now) else None,
                offered_a=offered,
                waiting_since=(box.waiting_since or now) if offered is None else None,
                served_since=box.served_since if offered is not None else None,
                phases=tuple(sorted(set(box.spec.phases))), priority=box.spec.priority,
            ))
        offers = balance_phases([max(x, 0.0) for x in pool], demands, now, rotation_s=s.rotation_s)
        for box in self._boxes.values():
            if not box.connected:
                continue
            if box.index in offers:
                o = offers[box.index]
                box.target = o.amps or 0.0
                box.reason = f"{src}: {o.reason}"
            else:
                box.target = 0.0
                box.reason = "no car wants current"
        commands: list[Command] = []
        for box in sorted(self._boxes.values(), key=lambda b: (b.target or 0.0) - (b.installed or 0.0)):
            cmd = self._command(box, limits, now)
            if cmd is not None:
                commands.append(cmd)
                self.sent(cmd, now)
        return commands

    def _command(self, box: _Box, limits: list[float], now: datetime) -> Command | None:
        s = self.settings
        if not box.connected or box.pending is not None or box.target is None:
            return None
        if box.failed_at is not None and (now - box.failed_at).total_seconds() < s.retry_s:
            return None
        target = box.target
        current = box.installed if box.installed_until is None or box.installed_until > now else None
        renew = box.installed_until is None or (box.installed_until - now).total_seconds() < s.lease_s - s.renew_s
        if current is not None and target == current and not renew:
            return None
        committed = self._committed(box, now)
        if current is None or target > committed:
            # A raise: only what the others' committed currents leave on each of its phases.
            room = min(limits[p] - sum(self._committed(o, now) for o in self._boxes.values()
                                       if o is not box and p in o.spec.phases)
                       for p in set(box.spec.phases))
            room = math.floor(room * 10 + 1e-6) / 10
            if room < target:
                if room >= max(committed, box.spec.min_current_a) and room > (current or 0.0):
                    target = room
                    box.reason += f" (raised to {room:g} A: waiting for lowered limits to take effect)"
                else:
                    box.reason += " (raise waits until lowered limits took effect)"
                    if current is None or not renew:
                        if current is None:
                            target = min(committed, room) if room > 0 else 0.0
                            target = max(target, 0.0)
                        else:
                            return None
                    else:
                        target = current
        # Above the safe default: a shorter lease, so the fallback lowers before it raises.
        lease = s.lease_s if target > self.safe_default_a(box.spec.id) else s.lease_s + s.renew_s
        was_off = not box.installed
        if target > 0 and was_off:
            box.served_since = now
            box.waiting_since = None
        elif target == 0 and not was_off:
            box.waiting_since = now
            box.served_since = None
        return Command(box.spec.id, target, now + timedelta(seconds=lease), box.reason)

    # ------------------------------------------------------------------ view
    def view(self, now: datetime) -> list[dict[str, Any]]:
        out = []
        for box in self._boxes.values():
            out.append({
                "id": box.spec.id,
                "connected": box.connected,
                "phases": [f"L{p + 1}" for p in box.spec.phases],
                "priority": box.spec.priority,
                "statuses": {str(k): v for k, v in sorted(box.statuses.items())},
                "transactions": sorted(box.transactions),
                "allocation_a": box.installed if box.installed_until is None or box.installed_until > now
                else None,
                "pending_a": box.pending,
                "target_a": box.target,
                "committed_a": round(self._committed(box, now), 1),
                "safe_default_a": self._installed_safe(box),
                "safe_default_installed": box.safe_default_ok,
                "measured_a": list(box.measured),
                "central_system_limit_a": box.cap_a,
                "why": box.reason,
            })
        return out

    def phase_sums(self, now: datetime) -> list[float]:
        """Sum of committed currents per site phase (the invariant: each ≤ the site limit)."""
        sums = [0.0, 0.0, 0.0]
        for box in self._boxes.values():
            c = self._committed(box, now)
            for p in set(box.spec.phases):
                sums[p] += c
        return sums

"""Composite charging schedule (OCPP 1.6 §3.13.2-3.13.3, §5.7 GetCompositeSchedule). Pure.

How a limit is found for one connector at one instant:

1. Every profile is turned into pieces ``[a, b) -> limit`` where it is *in effect*: inside
   validFrom/validTo and inside its schedule (an Absolute schedule starts at startSchedule, a Relative
   one at the transaction start, a Recurring one repeats from startSchedule every day/week; a
   ``duration`` ends the schedule, ``duration`` 0 means the profile never covers anything).
2. Within a layer the highest stackLevel in effect wins (§3.13.2 "At any point in time the prevailing
   charging profile SHALL be the charging profile with the highest stackLevel among the profiles that
   are valid at that point in time"). Where it does not cover the instant (not yet started, duration
   over) the next lower one shows through.
3. Layers, highest first: TxProfile of the running transaction, TxDefaultProfile on this connector,
   TxDefaultProfile on connector 0 (see `composite_schedule` for the connector-0 reading).
4. The result is capped by the prevailing ChargePointMaxProfile (§3.13.3: the minimum of the merged
   schedules).

Times are handled as integer microseconds since the epoch, so period boundaries are exact and
`next_change` returns an instant at which `limit_at` already shows the new value.

Relative profiles without a transaction (the spec is silent): `composite_schedule` anchors them at the
start of the requested window (what a transaction starting now would get); `limit_at`/`next_change`
hold them at their first period (a Relative schedule has not begun to run before the transaction, so
it has no change points; the controller re-evaluates when the transaction starts).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from chargepoint.smart.profiles import (
    ABSOLUTE,
    CHARGE_POINT_MAX,
    RECURRENCY_SECONDS,
    RECURRING,
    RELATIVE,
    TX_DEFAULT,
    TX_PROFILE,
    ChargingProfile,
    InstalledProfiles,
    format_datetime,
)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
_S = 1_000_000
_NEG_INF = -(2**62)
_POS_INF = 2**62


def _us(dt: datetime) -> int:
    if dt.tzinfo is None:
        raise ValueError(f"naive datetime {dt!r}: smart charging needs timezone-aware times")
    return (dt - _EPOCH) // _US


def _dt(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


class CompositePeriod(NamedTuple):
    """One chargingSchedulePeriod of the composite: seconds from the schedule start."""

    start_period: int
    limit: float
    number_phases: int | None


class Limit(NamedTuple):
    """The limit in effect now. `amps` None = no profile limits this connector."""

    amps: float | None
    source: str


@dataclass(frozen=True, slots=True)
class CompositeSchedule:
    """The answer to GetCompositeSchedule (§6.? GetCompositeSchedule.conf chargingSchedule)."""

    start: datetime
    duration: int
    unit: str
    periods: tuple[CompositePeriod, ...]
    min_charging_rate: float | None

    def to_ocpp(self) -> dict[str, Any]:
        """The chargingSchedule object (camelCase)."""
        periods = []
        for p in self.periods:
            item: dict[str, Any] = {"startPeriod": p.start_period, "limit": _num_out(p.limit)}
            if p.number_phases is not None:
                item["numberPhases"] = p.number_phases
            periods.append(item)
        out: dict[str, Any] = {
            "duration": self.duration,
            "startSchedule": format_datetime(self.start),
            "chargingRateUnit": self.unit,
            "chargingSchedulePeriod": periods,
        }
        if self.min_charging_rate is not None:
            out["minChargingRate"] = _num_out(self.min_charging_rate)
        return out

    def conf_payload(self, connector_id: int) -> dict[str, Any]:
        """A complete GetCompositeSchedule.conf payload with status Accepted."""
        return {
            "status": "Accepted",
            "connectorId": connector_id,
            "scheduleStart": format_datetime(self.start),
            "chargingSchedule": self.to_ocpp(),
        }


def _num_out(x: float) -> int | float:
    return int(x) if float(x).is_integer() else x


def _floor01(x: float) -> float:
    """OCPP limits carry at most one decimal (§7.13); round DOWN so the report never overstates."""
    return math.floor(x * 10 + 1e-9) / 10


# A piece: (start_us, end_us, limit in the profile's own unit, number_phases, profile). A filler piece
# (default limit) has profile None and is in amps. Units are converted when layers are combined, with
# the phases actually usable in that interval (see `_combine`).
_Piece = tuple[int, int, float, int | None, ChargingProfile]


class _Ctx:
    __slots__ = ("unit", "voltage", "phases", "rel_anchor", "freeze_relative")

    def __init__(self, unit: str, voltage: float, phases: int, rel_anchor: int | None,
                 freeze_relative: bool) -> None:
        self.unit = unit
        self.voltage = voltage
        self.phases = phases
        self.rel_anchor = rel_anchor
        self.freeze_relative = freeze_relative

    def convert(self, limit: float, from_unit: str) -> float:
        """W = A x voltage x phases, with the phases the connector really delivers.

        This charger cannot switch phases (ConnectorSwitch3to1PhaseSupported = false), so a smaller
        numberPhases does not make it charge on fewer phases: converting 4600 W with numberPhases=1 into
        20 A per phase on a three-phase connector would let the car take 13.8 kW. The installation's phases
        are used, which never exceeds a power limit, and they are what the composite reports as
        numberPhases (see `_combine`)."""
        if from_unit == self.unit:
            return limit
        ph = self.phases
        if from_unit == "A":
            return limit * self.voltage * ph
        return limit / (self.voltage * ph)


def _profile_pieces(p: ChargingProfile, ws: int, we: int, ctx: _Ctx) -> list[_Piece]:
    """Where in [ws, we) the profile is in effect, and with which limit (ascending, disjoint)."""
    lo, hi = ws, we
    if p.valid_from is not None:
        lo = max(lo, _us(p.valid_from))
    if p.valid_to is not None:
        hi = min(hi, _us(p.valid_to))
    s = p.schedule
    if lo >= hi or not s.periods or s.duration == 0:
        return []
    length = _POS_INF if s.duration is None else s.duration * _S
    starts = [per.start_period * _S for per in s.periods]
    limits = [per.limit for per in s.periods]
    phases = [per.number_phases for per in s.periods]

    anchors: list[int]
    if p.kind == RECURRING and s.start_schedule is not None and p.recurrency_kind in RECURRENCY_SECONDS:
        rec = RECURRENCY_SECONDS[p.recurrency_kind] * _S
        length = min(length, rec)
        ss = _us(s.start_schedule)
        k = (lo - ss) // rec  # the occurrence running at `lo` (the recurrence phase, also before ss)
        anchors = []
        while ss + k * rec < hi:
            anchors.append(ss + k * rec)
            k += 1
    else:
        anchor: int | None
        if p.kind == RELATIVE:
            anchor = None if ctx.freeze_relative else ctx.rel_anchor
        elif p.kind == ABSOLUTE and s.start_schedule is not None:
            anchor = _us(s.start_schedule)
        elif p.valid_from is not None:
            anchor = _us(p.valid_from)
        else:
            anchor = None
        if anchor is None:
            # Not started / no start known: held at its first period over the whole window.
            return [(lo, hi, limits[0], phases[0], p)]
        anchors = [anchor]

    out: list[_Piece] = []
    n = len(starts)
    for anchor in anchors:
        end = min(hi, anchor + length) if length < _POS_INF else hi
        if end <= lo or anchor >= end:
            continue
        # first period whose end is after lo
        i = 0
        rel_lo = lo - anchor
        while i + 1 < n and starts[i + 1] <= rel_lo:
            i += 1
        while i < n:
            a = max(lo, anchor + starts[i])
            b = min(end, anchor + starts[i + 1]) if i + 1 < n else end
            if a >= end:
                break
            if a < b:
                out.append((a, b, limits[i], phases[i], p))
            i += 1
    return out


def _paint(free: list[tuple[int, int]], pieces: list[_Piece], out: list[_Piece]) -> list[tuple[int, int]]:
    """Put `pieces` where nothing of higher priority is yet (`free`); return what stays free."""
    if not pieces:
        return free
    new_free: list[tuple[int, int]] = []
    j = 0
    n = len(pieces)
    for fa, fb in free:
        cur = fa
        while j < n and pieces[j][1] <= cur:
            j += 1
        k = j
        while k < n and pieces[k][0] < fb:
            pa, pb, lim, ph, prof = pieces[k]
            a = pa if pa > cur else cur
            b = pb if pb < fb else fb
            if a < b:
                if a > cur:
                    new_free.append((cur, a))
                out.append((a, b, lim, ph, prof))
                cur = b
            if pb <= fb:
                k += 1
            else:
                break
        j = k
        if cur < fb:
            new_free.append((cur, fb))
    return new_free


def _layer(groups: list[list[ChargingProfile]], ws: int, we: int, ctx: _Ctx) -> list[_Piece]:
    """Highest-priority-first painting of the profiles of `groups` (each sorted high stack first)."""
    out: list[_Piece] = []
    free = [(ws, we)]
    for group in groups:
        for p in group:
            free = _paint(free, _profile_pieces(p, ws, we, ctx), out)
            if not free:
                out.sort(key=lambda x: x[0])
                return out
    out.sort(key=lambda x: x[0])
    return out


def _entries(installed: InstalledProfiles | Iterable[tuple[int, ChargingProfile]]
             ) -> list[tuple[int, ChargingProfile]]:
    if isinstance(installed, InstalledProfiles):
        return installed.all()
    return list(installed)


def _by_stack(profiles: list[ChargingProfile]) -> list[ChargingProfile]:
    return sorted(profiles, key=lambda p: (-p.stack_level, -p.charging_profile_id))


def _select(entries: list[tuple[int, ChargingProfile]], connector_id: int, tx_active: bool,
            tx_id: int | None) -> tuple[list[list[ChargingProfile]], list[list[ChargingProfile]]]:
    cpmax = [p for c, p in entries if c == 0 and p.purpose == CHARGE_POINT_MAX]
    default0 = [p for c, p in entries if c == 0 and p.purpose == TX_DEFAULT]
    if connector_id == 0:
        return [_by_stack(default0)], [_by_stack(cpmax)]
    tx = [
        p for c, p in entries
        if c == connector_id and p.purpose == TX_PROFILE and tx_active
        and (p.transaction_id is None or tx_id is None or p.transaction_id == tx_id)
    ]
    default_c = [p for c, p in entries if c == connector_id and p.purpose == TX_DEFAULT]
    return [_by_stack(tx), _by_stack(default_c), _by_stack(default0)], [_by_stack(cpmax)]


# A merged segment: (start_us, end_us, limit|None, phases, source_profile|None)
_Seg = tuple[int, int, float | None, int | None, ChargingProfile | None]


def _unit(pc: _Piece) -> str:
    return "A" if pc[4] is None else pc[4].schedule.charging_rate_unit


def _combine(l1: list[_Piece], l2: list[_Piece], ws: int, we: int, round_limits: bool, ctx: _Ctx
             ) -> list[_Seg]:
    """min(l1, l2) over [ws, we); gaps in both stay None. Adjacent equal (limit, phases) merged.

    Both limits are converted to the target unit with the connector's phases (`_Ctx.convert`), and every
    period reports that phase count as its numberPhases, so that it says what it means (W = A x voltage x
    numberPhases, OCPP 1.6 §7.9 ChargingSchedulePeriod): a profile asking for fewer phases is still charged
    on all of them here, and echoing its numberPhases=1 next to a limit converted with three would tell
    the central system a power three times too high (W) or a current three times too low (A). Stated
    always, also on a three-phase connector where absence would read as 3: one rule, no guessing."""
    bounds = {ws, we}
    for pc in l1:
        bounds.add(pc[0])
        bounds.add(pc[1])
    for pc in l2:
        bounds.add(pc[0])
        bounds.add(pc[1])
    pts = sorted(b for b in bounds if ws <= b <= we)
    out: list[_Seg] = []
    i1 = i2 = 0
    n1, n2 = len(l1), len(l2)
    for idx in range(len(pts) - 1):
        a, b = pts[idx], pts[idx + 1]
        while i1 < n1 and l1[i1][1] <= a:
            i1 += 1
        while i2 < n2 and l2[i2][1] <= a:
            i2 += 1
        p1 = l1[i1] if i1 < n1 and l1[i1][0] <= a else None
        p2 = l2[i2] if i2 < n2 and l2[i2][0] <= a else None
        ph = ctx.phases
        v1 = None if p1 is None else ctx.convert(p1[2], _unit(p1))
        v2 = None if p2 is None else ctx.convert(p2[2], _unit(p2))
        if v1 is None and v2 is None:
            lim, src = None, None
        elif v2 is None or (v1 is not None and v1 <= v2):
            lim, src = v1, p1[4]  # type: ignore[index]
        else:
            lim, src = v2, p2[4]  # type: ignore[index]
        if round_limits and lim is not None:
            lim = _floor01(lim)
        if out and out[-1][2] == lim and out[-1][3] == ph and out[-1][1] == a:
            last = out[-1]
            out[-1] = (last[0], b, lim, ph, last[4])
        else:
            out.append((a, b, lim, ph, src))
    return out


def _fill_gaps(pieces: list[_Piece], ws: int, we: int, value: float) -> list[_Piece]:
    out: list[_Piece] = []
    cur = ws
    for pc in pieces:
        if pc[0] > cur:
            out.append((cur, pc[0], value, None, None))  # type: ignore[arg-type]
        out.append(pc)
        cur = pc[1]
    if cur < we:
        out.append((cur, we, value, None, None))  # type: ignore[arg-type]
    return out


def _compute(installed: InstalledProfiles | Iterable[tuple[int, ChargingProfile]], connector_id: int,
             ws: int, we: int, unit: str, *, tx_start: datetime | None, tx_id: int | None, voltage: float,
             phases: int, freeze_relative: bool, round_limits: bool, default: float | None = None
             ) -> tuple[list[_Seg], list[_Piece], bool]:
    if unit not in ("A", "W"):
        raise ValueError(f"unit {unit!r}: allowed A, W")
    if voltage <= 0 or phases not in (1, 2, 3):
        raise ValueError(f"voltage {voltage} must be > 0 and phases {phases} in 1..3")
    entries = _entries(installed)
    tx_active = tx_start is not None or tx_id is not None
    rel_anchor = _us(tx_start) if tx_start is not None else ws
    ctx = _Ctx(unit, voltage, phases, rel_anchor, freeze_relative and tx_start is None)
    groups, caps = _select(entries, connector_id, tx_active, tx_id)
    l1 = _layer(groups, ws, we, ctx)
    l2 = _layer(caps, ws, we, ctx)
    if default is not None:
        l1 = _fill_gaps(l1, ws, we, default)
    any_relevant = any(groups) or any(caps)
    return _combine(l1, l2, ws, we, round_limits, ctx), l1, any_relevant


def composite_schedule(
    installed_profiles: InstalledProfiles | Iterable[tuple[int, ChargingProfile]],
    connector_id: int,
    start: datetime,
    duration_s: int,
    unit: str,
    *,
    tx_start: datetime | None,
    tx_id: int | None,
    voltage: float,
    phases: int,
    default_limit_a: float,
) -> CompositeSchedule:
    """GetCompositeSchedule for `connector_id` over [start, start + duration_s).

    Connector 0 is the charge point total: ChargePointMaxProfile capped TxDefaultProfiles installed on
    connector 0 (§5.7: connectorId 0 reports "the total expected consumption for the grid connection").

    Connector-specific vs connector-0 TxDefaultProfile, §3.13.1: "If TxDefaultProfile is set to
    ConnectorId 0, the TxDefaultProfile is applicable to all Connectors. If ConnectorId is set >0, it
    only applies to that specific connector. In the event a TxDefaultProfile for connector 0 is
    installed, and the Central System sends a new profile with ConnectorId >0, the TxDefaultProfile
    SHALL be replaced only for that specific connector." Reading: wherever a TxDefaultProfile of this
    connector is in effect it replaces the connector-0 ones whatever their stack levels; where none of
    this connector's is in effect (not yet valid, duration over) the connector-0 profiles still apply,
    since they remain "applicable to all Connectors" — the safer reading, it never leaves a gap
    without the station's default policy.

    Where no TxProfile/TxDefaultProfile is in effect, `default_limit_a` (the connector's own maximum;
    for connector 0 the station's; converted to W if asked) takes their place, still capped by
    ChargePointMaxProfile: the schedule always covers the whole window. Limits are rounded down to
    0.1 (§7.13 one decimal). The minChargingRate reported is that of the Tx/TxDefault profile in
    effect at `start`.
    A window of duration 0 returns the single period in effect at `start`.
    """
    ws = _us(start)
    we = ws + max(duration_s, 1) * _S
    segs, l1, _ = _compute(installed_profiles, connector_id, ws, we, unit, tx_start=tx_start, tx_id=tx_id,
                           voltage=voltage, phases=phases, freeze_relative=False, round_limits=True,
                           default=default_limit_a)
    periods: list[CompositePeriod] = []
    for a, _b, lim, ph, _src in segs:
        assert lim is not None  # the default fills every gap
        value = lim
        sp = (a - ws) // _S
        if periods and periods[-1].start_period == sp:
            periods.pop()  # two changes inside one second: the later one holds from this second on
        if periods and periods[-1].limit == value and periods[-1].number_phases == ph:
            continue
        periods.append(CompositePeriod(sp, value, ph))
    if duration_s <= 0:
        periods = periods[:1]
    mcr = None
    prof = l1[0][4] if l1 and l1[0][0] == ws else None
    if prof is not None:
        raw = prof.schedule.min_charging_rate
        if raw is not None:
            ctx = _Ctx(unit, voltage, phases, None, False)
            mcr = _floor01(ctx.convert(raw, prof.schedule.charging_rate_unit))
    return CompositeSchedule(start=start, duration=max(duration_s, 0), unit=unit, periods=tuple(periods),
                             min_charging_rate=mcr)


def limit_at(
    installed_profiles: InstalledProfiles | Iterable[tuple[int, ChargingProfile]],
    connector_id: int,
    now: datetime,
    *,
    tx_start: datetime | None,
    tx_id: int | None,
    voltage: float,
    phases: int,
) -> Limit:
    """The current limit (amps per phase) of `connector_id` at `now`, and which profile sets it.

    Not rounded (the pilot takes any value); source "none" when no profile limits the connector.
    """
    ws = _us(now)
    segs, _, _ = _compute(installed_profiles, connector_id, ws, ws + 1, "A", tx_start=tx_start, tx_id=tx_id,
                          voltage=voltage, phases=phases, freeze_relative=True, round_limits=False)
    _a, _b, lim, _ph, src = segs[0]
    if lim is None or src is None:
        return Limit(None, "none")
    return Limit(lim, src.source)


def next_change(
    installed_profiles: InstalledProfiles | Iterable[tuple[int, ChargingProfile]],
    connector_id: int,
    now: datetime,
    *,
    tx_start: datetime | None,
    tx_id: int | None,
    voltage: float,
    phases: int,
    horizon_s: int = 8 * 86_400,
) -> datetime | None:
    """The first instant after `now` at which `limit_at` gives a different amps value (for a timer).

    None when no profile concerns this connector. If nothing changes within `horizon_s` (default
    8 days, longer than a Weekly recurrence) but profiles exist, returns now + horizon_s: a cheap
    re-check, since a profile may become valid later than that.
    """
    ws = _us(now)
    segs, _, relevant = _compute(installed_profiles, connector_id, ws, ws + horizon_s * _S, "A",
                                 tx_start=tx_start, tx_id=tx_id, voltage=voltage, phases=phases,
                                 freeze_relative=True, round_limits=False)
    if not relevant:
        return None
    first = segs[0][2]
    for a, _b, lim, _ph, _src in segs[1:]:
        if lim != first:
            return _dt(a)
    return now + timedelta(seconds=horizon_s)

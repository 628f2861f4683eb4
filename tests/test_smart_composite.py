"""Composite schedule (OCPP 1.6 §3.13.2-3.13.3, §5.7): worked examples, edge cases, and properties
checked against an independent point-by-point evaluation of the stacking rules."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from chargepoint.smart.composite import Limit, composite_schedule, limit_at, next_change
from chargepoint.smart.profiles import (
    CHARGE_POINT_MAX,
    TX_DEFAULT,
    TX_PROFILE,
    ChargingProfile,
    ChargingSchedule,
    ChargingSchedulePeriod,
    InstalledProfiles,
    ProfileLimits,
    profile_from_ocpp,
)

MON = datetime(2024, 3, 4, 0, 0, tzinfo=UTC)  # a Monday
H = 3600
DAY = 86400
LIMITS = ProfileLimits(max_stack_level=20, max_periods=64, max_profiles_installed=100)
V, PH = 230.0, 3


def prof(pid: int, stack: int = 0, purpose: str = TX_DEFAULT, *, kind: str = "Absolute",
         periods: list[tuple[int, float]] | None = None, unit: str = "A", start: datetime | None = MON,
         duration: int | None = None, rk: str | None = None, vf: datetime | None = None,
         vt: datetime | None = None, tx: int | None = None, phases: int | None = None,
         mcr: float | None = None) -> ChargingProfile:
    periods = periods if periods is not None else [(0, 16.0)]
    return ChargingProfile(
        charging_profile_id=pid, stack_level=stack, purpose=purpose, kind=kind, recurrency_kind=rk,
        valid_from=vf, valid_to=vt, transaction_id=tx,
        schedule=ChargingSchedule(unit, tuple(ChargingSchedulePeriod(s, lim, phases) for s, lim in periods),
                                  duration, None if kind == "Relative" else start, mcr),
    )


def installed(*items: tuple[int, ChargingProfile]) -> InstalledProfiles:
    ip = InstalledProfiles()
    for c, p in items:
        ip.install(c, p, LIMITS)
    return ip


def comp(ip, connector: int, start: datetime, duration: int, unit: str = "A", *, tx_start=None, tx_id=None,
         default: float = 32.0) -> list[tuple[int, float]]:
    cs = composite_schedule(ip, connector, start, duration, unit, tx_start=tx_start, tx_id=tx_id, voltage=V,
                            phases=PH, default_limit_a=default)
    assert cs.periods[0].start_period == 0
    assert all(a.start_period < b.start_period for a, b in zip(cs.periods, cs.periods[1:], strict=False))
    return [(p.start_period, p.limit) for p in cs.periods]


# ------------------------------------------------------------------ worked examples

def test_stack_level_1_over_stack_level_0() -> None:
    """§3.13.2 stacking: a TxDefaultProfile at stack level 0 all day, a stack level 1 one limiting
    18:00-22:00 (validFrom/validTo); outside its validity level 0 shows through."""
    ip = installed(
        (1, prof(1, 0, periods=[(0, 32)])),
        (1, prof(2, 1, periods=[(0, 10)], vf=MON + timedelta(hours=18), vt=MON + timedelta(hours=22))),
    )
    assert comp(ip, 1, MON, DAY) == [(0, 32), (18 * H, 10), (22 * H, 32)]
    # the same with a duration instead of validTo
    ip2 = installed(
        (1, prof(1, 0, periods=[(0, 32)])),
        (1, prof(2, 1, periods=[(0, 10)], start=MON + timedelta(hours=18), duration=4 * H)),
    )
    assert comp(ip2, 1, MON, DAY) == [(0, 32), (18 * H, 10), (22 * H, 32)]
    # a lower stack level never wins while a higher one is in effect, whatever its limit
    ip3 = installed((1, prof(1, 0, periods=[(0, 6)])), (1, prof(2, 1, periods=[(0, 20)])))
    assert comp(ip3, 1, MON, DAY) == [(0, 20)]


def weekly_profile() -> ChargingProfile:
    """§3.13.2's example: full current on weekdays 23:00-06:00 and all weekend, reduced otherwise."""
    periods: list[tuple[int, float]] = []
    for day in range(5):
        base = day * DAY
        periods += [(base, 32), (base + 6 * H, 10), (base + 23 * H, 32)]
    # merge the 23:00 -> next day's 00:00 full periods: 00:00 of the next day is also 32, keep as is
    return prof(1, 0, kind="Recurring", rk="Weekly", periods=periods)


def test_recurring_weekly_with_holiday_exception() -> None:
    holiday = MON + timedelta(days=2)  # Wednesday
    ip = installed(
        (1, weekly_profile()),
        (1, prof(2, 1, periods=[(0, 32)], vf=holiday, vt=holiday + timedelta(days=1))),
    )
    # Tuesday: normal weekday
    assert comp(ip, 1, MON + timedelta(days=1), DAY) == [(0, 32), (6 * H, 10), (23 * H, 32)]
    # Wednesday: the holiday exception at stack level 1 rules
    assert comp(ip, 1, holiday, DAY) == [(0, 32)]
    # Tuesday 12:00 .. Thursday 12:00
    assert comp(ip, 1, MON + timedelta(days=1, hours=12), 2 * DAY) == [
        (0, 10), (11 * H, 32), (36 * H + 6 * H, 10)]
    # weekend full, and the recurrence repeats the next Monday and a year later
    assert comp(ip, 1, MON + timedelta(days=5), 2 * DAY) == [(0, 32)]
    assert comp(ip, 1, MON + timedelta(days=7), DAY) == [(0, 32), (6 * H, 10), (23 * H, 32)]
    assert comp(ip, 1, MON + timedelta(weeks=52), DAY) == [(0, 32), (6 * H, 10), (23 * H, 32)]
    # the holiday profile expired: the next Wednesday is a weekday again
    assert comp(ip, 1, holiday + timedelta(days=7), DAY) == [(0, 32), (6 * H, 10), (23 * H, 32)]


def test_relative_tx_profile_starts_with_transaction() -> None:
    tx_start = MON + timedelta(hours=10)
    ip = installed(
        (1, prof(1, 0, periods=[(0, 16)])),
        (1, prof(2, 0, TX_PROFILE, kind="Relative", periods=[(0, 6), (H, 20)], duration=2 * H, tx=77)),
    )
    at = MON + timedelta(hours=10, minutes=30)
    assert comp(ip, 1, at, 4 * H, tx_start=tx_start, tx_id=77) == [(0, 6), (1800, 20), (5400, 16)]
    # another transaction (id mismatch) does not get this TxProfile
    assert comp(ip, 1, at, 4 * H, tx_start=tx_start, tx_id=78) == [(0, 16)]
    # no transaction: TxProfiles do not apply
    assert comp(ip, 1, at, 4 * H) == [(0, 16)]
    assert limit_at(ip, 1, at, tx_start=tx_start, tx_id=77, voltage=V, phases=PH) == Limit(6.0, "TxProfile#2")
    assert limit_at(ip, 1, at + timedelta(hours=1), tx_start=tx_start, tx_id=77, voltage=V,
                    phases=PH) == Limit(20.0, "TxProfile#2")
    assert limit_at(ip, 1, at + timedelta(hours=2), tx_start=tx_start, tx_id=77, voltage=V,
                    phases=PH) == Limit(16.0, "TxDefaultProfile#1")
    assert next_change(ip, 1, at, tx_start=tx_start, tx_id=77, voltage=V, phases=PH) == tx_start + timedelta(hours=1)


def test_charge_point_max_caps_and_connector_0_is_the_total() -> None:
    ip = installed(
        (0, prof(1, 0, CHARGE_POINT_MAX, periods=[(0, 40), (17 * H, 20), (21 * H, 40)])),
        (1, prof(2, 0, periods=[(0, 32)])),
    )
    assert comp(ip, 1, MON, DAY) == [(0, 32), (17 * H, 20), (21 * H, 32)]
    assert comp(ip, 2, MON, DAY, default=25) == [(0, 25), (17 * H, 20), (21 * H, 25)]
    assert comp(ip, 0, MON, DAY, default=63) == [(0, 40), (17 * H, 20), (21 * H, 40)]  # fuse 63 A
    assert limit_at(ip, 1, MON + timedelta(hours=18), tx_start=None, tx_id=None, voltage=V, phases=PH) == Limit(
        20.0, "ChargePointMaxProfile#1")
    assert limit_at(ip, 1, MON + timedelta(hours=16), tx_start=None, tx_id=None, voltage=V, phases=PH) == Limit(
        32.0, "TxDefaultProfile#2")


def test_spec_example_daily_6kw_window_starting_mid_period() -> None:
    """§3.13.7: 11 kW, 6 kW 08:00-20:00, recurring daily since 2013; a window starting 07:30."""
    ip = installed((0, profile_from_ocpp({
        "chargingProfileId": 100, "stackLevel": 0, "chargingProfilePurpose": "TxDefaultProfile",
        "chargingProfileKind": "Recurring", "recurrencyKind": "Daily",
        "chargingSchedule": {"duration": 86400, "startSchedule": "2013-01-01T00:00Z", "chargingRateUnit": "W",
                             "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 11000, "numberPhases": 3},
                                                        {"startPeriod": 28800, "limit": 6000, "numberPhases": 3},
                                                        {"startPeriod": 72000, "limit": 11000, "numberPhases": 3}]},
    })))
    start = MON + timedelta(hours=7, minutes=30)
    assert comp(ip, 1, start, DAY, "W") == [(0, 11000), (1800, 6000), (45000, 11000)]
    # in amps per phase: 11000 / (230 * 3) = 15.94 -> 15.9 (rounded down), 6000 / 690 = 8.69 -> 8.6
    assert comp(ip, 1, start, DAY, "A") == [(0, 15.9), (1800, 8.6), (45000, 15.9)]
    cs = composite_schedule(ip, 2, start, 3600, "W", tx_start=None, tx_id=None, voltage=V, phases=PH,
                            default_limit_a=32)
    assert cs.conf_payload(2) == {
        "status": "Accepted", "connectorId": 2, "scheduleStart": "2024-03-04T07:30:00Z",
        "chargingSchedule": {
            "duration": 3600, "startSchedule": "2024-03-04T07:30:00Z", "chargingRateUnit": "W",
            "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 11000, "numberPhases": 3},
                                       {"startPeriod": 1800, "limit": 6000, "numberPhases": 3}]},
    }


# ------------------------------------------------------------------ edge cases

def test_no_profiles_gives_the_default_in_both_units() -> None:
    ip = InstalledProfiles()
    assert comp(ip, 1, MON, DAY, default=32) == [(0, 32)]
    assert comp(ip, 1, MON, DAY, "W", default=16) == [(0, 16 * 230 * 3)]
    assert limit_at(ip, 1, MON, tx_start=None, tx_id=None, voltage=V, phases=PH) == Limit(None, "none")
    assert next_change(ip, 1, MON, tx_start=None, tx_id=None, voltage=V, phases=PH) is None


def test_duration_zero_profile_and_zero_window() -> None:
    ip = installed((1, prof(1, 0, periods=[(0, 16)])), (1, prof(2, 5, periods=[(0, 6)], duration=0)))
    assert comp(ip, 1, MON, DAY) == [(0, 16)]
    cs = composite_schedule(ip, 1, MON + timedelta(hours=3), 0, "A", tx_start=None, tx_id=None, voltage=V,
                            phases=PH, default_limit_a=32)
    assert cs.duration == 0 and [(p.start_period, p.limit) for p in cs.periods] == [(0, 16)]


def test_profile_starting_inside_window_and_future_valid_from() -> None:
    ip = installed(
        (1, prof(1, 0, periods=[(0, 16)])),
        (1, prof(2, 3, periods=[(0, 8), (600, 12)], start=MON + timedelta(hours=5, seconds=17))),
    )
    assert comp(ip, 1, MON + timedelta(hours=4), 2 * H) == [(0, 16), (H + 17, 8), (H + 617, 12)]
    # §3.13.2 note: a replacement with validFrom in the future reverts to default behaviour till then
    ip2 = installed((1, prof(1, 0, periods=[(0, 16)])),
                    (1, prof(2, 3, periods=[(0, 8)], vf=MON + timedelta(hours=2))))
    assert comp(ip2, 1, MON, 4 * H) == [(0, 16), (2 * H, 8)]


def test_merge_adjacent_equal_periods() -> None:
    ip = installed(
        (1, prof(1, 0, periods=[(0, 10), (H, 10), (2 * H, 12)])),
        (1, prof(2, 1, periods=[(0, 12)], start=MON + timedelta(hours=2), duration=H)),
    )
    assert comp(ip, 1, MON, 4 * H) == [(0, 10), (2 * H, 12)]


def test_connector_specific_tx_default_replaces_connector_0_only_there() -> None:
    ip = installed(
        (0, prof(1, 5, periods=[(0, 20)])),
        (1, prof(2, 0, periods=[(0, 10)], vt=MON + timedelta(hours=6))),
    )
    assert comp(ip, 1, MON, 12 * H) == [(0, 10), (6 * H, 20)]  # falls back after its validTo
    assert comp(ip, 2, MON, 12 * H) == [(0, 20)]
    assert comp(ip, 0, MON, 12 * H) == [(0, 20)]


def test_watts_and_amps_with_phases() -> None:
    ip = installed(
        (0, prof(1, 0, CHARGE_POINT_MAX, unit="W", periods=[(0, 11040)])),  # 16 A x 230 V x 3
        (1, prof(2, 0, periods=[(0, 20), (H, 10)])),
        (2, prof(3, 0, periods=[(0, 32)], phases=1)),  # numberPhases=1 on a 3-phase connector
    )
    assert comp(ip, 1, MON, 2 * H) == [(0, 16), (H, 10)]
    assert comp(ip, 1, MON, 2 * H, "W") == [(0, 11040), (H, 6900)]
    # This charger cannot switch to one phase: the connector still delivers three, so 32 A is 22080 W and
    # the ChargePointMax 11040 W (16 A on three phases) is what limits.
    assert comp(ip, 2, MON, 2 * H, "W") == [(0, 11040)]
    cs = composite_schedule(ip, 2, MON, H, "A", tx_start=None, tx_id=None, voltage=V, phases=PH,
                            default_limit_a=32)
    assert [(p.start_period, p.limit) for p in cs.periods] == [(0, 16)]


def test_watts_with_fewer_phases_never_exceed_the_power_limit() -> None:
    """4600 W with numberPhases=1 on a three-phase connector: 6.6 A per phase (4600 W in all), not 20 A."""
    ip = installed((1, prof(1, 0, unit="W", periods=[(0, 4600)], phases=1)))
    [(start, amps)] = comp(ip, 1, MON, H)
    assert start == 0 and amps * V * PH <= 4600 + 1


def _agree(ip: InstalledProfiles, connector: int, phases: int, duration: int = 4 * H) -> list[tuple[float, int]]:
    """The composite in W and in A over the same window: each W period's limit must equal its A twin x V x
    numberPhases (§7.9), with both labelled alike. Returns (watts, numberPhases) per W period."""
    out = []
    kw = dict(tx_start=None, tx_id=None, voltage=V, phases=phases, default_limit_a=32)
    watts = composite_schedule(ip, connector, MON, duration, "W", **kw).periods
    amps = composite_schedule(ip, connector, MON, duration, "A", **kw).periods
    for w in watts:
        a = [x for x in amps if x.start_period <= w.start_period][-1]
        assert w.number_phases == a.number_phases and w.number_phases is not None, (w, a)
        # A is rounded down to 0.1 A: W / (V x numberPhases) lies in [A, A + 0.1)
        assert a.limit <= w.limit / (V * w.number_phases) < a.limit + 0.1 + 1e-9, (w, a)
        out.append((w.limit, w.number_phases))
    return out


def test_watts_from_amps_are_labelled_with_the_phases_they_were_computed_with() -> None:
    """16 A with numberPhases=1 on a three-phase connector that cannot switch phases is 11040 W (the car is
    charged on all three): the period says numberPhases 3, not the 1 that would make it 3680 W."""
    ip = installed((1, prof(1, 0, periods=[(0, 16)], phases=1)))
    assert _agree(ip, 1, PH) == [(16 * 230 * 3, 3)]


def test_amps_from_watts_are_labelled_with_the_phases_they_were_computed_with() -> None:
    """A W TxDefaultProfile with numberPhases=1, reported in A: 10/9/6/3 A per phase on three phases."""
    ip = installed((0, prof(1, 0, unit="W", periods=[(0, 6900), (H, 6210), (2 * H, 4140), (3 * H, 2070)],
                            phases=1)))
    cs = composite_schedule(ip, 1, MON, 4 * H, "A", tx_start=None, tx_id=None, voltage=V, phases=PH,
                            default_limit_a=32)
    assert [(p.limit, p.number_phases) for p in cs.periods] == [(10, 3), (9, 3), (6, 3), (3, 3)]
    assert [w for w, _ in _agree(ip, 1, PH)] == [6900, 6210, 4140, 2070]


def test_single_phase_connector_reports_one_phase() -> None:
    """On a one-phase connector 16 A is 3680 W, and the period must say 1 (absent would read as 3)."""
    ip = installed((1, prof(1, 0, periods=[(0, 16)])))
    assert _agree(ip, 1, 1) == [(16 * 230, 1)]
    assert _agree(InstalledProfiles(), 1, 1) == [(32 * 230, 1)]  # the default limit too


def test_min_charging_rate_reported() -> None:
    ip = installed((1, prof(1, 0, periods=[(0, 16)], mcr=6.5)))
    cs = composite_schedule(ip, 1, MON, H, "A", tx_start=None, tx_id=None, voltage=V, phases=PH,
                            default_limit_a=32)
    assert cs.min_charging_rate == 6.5 and cs.to_ocpp()["minChargingRate"] == 6.5


def test_two_changes_within_one_second() -> None:
    ip = installed(
        (1, prof(1, 0, periods=[(0, 16)])),
        (1, prof(2, 1, periods=[(0, 8)], start=MON + timedelta(seconds=10, microseconds=200_000),
                 vt=MON + timedelta(seconds=10, microseconds=700_000))),
    )
    assert comp(ip, 1, MON, 60) == [(0, 16)]
    assert limit_at(ip, 1, MON + timedelta(seconds=10, microseconds=300_000), tx_start=None, tx_id=None,
                    voltage=V, phases=PH).amps == 8


def test_next_change_is_exact_and_relative_without_tx_is_held() -> None:
    ip = installed((1, weekly_profile()))
    t = MON + timedelta(hours=3, seconds=1, microseconds=5)
    nc = next_change(ip, 1, t, tx_start=None, tx_id=None, voltage=V, phases=PH)
    assert nc == MON + timedelta(hours=6)
    assert limit_at(ip, 1, nc, tx_start=None, tx_id=None, voltage=V, phases=PH).amps == 10
    assert limit_at(ip, 1, nc - timedelta(microseconds=1), tx_start=None, tx_id=None, voltage=V,
                    phases=PH).amps == 32
    # Friday 23:00 -> full until Monday 06:00
    assert next_change(ip, 1, MON + timedelta(days=4, hours=23), tx_start=None, tx_id=None, voltage=V,
                       phases=PH) == MON + timedelta(days=7, hours=6)
    rel = installed((1, prof(1, 0, kind="Relative", periods=[(0, 6), (H, 20)])))
    assert limit_at(rel, 1, MON, tx_start=None, tx_id=None, voltage=V, phases=PH).amps == 6
    nc2 = next_change(rel, 1, MON, tx_start=None, tx_id=None, voltage=V, phases=PH)
    assert nc2 == MON + timedelta(days=8)  # nothing will change: only the horizon re-check
    assert next_change(rel, 1, MON, tx_start=MON - timedelta(minutes=10), tx_id=1, voltage=V,
                       phases=PH) == MON + timedelta(minutes=50)


# ------------------------------------------------------------------ properties against an oracle

REC = {"Daily": DAY, "Weekly": 7 * DAY}


def _value(p: ChargingProfile, t: datetime, rel_anchor: datetime, freeze: bool) -> tuple[float, str] | None:
    """Independent evaluation of one profile at one instant, straight from the rules."""
    if p.valid_from is not None and t < p.valid_from:
        return None
    if p.valid_to is not None and t >= p.valid_to:
        return None
    s = p.schedule
    if s.duration == 0:
        return None
    if p.kind == "Recurring":
        per = REC[p.recurrency_kind]
        k = math.floor((t - s.start_schedule).total_seconds() / per)
        anchor = s.start_schedule + timedelta(seconds=k * per)
        length = min(s.duration, per) if s.duration is not None else per
    else:
        if p.kind == "Relative" and freeze:
            return s.periods[0].limit, s.charging_rate_unit
        anchor = rel_anchor if p.kind == "Relative" else s.start_schedule
        length = s.duration
    off = (t - anchor).total_seconds()
    if off < 0 or (length is not None and off >= length):
        return None
    lim = [x.limit for x in s.periods if x.start_period <= off][-1]
    return lim, s.charging_rate_unit


def _amps(v: tuple[float, str] | None) -> float | None:
    if v is None:
        return None
    return v[0] if v[1] == "A" else v[0] / (V * PH)


def oracle(entries, connector: int, t: datetime, *, tx_start, tx_id, window_start, freeze=False,
           default: float | None = None) -> float | None:
    anchor = tx_start or window_start
    freeze = freeze and tx_start is None

    def prevailing(ps):
        for p in sorted(ps, key=lambda p: -p.stack_level):
            v = _amps(_value(p, t, anchor, freeze))
            if v is not None:
                return v
        return None

    cp = prevailing([p for c, p in entries if c == 0 and p.purpose == CHARGE_POINT_MAX])
    d0 = prevailing([p for c, p in entries if c == 0 and p.purpose == TX_DEFAULT])
    if connector == 0:
        main = d0
    else:
        tx_active = tx_start is not None or tx_id is not None
        tx = prevailing([p for c, p in entries if c == connector and p.purpose == TX_PROFILE and tx_active
                         and (p.transaction_id is None or tx_id is None or p.transaction_id == tx_id)])
        dc = prevailing([p for c, p in entries if c == connector and p.purpose == TX_DEFAULT])
        main = tx if tx is not None else dc if dc is not None else d0
    if main is None:
        main = default
    vals = [v for v in (main, cp) if v is not None]
    return min(vals) if vals else None


def floor01(x: float) -> float:
    return math.floor(x * 10 + 1e-9) / 10


@st.composite
def profile_sets(draw):
    n = draw(st.integers(1, 7))
    items = []
    for i in range(n):
        purpose = draw(st.sampled_from([CHARGE_POINT_MAX, TX_DEFAULT, TX_DEFAULT, TX_PROFILE]))
        connector = 0 if purpose == CHARGE_POINT_MAX else (
            draw(st.integers(1, 2)) if purpose == TX_PROFILE else draw(st.integers(0, 2)))
        kind = draw(st.sampled_from(["Absolute", "Relative", "Recurring"]))
        starts = sorted(draw(st.sets(st.integers(1, 60), max_size=4)))
        periods = [(0, draw(st.integers(0, 64)))] + [(s * 900, draw(st.integers(0, 64))) for s in starts]
        unit = draw(st.sampled_from(["A", "A", "W"]))
        if unit == "W":
            periods = [(s, lim * 230) for s, lim in periods]
        start = MON + timedelta(minutes=15 * draw(st.integers(-200, 200)))
        duration = draw(st.one_of(st.none(), st.integers(0, 48).map(lambda x: x * 1800)))
        vf = draw(st.one_of(st.none(), st.integers(-100, 200).map(lambda x: MON + timedelta(minutes=15 * x))))
        vt_q = draw(st.one_of(st.none(), st.integers(1, 200)))
        vt = None if vt_q is None else (vf or MON) + timedelta(minutes=15 * vt_q)
        items.append((connector, prof(
            i + 1, draw(st.integers(0, 3)), purpose, kind=kind, periods=periods, unit=unit, start=start,
            duration=duration, rk=draw(st.sampled_from(["Daily", "Weekly"])) if kind == "Recurring" else None,
            vf=vf, vt=vt, tx=draw(st.sampled_from([None, 5, 6])) if purpose == TX_PROFILE else None)))
    return items


def _install_all(items) -> InstalledProfiles:
    ip = InstalledProfiles()
    for c, p in items:
        ip.install(c, p, LIMITS)  # later ones may replace earlier ones (same connector/purpose/stack)
    return ip


def _check_against_oracle(ip, connector, start, duration, tx_start, tx_id) -> None:
    entries = ip.all()
    cs = composite_schedule(ip, connector, start, duration, "A", tx_start=tx_start, tx_id=tx_id, voltage=V,
                            phases=PH, default_limit_a=40)
    starts = [p.start_period for p in cs.periods]
    probes = set()
    for i, s in enumerate(starts):
        end = starts[i + 1] if i + 1 < len(starts) else duration
        probes.update({s, (s + end) // 2, end - 1})
    for _c, p in entries:  # every profile's own boundaries inside the window
        for x in (p.valid_from, p.valid_to, p.schedule.start_schedule):
            if x is not None:
                off = int((x - start).total_seconds())
                probes.update({off - 1, off})
    for off in sorted(x for x in probes if 0 <= x < duration):
        t = start + timedelta(seconds=off)
        period = [p for p in cs.periods if p.start_period <= off][-1]
        want = oracle(entries, connector, t, tx_start=tx_start, tx_id=tx_id, window_start=start, default=40)
        assert period.limit == floor01(want), (off, period, want)
        # "never exceeds any applicable profile's limit": the prevailing ones, each purpose
        got = limit_at(ip, connector, t, tx_start=tx_start or start, tx_id=tx_id, voltage=V, phases=PH)
        want_exact = oracle(entries, connector, t, tx_start=tx_start or start, tx_id=tx_id, window_start=start)
        assert got.amps == (None if want_exact is None else got.amps)
        if want_exact is not None:
            assert math.isclose(got.amps, want_exact)


@settings(max_examples=120, deadline=None)
@given(items=profile_sets(), connector=st.integers(0, 2),
       start_q=st.integers(-100, 300), dur_q=st.integers(1, 200), with_tx=st.booleans(), tx_id=st.sampled_from([5, 6]))
def test_composite_equals_pointwise_rules(items, connector, start_q, dur_q, with_tx, tx_id) -> None:
    ip = _install_all(items)
    start = MON + timedelta(minutes=15 * start_q)
    tx_start = start - timedelta(minutes=20) if with_tx else None
    _check_against_oracle(ip, connector, start, dur_q * 900, tx_start, tx_id if with_tx else None)


@settings(max_examples=80, deadline=None)
@given(items=profile_sets(), victim=st.integers(0, 6), start_q=st.integers(-50, 200))
def test_removing_a_profile_only_affects_its_own_scope(items, victim, start_q) -> None:
    ip = _install_all(items)
    entries = ip.all()
    start = MON + timedelta(minutes=15 * start_q)
    before = {c: comp(ip, c, start, DAY, default=40) for c in (0, 1, 2)}
    c_removed, p_removed = entries[victim % len(entries)]
    assert ip.clear(id=p_removed.charging_profile_id)
    for c in (0, 1, 2):
        if c_removed != 0 and c != c_removed:
            assert comp(ip, c, start, DAY, default=40) == before[c]
        # and everywhere the result still obeys every remaining prevailing profile
        _check_against_oracle(ip, c, start, DAY, None, None)


@settings(max_examples=60, deadline=None)
@given(items=profile_sets(), q=st.integers(-50, 200), with_tx=st.booleans())
def test_next_change_agrees_with_limit_at(items, q, with_tx) -> None:
    ip = _install_all(items)
    now = MON + timedelta(minutes=15 * q, seconds=7)
    kw = dict(tx_start=now - timedelta(hours=1) if with_tx else None, tx_id=5 if with_tx else None,
              voltage=V, phases=PH)
    here = limit_at(ip, 1, now, **kw).amps
    nc = next_change(ip, 1, now, **kw)
    if nc is None:
        return
    assert nc > now
    # nothing changes strictly before nc (probe the profile boundaries and a grid), and at nc it does
    probes = {now + (nc - now) * f for f in (0.25, 0.5, 0.75, 0.999)}
    for _c, p in ip.all():
        for x in (p.valid_from, p.valid_to, p.schedule.start_schedule):
            if x is not None and now < x < nc:
                probes.add(x)
    for t in probes:
        assert limit_at(ip, 1, t, **kw).amps == here
    if nc < now + timedelta(days=8):
        assert limit_at(ip, 1, nc, **kw).amps != here


@settings(max_examples=60, deadline=None)
@given(items=profile_sets(), connector=st.integers(0, 2), phases=st.sampled_from([1, 3]),
       requested=st.sampled_from([None, 1, 2, 3]))
def test_every_period_limit_agrees_with_its_number_phases(items, connector, phases, requested) -> None:
    """Whatever the profiles' units and numberPhases, W = A x voltage x numberPhases in every period."""
    from dataclasses import replace

    ip = InstalledProfiles()
    for c, p in items:
        periods = tuple(replace(x, number_phases=requested) for x in p.schedule.periods)
        ip.install(c, replace(p, schedule=replace(p.schedule, periods=periods)), LIMITS)
    _agree(ip, connector, phases, DAY)

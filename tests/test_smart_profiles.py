"""Charging profile model: OCPP JSON mapping, SetChargingProfile validation (OCPP 1.6 §3.13, §5.16,
§7.7-7.13), replacement and ClearChargingProfile rules, persistence."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chargepoint.smart.profiles import (
    CHARGE_POINT_MAX,
    TX_DEFAULT,
    TX_PROFILE,
    ChargingProfile,
    ChargingSchedule,
    ChargingSchedulePeriod,
    InstalledProfiles,
    MemoryProfileStore,
    ProfileLimits,
    ProfileRejected,
    profile_from_ocpp,
    profile_to_ocpp,
    validate_profile,
)

T0 = datetime(2024, 3, 4, 0, 0, tzinfo=UTC)
LIMITS = ProfileLimits(max_stack_level=5, allowed_units=frozenset({"A", "W"}), max_periods=4,
                       max_profiles_installed=4)


def prof(pid: int, stack: int = 0, purpose: str = TX_DEFAULT, *, kind: str = "Absolute",
         periods: list[tuple[int, float]] | None = None, unit: str = "A", start: datetime | None = T0,
         duration: int | None = None, rk: str | None = None, vf: datetime | None = None,
         vt: datetime | None = None, tx: int | None = None, phases: int | None = None) -> ChargingProfile:
    periods = periods if periods is not None else [(0, 16.0)]
    return ChargingProfile(
        charging_profile_id=pid, stack_level=stack, purpose=purpose, kind=kind, recurrency_kind=rk,
        valid_from=vf, valid_to=vt, transaction_id=tx,
        schedule=ChargingSchedule(unit, tuple(ChargingSchedulePeriod(s, lim, phases) for s, lim in periods),
                                  duration, None if kind == "Relative" else start),
    )


def check(p: ChargingProfile, connector: int = 1, tx: int | None = None, n: int = 2) -> None:
    validate_profile(p, connector, limits=LIMITS, active_transaction_id=tx, number_of_connectors=n)


# ------------------------------------------------------------------ JSON mapping

SPEC_EXAMPLE = {  # OCPP 1.6 §3.13.7 example data structure
    "chargingProfileId": 100,
    "stackLevel": 0,
    "chargingProfilePurpose": "TxDefaultProfile",
    "chargingProfileKind": "Recurring",
    "recurrencyKind": "Daily",
    "chargingSchedule": {
        "duration": 86400,
        "startSchedule": "2013-01-01T00:00Z",
        "chargingRateUnit": "W",
        "chargingSchedulePeriod": [
            {"startPeriod": 0, "limit": 11000, "numberPhases": 3},
            {"startPeriod": 28800, "limit": 6000, "numberPhases": 3},
            {"startPeriod": 72000, "limit": 11000, "numberPhases": 3},
        ],
    },
}


def test_parse_spec_example() -> None:
    p = profile_from_ocpp(SPEC_EXAMPLE)
    assert p.charging_profile_id == 100 and p.purpose == TX_DEFAULT and p.kind == "Recurring"
    assert p.recurrency_kind == "Daily"
    assert p.schedule.start_schedule == datetime(2013, 1, 1, tzinfo=UTC)
    assert p.schedule.duration == 86400 and p.schedule.charging_rate_unit == "W"
    assert [(x.start_period, x.limit, x.number_phases) for x in p.schedule.periods] == [
        (0, 11000.0, 3), (28800, 6000.0, 3), (72000, 11000.0, 3)]
    check(p, connector=0)
    out = profile_to_ocpp(p)
    assert out["chargingSchedule"]["startSchedule"] == "2013-01-01T00:00:00Z"
    assert profile_from_ocpp(out) == p


def test_parse_snake_case_from_ocpp_library() -> None:
    snake = {
        "charging_profile_id": 7, "stack_level": 1, "charging_profile_purpose": "TxProfile",
        "charging_profile_kind": "Relative", "transaction_id": 42,
        "charging_schedule": {"charging_rate_unit": "A", "min_charging_rate": 6.5,
                              "charging_schedule_period": [{"start_period": 0, "limit": 10.5}]},
    }
    p = profile_from_ocpp(snake)
    assert p.transaction_id == 42 and p.kind == "Relative" and p.schedule.min_charging_rate == 6.5
    assert p.schedule.periods == (ChargingSchedulePeriod(0, 10.5, None),)


def test_absolute_without_start_takes_reception_time() -> None:
    d = {"chargingProfileId": 1, "stackLevel": 0, "chargingProfilePurpose": "ChargePointMaxProfile",
         "chargingProfileKind": "Absolute",
         "chargingSchedule": {"chargingRateUnit": "A", "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 20}]}}
    assert profile_from_ocpp(d).schedule.start_schedule is None
    assert profile_from_ocpp(d, received_at=T0).schedule.start_schedule == T0


def test_offsets_and_fractions_are_accepted() -> None:
    d = dict(SPEC_EXAMPLE, validFrom="2024-03-04T02:00:00.250+02:00")
    p = profile_from_ocpp(d)
    assert p.valid_from == datetime(2024, 3, 4, 0, 0, 0, 250000, tzinfo=UTC)
    assert profile_to_ocpp(p)["validFrom"] == "2024-03-04T00:00:00.250Z"


@pytest.mark.parametrize("mutate, field", [
    (lambda d: d.pop("stackLevel"), "stackLevel"),
    (lambda d: d.update(chargingProfilePurpose="Bogus"), "chargingProfilePurpose"),
    (lambda d: d.update(chargingProfileKind="Sometimes"), "chargingProfileKind"),
    (lambda d: d["chargingSchedule"].update(chargingRateUnit="kW"), "chargingRateUnit"),
    (lambda d: d["chargingSchedule"]["chargingSchedulePeriod"][0].update(limit="x"), "limit"),
    (lambda d: d["chargingSchedule"]["chargingSchedulePeriod"][1].update(startPeriod=1.5), "startPeriod"),
    (lambda d: d.update(validTo="tomorrow"), "validTo"),
    (lambda d: d.update(chargingSchedule=[]), "chargingSchedule"),
])
def test_malformed_json_names_the_field(mutate, field) -> None:
    import copy
    d = copy.deepcopy(SPEC_EXAMPLE)
    mutate(d)
    with pytest.raises(ProfileRejected) as e:
        profile_from_ocpp(d)
    assert field in e.value.reason


_dt = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1),
                   timezones=st.just(UTC)).map(lambda d: d.replace(microsecond=d.microsecond // 1000 * 1000))


@given(
    pid=st.integers(0, 2**31 - 1), stack=st.integers(0, 10),
    purpose=st.sampled_from([CHARGE_POINT_MAX, TX_DEFAULT, TX_PROFILE]),
    kind=st.sampled_from(["Absolute", "Relative", "Recurring"]),
    limits=st.lists(st.one_of(st.integers(0, 500), st.floats(0, 500).map(lambda x: round(x, 1))),
                    min_size=1, max_size=5),
    start=st.one_of(st.none(), _dt), vf=st.one_of(st.none(), _dt), duration=st.one_of(st.none(), st.integers(0, 10**6)),
    phases=st.one_of(st.none(), st.integers(1, 3)), mcr=st.one_of(st.none(), st.floats(0, 50).map(lambda x: round(x, 1))),
)
def test_json_round_trip(pid, stack, purpose, kind, limits, start, vf, duration, phases, mcr) -> None:
    p = ChargingProfile(
        charging_profile_id=pid, stack_level=stack, purpose=purpose, kind=kind,
        recurrency_kind="Weekly" if kind == "Recurring" else None, valid_from=vf,
        transaction_id=pid if purpose == TX_PROFILE else None,
        schedule=ChargingSchedule("A", tuple(ChargingSchedulePeriod(i * 60, float(x), phases)
                                             for i, x in enumerate(limits)), duration, start, mcr),
    )
    assert profile_from_ocpp(profile_to_ocpp(p)) == p


# ------------------------------------------------------------------ validation: every Rejected rule

def test_valid_profiles_pass() -> None:
    check(prof(1, purpose=CHARGE_POINT_MAX), connector=0)
    check(prof(2, purpose=TX_DEFAULT), connector=0)
    check(prof(3, purpose=TX_DEFAULT), connector=2)
    check(prof(4, purpose=TX_PROFILE, kind="Relative", tx=9), connector=1, tx=9)
    check(prof(5, purpose=TX_PROFILE), connector=1, tx=9)  # transactionId optional
    check(prof(6, kind="Recurring", rk="Weekly", periods=[(0, 6), (3600, 32), (7200, 0)]))


@pytest.mark.parametrize("p, connector, tx, words", [
    (prof(1, periods=[(0, 10), (600, 8), (300, 6)]), 1, None, "strictly increasing"),
    (prof(1, periods=[(0, 10), (600, 8), (600, 6)]), 1, None, "strictly increasing"),
    (prof(1, periods=[(60, 10)]), 1, None, "first period must start at 0"),
    (prof(1, periods=[(0, 10), (60, -1)]), 1, None, "limit -1"),
    (prof(1, periods=[]), 1, None, "empty"),
    (prof(1, unit="kW"), 1, None, "chargingRateUnit"),
    (prof(1, purpose=TX_PROFILE), 1, None, "no transaction"),
    (prof(1, purpose=TX_PROFILE, tx=5), 1, 6, "does not match"),
    (prof(1, purpose=TX_PROFILE), 0, 6, "connectorId > 0"),
    (prof(1, purpose=CHARGE_POINT_MAX), 1, None, "only on connectorId 0"),
    (prof(1, stack=6), 1, None, "stackLevel 6"),
    (prof(1, stack=-1), 1, None, "stackLevel -1"),
    (prof(1, periods=[(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)]), 1, None, "ChargingScheduleMaxPeriods"),
    (prof(1, kind="Recurring", rk="Daily", start=None), 1, None, "needs startSchedule"),
    (prof(1, kind="Recurring", rk=None), 1, None, "needs recurrencyKind"),
    (prof(1, kind="Absolute", tx=3), 1, 3, "only allowed on a TxProfile"),
    (prof(1), 3, None, "out of range"),
    (prof(1), -1, None, "out of range"),
    (prof(1, vf=T0, vt=T0), 1, None, "validFrom must be before validTo"),
    (prof(1, vf=T0 + timedelta(hours=1), vt=T0), 1, None, "validFrom must be before validTo"),
    (prof(1, phases=4), 1, None, "numberPhases 4"),
    (prof(1, phases=0), 1, None, "numberPhases 0"),
    (prof(1, duration=-5), 1, None, "duration -5"),
])
def test_rejected(p: ChargingProfile, connector: int, tx: int | None, words: str) -> None:
    with pytest.raises(ProfileRejected) as e:
        check(p, connector=connector, tx=tx)
    assert words in e.value.reason


def test_relative_with_start_schedule_rejected() -> None:
    p = prof(1, kind="Relative")
    p2 = ChargingProfile(charging_profile_id=1, stack_level=0, purpose=TX_DEFAULT, kind="Relative",
                         schedule=ChargingSchedule("A", p.schedule.periods, None, T0))
    check(p)
    with pytest.raises(ProfileRejected, match="Relative profile must not have startSchedule"):
        check(p2)


def test_unit_not_in_allowed_units() -> None:
    amps_only = ProfileLimits.from_config(
        charge_profile_max_stack_level=5, charging_schedule_allowed_charging_rate_unit="Current",
        charging_schedule_max_periods=10, max_charging_profiles_installed=10)
    validate_profile(prof(1, unit="A"), 1, limits=amps_only, active_transaction_id=None, number_of_connectors=1)
    with pytest.raises(ProfileRejected, match="ChargingScheduleAllowedChargingRateUnit"):
        validate_profile(prof(1, unit="W"), 1, limits=amps_only, active_transaction_id=None,
                         number_of_connectors=1)
    both = ProfileLimits.from_config(
        charge_profile_max_stack_level=5, charging_schedule_allowed_charging_rate_unit="Current, Power",
        charging_schedule_max_periods=10, max_charging_profiles_installed=10)
    assert both.allowed_units == frozenset({"A", "W"})
    with pytest.raises(ValueError, match="'Amps'"):
        ProfileLimits.from_config(
            charge_profile_max_stack_level=5, charging_schedule_allowed_charging_rate_unit="Amps",
            charging_schedule_max_periods=10, max_charging_profiles_installed=10)


# ------------------------------------------------------------------ installed profiles

def ids(installed: InstalledProfiles) -> list[tuple[int, int]]:
    return [(c, p.charging_profile_id) for c, p in installed.all()]


def test_same_id_replaces_anywhere() -> None:
    ip = InstalledProfiles()
    ip.install(1, prof(10, stack=1), LIMITS)
    replaced = ip.install(2, prof(10, stack=3, periods=[(0, 8)]), LIMITS)
    assert replaced == []  # the profile's own id is not reported as "another" replaced profile
    assert ids(ip) == [(2, 10)]
    assert ip.get(10)[1].stack_level == 3


def test_same_purpose_and_stack_on_same_connector_replaces() -> None:
    ip = InstalledProfiles()
    ip.install(1, prof(10, stack=1), LIMITS)
    ip.install(2, prof(11, stack=1), LIMITS)              # other connector: coexists
    ip.install(1, prof(12, stack=2), LIMITS)              # other stack level: coexists
    ip.install(1, prof(13, stack=1, purpose=TX_PROFILE), LIMITS)  # other purpose: coexists
    assert ids(ip) == [(1, 10), (1, 12), (1, 13), (2, 11)]
    assert ip.install(1, prof(14, stack=1), LIMITS) == [10]
    assert ids(ip) == [(1, 14), (1, 12), (1, 13), (2, 11)]


def test_replacement_by_id_and_slot_at_once() -> None:
    ip = InstalledProfiles()
    ip.install(1, prof(10, stack=1), LIMITS)
    ip.install(1, prof(11, stack=2), LIMITS)
    # id 11 moves to stack level 1: replaces itself AND profile 10 occupying that slot
    assert ip.install(1, prof(11, stack=1), LIMITS) == [10]
    assert ids(ip) == [(1, 11)]


def test_max_profiles_counted_after_replacement_and_rejection_changes_nothing() -> None:
    store = MemoryProfileStore()
    ip = InstalledProfiles(store)
    for i in range(4):
        ip.install(1, prof(20 + i, stack=i), LIMITS)
    before = ids(ip)
    # a replacement is fine at the maximum
    ip.install(1, prof(99, stack=2, periods=[(0, 7)]), LIMITS)
    assert len(ip) == 4 and ip.get(22) is None and ip.get(99) is not None
    before = ids(ip)
    with pytest.raises(ProfileRejected, match="MaxChargingProfilesInstalled"):
        ip.install(2, prof(50, stack=0), LIMITS)
    assert ids(ip) == before
    assert sorted((c, p.charging_profile_id) for c, p in store.load_all()) == sorted(before)


def test_clear_by_id_ignores_other_fields() -> None:
    ip = InstalledProfiles()
    ip.install(1, prof(10, stack=1), LIMITS)
    ip.install(2, prof(11, stack=1), LIMITS)
    assert ip.clear(id=10, connector_id=2, purpose=CHARGE_POINT_MAX, stack_level=4) is True
    assert ids(ip) == [(2, 11)]
    assert ip.clear(id=10) is False  # Unknown


def test_clear_by_criteria() -> None:
    ip = InstalledProfiles()
    ip.install(0, prof(1, stack=0, purpose=CHARGE_POINT_MAX), LIMITS)
    ip.install(0, prof(2, stack=0), LIMITS)
    ip.install(1, prof(3, stack=0), LIMITS)
    ip.install(1, prof(4, stack=1), LIMITS)
    assert ip.clear(connector_id=2) is False
    assert ip.clear(purpose=TX_PROFILE) is False
    assert ids(ip) == [(0, 1), (0, 2), (1, 3), (1, 4)]
    assert ip.clear(purpose=TX_DEFAULT, stack_level=0) is True  # connector absent: any connector
    assert ids(ip) == [(0, 1), (1, 4)]
    assert ip.clear(connector_id=0) is True
    assert ids(ip) == [(1, 4)]
    assert ip.clear(connector_id=1, stack_level=0) is False
    assert ip.clear() is True  # no criteria: everything
    assert ids(ip) == []
    assert ip.clear() is False


def test_remove_tx_profiles_only_on_that_connector() -> None:
    ip = InstalledProfiles()
    ip.install(1, prof(1, purpose=TX_PROFILE), LIMITS)
    ip.install(1, prof(2, stack=1, purpose=TX_PROFILE), LIMITS)
    ip.install(1, prof(3), LIMITS)
    ip.install(2, prof(4, purpose=TX_PROFILE), LIMITS)
    assert sorted(ip.remove_tx_profiles(1)) == [1, 2]
    assert ids(ip) == [(1, 3), (2, 4)]
    assert ip.remove_tx_profiles(1) == []
    assert [p.charging_profile_id for p in ip.for_connector(2)] == [4]


def test_store_persists_and_reloads() -> None:
    store = MemoryProfileStore()
    ip = InstalledProfiles(store)
    ip.install(0, profile_from_ocpp(SPEC_EXAMPLE), LIMITS)
    ip.install(1, prof(5, stack=2, vf=T0, vt=T0 + timedelta(days=1)), LIMITS)
    ip.install(1, prof(6, stack=2), LIMITS)  # replaces 5
    ip.clear(id=100)
    ip.install(2, prof(7, purpose=TX_PROFILE), LIMITS)
    reloaded = InstalledProfiles(store)
    assert reloaded.all() == ip.all()
    assert ids(reloaded) == [(1, 6), (2, 7)]

"""OCPP 1.6 charging profiles: the model, JSON mapping, validation and the set of installed profiles.

Pure: no I/O, no clock. Everything here follows OCPP 1.6 edition 2 §3.13 (Smart Charging),
§5.16 (SetChargingProfile), §5.5 (ClearChargingProfile) and the types in §7.7-7.13.

Decisions where the specification is silent (each is enforced by `validate_profile` or documented
on the function that applies it):

* A Relative profile must NOT carry ``startSchedule`` (§7.13: startSchedule is the "starting point of
  an absolute schedule. If absent the schedule will be relative to start of charging"); a profile that
  says both is contradictory and is Rejected rather than guessed at.
* An Absolute profile without ``startSchedule`` starts when it was received: `profile_from_ocpp`
  fills it in from ``received_at`` (pass the reception time) so the persisted profile is unambiguous.
* ``transactionId`` is only valid on a TxProfile (§7.8); on any other purpose it is Rejected.
* ``recurrencyKind`` on a non-Recurring profile is ignored (kept for the round trip, never used).
* A Recurring profile whose ``duration`` is longer than its recurrence (1 day / 1 week) is cut to
  the recurrence: the next occurrence starts a new schedule.
* A ``limit`` or ``minChargingRate`` (§7.13 decimal, no range given) above `MAX_RATE` (10⁹ A or W) is
  Rejected: far beyond any charger, yet the composite arithmetic (×10 rounding, A↔W with 230 V × 3
  phases) on 1e308 overflows to infinity. CSMSs that send 999,999,999 W for "no limit" stay accepted.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

CHARGE_POINT_MAX = "ChargePointMaxProfile"
TX_DEFAULT = "TxDefaultProfile"
TX_PROFILE = "TxProfile"
PURPOSES = (CHARGE_POINT_MAX, TX_DEFAULT, TX_PROFILE)

ABSOLUTE = "Absolute"
RELATIVE = "Relative"
RECURRING = "Recurring"
KINDS = (ABSOLUTE, RELATIVE, RECURRING)

DAILY = "Daily"
WEEKLY = "Weekly"
RECURRENCY_KINDS = (DAILY, WEEKLY)
RECURRENCY_SECONDS = {DAILY: 86_400, WEEKLY: 7 * 86_400}

UNITS = ("A", "W")
MAX_RATE = 1e9  # A or W; see the module docstring
# ChargingScheduleAllowedChargingRateUnit is a CSL of "Current" / "Power" (§9.4).
_CONFIG_UNIT = {"current": "A", "power": "W"}


class ProfileRejected(Exception):
    """A charging profile or request that must be answered with status Rejected; `reason` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ChargingSchedulePeriod:
    """§7.13 ChargingSchedulePeriod: `start_period` seconds from the start of the schedule."""

    start_period: int
    limit: float
    number_phases: int | None = None


@dataclass(frozen=True, slots=True)
class ChargingSchedule:
    """§7.13 ChargingSchedule. `periods` is stored as a tuple so the profile stays hashable/frozen."""

    charging_rate_unit: str
    periods: tuple[ChargingSchedulePeriod, ...]
    duration: int | None = None
    start_schedule: datetime | None = None
    min_charging_rate: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.periods, tuple):
            object.__setattr__(self, "periods", tuple(self.periods))


@dataclass(frozen=True, slots=True, kw_only=True)
class ChargingProfile:
    """§7.8 ChargingProfile (csChargingProfiles). Keyword-only construction."""

    charging_profile_id: int
    stack_level: int
    purpose: str
    kind: str
    recurrency_kind: str | None = None
    valid_from: datetime | None = None
    valid_to: datetime | None = None
    transaction_id: int | None = None
    schedule: ChargingSchedule = field(default_factory=lambda: ChargingSchedule("A", ()))

    @property
    def source(self) -> str:
        """Short name used in logs and `Limit.source`, e.g. ``TxProfile#12``."""
        return f"{self.purpose}#{self.charging_profile_id}"


@dataclass(frozen=True, slots=True)
class ProfileLimits:
    """The four smart-charging configuration keys of §3.13.5, as the validator needs them."""

    max_stack_level: int
    allowed_units: frozenset[str] = frozenset({"A", "W"})
    max_periods: int = 48
    max_profiles_installed: int = 20

    @classmethod
    def from_config(
        cls, *, charge_profile_max_stack_level: int, charging_schedule_allowed_charging_rate_unit: str,
        charging_schedule_max_periods: int, max_charging_profiles_installed: int,
    ) -> ProfileLimits:
        """Build from the configuration key values; the unit key is the CSL "Current,Power"."""
        units: set[str] = set()
        for item in charging_schedule_allowed_charging_rate_unit.split(","):
            key = item.strip().lower()
            if key not in _CONFIG_UNIT:
                raise ValueError(
                    f"ChargingScheduleAllowedChargingRateUnit: unknown value {item.strip()!r}; "
                    "allowed: Current, Power"
                )
            units.add(_CONFIG_UNIT[key])
        return cls(
            max_stack_level=charge_profile_max_stack_level,
            allowed_units=frozenset(units),
            max_periods=charging_schedule_max_periods,
            max_profiles_installed=max_charging_profiles_installed,
        )


# ---------------------------------------------------------------- JSON mapping

def parse_datetime(value: Any, name: str) -> datetime:
    """ISO 8601 (§3.15: fractions and offsets allowed). A time without offset is taken as UTC (§3.14)."""
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value.strip())
        except ValueError:
            raise ProfileRejected(f"{name}: not an ISO 8601 date-time: {value!r}") from None
    else:
        raise ProfileRejected(f"{name}: expected an ISO 8601 date-time string, got {value!r}")
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt


def format_datetime(dt: datetime) -> str:
    """UTC, ISO 8601 with a Z, no insignificant fraction (§3.15)."""
    dt = dt.astimezone(UTC)
    text = dt.isoformat(timespec="milliseconds" if dt.microsecond else "seconds")
    return text.replace("+00:00", "Z")


def _snake(camel: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in camel)


def _get(d: Mapping[str, Any], key: str, path: str, *, required: bool = False) -> Any:
    """Read camelCase `key`, or its snake_case twin (the `ocpp` library hands handlers snake_case)."""
    if key in d:
        value = d[key]
    else:
        value = d.get(_snake(key))
    if value is None and required:
        raise ProfileRejected(f"{path}{key}: required field missing")
    return value


def _int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or (
        isinstance(value, float) and not value.is_integer()
    ):
        raise ProfileRejected(f"{name}: expected an integer, got {value!r}")
    return int(value)


def _num(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ProfileRejected(f"{name}: expected a finite number, got {value!r}")
    return float(value)


def _choice(value: Any, name: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ProfileRejected(f"{name}: {value!r} is not one of {', '.join(allowed)}")
    return str(value)


def profile_from_ocpp(d: Mapping[str, Any], *, received_at: datetime | None = None) -> ChargingProfile:
    """Parse a csChargingProfiles object (camelCase, or the snake_case the `ocpp` library produces).

    Raises ProfileRejected naming the field for malformed input. An Absolute profile without
    startSchedule gets ``received_at`` as its start (module docstring), if given.
    """
    if not isinstance(d, Mapping):
        raise ProfileRejected(f"csChargingProfiles: expected an object, got {d!r}")
    p = "csChargingProfiles."
    sched = _get(d, "chargingSchedule", p, required=True)
    if not isinstance(sched, Mapping):
        raise ProfileRejected(f"{p}chargingSchedule: expected an object")
    sp = p + "chargingSchedule."
    raw_periods = _get(sched, "chargingSchedulePeriod", sp, required=True)
    if not isinstance(raw_periods, list | tuple):
        raise ProfileRejected(f"{sp}chargingSchedulePeriod: expected a list")
    periods = []
    for i, rp in enumerate(raw_periods):
        pp = f"{sp}chargingSchedulePeriod[{i}]."
        if not isinstance(rp, Mapping):
            raise ProfileRejected(f"{pp[:-1]}: expected an object")
        phases = _get(rp, "numberPhases", pp)
        periods.append(ChargingSchedulePeriod(
            start_period=_int(_get(rp, "startPeriod", pp, required=True), pp + "startPeriod"),
            limit=_num(_get(rp, "limit", pp, required=True), pp + "limit"),
            number_phases=None if phases is None else _int(phases, pp + "numberPhases"),
        ))
    duration = _get(sched, "duration", sp)
    start = _get(sched, "startSchedule", sp)
    mcr = _get(sched, "minChargingRate", sp)
    kind = _choice(_get(d, "chargingProfileKind", p, required=True), p + "chargingProfileKind", KINDS)
    start_dt = None if start is None else parse_datetime(start, sp + "startSchedule")
    if start_dt is None and kind == ABSOLUTE and received_at is not None:
        start_dt = received_at
    schedule = ChargingSchedule(
        charging_rate_unit=_choice(
            _get(sched, "chargingRateUnit", sp, required=True), sp + "chargingRateUnit", UNITS
        ),
        periods=tuple(periods),
        duration=None if duration is None else _int(duration, sp + "duration"),
        start_schedule=start_dt,
        min_charging_rate=None if mcr is None else _num(mcr, sp + "minChargingRate"),
    )
    rk = _get(d, "recurrencyKind", p)
    vf = _get(d, "validFrom", p)
    vt = _get(d, "validTo", p)
    tx = _get(d, "transactionId", p)
    return ChargingProfile(
        charging_profile_id=_int(_get(d, "chargingProfileId", p, required=True), p + "chargingProfileId"),
        stack_level=_int(_get(d, "stackLevel", p, required=True), p + "stackLevel"),
        purpose=_choice(_get(d, "chargingProfilePurpose", p, required=True), p + "chargingProfilePurpose",
                        PURPOSES),
        kind=kind,
        recurrency_kind=None if rk is None else _choice(rk, p + "recurrencyKind", RECURRENCY_KINDS),
        valid_from=None if vf is None else parse_datetime(vf, p + "validFrom"),
        valid_to=None if vt is None else parse_datetime(vt, p + "validTo"),
        transaction_id=None if tx is None else _int(tx, p + "transactionId"),
        schedule=schedule,
    )


def _num_out(x: float) -> int | float:
    return int(x) if float(x).is_integer() else x


def profile_to_ocpp(profile: ChargingProfile) -> dict[str, Any]:
    """The csChargingProfiles JSON object (camelCase, optional fields omitted); inverse of
    `profile_from_ocpp`, also the persistence format."""
    s = profile.schedule
    periods = []
    for per in s.periods:
        item: dict[str, Any] = {"startPeriod": per.start_period, "limit": _num_out(per.limit)}
        if per.number_phases is not None:
            item["numberPhases"] = per.number_phases
        periods.append(item)
    sched: dict[str, Any] = {"chargingRateUnit": s.charging_rate_unit, "chargingSchedulePeriod": periods}
    if s.duration is not None:
        sched["duration"] = s.duration
    if s.start_schedule is not None:
        sched["startSchedule"] = format_datetime(s.start_schedule)
    if s.min_charging_rate is not None:
        sched["minChargingRate"] = _num_out(s.min_charging_rate)
    out: dict[str, Any] = {
        "chargingProfileId": profile.charging_profile_id,
        "stackLevel": profile.stack_level,
        "chargingProfilePurpose": profile.purpose,
        "chargingProfileKind": profile.kind,
    }
    if profile.transaction_id is not None:
        out["transactionId"] = profile.transaction_id
    if profile.recurrency_kind is not None:
        out["recurrencyKind"] = profile.recurrency_kind
    if profile.valid_from is not None:
        out["validFrom"] = format_datetime(profile.valid_from)
    if profile.valid_to is not None:
        out["validTo"] = format_datetime(profile.valid_to)
    out["chargingSchedule"] = sched
    return out


# ---------------------------------------------------------------- validation

def validate_profile(
    profile: ChargingProfile,
    connector_id: int,
    *,
    limits: ProfileLimits,
    active_transaction_id: int | None,
    number_of_connectors: int,
) -> None:
    """Raise ProfileRejected(reason) if SetChargingProfile.req must be answered Rejected.

    `active_transaction_id` is the transaction running on `connector_id` (None if none). The
    count limit MaxChargingProfilesInstalled depends on what is installed: `InstalledProfiles.install`
    checks it.
    """
    pid = profile.charging_profile_id
    if not 0 <= connector_id <= number_of_connectors:
        raise ProfileRejected(f"connectorId {connector_id} out of range 0..{number_of_connectors}")
    if profile.purpose not in PURPOSES:
        raise ProfileRejected(f"chargingProfilePurpose {profile.purpose!r} unknown")
    if profile.kind not in KINDS:
        raise ProfileRejected(f"chargingProfileKind {profile.kind!r} unknown")
    # §3.13.1: "ChargePointMaxProfile can only be set at Charge Point ConnectorId 0."
    if profile.purpose == CHARGE_POINT_MAX and connector_id != 0:
        raise ProfileRejected(
            f"profile {pid}: ChargePointMaxProfile only on connectorId 0, got {connector_id}"
        )
    if profile.purpose == TX_PROFILE:
        # §3.13.1: "TxProfile SHALL only be set at Charge Point ConnectorId >0." and "If there is no
        # transaction active on the connector ... the Charge Point SHALL discard it".
        if connector_id == 0:
            raise ProfileRejected(f"profile {pid}: TxProfile only on a connectorId > 0")
        if active_transaction_id is None:
            raise ProfileRejected(f"profile {pid}: TxProfile but no transaction on connector {connector_id}")
        if profile.transaction_id is not None and profile.transaction_id != active_transaction_id:
            raise ProfileRejected(
                f"profile {pid}: transactionId {profile.transaction_id} does not match the transaction "
                f"{active_transaction_id} on connector {connector_id}"
            )
    elif profile.transaction_id is not None:
        # §7.8: transactionId "Only valid if ChargingProfilePurpose is set to TxProfile".
        raise ProfileRejected(f"profile {pid}: transactionId is only allowed on a TxProfile")
    if profile.stack_level < 0 or profile.stack_level > limits.max_stack_level:
        raise ProfileRejected(
            f"profile {pid}: stackLevel {profile.stack_level} outside 0..{limits.max_stack_level} "
            "(ChargeProfileMaxStackLevel)"
        )
    vf, vt = profile.valid_from, profile.valid_to
    if vf is not None and vt is not None and vf >= vt:
        raise ProfileRejected(f"profile {pid}: validFrom must be before validTo")

    s = profile.schedule
    if s.charging_rate_unit not in UNITS:
        raise ProfileRejected(f"profile {pid}: chargingRateUnit {s.charging_rate_unit!r} unknown (A or W)")
    if s.charging_rate_unit not in limits.allowed_units:
        raise ProfileRejected(
            f"profile {pid}: chargingRateUnit {s.charging_rate_unit} not allowed by "
            f"ChargingScheduleAllowedChargingRateUnit ({', '.join(sorted(limits.allowed_units))})"
        )
    if not s.periods:
        raise ProfileRejected(f"profile {pid}: chargingSchedulePeriod is empty")
    if len(s.periods) > limits.max_periods:
        raise ProfileRejected(
            f"profile {pid}: {len(s.periods)} periods, ChargingScheduleMaxPeriods is {limits.max_periods}"
        )
    if s.periods[0].start_period != 0:
        raise ProfileRejected(f"profile {pid}: first period must start at 0, got {s.periods[0].start_period}")
    prev = -1
    for i, per in enumerate(s.periods):
        if per.start_period <= prev:
            raise ProfileRejected(
                f"profile {pid}: period {i} startPeriod {per.start_period} not after {prev} "
                "(must be strictly increasing)"
            )
        prev = per.start_period
        if not math.isfinite(per.limit) or not 0 <= per.limit <= MAX_RATE:
            raise ProfileRejected(f"profile {pid}: period {i} limit {per.limit} must be in 0..{MAX_RATE:g}")
        if per.number_phases is not None and not 1 <= per.number_phases <= 3:
            raise ProfileRejected(f"profile {pid}: period {i} numberPhases {per.number_phases} not in 1..3")
    if s.duration is not None and s.duration < 0:
        raise ProfileRejected(f"profile {pid}: duration {s.duration} must be >= 0")
    mcr = s.min_charging_rate
    if mcr is not None and (not math.isfinite(mcr) or not 0 <= mcr <= MAX_RATE):
        raise ProfileRejected(f"profile {pid}: minChargingRate {s.min_charging_rate} must be in 0..{MAX_RATE:g}")
    if profile.kind == RECURRING:
        if profile.recurrency_kind not in RECURRENCY_KINDS:
            raise ProfileRejected(f"profile {pid}: Recurring profile needs recurrencyKind Daily or Weekly")
        if s.start_schedule is None:
            raise ProfileRejected(f"profile {pid}: Recurring profile needs startSchedule")
    elif profile.kind == RELATIVE and s.start_schedule is not None:
        raise ProfileRejected(f"profile {pid}: Relative profile must not have startSchedule")
    for name, dt in (("validFrom", profile.valid_from), ("validTo", profile.valid_to),
                     ("startSchedule", s.start_schedule)):
        if dt is not None and dt.tzinfo is None:
            raise ProfileRejected(f"profile {pid}: {name} has no time zone")


# ---------------------------------------------------------------- installed profiles

class ProfileStore(Protocol):
    """Persistence for installed profiles (the SQLite store implements this)."""

    def save(self, connector_id: int, profile: ChargingProfile) -> None: ...

    def delete(self, profile_id: int) -> None: ...

    def load_all(self) -> list[tuple[int, ChargingProfile]]: ...


class MemoryProfileStore:
    """In-memory ProfileStore; keeps the JSON form so it exercises the same round trip as SQLite."""

    def __init__(self) -> None:
        self._rows: dict[int, tuple[int, dict[str, Any]]] = {}

    def save(self, connector_id: int, profile: ChargingProfile) -> None:
        self._rows[profile.charging_profile_id] = (connector_id, profile_to_ocpp(profile))

    def delete(self, profile_id: int) -> None:
        self._rows.pop(profile_id, None)

    def load_all(self) -> list[tuple[int, ChargingProfile]]:
        return [(c, profile_from_ocpp(d)) for c, d in self._rows.values()]


class InstalledProfiles:
    """The profiles installed in the charge point, keyed by chargingProfileId.

    Every change is written through to the optional `store` (delete before save, so a crash in
    between loses at most the new profile, never leaves two with the same purpose and stack level).
    """

    def __init__(self, store: ProfileStore | None = None) -> None:
        self._by_id: dict[int, tuple[int, ChargingProfile]] = {}
        self._store = store
        if store is not None:
            for connector_id, profile in store.load_all():
                self._by_id[profile.charging_profile_id] = (connector_id, profile)

    def _replaced_by(self, connector_id: int, profile: ChargingProfile) -> list[int]:
        """Ids `profile` replaces. §5.16.3: "If a charging profile with the same chargingProfileId, or
        the same combination of stackLevel / ChargingProfilePurpose, exists on the Charge Point, the new
        charging profile SHALL replace the existing charging profile". The id match is global; the
        stackLevel/purpose match is per connector, since §3.13.1 lets a connector-0 TxDefaultProfile
        coexist with one on a connector > 0 ("replaced only for that specific connector")."""
        out = []
        for pid, (cid, p) in self._by_id.items():
            if pid == profile.charging_profile_id or (
                cid == connector_id and p.purpose == profile.purpose and p.stack_level == profile.stack_level
            ):
                out.append(pid)
        return out

    def install(self, connector_id: int, profile: ChargingProfile, limits: ProfileLimits) -> list[int]:
        """Install a profile that `validate_profile` accepted; returns the ids it replaced.

        Raises ProfileRejected (and changes nothing) when MaxChargingProfilesInstalled would be
        exceeded, counted after the replacement.
        """
        replaced = self._replaced_by(connector_id, profile)
        if len(self._by_id) - len(replaced) + 1 > limits.max_profiles_installed:
            raise ProfileRejected(
                f"profile {profile.charging_profile_id}: MaxChargingProfilesInstalled "
                f"({limits.max_profiles_installed}) reached"
            )
        for pid in replaced:
            del self._by_id[pid]
            if self._store is not None:
                self._store.delete(pid)
        self._by_id[profile.charging_profile_id] = (connector_id, profile)
        if self._store is not None:
            self._store.save(connector_id, profile)
        return [pid for pid in replaced if pid != profile.charging_profile_id]

    def _remove(self, ids: Iterable[int]) -> list[int]:
        removed = []
        for pid in ids:
            if self._by_id.pop(pid, None) is not None:
                removed.append(pid)
                if self._store is not None:
                    self._store.delete(pid)
        return removed

    def clear(
        self,
        id: int | None = None,  # noqa: A002 - the OCPP field name
        connector_id: int | None = None,
        purpose: str | None = None,
        stack_level: int | None = None,
    ) -> bool:
        """ClearChargingProfile.req (§5.5); True = Accepted, False = Unknown (nothing matched).

        §5.5: the Central System clears "either a specific charging profile (denoted by id) or a
        selection of charging profiles that match with the values of the optional connectorId,
        stackLevel and chargingProfilePurpose fields". So with `id` the other fields are ignored;
        without it, every given field must match and absent fields match anything (no fields at all
        clears everything).
        """
        if id is not None:
            return bool(self._remove([id]))
        ids = [
            pid for pid, (cid, p) in self._by_id.items()
            if (connector_id is None or cid == connector_id)
            and (purpose is None or p.purpose == purpose)
            and (stack_level is None or p.stack_level == stack_level)
        ]
        return bool(self._remove(ids))

    def remove_tx_profiles(self, connector_id: int) -> list[int]:
        """The transaction on `connector_id` ended: §3.13.1 "After the transaction is stopped, the
        profile SHOULD be deleted." Returns the removed ids."""
        return self._remove([
            pid for pid, (cid, p) in self._by_id.items() if cid == connector_id and p.purpose == TX_PROFILE
        ])

    def for_connector(self, connector_id: int) -> list[ChargingProfile]:
        """Profiles installed exactly on `connector_id`, ordered by purpose, stack level, id."""
        return [p for cid, p in self.all() if cid == connector_id]

    def all(self) -> list[tuple[int, ChargingProfile]]:
        """Every installed (connector_id, profile), deterministic order."""
        return sorted(
            self._by_id.values(),
            key=lambda cp: (
                cp[0], PURPOSES.index(cp[1].purpose), cp[1].stack_level, cp[1].charging_profile_id
            ),
        )

    def get(self, profile_id: int) -> tuple[int, ChargingProfile] | None:
        return self._by_id.get(profile_id)

    def __len__(self) -> int:
        return len(self._by_id)

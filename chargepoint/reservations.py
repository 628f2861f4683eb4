"""Reservation model of an OCPP 1.6J charge point (§5.13 ReserveNow, §5.1 CancelReservation).

Pure: no I/O, no clock; time-dependent methods take ``now`` (timezone-aware). The object holds the active
reservations and is mutated only by reserve/cancel/expire/consume/terminate_unusable.

Readings of §5.13 where the text leaves room:

* ``connector_states`` maps each connector 1..N to its current OCPP ChargePointStatus; an optional key 0 is
  the whole charge point (Available/Unavailable/Faulted). A connectorId that is not a key (and not 0) is out
  of range → Rejected.
* Check order: request malformed / reservations disabled / connector out of range / connector 0 without
  ReserveConnectorZeroSupported / expiryDate not in the future → Rejected; then Faulted, then Unavailable
  (charge point or connector), then Occupied (Preparing, Charging, SuspendedEV, SuspendedEVSE, Finishing,
  or any other live reservation on it "for the same or another idTag").
* This model is the source of truth for who holds a reservation: a connector whose status is "Reserved"
  counts as occupied only through a live reservation stored here (other than the one being replaced). A
  "Reserved" left over from a replaced or expired reservation does not block.
* Same reservationId replaces the old reservation; the checks then ignore the reservation being replaced.
  If the replacement is refused, the old reservation stays (all or nothing).
* Connector 0: "one connector remains available for the reserved idTag" during the validity. With k live
  connector-0 reservations, at least k connectors must stay free (Available and not specifically
  reserved). A connector is therefore *effectively reserved* for other users when taking it would leave
  fewer than k free others (see :meth:`Reservations.connector_reserved_effectively`). The same count
  guards new reservations: a new specific reservation that would starve the connector-0 ones is Occupied.
* A reservation whose expiryDate is at or before ``now`` no longer binds anybody, even before
  :meth:`Reservations.expire` removed it.
* Holder match (§5.13): "except when the incoming idTag or the parent idTag match the idTag or parent idTag
  of the reservation": any of the four pairings, case-insensitive (CiString20).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, NamedTuple

from chargepoint.auth import (
    AuthDataError,
    format_ocpp_datetime,
    is_valid_id_tag,
    norm_id_tag,
    parse_ocpp_datetime,
)

ReserveStatus = Literal["Accepted", "Faulted", "Occupied", "Rejected", "Unavailable"]
CancelStatus = Literal["Accepted", "Rejected"]

CONNECTOR_STATUSES: frozenset[str] = frozenset(
    {
        "Available",
        "Preparing",
        "Charging",
        "SuspendedEVSE",
        "SuspendedEV",
        "Finishing",
        "Reserved",
        "Unavailable",
        "Faulted",
    }
)
OCCUPIED_STATUSES: frozenset[str] = frozenset(
    {"Preparing", "Charging", "SuspendedEV", "SuspendedEVSE", "Finishing"}
)
_UNUSABLE = ("Faulted", "Unavailable")
_FREE = ("Available", "Reserved")


class ReservationError(ValueError):
    """Malformed reservation data; the message names the field, the value and what is allowed."""


_REQ_KEYS = {
    "reservationId": "reservationId",
    "reservation_id": "reservationId",
    "connectorId": "connectorId",
    "connector_id": "connectorId",
    "idTag": "idTag",
    "id_tag": "idTag",
    "parentIdTag": "parentIdTag",
    "parent_id_tag": "parentIdTag",
    "expiryDate": "expiryDate",
    "expiry_date": "expiryDate",
}


def _int_field(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ReservationError(f"{name}={value!r} must be an integer >= {minimum}")
    return value


def _tag_field(value: object, name: str) -> str:
    if not is_valid_id_tag(value):
        raise ReservationError(f"{name}={value!r} must be 1..20 printable ASCII characters")
    assert isinstance(value, str)
    return value


@dataclass(frozen=True, slots=True)
class Reservation:
    """One reservation. ``connector_id`` 0 means "any connector" (ReserveConnectorZeroSupported)."""

    reservation_id: int
    connector_id: int
    id_tag: str
    parent_id_tag: str | None
    expiry_date: datetime

    def __post_init__(self) -> None:
        _int_field(self.reservation_id, "reservationId", 0)
        _int_field(self.connector_id, "connectorId", 0)
        _tag_field(self.id_tag, "idTag")
        if self.parent_id_tag is not None:
            _tag_field(self.parent_id_tag, "parentIdTag")
        if not isinstance(self.expiry_date, datetime) or self.expiry_date.utcoffset() is None:
            raise ReservationError(f"expiryDate={self.expiry_date!r} must be a timezone-aware datetime")

    @classmethod
    def from_ocpp(cls, request: Mapping[str, Any]) -> Reservation:
        """From a ReserveNow.req payload (camelCase, or the snake_case the ocpp library passes to handlers)."""
        if not isinstance(request, Mapping):
            raise ReservationError(f"ReserveNow.req must be an object, got {type(request).__name__}")
        d: dict[str, Any] = {}
        for key, value in request.items():
            canon = _REQ_KEYS.get(key) if isinstance(key, str) else None
            if canon is None:
                allowed = ", ".join(sorted(set(_REQ_KEYS.values())))
                raise ReservationError(f"ReserveNow.req has unknown field {key!r}; allowed: {allowed}")
            d[canon] = value
        for required in ("reservationId", "connectorId", "idTag", "expiryDate"):
            if required not in d:
                raise ReservationError(f"ReserveNow.req lacks required field {required!r}")
        try:
            expiry = parse_ocpp_datetime(d["expiryDate"], "expiryDate")
        except AuthDataError as exc:
            raise ReservationError(str(exc)) from None
        return cls(
            reservation_id=_int_field(d["reservationId"], "reservationId", 0),
            connector_id=_int_field(d["connectorId"], "connectorId", 0),
            id_tag=_tag_field(d["idTag"], "idTag"),
            parent_id_tag=None
            if d.get("parentIdTag") is None
            else _tag_field(d["parentIdTag"], "parentIdTag"),
            expiry_date=expiry,
        )

    def to_ocpp(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "reservationId": self.reservation_id,
            "connectorId": self.connector_id,
            "idTag": self.id_tag,
            "expiryDate": format_ocpp_datetime(self.expiry_date),
        }
        if self.parent_id_tag is not None:
            out["parentIdTag"] = self.parent_id_tag
        return out

    def is_active(self, now: datetime) -> bool:
        """Still binding at ``now``: expiryDate strictly in the future."""
        return self.expiry_date > now

    def matches(self, id_tag: str, parent_id_tag: str | None) -> bool:
        """§5.13: the incoming idTag or its parent idTag equals the reservation's idTag or parentIdTag."""
        mine = {norm_id_tag(self.id_tag)}
        if self.parent_id_tag is not None:
            mine.add(norm_id_tag(self.parent_id_tag))
        theirs = set()
        if is_valid_id_tag(id_tag):
            theirs.add(norm_id_tag(id_tag))
        if parent_id_tag is not None and is_valid_id_tag(parent_id_tag):
            theirs.add(norm_id_tag(parent_id_tag))
        return not mine.isdisjoint(theirs)


class ReservationRow(NamedTuple):
    """Persistence row."""

    reservation_id: int
    connector_id: int
    id_tag: str
    parent_id_tag: str | None
    expiry_date: str


def _require_aware(now: datetime) -> None:
    if not isinstance(now, datetime) or now.utcoffset() is None:
        raise ValueError(f"now={now!r} must be a timezone-aware datetime")


def _check_states(connector_states: Mapping[int, str]) -> None:
    for cid, status in connector_states.items():
        if isinstance(cid, bool) or not isinstance(cid, int) or cid < 0:
            raise ValueError(f"connector_states key {cid!r} must be a connector id >= 0")
        if status not in CONNECTOR_STATUSES:
            raise ValueError(
                f"connector_states[{cid}]={status!r}; allowed: {', '.join(sorted(CONNECTOR_STATUSES))}"
            )


class Reservations:
    """The charge point's reservations, keyed by reservationId."""

    def __init__(self, reservations: Iterable[Reservation] = ()) -> None:
        self._by_id: dict[int, Reservation] = {}
        for r in reservations:
            if r.reservation_id in self._by_id:
                raise ReservationError(f"reservationId {r.reservation_id} appears twice")
            self._by_id[r.reservation_id] = r

    # -- queries -------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._by_id)

    def get(self, reservation_id: int) -> Reservation | None:
        return self._by_id.get(reservation_id)

    def all(self) -> list[Reservation]:
        """All stored reservations, earliest expiry first."""
        return sorted(self._by_id.values(), key=lambda r: (r.expiry_date, r.reservation_id))

    def for_connector(self, connector_id: int) -> list[Reservation]:
        """Stored reservations on ``connector_id`` (0: the charge-point-wide ones), earliest expiry first.
        Includes ones past expiry that :meth:`expire` has not removed yet."""
        return [r for r in self.all() if r.connector_id == connector_id]

    def next_expiry(self) -> datetime | None:
        """Earliest expiryDate (for the controller's timer), None when there are no reservations."""
        return min((r.expiry_date for r in self._by_id.values()), default=None)

    def _live(self, now: datetime, exclude_id: int | None = None) -> list[Reservation]:
        return [r for r in self.all() if r.is_active(now) and r.reservation_id != exclude_id]

    @staticmethod
    def _free_connectors(
        connector_states: Mapping[int, str], live: Sequence[Reservation], exclude_cid: int | None
    ) -> list[int]:
        """Connectors (1..N, except ``exclude_cid``) a connector-0 holder could still use: Available (or
        Reserved, the status this model's own reservations produce) and without a live specific reservation."""
        specific = {r.connector_id for r in live if r.connector_id != 0}
        return [
            cid
            for cid, st in connector_states.items()
            if cid >= 1 and cid != exclude_cid and st in _FREE and cid not in specific
        ]

    def connector_reserved_effectively(
        self, connector_id: int, connector_states: Mapping[int, str], now: datetime
    ) -> bool:
        """True when ``connector_id`` is not open to an arbitrary idTag because of reservations: it has a live
        specific reservation, or taking it would leave fewer free other connectors than there are live
        connector-0 reservations (§5.13: "one connector remains available for the reserved idTag")."""
        _check_states(connector_states)
        _require_aware(now)
        live = self._live(now)
        if any(r.connector_id == connector_id for r in live):
            return True
        zero = sum(1 for r in live if r.connector_id == 0)
        if zero == 0:
            return False
        return len(self._free_connectors(connector_states, live, connector_id)) < zero

    def may_use(
        self,
        connector_id: int,
        id_tag: str,
        parent_id_tag: str | None,
        now: datetime,
        *,
        connector_states: Mapping[int, str],
    ) -> tuple[bool, Reservation | None]:
        """May ``id_tag`` (with ``parent_id_tag`` from list/cache/Authorize.conf) charge on ``connector_id``?

        Returns (allowed, reservation). allowed with a reservation: the holder; put its reservationId in
        StartTransaction.req and :meth:`consume` it when the transaction starts. Refused with a reservation:
        the one that blocks. (True, None): no reservation concerns this connector. ``connector_states`` is
        needed for connector-0 reservations; the connector asked about may already be Preparing.
        """
        if isinstance(connector_id, bool) or not isinstance(connector_id, int) or connector_id < 1:
            raise ValueError(f"connector_id={connector_id!r} must be a connector id >= 1")
        _check_states(connector_states)
        _require_aware(now)
        live = self._live(now)
        specific = [r for r in live if r.connector_id == connector_id]
        if specific:
            for r in specific:
                if r.matches(id_tag, parent_id_tag):
                    return True, r
            return False, specific[0]
        zero = [r for r in live if r.connector_id == 0]
        for r in zero:
            if r.matches(id_tag, parent_id_tag):
                return True, r
        if zero and len(self._free_connectors(connector_states, live, connector_id)) < len(zero):
            return False, zero[0]
        return True, None

    # -- ReserveNow ----------------------------------------------------------------------------------------

    def check_reserve(
        self,
        request: Reservation | Mapping[str, Any],
        *,
        now: datetime,
        connector_states: Mapping[int, str],
        reserve_connector_zero_supported: bool,
        enabled: bool = True,
    ) -> tuple[ReserveStatus, Reservation | None, str]:
        """The ReserveNow.conf status without changing anything: (status, parsed reservation, reason)."""
        _check_states(connector_states)
        _require_aware(now)
        if not enabled:
            return "Rejected", None, "reservations are not accepted (configuration)"
        if isinstance(request, Reservation):
            res = request
        else:
            try:
                res = Reservation.from_ocpp(request)
            except ReservationError as exc:
                return "Rejected", None, str(exc)
        cid = res.connector_id
        if cid != 0 and cid not in connector_states:
            valid = sorted(c for c in connector_states if c >= 1)
            return "Rejected", res, f"connectorId {cid} does not exist; connectors: {valid}"
        if cid == 0 and not reserve_connector_zero_supported:
            return "Rejected", res, "connectorId 0 needs ReserveConnectorZeroSupported=true"
        if not res.is_active(now):
            return "Rejected", res, f"expiryDate {format_ocpp_datetime(res.expiry_date)} is not in the future"

        cp_state = connector_states.get(0, "Available")
        if cp_state in _UNUSABLE:
            return cp_state, res, f"charge point is {cp_state}"  # type: ignore[return-value]

        live = self._live(now, exclude_id=res.reservation_id)
        zero = sum(1 for r in live if r.connector_id == 0)
        if cid != 0:
            state = connector_states[cid]
            if state in _UNUSABLE:
                return state, res, f"connector {cid} is {state}"  # type: ignore[return-value]
            if state in OCCUPIED_STATUSES:
                return "Occupied", res, f"connector {cid} is {state}"
            other = [r for r in live if r.connector_id == cid]
            if other:
                return (
                    "Occupied",
                    res,
                    f"connector {cid} is reserved (reservationId {other[0].reservation_id})",
                )
            if len(self._free_connectors(connector_states, live, cid)) < zero:
                return "Occupied", res, "the connector is needed for a connector-0 reservation"
            return "Accepted", res, ""

        # connector 0: after accepting, zero+1 connectors must be free
        free = self._free_connectors(connector_states, live, None)
        if len(free) >= zero + 1:
            return "Accepted", res, ""
        states = [st for c, st in connector_states.items() if c >= 1]
        if states and all(st == "Faulted" for st in states):
            return "Faulted", res, "all connectors are Faulted"
        if states and all(st in _UNUSABLE for st in states):
            return "Unavailable", res, "no connector is operative"
        return "Occupied", res, f"{len(free)} free connector(s) for {zero + 1} charge-point reservation(s)"

    def reserve(
        self,
        request: Reservation | Mapping[str, Any],
        *,
        now: datetime,
        connector_states: Mapping[int, str],
        reserve_connector_zero_supported: bool,
        enabled: bool = True,
    ) -> ReserveStatus:
        """Handle ReserveNow.req (§5.13). On Accepted the reservation is stored (replacing one with the same
        reservationId); otherwise nothing changes. Use :meth:`check_reserve` for the reason."""
        status, res, _reason = self.check_reserve(
            request,
            now=now,
            connector_states=connector_states,
            reserve_connector_zero_supported=reserve_connector_zero_supported,
            enabled=enabled,
        )
        if status == "Accepted":
            assert res is not None
            self._by_id[res.reservation_id] = res
        return status

    # -- removal ------------------------------------------------------------------------------------------

    def pop(self, reservation_id: int) -> Reservation | None:
        return self._by_id.pop(reservation_id, None)

    def cancel(self, reservation_id: int) -> CancelStatus:
        """CancelReservation.req (§5.1): Accepted when the reservationId was known (and is now removed),
        Rejected otherwise. Call :meth:`get` first to learn which connector to report Available."""
        return "Accepted" if self.pop(reservation_id) is not None else "Rejected"

    def consume(self, reservation_id: int) -> Reservation | None:
        """A transaction started for the holder: the reservation ends (§5.13 (1)); its id goes into
        StartTransaction.req. Returns the removed reservation, None if unknown."""
        return self.pop(reservation_id)

    def expire(self, now: datetime) -> list[Reservation]:
        """Remove and return the reservations whose expiryDate is at or before ``now`` (§5.13 (2)); the
        controller then reports the connectors' status (recompute it: another reservation may remain)."""
        _require_aware(now)
        gone = [r for r in self.all() if not r.is_active(now)]
        for r in gone:
            del self._by_id[r.reservation_id]
        return gone

    def terminate_unusable(self, connector_states: Mapping[int, str]) -> list[Reservation]:
        """§5.13 (3): reservations end when the charge point or their connector is Faulted or Unavailable.
        Connector-0 reservations end when the charge point (key 0) or every connector is. Returns them."""
        _check_states(connector_states)
        cp_down = connector_states.get(0) in _UNUSABLE
        conns = [st for c, st in connector_states.items() if c >= 1]
        all_down = bool(conns) and all(st in _UNUSABLE for st in conns)
        gone = []
        for r in self.all():
            if r.connector_id == 0:
                dead = cp_down or all_down
            else:
                dead = cp_down or connector_states.get(r.connector_id) in _UNUSABLE
            if dead:
                gone.append(r)
                del self._by_id[r.reservation_id]
        return gone

    # -- persistence --------------------------------------------------------------------------------------

    def to_rows(self) -> list[ReservationRow]:
        return [
            ReservationRow(
                r.reservation_id,
                r.connector_id,
                r.id_tag,
                r.parent_id_tag,
                format_ocpp_datetime(r.expiry_date),
            )
            for r in sorted(self._by_id.values(), key=lambda r: r.reservation_id)
        ]

    @classmethod
    def from_rows(cls, rows: Iterable[Sequence[Any]]) -> Reservations:
        """Rebuild from rows; raises ReservationError naming the bad field. Expired rows are kept so that
        :meth:`expire` reports them after a restart."""
        out = []
        for row in rows:
            if len(row) < 5:
                raise ReservationError(
                    f"reservation row {row!r} needs (reservation_id, connector_id, id_tag, parent_id_tag, expiry)"
                )
            try:
                expiry = parse_ocpp_datetime(row[4], "expiry_date")
            except AuthDataError as exc:
                raise ReservationError(str(exc)) from None
            out.append(Reservation(row[0], row[1], row[2], row[3], expiry))
        return cls(out)

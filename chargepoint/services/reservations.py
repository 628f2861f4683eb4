"""The reservation service (OCPP 1.6 §5.13 ReserveNow, §5.1 CancelReservation).

The decisions are the pure model of :mod:`chargepoint.reservations`; this service keeps the reservations,
persists them through the store, expires them with one timer (no polling) and turns them into connector events
(``cm.Reserved``). It also answers which connector a tap or a remote start uses, since a reservation decides
that.

Readings where OCPP 1.6 leaves room:

* A store failure never applies half a change: ReserveNow answers Rejected. Removing a reservation (cancel,
  use, expiry) always happens in memory, the store failure is logged.
* Connector 0 reservations (ReserveConnectorZeroSupported): a connector shows "Reserved" only when it is
  no longer open to everybody, i.e. when taking it would leave fewer free connectors than there are live
  connector-0 reservations (:meth:`Reservations.connector_reserved_effectively`). With one connector that is
  at once; with two connectors both stay "Available" until one of them is taken, then the other shows
  "Reserved". The holder may use any free connector.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from chargepoint import connector as cm
from chargepoint.keys import ConfigurationKeys
from chargepoint.logsetup import log_fields
from chargepoint.metering import iso
from chargepoint.privacy import mask_id_tag as _mask
from chargepoint.reservations import Reservation, ReservationError, Reservations
from chargepoint.services.station import ConnectorRuntime, Connectors, Emit, Post
from chargepoint.store import ReservationRow, Store, StoreError

log = logging.getLogger(__name__)


class ReservationService:
    """Reservations: ReserveNow/CancelReservation, expiry, the Reserved status, which connector a tag gets."""

    def __init__(
        self,
        connectors: Connectors,
        *,
        keys: ConfigurationKeys,
        store: Store,
        now: Callable[[], datetime],
        post: Post,
        emit: Emit,
        station_status: Callable[[], str],
        parent_of: Callable[[str], str | None],
    ) -> None:
        """``parent_of(id_tag)`` is the authorization service's parentIdTag lookup."""
        self._connectors = connectors
        self._keys = keys
        self._store = store
        self._now = now
        self._post = post
        self._emit = emit
        self._station_status = station_status
        self._parent_of = parent_of
        self._timer: asyncio.TimerHandle | None = None
        self._reserved_posted: dict[int, bool] = {}
        self._stopped = False
        try:
            rows = store.reservations()
        except StoreError as exc:
            log.error("state store: %s", exc)
            rows = []
        try:
            self._reservations = Reservations.from_rows(
                [(r.reservation_id, r.connector_id, r.id_tag, r.parent_id_tag, r.expiry_date) for r in rows]
            )
        except ReservationError as exc:
            log.error("reservations in the state store are unreadable (%s): starting without", exc)
            self._reservations = Reservations()
        log.info("%d reservations", len(self._reservations))

    # ================================================================== read-only views
    def __len__(self) -> int:
        return len(self._reservations)

    def all(self) -> list[Reservation]:
        return list(self._reservations.all())

    @property
    def expiry_timer(self) -> asyncio.TimerHandle | None:
        """The one timer for the earliest expiryDate (None: no reservation left)."""
        return self._timer

    # ================================================================== start / stop
    def start(self) -> None:
        for r in self._reservations.all():
            if r.connector_id != 0 and r.connector_id not in self._connectors:
                log.warning(
                    "reservation %d is for connector %d, which this charge point no longer has: dropped",
                    r.reservation_id,
                    r.connector_id,
                )
                self._drop_reservation(r.reservation_id)
        self._expire_reservations()
        self._sync_reserved()
        self._arm_timer()

    def stop(self) -> None:
        self._stopped = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def clock_set(self) -> None:
        """The clock was just set from BootNotification.conf: the expiry timer counts again."""
        self._arm_timer()

    def _delete_row(self, reservation_id: int) -> None:
        try:
            self._store.delete_reservation(reservation_id)
        except StoreError as exc:
            log.error("state store: %s", exc)

    # ================================================================== operations
    def connector_states(self) -> dict[int, str]:
        """OCPP status per connector (0: the charge point) as the reservation model wants it."""
        states = {0: self._station_status()}
        for rt in self._connectors.values():
            states[rt.id] = rt.state.status or "Available"
        return states

    def reserve_now(self, request: Mapping[str, Any]) -> str:
        """ReserveNow.req → status. Stored (memory and store) only when Accepted; the connector status follows
        after the answer (:meth:`reservations_changed`)."""
        now = self._now()
        states = self.connector_states()
        zero_ok = bool(self._keys["ReserveConnectorZeroSupported"])
        status, res, reason = self._reservations.check_reserve(
            request, now=now, connector_states=states, reserve_connector_zero_supported=zero_ok
        )
        if status != "Accepted" or res is None:
            log.info("ReserveNow %s: %s", status, reason)
            return status
        try:
            self._store.put_reservation(
                ReservationRow(
                    res.reservation_id,
                    res.connector_id,
                    res.id_tag,
                    iso(res.expiry_date),
                    res.parent_id_tag,
                )
            )
        except StoreError as exc:
            log.error("ReserveNow Rejected: %s", exc)
            return "Rejected"
        stored = self._reservations.reserve(
            res, now=now, connector_states=states, reserve_connector_zero_supported=zero_ok
        )
        assert stored == "Accepted"
        log.info(
            "reservation %d: connector %d for %s until %s",
            res.reservation_id,
            res.connector_id,
            _mask(res.id_tag),
            iso(res.expiry_date),
            extra=log_fields(connector_id=res.connector_id, ocpp_action="ReserveNow", id_tag=res.id_tag),
        )
        self._arm_timer()
        return "Accepted"

    def cancel_reservation(self, reservation_id: int) -> str:
        """CancelReservation.req (§5.1): Accepted when the reservation was known."""
        if self._reservations.get(reservation_id) is None:
            log.info("CancelReservation %d: no such reservation", reservation_id)
            return "Rejected"
        self._drop_reservation(reservation_id)
        log.info("reservation %d cancelled", reservation_id)
        self._arm_timer()
        return "Accepted"

    def reservations_changed(self) -> None:
        """After ReserveNow/CancelReservation was answered: connector statuses follow (Reserved/Available)."""
        self._sync_reserved()

    def _drop_reservation(self, reservation_id: int) -> Reservation | None:
        gone = self._reservations.pop(reservation_id)
        self._delete_row(reservation_id)
        return gone

    def _expire_reservations(self) -> None:
        for r in self._reservations.expire(self._now()):
            log.info("reservation %d (connector %d) expired", r.reservation_id, r.connector_id)
            self._delete_row(r.reservation_id)
            self._emit("reservation_expired", reservation_id=r.reservation_id)

    def _arm_timer(self) -> None:
        """One timer for the earliest expiryDate (no polling)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        nxt = self._reservations.next_expiry()
        if nxt is None or self._stopped:
            return
        delay = max(0.0, (nxt - self._now()).total_seconds())
        self._timer = asyncio.get_running_loop().call_later(
            delay + 0.001, self._on_timer
        )

    def _on_timer(self) -> None:
        self._timer = None
        self._expire_reservations()
        self._sync_reserved()
        self._arm_timer()

    def _sync_reserved(self, states: dict[int, str] | None = None) -> None:
        """Post cm.Reserved(True/False) where the reservation model's view changed."""
        if not self._connectors:
            return
        states = states if states is not None else self.connector_states()
        now = self._now()
        for rt in self._connectors.values():
            want = self._reservations.connector_reserved_effectively(rt.id, states, now)
            if want != self._reserved_posted.get(rt.id, rt.state.reserved):
                self._reserved_posted[rt.id] = want
                self._post(rt.id, cm.Reserved(want))

    def status_changed(self, rt: ConnectorRuntime, status: str) -> None:
        """§5.13 (3): a reservation ends when its connector (or the charge point) is Faulted/Unavailable; a
        connector taken or freed changes which connectors a connector-0 reservation keeps."""
        if not len(self._reservations) and not any(self._reserved_posted.values()):
            return
        states = self.connector_states()
        states[rt.id] = status
        gone = self._reservations.terminate_unusable(states)
        for r in gone:
            log.info("reservation %d ends: connector %d is %s", r.reservation_id, r.connector_id, status)
            self._delete_row(r.reservation_id)
        self._sync_reserved(states)
        if gone:
            self._arm_timer()

    def _free(self, rt: ConnectorRuntime) -> bool:
        s = rt.state
        return s.session_tag is None and not s.in_transaction and s.operative and not s.faults

    def _holder_reservation(
        self, connector_id: int, id_tag: str, parent_id_tag: str | None
    ) -> Reservation | None:
        if not len(self._reservations):
            return None
        ok, r = self._reservations.may_use(
            connector_id, id_tag, parent_id_tag, self._now(), connector_states=self.connector_states()
        )
        return r if ok else None

    def reserved_connector_for(self, id_tag: str, parent_id_tag: str | None) -> ConnectorRuntime | None:
        """A free connector held for this identifier (its idTag or parentIdTag matches, §5.13)."""
        parent = parent_id_tag or self._parent_of(id_tag)
        now = self._now()
        for r in self._reservations.all():
            if not r.is_active(now) or not r.matches(id_tag, parent):
                continue
            if r.connector_id != 0:
                rt = self._connectors.get(r.connector_id)
                if rt is not None and self._free(rt):
                    return rt
                continue
            usable = [
                rt
                for rt in self._connectors.values()
                if self._free(rt) and self._holder_reservation(rt.id, id_tag, parent) is not None
            ]
            plugged = [rt for rt in usable if rt.state.pilot.vehicle_connected]
            if plugged or usable:
                return (plugged or usable)[0]
        return None

    def connector_for_tag(self, id_tag: str) -> ConnectorRuntime | None:
        """Like the core, but which connectors are reserved comes from the reservation model (the connector
        flag follows a moment later)."""
        held = self.reserved_connector_for(id_tag, None)
        if held is not None:
            return held
        states = self.connector_states()
        now = self._now()
        candidates = [
            rt
            for rt in self._connectors.values()
            if self._free(rt) and not self._reservations.connector_reserved_effectively(rt.id, states, now)
        ]
        plugged = [rt for rt in candidates if rt.state.pilot.vehicle_connected]
        return (plugged or candidates or [None])[0]

    def reservation_allows(self, connector_id: int, id_tag: str) -> bool:
        if not len(self._reservations) or connector_id not in self._connectors:
            return True
        ok, _r = self._reservations.may_use(
            connector_id,
            id_tag,
            self._parent_of(id_tag),
            self._now(),
            connector_states=self.connector_states(),
        )
        return ok

    def take_reservation_for(self, connector_id: int, id_tag: str) -> int | None:
        """A transaction starts: the holder's reservation ends (§5.13 (1)); its id goes into
        StartTransaction.req."""
        r = self._holder_reservation(connector_id, id_tag, self._parent_of(id_tag))
        if r is None:
            return None
        self._drop_reservation(r.reservation_id)
        log.info("reservation %d used on connector %d", r.reservation_id, connector_id)
        self._sync_reserved()
        self._arm_timer()
        return r.reservation_id



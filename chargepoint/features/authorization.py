"""Who may charge: Local Authorization List, Authorization Cache, offline rules and Reservations.

A mixin placed before ``ControllerCore`` (see chargepoint/features/__init__.py). The decisions are the pure
models of :mod:`chargepoint.auth` and :mod:`chargepoint.reservations`; this module keeps their state, persists
it through the store, talks to the central system and turns reservations into connector events.

Readings where OCPP 1.6 leaves room (the pure modules document theirs):

* Authorize.req is interactive (a driver waits at the charger): it waits at most
  ``authorize_timeout_s`` (5 s, capped by csms.response_timeout_s); no answer, a CALLERROR or a dropped
  link fall back to the offline rules (§3.5 / §3.5.3), as if the charge point were offline.
* The Authorization Cache holds at most :data:`AUTH_CACHE_MAX_ENTRIES` identifiers (least recently used
  evicted; OCPP 1.6 has no key for the size). A lookup counts as a use in memory only: the order persisted
  is that of the last idTagInfo received, which is good enough after a restart and saves a write per tap.
* A store failure never applies half a change: SendLocalList answers Failed and keeps the old list;
  ReserveNow answers Rejected; ClearCache answers Rejected. Removing a reservation (cancel, use, expiry)
  always happens in memory, the store failure is logged.
* Connector 0 reservations (ReserveConnectorZeroSupported): a connector shows "Reserved" only when it is
  no longer open to everybody, i.e. when taking it would leave fewer free connectors than there are live
  connector-0 reservations (:meth:`Reservations.connector_reserved_effectively`). With one connector that is
  at once; with two connectors both stay "Available" until one of them is taken, then the other shows
  "Reserved". The holder may use any free connector.
* A status answer that differs from the local list (§7.6 LocalListConflict) is reported as a
  StatusNotification of connector 0 with errorCode LocalListConflict; the list itself is left as the
  central system sent it (it will send a new one).
* StopTransactionOnInvalidId=false: the transaction stays open but no energy is offered for the rest of it
  (MaxEnergyOnInvalidId is not metered: it behaves as 0 Wh).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from chargepoint import connector as cm
from chargepoint.auth import (
    AuthCache,
    AuthConfig,
    AuthDataError,
    Decision,
    IdTagInfo,
    LocalAuthList,
    apply_send_local_list,
    decide,
    decide_stop,
    decision_from_csms,
    is_valid_id_tag,
    list_version_for_get,
    local_list_conflict,
    norm_id_tag,
)
from chargepoint.auth import AuthRow as ModelAuthRow
from chargepoint.logsetup import log_fields
from chargepoint.metering import iso
from chargepoint.privacy import mask_id_tag as _mask
from chargepoint.privacy import use_installation_salt
from chargepoint.protocol.outbox import CallErrorReceived
from chargepoint.reservations import Reservation, ReservationError, Reservations
from chargepoint.store import AuthRow, ReservationRow, StoreError
from hal.interfaces import IndicatorPattern

if TYPE_CHECKING:
    from chargepoint.controller import ConnectorRuntime, ControllerCore

    _Base = ControllerCore
else:
    _Base = object

log = logging.getLogger(__name__)

AUTH_CACHE_MAX_ENTRIES = 1000
AUTHORIZE_TIMEOUT_S = 5.0
_RECENT_PARENTS = 64


class AuthorizeResult(tuple[bool, dict[str, Any] | None]):
    """``(accepted, idTagInfo)`` of :meth:`AuthorizationFeature.authorize`: unpacks and compares like that
    pair; ``reason`` says why, in words for the log ("offline and not locally authorized", "Authorize.conf
    Blocked" …), so a refusal is logged with its real cause."""

    reason: str

    def __new__(cls, accepted: bool, info: dict[str, Any] | None, reason: str = "") -> AuthorizeResult:
        self = super().__new__(cls, (accepted, info))
        self.reason = reason
        return self


def _store_row(row: ModelAuthRow) -> AuthRow:
    return AuthRow(row.id_tag, row.status, row.expiry_date, row.parent_id_tag)


class AuthorizationFeature(_Base):
    """Local Auth List Management, Authorization Cache, offline rules and Reservation profile."""

    authorize_timeout_s: float = AUTHORIZE_TIMEOUT_S

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.local_list = LocalAuthList()
        self.auth_cache = AuthCache(AUTH_CACHE_MAX_ENTRIES)
        self.reservations = Reservations()
        self._reservation_timer: asyncio.TimerHandle | None = None
        self._reserved_posted: dict[int, bool] = {}
        self._recent_parents: OrderedDict[str, str | None] = OrderedDict()
        self._deauthorized: set[int] = set()  # local ids of transactions the CSMS refused (no energy)

    # ================================================================== start / stop
    def load_persisted_state(self) -> None:
        """List, cache and reservations from the store, before any tap or OCPP request can arrive."""
        super().load_persisted_state()
        # Before any tag is logged: masks are keyed with this installation's secret (chargepoint.privacy).
        use_installation_salt(self.config.state_dir)
        store = self.store
        assert store is not None
        version, rows = self._safe(store.local_list, (0, []))
        try:
            self.local_list = LocalAuthList.from_rows(
                version, [(r.id_tag, r.status, r.expiry_date, r.parent_id_tag) for r in rows]
            )
        except AuthDataError as exc:
            log.error("local authorization list in the state store is unreadable (%s): starting empty", exc)
            self.local_list = LocalAuthList()
        cache_rows = self._safe(store.cache_rows, [])
        try:
            self.auth_cache = AuthCache.from_rows(
                [(r.id_tag, r.status, r.expiry_date, r.parent_id_tag, used) for r, used in cache_rows],
                AUTH_CACHE_MAX_ENTRIES,
            )
        except AuthDataError as exc:
            log.error("authorization cache in the state store is unreadable (%s): starting empty", exc)
            self.auth_cache = AuthCache(AUTH_CACHE_MAX_ENTRIES)
        res_rows = self._safe(store.reservations, [])
        try:
            self.reservations = Reservations.from_rows(
                [
                    (r.reservation_id, r.connector_id, r.id_tag, r.parent_id_tag, r.expiry_date)
                    for r in res_rows
                ]
            )
        except ReservationError as exc:
            log.error("reservations in the state store are unreadable (%s): starting without", exc)
            self.reservations = Reservations()
        log.info(
            "authorization: local list v%d with %d entries, %d cached identifiers, %d reservations",
            self.local_list.version,
            len(self.local_list),
            len(self.auth_cache),
            len(self.reservations),
        )

    async def start(self) -> None:
        await super().start()
        for r in self.reservations.all():
            if r.connector_id != 0 and r.connector_id not in self.connectors:
                log.warning(
                    "reservation %d is for connector %d, which this charge point no longer has: dropped",
                    r.reservation_id,
                    r.connector_id,
                )
                self._drop_reservation(r.reservation_id)
        self._expire_reservations()
        self._sync_reserved()
        self._arm_reservation_timer()

    async def stop(self) -> None:
        if self._reservation_timer is not None:
            self._reservation_timer.cancel()
            self._reservation_timer = None
        await super().stop()

    def _after_boot(self) -> None:
        super()._after_boot()
        self._arm_reservation_timer()  # the clock was just set from BootNotification.conf

    # ================================================================== authorization
    def _online(self) -> bool:
        return bool(self.link is not None and self.link.session is not None and self.boot_accepted)

    def auth_config(self) -> AuthConfig:
        keys = self.keys
        assert keys is not None
        return AuthConfig(
            local_pre_authorize=bool(keys["LocalPreAuthorize"]),
            local_authorize_offline=bool(keys["LocalAuthorizeOffline"]),
            allow_offline_tx_for_unknown_id=bool(keys["AllowOfflineTxForUnknownId"]),
            authorization_cache_enabled=bool(keys["AuthorizationCacheEnabled"]),
            local_auth_list_enabled=bool(keys["LocalAuthListEnabled"]),
        )

    def _note_parent(self, id_tag: str, info: IdTagInfo | None) -> None:
        if not is_valid_id_tag(id_tag) or info is None:
            return
        key = norm_id_tag(id_tag)
        self._recent_parents[key] = info.parent_id_tag
        self._recent_parents.move_to_end(key)
        while len(self._recent_parents) > _RECENT_PARENTS:
            self._recent_parents.popitem(last=False)

    def parent_of(self, id_tag: str) -> str | None:
        """The parentIdTag last learned for ``id_tag`` (Authorize.conf, list or cache)."""
        if not is_valid_id_tag(id_tag):
            return None
        key = norm_id_tag(id_tag)
        if self._recent_parents.get(key):
            return self._recent_parents[key]
        entry = self.local_list.get(id_tag) or self.auth_cache.peek(id_tag)
        return entry.parent_id_tag if entry else None

    async def authorize(self, id_tag: str) -> AuthorizeResult:
        """§3.5 / §4.1: list over cache, LocalPreAuthorize, Authorize.req when online, offline rules."""
        cfg = self.auth_config()
        d = decide(
            id_tag,
            now=self.now(),
            online=self._online(),
            config=cfg,
            local_list=self.local_list,
            cache=self.auth_cache,
        )
        if d.outcome == "AskCSMS":
            d = await self._ask_csms(id_tag, cfg)
        self._note_parent(id_tag, d.info)
        log.info(
            "authorization of %s: %s (%s: %s)",
            _mask(id_tag),
            d.outcome,
            d.source,
            d.reason,
            extra=log_fields(id_tag=id_tag),
        )
        info = d.info.to_ocpp() if d.info is not None else None
        return AuthorizeResult(d.outcome == "Accepted", info, d.reason or d.source)

    async def _ask_csms(self, id_tag: str, cfg: AuthConfig) -> Decision:
        assert self.link is not None
        timeout = min(self.authorize_timeout_s, self.config.csms.response_timeout_s)
        try:
            conf = await self.link.call("Authorize", {"idTag": id_tag}, timeout)
        except (TimeoutError, CallErrorReceived, ConnectionError) as exc:
            why = f"{exc or type(exc).__name__}"
            log.warning("Authorize failed (%s): deciding with the offline rules", why)
            offline = decide(
                id_tag,
                now=self.now(),
                online=False,
                config=cfg,
                local_list=self.local_list,
                cache=self.auth_cache,
            )
            return replace(offline, reason=f"no answer to Authorize.req ({why}), {offline.reason}")
        raw = conf.get("idTagInfo", {})
        try:
            info = IdTagInfo.from_ocpp(raw)
        except AuthDataError as exc:
            log.warning("Authorize.conf unusable (%s): refused", exc)
            return Decision("Refused", None, "csms", str(exc))
        self.remember_id_tag_info(id_tag, raw)
        return decision_from_csms(info, self.now())

    def remember_id_tag_info(self, id_tag: str, info: dict[str, Any]) -> None:
        """§3.5.1: every idTagInfo the central system sends updates the cache (when enabled)."""
        super().remember_id_tag_info(id_tag, info)
        try:
            parsed = IdTagInfo.from_ocpp(info)
        except AuthDataError as exc:
            log.warning("idTagInfo for %s not usable: %s", _mask(id_tag), exc, extra=log_fields(id_tag=id_tag))
            return
        if not is_valid_id_tag(id_tag):
            return
        now = self.now()
        self._note_parent(id_tag, parsed)
        if local_list_conflict(self.local_list, id_tag, parsed, now):
            log.warning(
                "central system says %s is %s, the local list says otherwise: LocalListConflict",
                _mask(id_tag),
                parsed.status,
                extra=log_fields(id_tag=id_tag),
            )
            if self.boot_accepted:
                status, _code = self.station_status()
                self._spawn(self._send_status(0, status, "LocalListConflict"), "local-list-conflict")
        assert self.keys is not None and self.store is not None
        if not self.keys["AuthorizationCacheEnabled"]:
            return
        if self.keys["LocalAuthListEnabled"] and self.local_list.get(id_tag) is not None:
            return  # §3.5: identifiers in the Local Authorization List are not added to the cache
        evicted = self.auth_cache.update(id_tag, parsed, now)
        stored = self.auth_cache.peek(id_tag)
        if stored is None:
            return
        row = AuthRow(norm_id_tag(id_tag), *_info_cells(stored))
        try:
            with self.store.batch("authorization cache", durable=False):
                self.store.cache_put(row, iso(now))
                for key in evicted:
                    self.store.cache_delete(key)
        except StoreError as exc:
            log.error("state store: %s", exc)

    def clear_cache(self) -> str:
        """ClearCache (§5.4): Rejected when the persisted cache could not be cleared (it would come back)."""
        assert self.store is not None
        try:
            self.store.cache_clear()
        except StoreError as exc:
            log.error("ClearCache: %s", exc)
            return "Rejected"
        self.auth_cache.clear()
        self._recent_parents.clear()
        log.info("authorization cache cleared")
        return "Accepted"

    # ================================================================== local list (§5.10, §5.15)
    def local_list_version(self) -> int:
        assert self.keys is not None
        return list_version_for_get(self.local_list, bool(self.keys["LocalAuthListEnabled"]))

    def send_local_list(
        self, list_version: Any, update_type: Any, entries: Sequence[Mapping[str, Any]] | None
    ) -> str:
        """SendLocalList.req: validate, persist, then swap in the new list. All or nothing."""
        assert self.keys is not None and self.store is not None
        result = apply_send_local_list(
            self.local_list,
            list_version,
            update_type,
            entries,
            max_length=int(self.keys["LocalAuthListMaxLength"]),
            send_max_length=int(self.keys["SendLocalListMaxLength"]),
            enabled=bool(self.keys["LocalAuthListEnabled"]),
        )
        if result.status != "Accepted" or result.new_list is None:
            log.warning(
                "SendLocalList %s v%s: %s (%s)", update_type, list_version, result.status, result.reason
            )
            return result.status
        new = result.new_list
        try:
            if update_type == "Full":
                self.store.replace_local_list(new.version, [_store_row(r) for r in new.to_rows()])
            else:
                old = self.local_list.entries
                deletes = [key for key in old if key not in new.entries]
                upserts = [
                    _store_row(ModelAuthRow(key, *_info_cells(info)))
                    for key, info in new.entries.items()
                    if old.get(key) != info
                ]
                self.store.update_local_list(new.version, upserts, deletes)
        except StoreError as exc:
            log.error("SendLocalList not applied: %s", exc)
            return "Failed"
        self.local_list = new
        log.info("local authorization list v%d: %d entries (%s)", new.version, len(new), update_type)
        return "Accepted"

    # ================================================================== tap flow additions
    async def on_tag(self, id_tag: str) -> None:
        """A different identifier of the same group (parentIdTag) ends a running transaction (§4.10,
        compliance TC_069) when that is confirmed locally; otherwise the core flow (Authorize.req, then the
        parentIdTag of StartTransaction.conf) decides."""
        rt = self._group_stop_target(id_tag)
        if rt is None:
            await super().on_tag(id_tag)
            return
        log.info(
            "tag %s of the same group stops connector %d",
            _mask(id_tag),
            rt.id,
            extra=log_fields(connector_id=rt.id, id_tag=id_tag),
        )
        self._emit_timeline("tap", id_tag=id_tag)
        rt.stop_tag = id_tag
        self.flash(rt.id, IndicatorPattern.ACCEPTED)
        self.post(rt.id, cm.Stop("Local"))

    def _group_stop_target(self, id_tag: str) -> ConnectorRuntime | None:
        if not is_valid_id_tag(id_tag):
            return None
        running = [rt for rt in self.connectors.values() if rt.tx is not None]
        if any(norm_id_tag(rt.tx.id_tag) == norm_id_tag(id_tag) for rt in running):  # type: ignore[union-attr]
            return None  # the same identifier: the core stops it
        cfg = self.auth_config()
        for rt in running:
            tx = rt.tx
            assert tx is not None
            d = decide_stop(
                id_tag,
                tx_id_tag=tx.id_tag,
                tx_parent_id_tag=tx.parent_id_tag,
                now=self.now(),
                online=self._online(),
                config=cfg,
                local_list=self.local_list,
                cache=self.auth_cache,
            )
            if d.outcome == "Accepted":
                return rt
        return None

    async def on_start_transaction_answer(
        self, rt: ConnectorRuntime, id_tag: str, info: dict[str, Any]
    ) -> None:
        """StartTransaction.conf not Accepted with StopTransactionOnInvalidId=false (§9.1.28): the core
        withdraws the offer; this keeps it withdrawn for the rest of the transaction (a later limit
        recomputation must not offer current again)."""
        await super().on_start_transaction_answer(rt, id_tag, info)
        assert self.keys is not None
        if info.get("status", "Accepted") != "Accepted" and not self.keys["StopTransactionOnInvalidId"]:
            if rt.tx is not None:
                self._deauthorized.add(rt.tx.local_id)
                self._recompute_limit(rt)

    def authorization_claims(self, connector_id: int) -> list[tuple[float | None, str]]:
        rt = self.connectors[connector_id]
        if rt.tx is not None and rt.tx.local_id in self._deauthorized:
            return [(None, "idTag not accepted")]
        return []

    # ================================================================== reservations (§5.13, §5.1)
    def connector_states(self) -> dict[int, str]:
        """OCPP status per connector (0: the charge point) as the reservation model wants it."""
        states = {0: self.station_status()[0]}
        for rt in self.connectors.values():
            states[rt.id] = rt.state.status or "Available"
        return states

    def reserve_now(self, request: Mapping[str, Any]) -> str:
        """ReserveNow.req → status. Stored (memory and store) only when Accepted; the connector status follows
        after the answer (:meth:`reservations_changed`)."""
        assert self.keys is not None and self.store is not None
        now = self.now()
        states = self.connector_states()
        zero_ok = bool(self.keys["ReserveConnectorZeroSupported"])
        status, res, reason = self.reservations.check_reserve(
            request, now=now, connector_states=states, reserve_connector_zero_supported=zero_ok
        )
        if status != "Accepted" or res is None:
            log.info("ReserveNow %s: %s", status, reason)
            return status
        try:
            self.store.put_reservation(
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
        stored = self.reservations.reserve(
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
        self._arm_reservation_timer()
        return "Accepted"

    def cancel_reservation(self, reservation_id: int) -> str:
        """CancelReservation.req (§5.1): Accepted when the reservation was known."""
        if self.reservations.get(reservation_id) is None:
            log.info("CancelReservation %d: no such reservation", reservation_id)
            return "Rejected"
        self._drop_reservation(reservation_id)
        log.info("reservation %d cancelled", reservation_id)
        self._arm_reservation_timer()
        return "Accepted"

    def reservations_changed(self) -> None:
        """After ReserveNow/CancelReservation was answered: connector statuses follow (Reserved/Available)."""
        self._sync_reserved()

    def _drop_reservation(self, reservation_id: int) -> Reservation | None:
        assert self.store is not None
        gone = self.reservations.pop(reservation_id)
        self._safe(self.store.delete_reservation, None, reservation_id)
        return gone

    def _expire_reservations(self) -> None:
        assert self.store is not None
        for r in self.reservations.expire(self.now()):
            log.info("reservation %d (connector %d) expired", r.reservation_id, r.connector_id)
            self._safe(self.store.delete_reservation, None, r.reservation_id)
            self._emit_timeline("reservation_expired", reservation_id=r.reservation_id)

    def _arm_reservation_timer(self) -> None:
        """One timer for the earliest expiryDate (no polling)."""
        if self._reservation_timer is not None:
            self._reservation_timer.cancel()
            self._reservation_timer = None
        nxt = self.reservations.next_expiry()
        if nxt is None or self._stopping:
            return
        delay = max(0.0, (nxt - self.now()).total_seconds())
        self._reservation_timer = asyncio.get_running_loop().call_later(
            delay + 0.001, self._on_reservation_timer
        )

    def _on_reservation_timer(self) -> None:
        self._reservation_timer = None
        self._expire_reservations()
        self._sync_reserved()
        self._arm_reservation_timer()

    def _sync_reserved(self, states: dict[int, str] | None = None) -> None:
        """Post cm.Reserved(True/False) where the reservation model's view changed."""
        if not self.connectors:
            return
        states = states if states is not None else self.connector_states()
        now = self.now()
        for rt in self.connectors.values():
            want = self.reservations.connector_reserved_effectively(rt.id, states, now)
            if want != self._reserved_posted.get(rt.id, rt.state.reserved):
                self._reserved_posted[rt.id] = want
                self.post(rt.id, cm.Reserved(want))

    def on_status_changed(self, rt: ConnectorRuntime, status: str, error_code: str) -> None:
        """§5.13 (3): a reservation ends when its connector (or the charge point) is Faulted/Unavailable; a
        connector taken or freed changes which connectors a connector-0 reservation keeps."""
        super().on_status_changed(rt, status, error_code)
        if self._deauthorized:
            running = {r.tx.local_id for r in self.connectors.values() if r.tx is not None}
            self._deauthorized &= running
        if not len(self.reservations) and not any(self._reserved_posted.values()):
            return
        states = self.connector_states()
        states[rt.id] = status
        gone = self.reservations.terminate_unusable(states)
        for r in gone:
            log.info("reservation %d ends: connector %d is %s", r.reservation_id, r.connector_id, status)
            assert self.store is not None
            self._safe(self.store.delete_reservation, None, r.reservation_id)
        self._sync_reserved(states)
        if gone:
            self._arm_reservation_timer()

    def _free(self, rt: ConnectorRuntime) -> bool:
        s = rt.state
        return s.session_tag is None and not s.in_transaction and s.operative and not s.faults

    def _holder_reservation(
        self, connector_id: int, id_tag: str, parent_id_tag: str | None
    ) -> Reservation | None:
        if not len(self.reservations):
            return None
        ok, r = self.reservations.may_use(
            connector_id, id_tag, parent_id_tag, self.now(), connector_states=self.connector_states()
        )
        return r if ok else None

    def reserved_connector_for(self, id_tag: str, parent_id_tag: str | None) -> ConnectorRuntime | None:
        """A free connector held for this identifier (its idTag or parentIdTag matches, §5.13)."""
        parent = parent_id_tag or self.parent_of(id_tag)
        now = self.now()
        for r in self.reservations.all():
            if not r.is_active(now) or not r.matches(id_tag, parent):
                continue
            if r.connector_id != 0:
                rt = self.connectors.get(r.connector_id)
                if rt is not None and self._free(rt):
                    return rt
                continue
            usable = [
                rt
                for rt in self.connectors.values()
                if self._free(rt) and self._holder_reservation(rt.id, id_tag, parent) is not None
            ]
            plugged = [rt for rt in usable if rt.state.pilot.vehicle_connected]
            if plugged or usable:
                return (plugged or usable)[0]
        return super().reserved_connector_for(id_tag, parent_id_tag)

    def connector_for_tag(self, id_tag: str) -> ConnectorRuntime | None:
        """Like the core, but which connectors are reserved comes from the reservation model (the connector
        flag follows a moment later)."""
        held = self.reserved_connector_for(id_tag, None)
        if held is not None:
            return held
        states = self.connector_states()
        now = self.now()
        candidates = [
            rt
            for rt in self.connectors.values()
            if self._free(rt) and not self.reservations.connector_reserved_effectively(rt.id, states, now)
        ]
        plugged = [rt for rt in candidates if rt.state.pilot.vehicle_connected]
        return (plugged or candidates or [None])[0]

    def reservation_allows(self, connector_id: int, id_tag: str) -> bool:
        if not len(self.reservations) or connector_id not in self.connectors:
            return super().reservation_allows(connector_id, id_tag)
        ok, _r = self.reservations.may_use(
            connector_id,
            id_tag,
            self.parent_of(id_tag),
            self.now(),
            connector_states=self.connector_states(),
        )
        return ok

    async def remote_start(
        self, id_tag: str, connector_id: int | None, profile: dict[str, Any] | None
    ) -> None:
        """Defence in depth: the ``@after`` of RemoteStartTransaction runs whatever the answer was, so a
        connector reserved for somebody else is checked again here."""
        if connector_id in self.connectors and not self.reservation_allows(connector_id, id_tag):  # type: ignore[operator]
            log.warning(
                "remote start for %s on reserved connector %d not done",
                _mask(id_tag),
                connector_id,
                extra=log_fields(connector_id=connector_id, id_tag=id_tag),
            )
            return
        await super().remote_start(id_tag, connector_id, profile)

    def take_reservation_for(self, connector_id: int, id_tag: str) -> int | None:
        """A transaction starts: the holder's reservation ends (§5.13 (1)); its id goes into
        StartTransaction.req."""
        r = self._holder_reservation(connector_id, id_tag, self.parent_of(id_tag))
        if r is None:
            return super().take_reservation_for(connector_id, id_tag)
        self._drop_reservation(r.reservation_id)
        log.info("reservation %d used on connector %d", r.reservation_id, connector_id)
        self._sync_reserved()
        self._arm_reservation_timer()
        return r.reservation_id


def _info_cells(info: IdTagInfo) -> tuple[str, str | None, str | None]:
    d = info.to_ocpp()
    return info.status, d.get("expiryDate"), info.parent_id_tag

"""Who may charge: Local Authorization List, Authorization Cache, offline rules and Reservations.

The authorization service. The decisions are the pure model of :mod:`chargepoint.auth`; this service keeps the
list and the cache, persists them through the store and asks the central system (Authorize.req). Reservations
are their own service (chargepoint/services/reservations.py).

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

import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

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
from chargepoint.keys import ConfigurationKeys
from chargepoint.logsetup import log_fields
from chargepoint.metering import iso
from chargepoint.privacy import mask_id_tag as _mask
from chargepoint.protocol.outbox import CallErrorReceived
from chargepoint.services.station import ActiveTransaction, Claim, Connectors
from chargepoint.store import AuthRow, Store, StoreError

log = logging.getLogger(__name__)

AUTH_CACHE_MAX_ENTRIES = 1000
AUTHORIZE_TIMEOUT_S = 5.0
_RECENT_PARENTS = 64

#: ``call(action, payload, timeout)``: a request to the central system (raises when offline or refused).
CsmsCall = Callable[[str, dict[str, Any], float], Awaitable[dict[str, Any]]]


def _store_row(row: ModelAuthRow) -> AuthRow:
    return AuthRow(row.id_tag, row.status, row.expiry_date, row.parent_id_tag)


class AuthorizeResult(tuple[bool, dict[str, Any] | None]):
    """``(accepted, idTagInfo)`` of :meth:`Authorization.authorize`: unpacks and compares like that
    pair; ``reason`` says why, in words for the log ("offline and not locally authorized", "Authorize.conf
    Blocked" …), so a refusal is logged with its real cause."""

    reason: str

    def __new__(cls, accepted: bool, info: dict[str, Any] | None, reason: str = "") -> AuthorizeResult:
        self = super().__new__(cls, (accepted, info))
        self.reason = reason
        return self


class Authorization:
    """Local Authorization List, Authorization Cache, offline rules, Authorize.req; who may stop what."""

    def __init__(
        self,
        connectors: Connectors,
        *,
        keys: ConfigurationKeys,
        store: Store,
        now: Callable[[], datetime],
        online: Callable[[], bool],
        call: CsmsCall,
        response_timeout_s: float,
        report_conflict: Callable[[], None],
    ) -> None:
        """``report_conflict()`` sends the LocalListConflict StatusNotification of connector 0 (§7.6)."""
        self._connectors = connectors
        self._keys = keys
        self._store = store
        self._now = now
        self._online = online
        self._call = call
        self._response_timeout_s = response_timeout_s
        self._report_conflict = report_conflict
        self._authorize_timeout_s = AUTHORIZE_TIMEOUT_S
        self._recent_parents: OrderedDict[str, str | None] = OrderedDict()
        self._deauthorized: set[int] = set()  # local ids of transactions the CSMS refused (no energy)
        self._local_list = LocalAuthList()
        self._auth_cache = AuthCache(AUTH_CACHE_MAX_ENTRIES)
        self._load()

    def _load(self) -> None:
        """List and cache from the store, before any tap or OCPP request can arrive."""
        store = self._store
        try:
            version, rows = store.local_list()
        except StoreError as exc:
            log.error("state store: %s", exc)
            version, rows = 0, []
        try:
            self._local_list = LocalAuthList.from_rows(
                version, [(r.id_tag, r.status, r.expiry_date, r.parent_id_tag) for r in rows]
            )
        except AuthDataError as exc:
            log.error("local authorization list in the state store is unreadable (%s): starting empty", exc)
            self._local_list = LocalAuthList()
        try:
            cache_rows = store.cache_rows()
        except StoreError as exc:
            log.error("state store: %s", exc)
            cache_rows = []
        try:
            self._auth_cache = AuthCache.from_rows(
                [(r.id_tag, r.status, r.expiry_date, r.parent_id_tag, used) for r, used in cache_rows],
                AUTH_CACHE_MAX_ENTRIES,
            )
        except AuthDataError as exc:
            log.error("authorization cache in the state store is unreadable (%s): starting empty", exc)
            self._auth_cache = AuthCache(AUTH_CACHE_MAX_ENTRIES)
        log.info(
            "authorization: local list v%d with %d entries, %d cached identifiers",
            self._local_list.version,
            len(self._local_list),
            len(self._auth_cache),
        )

    # ================================================================== read-only views
    @property
    def local_list(self) -> LocalAuthList:
        """The Local Authorization List in effect (immutable; replaced by SendLocalList)."""
        return self._local_list

    @property
    def auth_cache(self) -> AuthCache:
        return self._auth_cache

    @property
    def authorize_timeout_s(self) -> float:
        """How long a driver waits for Authorize.conf before the offline rules decide."""
        return self._authorize_timeout_s

    @authorize_timeout_s.setter
    def authorize_timeout_s(self, seconds: float) -> None:
        self._authorize_timeout_s = seconds

    def auth_config(self) -> AuthConfig:
        keys = self._keys
        return AuthConfig(
            local_pre_authorize=bool(keys["LocalPreAuthorize"]),
            local_authorize_offline=bool(keys["LocalAuthorizeOffline"]),
            allow_offline_tx_for_unknown_id=bool(keys["AllowOfflineTxForUnknownId"]),
            authorization_cache_enabled=bool(keys["AuthorizationCacheEnabled"]),
            local_auth_list_enabled=bool(keys["LocalAuthListEnabled"]),
        )

    # ================================================================== stopping by group (§4.10)
    def group_stop_target(self, id_tag: str) -> int | None:
        """The connector whose transaction a different identifier of the same group (parentIdTag) ends
        (§4.10, compliance TC_069) when that is confirmed locally; None: the normal flow decides."""
        if not is_valid_id_tag(id_tag):
            return None
        running = [rt for rt in self._connectors.values() if rt.tx is not None]
        if any(norm_id_tag(rt.tx.id_tag) == norm_id_tag(id_tag) for rt in running):  # type: ignore[union-attr]
            return None  # the same identifier: the normal flow stops it
        cfg = self.auth_config()
        for rt in running:
            tx = rt.tx
            assert tx is not None
            d = decide_stop(
                id_tag,
                tx_id_tag=tx.id_tag,
                tx_parent_id_tag=tx.parent_id_tag,
                now=self._now(),
                online=self._online(),
                config=cfg,
                local_list=self._local_list,
                cache=self._auth_cache,
            )
            if d.outcome == "Accepted":
                return rt.id
        return None

    # ================================================================== StopTransactionOnInvalidId=false
    def deauthorize(self, tx: ActiveTransaction) -> None:
        """StartTransaction.conf not Accepted with StopTransactionOnInvalidId=false (§9.1.28): no energy for
        the rest of the transaction (a later limit recomputation must not offer current again)."""
        self._deauthorized.add(tx.local_id)

    def forget_ended(self) -> None:
        """Drop the marks of transactions that ended."""
        if self._deauthorized:
            running = {r.tx.local_id for r in self._connectors.values() if r.tx is not None}
            self._deauthorized &= running

    def claims(self, connector_id: int) -> list[Claim]:
        rt = self._connectors[connector_id]
        if rt.tx is not None and rt.tx.local_id in self._deauthorized:
            return [(None, "idTag not accepted")]
        return []

    # ================================================================== authorization
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
        entry = self._local_list.get(id_tag) or self._auth_cache.peek(id_tag)
        return entry.parent_id_tag if entry else None

    async def authorize(self, id_tag: str) -> AuthorizeResult:
        """§3.5 / §4.1: list over cache, LocalPreAuthorize, Authorize.req when online, offline rules."""
        cfg = self.auth_config()
        d = decide(
            id_tag,
            now=self._now(),
            online=self._online(),
            config=cfg,
            local_list=self._local_list,
            cache=self._auth_cache,
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
        timeout = min(self._authorize_timeout_s, self._response_timeout_s)
        try:
            conf = await self._call("Authorize", {"idTag": id_tag}, timeout)
        except (TimeoutError, CallErrorReceived, ConnectionError) as exc:
            why = f"{exc or type(exc).__name__}"
            log.warning("Authorize failed (%s): deciding with the offline rules", why)
            offline = decide(
                id_tag,
                now=self._now(),
                online=False,
                config=cfg,
                local_list=self._local_list,
                cache=self._auth_cache,
            )
            return replace(offline, reason=f"no answer to Authorize.req ({why}), {offline.reason}")
        raw = conf.get("idTagInfo", {})
        try:
            info = IdTagInfo.from_ocpp(raw)
        except AuthDataError as exc:
            log.warning("Authorize.conf unusable (%s): refused", exc)
            return Decision("Refused", None, "csms", str(exc))
        self.remember_id_tag_info(id_tag, raw)
        return decision_from_csms(info, self._now())

    def remember_id_tag_info(self, id_tag: str, info: dict[str, Any]) -> None:
        """§3.5.1: every idTagInfo the central system sends updates the cache (when enabled)."""
        try:
            parsed = IdTagInfo.from_ocpp(info)
        except AuthDataError as exc:
            log.warning("idTagInfo for %s not usable: %s", _mask(id_tag), exc, extra=log_fields(id_tag=id_tag))
            return
        if not is_valid_id_tag(id_tag):
            return
        now = self._now()
        self._note_parent(id_tag, parsed)
        if local_list_conflict(self._local_list, id_tag, parsed, now):
            log.warning(
                "central system says %s is %s, the local list says otherwise: LocalListConflict",
                _mask(id_tag),
                parsed.status,
                extra=log_fields(id_tag=id_tag),
            )
            self._report_conflict()
        if not self._keys["AuthorizationCacheEnabled"]:
            return
        if self._keys["LocalAuthListEnabled"] and self._local_list.get(id_tag) is not None:
            return  # §3.5: identifiers in the Local Authorization List are not added to the cache
        evicted = self._auth_cache.update(id_tag, parsed, now)
        stored = self._auth_cache.peek(id_tag)
        if stored is None:
            return
        row = AuthRow(norm_id_tag(id_tag), *_info_cells(stored))
        try:
            with self._store.batch("authorization cache", durable=False):
                self._store.cache_put(row, iso(now))
                for key in evicted:
                    self._store.cache_delete(key)
        except StoreError as exc:
            log.error("state store: %s", exc)

    def clear_cache(self) -> str:
        """ClearCache (§5.4): Rejected when the persisted cache could not be cleared (it would come back)."""
        try:
            self._store.cache_clear()
        except StoreError as exc:
            log.error("ClearCache: %s", exc)
            return "Rejected"
        self._auth_cache.clear()
        self._recent_parents.clear()
        log.info("authorization cache cleared")
        return "Accepted"

    def local_list_version(self) -> int:
        return list_version_for_get(self._local_list, bool(self._keys["LocalAuthListEnabled"]))

    def send_local_list(
        self, list_version: Any, update_type: Any, entries: Sequence[Mapping[str, Any]] | None
    ) -> str:
        """SendLocalList.req: validate, persist, then swap in the new list. All or nothing."""
        result = apply_send_local_list(
            self._local_list,
            list_version,
            update_type,
            entries,
            max_length=int(self._keys["LocalAuthListMaxLength"]),
            send_max_length=int(self._keys["SendLocalListMaxLength"]),
            enabled=bool(self._keys["LocalAuthListEnabled"]),
        )
        if result.status != "Accepted" or result.new_list is None:
            log.warning(
                "SendLocalList %s v%s: %s (%s)", update_type, list_version, result.status, result.reason
            )
            return result.status
        new = result.new_list
        try:
            if update_type == "Full":
                self._store.replace_local_list(new.version, [_store_row(r) for r in new.to_rows()])
            else:
                old = self._local_list.entries
                deletes = [key for key in old if key not in new.entries]
                upserts = [
                    _store_row(ModelAuthRow(key, *_info_cells(info)))
                    for key, info in new.entries.items()
                    if old.get(key) != info
                ]
                self._store.update_local_list(new.version, upserts, deletes)
        except StoreError as exc:
            log.error("SendLocalList not applied: %s", exc)
            return "Failed"
        self._local_list = new
        log.info("local authorization list v%d: %d entries (%s)", new.version, len(new), update_type)
        return "Accepted"

def _info_cells(info: IdTagInfo) -> tuple[str, str | None, str | None]:
    d = info.to_ocpp()
    return info.status, d.get("expiryDate"), info.parent_id_tag

"""The application API: the one door every front end uses.

Front ends — the status socket and ``chargepoint status``, ``simulate``'s stdin commands, the demo's
timeline, the web UI, MQTT/Home Assistant and the local controller's site view — see the station only
through :class:`StationApi`:

* :meth:`StationApi.snapshot` — a typed, immutable picture of the station (what ``status`` shows,
  limit claims and their sources included); :meth:`StationView.as_dict` is the JSON shape of the
  status socket.
* :meth:`StationApi.subscribe` — a stream of :class:`Change` events (status, transaction, fault,
  limit, link, meter …) a front end reads without polling. Each subscriber has its own bounded queue:
  a slow or vanished front end never slows the control loop; when its queue is full the oldest *state*
  change is dropped (a newer snapshot supersedes it) and :attr:`Subscription.dropped` counts it.
* commands — start/stop a session, a local current limit, availability, clearing a latched fault. Each
  takes the caller's :class:`Role` and answers a :class:`CommandResult`, or raises
  :class:`CommandError` with a code and a message a person can read (an unknown connector, a value out
  of range, a role that may not do it). A command never raises anything else for bad input.

Front ends never import a service, the controller, or the hardware. This module holds the contract
(types and the protocol); the implementation over the controller lives beside it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import copy
import dataclasses
import enum
import logging
import math
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable

from chargepoint import connector as cm
from chargepoint.privacy import mask_id_tag


class Role(enum.IntEnum):
    """Who is asking. Higher may do what lower may."""

    VIEWER = 0  # read the status only
    USER = 1  # start/stop sessions, local current limit, availability
    ADMIN = 2  # also: clear latched faults, configuration, diagnostics


@dataclass(frozen=True)
class LimitClaimView:
    """One claim on a connector's current (chargepoint.services.limits): the lowest wins; a None pauses."""

    source: str  # in words, e.g. "connector maximum (configuration)", "cable rating 32 A (PP)", "local limit 10 A"
    amps: float | None  # None: this source pauses the connector (nothing offered)
    priority: int = 0  # the claim's rank in the arbiter's priority order (lower asked first; names ties)
    detail: str = ""


@dataclass(frozen=True)
class FaultView:
    kind: str  # hal.interfaces.FaultKind value, e.g. "rcm", "overtemp", "cable"
    latched: bool  # needs an admin's clear_fault (or a power cycle) once the cause is gone
    action: str  # what a person should do, in one sentence


@dataclass(frozen=True)
class ConnectorView:
    id: int
    status: str  # OCPP ChargePointStatus
    error_code: str  # OCPP ChargePointErrorCode
    pilot: str  # IEC 61851-1 state letter A–F
    available: bool  # not made Inoperative (by the central system or locally)
    cable_a: float | None  # the plugged cable's rating (PP) or a tethered cable's configured one
    offered_a: float | None  # what the pilot offers now (None: no PWM)
    measured_a: float | None
    power_w: float | None
    energy_wh: float | None  # the meter's register
    session_energy_wh: float | None  # since the transaction started
    contactor: str  # "open" | "closed"
    transaction_id: int | None
    id_tag: str | None  # always masked (chargepoint.privacy.mask_id_tag)
    session_started: str | None  # ISO 8601 UTC
    limit_a: float | None  # the limit in force
    limit_source: str  # the claim that decided it
    claims: tuple[LimitClaimView, ...] = ()
    local_limit_a: float | None = None  # the owner's own limit (a claim among the others)
    faults: tuple[FaultView, ...] = ()


@dataclass(frozen=True)
class LinkView:
    state: str  # "connected" | "connecting" | "offline"
    registration: str  # BootNotification status: "Accepted", "Pending", "Rejected", "Unknown"
    connected_since: str | None  # ISO 8601 UTC
    queued: int  # transaction messages waiting in the persistent outbox
    last_error: str | None


@dataclass(frozen=True)
class StationView:
    charge_point_id: str
    firmware_version: str
    link: LinkView
    connectors: tuple[ConnectorView, ...]
    free_vend: bool = False
    dropped: tuple[Mapping[str, Any], ...] = ()  # transaction messages the outbox gave up on
    #: The controller's status dict this view was made from (the status socket's JSON shape, with keys the
    #: typed view does not model: temperature sensors, smart-charging details …). Read-only by convention.
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def connector(self, connector_id: int) -> ConnectorView | None:
        return next((c for c in self.connectors if c.id == connector_id), None)

    def as_dict(self) -> dict[str, Any]:
        """The status socket's JSON shape (documented in chargepoint.service): today's keys unchanged, the
        typed view's additions (cable rating, claims, session energy, link details, version) added."""
        out = copy.deepcopy(dict(self.raw))
        out.setdefault("charge_point_id", self.charge_point_id)
        out["firmware_version"] = self.firmware_version
        out["free_vend"] = self.free_vend
        out["link"] = dataclasses.asdict(self.link)
        raw_connectors = {c.get("id"): c for c in out.get("connectors", []) if isinstance(c, dict)}
        connectors = []
        for c in self.connectors:
            d = raw_connectors.get(c.id, {})
            view = dataclasses.asdict(c)
            view["claims"] = [dataclasses.asdict(x) for x in c.claims]
            view["faults"] = d.get("faults", sorted(f.kind for f in c.faults))
            view["fault_details"] = [dataclasses.asdict(f) for f in c.faults]
            for k, v in view.items():
                d.setdefault(k, v)  # today's keys keep today's values
            connectors.append(d)
        out["connectors"] = connectors
        return out


class ChangeKind(enum.StrEnum):
    STATUS = "status"  # OCPP status / error code of a connector
    PILOT = "pilot"
    CONTACTOR = "contactor"
    OFFER = "offer"  # the pilot's offered current
    LIMIT = "limit"  # limit in force or its claims
    METER = "meter"  # a new reading (compared once a second while subscribed) or a MeterValues sample
    TRANSACTION = "transaction"  # started / id assigned / ended (data["event"])
    AUTHORIZATION = "authorization"  # tap, authorized, refused (id tags masked)
    FAULT = "fault"  # event "raised" / "cleared"; data: raised, cleared, faults (remaining), latched
    LINK = "link"  # boot answer, disconnected, link_error
    FIRMWARE = "firmware"
    PROFILE = "profile"
    RESERVATION = "reservation"
    STATION = "station"  # anything else worth showing


#: Kinds whose newer event supersedes an older one; a full subscriber queue drops these first.
STATE_KINDS = frozenset({ChangeKind.PILOT, ChangeKind.OFFER, ChangeKind.LIMIT, ChangeKind.METER,
                         ChangeKind.CONTACTOR, ChangeKind.STATUS, ChangeKind.LINK})


@dataclass(frozen=True)
class Change:
    kind: ChangeKind
    connector_id: int | None  # None: the station
    data: Mapping[str, Any] = field(default_factory=dict)  # id tags already masked
    at: float = 0.0  # loop time (monotonic seconds)


@runtime_checkable
class Subscription(Protocol):
    dropped: int

    def __aiter__(self) -> AsyncIterator[Change]: ...
    async def get(self) -> Change: ...
    def close(self) -> None: ...


@dataclass(frozen=True)
class CommandResult:
    accepted: bool
    message: str = ""  # why not, or what happens next ("the car will be offered 10 A")


class CommandError(Exception):
    """A command that cannot be taken as asked: nothing was switched."""

    UNKNOWN_CONNECTOR = "unknown_connector"
    BAD_VALUE = "bad_value"
    NOT_PERMITTED = "not_permitted"
    NOT_POSSIBLE = "not_possible"  # e.g. no session to stop, free vend disabled

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@runtime_checkable
class StationApi(Protocol):
    def snapshot(self) -> StationView: ...

    def subscribe(self, maxsize: int = 256) -> Subscription: ...

    async def start_session(
        self, connector_id: int, id_tag: str | None = None, *, role: Role = Role.USER
    ) -> CommandResult:
        """Start on this connector for ``id_tag`` (authorized as a card tap would be), or — with None —
        as free vend when configured."""
        ...

    async def stop_session(self, connector_id: int, *, role: Role = Role.USER) -> CommandResult: ...

    async def set_local_limit(
        self, connector_id: int | None, amps: float | None, *, role: Role = Role.USER
    ) -> CommandResult:
        """The owner's limit (None lifts it; connector None: every connector). One more claim: it never
        raises what the central system or the installation allow."""
        ...

    async def set_available(self, connector_id: int, available: bool, *, role: Role = Role.USER) -> CommandResult: ...

    async def clear_fault(self, connector_id: int, *, role: Role = Role.ADMIN) -> CommandResult: ...


# ====================================================================== the implementation
# Everything below reads the controller through the small adapter section marked "adapter"; the rest is the
# API's own logic (validation, roles, the change stream) and does not know how the controller is built.

log = logging.getLogger(__name__)

#: OCPP 1.6 IdToken is CiString20Type (§7.28 IdToken, §7.1 CiString20Type).
ID_TAG_MAX_LEN = 20
#: IEC 61851-1: the lowest current a pilot may offer. Below it a car cannot charge; 0 pauses.
MIN_OFFER_A = 6.0

_TIMELINE: dict[str, ChangeKind] = {
    "pilot": ChangeKind.PILOT,
    "contactor": ChangeKind.CONTACTOR,
    "offer": ChangeKind.OFFER,
    "status": ChangeKind.STATUS,
    "limit": ChangeKind.LIMIT,
    "cable": ChangeKind.LIMIT,
    "temperature": ChangeKind.LIMIT,
    "profile": ChangeKind.PROFILE,
    "transaction_started": ChangeKind.TRANSACTION,
    "transaction_id": ChangeKind.TRANSACTION,
    "transaction_stopped": ChangeKind.TRANSACTION,
    "dropped": ChangeKind.TRANSACTION,
    "tap": ChangeKind.AUTHORIZATION,
    "authorized": ChangeKind.AUTHORIZATION,
    "refused": ChangeKind.AUTHORIZATION,
    "timeout": ChangeKind.AUTHORIZATION,
    "boot": ChangeKind.LINK,
    "disconnected": ChangeKind.LINK,
    "link_error": ChangeKind.LINK,
    "firmware": ChangeKind.FIRMWARE,
    "diagnostics": ChangeKind.FIRMWARE,
    "signed_firmware": ChangeKind.FIRMWARE,
    "reservation_expired": ChangeKind.RESERVATION,
    "reset": ChangeKind.STATION,
    "security_event": ChangeKind.STATION,
    "fault": ChangeKind.FAULT,  # data: raised, cleared, faults (what remains), latched
    "meter": ChangeKind.METER,
    "meter_values": ChangeKind.METER,  # a MeterValues sample: a state, superseded by the next one
}
_TRANSACTION_EVENT = {"transaction_started": "started", "transaction_id": "transaction_id",
                      "transaction_stopped": "ended", "dropped": "dropped"}

#: What a person should do about each fault kind (hal.interfaces.FaultKind values).
FAULT_ACTIONS: dict[str, str] = {
    "rcd": "Residual current: unplug the car and have the installation checked; an admin clears it once "
           "the RCM no longer signals a fault.",
    "weld": "The contactor may be welded: switch the wallbox off at its breaker and call the installer.",
    "diode": "The car's pilot diode is missing: check the cable and the car; it clears on unplug.",
    "overcurrent": "The car drew more than offered: it clears on unplug; if it repeats, check the car.",
    "overtemp": "Too hot: charging resumes by itself when the socket or contactor has cooled down.",
    "cable": "Invalid cable coding: unplug and use another cable.",
    "meter": "The energy meter does not answer: check its wiring and Modbus settings.",
    "pilot": "Control pilot fault: unplug the car; if it stays, check the pilot board.",
    "contactor": "The contactor did not switch as commanded: have the installer check it.",
    "lock": "The socket's lock did not engage: unplug and plug the cable in firmly.",
    "phase_switch": "The 1p/3p switch did not end on the phases asked: unplug; if it repeats, have the relay "
                    "and its wiring checked.",
}


def _fault_action(kind: str, latched: bool) -> str:
    text = FAULT_ACTIONS.get(kind, "See the journal (journalctl -u chargepoint) for the cause.")
    if latched and "admin" not in text:
        text += " It stays latched until an admin clears it or the charger is reset."
    return text


class _Subscription:
    """One front end's bounded view of the change stream. Never blocks the producer."""

    def __init__(self, owner: ControllerApi, maxsize: int) -> None:
        self._owner = owner
        self._maxsize = max(1, int(maxsize))
        self._queue: collections.deque[Change] = collections.deque()
        self._ready = asyncio.Event()
        self._closed = False
        self._warned = False
        self.dropped = 0

    def offer(self, change: Change) -> None:
        if self._closed:
            return
        if len(self._queue) >= self._maxsize:
            # Full: the oldest state change goes (a newer one or the snapshot supersedes it). With none queued,
            # an incoming state change is the one dropped, so a flood of meter values never pushes out a
            # transaction or a fault; only an event pushes out an event, and that is counted and logged.
            self.dropped += 1
            victim = next((c for c in self._queue if c.kind in STATE_KINDS), None)
            if victim is None:
                if change.kind in STATE_KINDS:
                    return
                victim = self._queue[0]
                if not self._warned:
                    self._warned = True
                    log.warning("a front end reads the change stream too slowly: it lost a %s change",
                                victim.kind.value)
            self._queue.remove(victim)
        self._queue.append(change)
        self._ready.set()

    async def get(self) -> Change:
        while not self._queue:
            if self._closed:
                raise EOFError("subscription closed")
            self._ready.clear()
            await self._ready.wait()
        return self._queue.popleft()

    async def __aiter__(self) -> AsyncIterator[Change]:
        while True:
            try:
                yield await self.get()
            except EOFError:
                return

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._ready.set()
            self._owner._forget(self)


class ControllerApi:
    """:class:`StationApi` over the running controller (one per controller: ``controller.api``)."""

    #: How often the meter's values are compared for METER changes while someone subscribes.
    METER_PERIOD_S = 1.0

    def __init__(self, controller: Any) -> None:
        self._c = controller
        self._subs: set[_Subscription] = set()
        self._meter_task: asyncio.Task[None] | None = None
        self._last_meter: dict[int, tuple[Any, ...]] = {}
        self._connected_since: str | None = None
        self._last_error: str | None = None
        self._pilot_before: dict[int, str] = {}
        self._history: Any = None
        self._history_store: Any = None
        self._policy_tasks: set[asyncio.Task[None]] = set()
        controller.listeners.append(self._on_timeline)

    # ------------------------------------------------------------------ adapter (the controller's surface)
    def _raw_snapshot(self) -> dict[str, Any]:
        return dict(self._c.snapshot())

    def _config(self) -> Any:
        return self._c.config

    def _connector_ids(self) -> list[int]:
        return sorted(self._c.connectors)

    def _runtime(self, connector_id: int) -> Any:
        return self._c.connectors.get(connector_id)

    def _session_facts(self, connector_id: int) -> tuple[str | None, float | None]:
        """(ISO start, Wh since start) of the running transaction, if any: the transactions service knows."""
        return self._c.transactions.session_facts(connector_id)  # type: ignore[no-any-return]

    def _has_transaction(self, connector_id: int) -> bool:
        return self._c.transactions.session(connector_id) is not None

    def _local_limit(self, connector_id: int) -> float | None:
        return self._c.limits.local_limit(connector_id)  # type: ignore[no-any-return]

    def _apply_local_limit(self, connector_id: int | None, amps: float | None) -> None:
        self._c.limits.set_local_limit(connector_id, amps)

    async def _authorize(self, id_tag: str) -> bool:
        accepted, _info = await self._c.authorization.authorize(id_tag)
        return bool(accepted)

    def _post(self, connector_id: int, event: Any) -> None:
        self._c.post(connector_id, event)

    def _reservation_allows(self, connector_id: int, id_tag: str) -> bool:
        return bool(self._c.reservations.reservation_allows(connector_id, id_tag))

    def _stop(self, connector_id: int, reason: str) -> bool:
        return bool(self._c.transactions.stop(connector_id, reason))

    async def _change_availability(self, connector_id: int, operative: bool) -> str:
        return str(await self._c.availability.change_availability(connector_id, operative))

    def _loop_time(self) -> float:
        return float(self._c.monotonic())

    # ------------------------------------------------------------------ session history
    @property
    def history(self) -> Any:
        """The session history (chargepoint.sessions.SessionHistory: ``query(...)``), or None without a store."""
        store = getattr(self._c, "store", None)
        if store is None:
            return None
        if self._history is None or self._history_store is not store:
            from chargepoint.sessions import DEFAULT_RETENTION_DAYS, SessionHistory

            days = getattr(self._config(), "session_history_days", DEFAULT_RETENTION_DAYS)
            self._history, self._history_store = SessionHistory(store, retention_days=days), store
        return self._history

    # ------------------------------------------------------------------ snapshot
    def snapshot(self) -> StationView:
        raw = self._raw_snapshot()
        cfg = self._config()
        from chargepoint import __version__

        connectors = []
        for d in raw.get("connectors", []):
            cid = int(d["id"])
            started, session_wh = self._session_facts(cid)
            claims = tuple(
                LimitClaimView(source=str(c.get("source", "")), amps=c.get("amps"),
                               priority=int(c.get("priority", rank)), detail=str(c.get("detail", "")))
                for rank, c in enumerate(d.get("limit_claims", [])) if isinstance(c, Mapping)
            )
            rt = self._runtime(cid)
            state = getattr(rt, "state", None)
            latched = {getattr(k, "value", k) for k in getattr(state, "latched", ())}
            faults = tuple(FaultView(kind=k, latched=k in latched, action=_fault_action(k, k in latched))
                           for k in d.get("faults", []))
            connectors.append(ConnectorView(
                id=cid, status=d.get("status", ""), error_code=d.get("error_code", "NoError"),
                pilot=d.get("pilot", ""), available=bool(getattr(state, "operative", True)),
                cable_a=d.get("cable_a"), offered_a=d.get("offered_a"), measured_a=d.get("measured_a"),
                power_w=d.get("power_w"), energy_wh=d.get("energy_wh"), session_energy_wh=session_wh,
                contactor=d.get("contactor", "open"), transaction_id=d.get("transaction_id"),
                id_tag=d.get("id_tag"), session_started=started, limit_a=d.get("limit_a"),
                limit_source=d.get("limit_source", ""), claims=claims, local_limit_a=self._local_limit(cid),
                faults=faults,
            ))
        state = raw.get("csms", "offline")
        link = LinkView(state=state, registration=raw.get("registration", "Unknown"),
                        connected_since=self._connected_since if state == "connected" else None,
                        queued=int(raw.get("queued", 0)), last_error=self._last_error)
        return StationView(
            charge_point_id=raw.get("charge_point_id", cfg.charge_point_id),
            firmware_version=getattr(cfg, "firmware_version", None) or __version__,
            link=link, connectors=tuple(connectors), free_vend=bool(self._free_vend_tag()),
            dropped=tuple(raw.get("dropped", ())), raw=raw,
        )

    def _free_vend_tag(self) -> str | None:
        return getattr(self._config(), "free_vend_id_tag", None) or None

    # ------------------------------------------------------------------ free vend (a local policy)
    def _free_vend_on_plug(self, connector_id: Any, state: str) -> None:
        """Free vend: a car plugged in (pilot A → B/C/D) without a card starts a session with the configured
        tag. OCPP 1.6 has no free-vend notion, so it is an ordinary session whose StartTransaction carries
        that tag, authorized like a tap (Authorize.req when the central system is asked). A card tapped
        before plugging in wins (its session is already pending, so this start is refused). Only the plug-in
        starts one: after a stop with the car still plugged in, nothing restarts by itself."""
        if not isinstance(connector_id, int):
            return
        before = self._pilot_before.get(connector_id, "A")
        self._pilot_before[connector_id] = state
        if not self._free_vend_tag() or before not in ("A", "E", "F") or state not in ("B", "C", "D"):
            return
        task = asyncio.get_running_loop().create_task(self._free_vend_start(connector_id),
                                                      name=f"free-vend-{connector_id}")
        self._policy_tasks.add(task)
        task.add_done_callback(self._policy_tasks.discard)

    async def _free_vend_start(self, connector_id: int) -> None:
        try:
            result = await self.start_session(connector_id, None, role=Role.USER)
        except CommandError as exc:
            log.info("connector %d: free vend not started: %s", connector_id, exc.message,
                     extra={"CONNECTOR_ID": connector_id})
        except Exception:  # a policy never takes the controller down
            log.exception("connector %d: free vend failed", connector_id)
        else:
            log.info("connector %d: free vend: %s", connector_id, result.message,
                     extra={"CONNECTOR_ID": connector_id})

    # ------------------------------------------------------------------ change stream
    def subscribe(self, maxsize: int = 256) -> _Subscription:
        sub = _Subscription(self, maxsize)
        self._subs.add(sub)
        if self._meter_task is None or self._meter_task.done():
            with contextlib.suppress(RuntimeError):  # no running loop: no meter changes, the rest works
                self._meter_task = asyncio.get_running_loop().create_task(self._meter_watch(), name="api-meter")
        return sub

    def _forget(self, sub: _Subscription) -> None:
        self._subs.discard(sub)
        if not self._subs and self._meter_task is not None:
            self._meter_task.cancel()
            self._meter_task = None

    def publish(self, kind: ChangeKind, connector_id: int | None, **data: Any) -> None:
        """Give every subscriber a change (for services outside the timeline, e.g. the local limit)."""
        if not self._subs:
            return
        try:
            at = self._loop_time()
        except Exception:
            at = 0.0
        change = Change(kind, connector_id, data, at)
        for sub in list(self._subs):
            sub.offer(change)

    def _on_timeline(self, kind: str, data: dict[str, Any]) -> None:
        if kind == "pilot":
            self._free_vend_on_plug(data.get("connector"), str(data.get("state", "")))
        if kind == "boot" and data.get("status") == "Accepted":
            self._connected_since = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        elif kind == "disconnected":
            self._connected_since = None
        elif kind == "link_error":
            self._last_error = str(data.get("error", ""))[:200]
        elif kind == "transaction_stopped":
            try:
                if self.history is not None:
                    self.history.prune_if_due()
            except Exception as exc:  # the store reports its own trouble; history pruning can wait
                log.warning("session history not pruned: %s", exc)
        if not self._subs:
            return
        mapped = _TIMELINE.get(kind, ChangeKind.STATION)
        out = {k: (mask_id_tag(v) if k in ("id_tag", "parent_id_tag") and isinstance(v, str) else v)
               for k, v in data.items() if k != "profile"}
        if kind == "fault":
            out["event"] = "raised" if data.get("raised") else "cleared"
        else:
            out["event"] = _TRANSACTION_EVENT.get(kind, kind)
        cid = data.get("connector")
        self.publish(mapped, cid if isinstance(cid, int) else None, **out)

    async def _meter_watch(self) -> None:
        """METER changes: the reading each connector's meter loop keeps, compared once a second."""
        while self._subs:
            await asyncio.sleep(self.METER_PERIOD_S)
            ready = getattr(self._c, "ready", None)
            if ready is not None and not ready.is_set():
                continue  # not started yet (or stopped): nothing to read
            try:
                for d in self._raw_snapshot().get("connectors", []):
                    key = (d.get("measured_a"), d.get("power_w"), d.get("energy_wh"))
                    cid = d.get("id")
                    if self._last_meter.get(cid) != key:
                        self._last_meter[cid] = key
                        self.publish(ChangeKind.METER, cid, measured_a=key[0], power_w=key[1], energy_wh=key[2])
            except Exception:  # a front-end helper never takes the controller down
                log.exception("meter watch failed")

    # ------------------------------------------------------------------ commands
    @staticmethod
    def _require(role: Any, needed: Role, what: str) -> None:
        if not isinstance(role, Role):
            raise CommandError(CommandError.NOT_PERMITTED, "unknown role")
        if role < needed:
            raise CommandError(CommandError.NOT_PERMITTED, f"{what} needs the {needed.name.lower()} role")

    def _connector(self, connector_id: Any) -> Any:
        if isinstance(connector_id, bool) or not isinstance(connector_id, int):
            raise CommandError(CommandError.BAD_VALUE, f"connector must be a whole number, got {connector_id!r:.40}")
        rt = self._runtime(connector_id)
        if rt is None:
            ids = ", ".join(str(i) for i in self._connector_ids())
            raise CommandError(CommandError.UNKNOWN_CONNECTOR, f"no connector {connector_id} (this station has {ids})")
        return rt

    @staticmethod
    def _check_tag(id_tag: Any) -> str:
        if not isinstance(id_tag, str):
            raise CommandError(CommandError.BAD_VALUE, "the id tag must be text")
        tag = id_tag.strip(" ")  # spaces around a typed tag; a control character is refused
        if not tag or len(tag) > ID_TAG_MAX_LEN or not tag.isprintable() or not tag.isascii():
            raise CommandError(CommandError.BAD_VALUE,
                               f"an id tag is 1–{ID_TAG_MAX_LEN} printable ASCII characters (OCPP 1.6 CiString20)")
        return tag

    async def start_session(self, connector_id: int, id_tag: str | None = None, *,
                            role: Role = Role.USER) -> CommandResult:
        self._require(role, Role.USER, "starting a session")
        rt = self._connector(connector_id)
        if id_tag is None or (isinstance(id_tag, str) and not id_tag.strip(" ")):
            free = self._free_vend_tag()
            if not free:
                raise CommandError(CommandError.NOT_POSSIBLE, "free vend is not enabled: give an id tag")
            tag = free
        else:
            tag = self._check_tag(id_tag)
        s = rt.state
        if self._has_transaction(connector_id) or s.in_transaction or s.session_tag is not None:
            raise CommandError(CommandError.NOT_POSSIBLE, f"connector {connector_id} already has a session")
        if not s.operative:
            raise CommandError(CommandError.NOT_POSSIBLE, f"connector {connector_id} is unavailable")
        if s.faults:
            raise CommandError(CommandError.NOT_POSSIBLE, f"connector {connector_id} has a fault")
        if not await self._authorize(tag):
            self.publish(ChangeKind.AUTHORIZATION, connector_id, event="refused", id_tag=mask_id_tag(tag))
            return CommandResult(False, f"{mask_id_tag(tag)} is not authorized")
        # Checked after authorizing, as a tap does: the answer's parentIdTag may be the reservation's (§5.13).
        if not self._reservation_allows(connector_id, tag):
            self.publish(ChangeKind.AUTHORIZATION, connector_id, event="refused", id_tag=mask_id_tag(tag),
                         reason="reserved")
            return CommandResult(False, f"connector {connector_id} is reserved for another card")
        self.publish(ChangeKind.AUTHORIZATION, connector_id, event="authorized", id_tag=mask_id_tag(tag))
        self._post(connector_id, cm.Authorize(tag))
        plugged = s.pilot.vehicle_connected
        return CommandResult(True, "charging starts" if plugged else "authorized: plug the car in")

    async def stop_session(self, connector_id: int, *, role: Role = Role.USER) -> CommandResult:
        self._require(role, Role.USER, "stopping a session")
        self._connector(connector_id)
        # StopTransaction.reason Local: "stopped locally on request of the user at the charge point" (§7.44).
        if not self._stop(connector_id, "Local"):
            raise CommandError(CommandError.NOT_POSSIBLE, f"connector {connector_id} has no session to stop")
        return CommandResult(True, "the session stops")

    async def set_local_limit(self, connector_id: int | None, amps: float | None, *,
                              role: Role = Role.USER) -> CommandResult:
        self._require(role, Role.USER, "a local current limit")
        targets = self._connector_ids() if connector_id is None else [connector_id]
        runtimes = [self._connector(cid) for cid in targets]
        if amps is not None:
            if isinstance(amps, bool) or not isinstance(amps, (int, float)) or not math.isfinite(amps):
                raise CommandError(CommandError.BAD_VALUE, f"the limit must be a number of amperes, got {amps!r:.40}")
            amps = float(amps)
            # A station-wide limit is shared by the load balancer: it can be up to every connector's maximum.
            maxima = [float(rt.max_current_a) for rt in runtimes]
            top = maxima[0] if connector_id is not None else sum(maxima)
            if amps != 0 and not MIN_OFFER_A <= amps <= top:
                raise CommandError(CommandError.BAD_VALUE,
                                   f"the limit must be 0 (pause) or {MIN_OFFER_A:g}–{top:g} A, got {amps:g} A")
        self._apply_local_limit(connector_id, amps)
        for cid in targets:
            self.publish(ChangeKind.LIMIT, cid, event="local_limit", local_limit_a=amps)
        if amps is None:
            return CommandResult(True, "local limit lifted")
        return CommandResult(True, "paused by the local limit" if amps == 0 else f"at most {amps:g} A")

    async def set_available(self, connector_id: int, available: bool, *, role: Role = Role.USER) -> CommandResult:
        self._require(role, Role.USER, "availability")
        self._connector(connector_id)
        if not isinstance(available, bool):
            raise CommandError(CommandError.BAD_VALUE, "available must be true or false")
        answer = await self._change_availability(connector_id, available)
        if answer == "Scheduled":
            return CommandResult(True, "unavailable once the running session ends")
        return CommandResult(True, "available" if available else "unavailable")

    async def charge_now(self, connector_id: int, on: bool = True, *, role: Role = Role.USER) -> CommandResult:
        """"Charge now": override the off-peak schedule ([energy.schedule]) for this session (it lapses when
        the session ends), or withdraw the override. A central system's profiles and every other claim
        still apply."""
        self._require(role, Role.USER, "charging now")
        self._connector(connector_id)
        if not isinstance(on, bool):
            raise CommandError(CommandError.BAD_VALUE, "on must be true or false")
        energy = getattr(self._c, "energy", None)
        if energy is None or getattr(energy, "schedule", None) is None:
            raise CommandError(CommandError.NOT_POSSIBLE, "there is no off-peak schedule to override")
        energy.override(on)
        self.publish(ChangeKind.LIMIT, connector_id, event="schedule_override", on=on)
        return CommandResult(True, "charging now, outside the schedule" if on else "the schedule applies again")

    async def clear_fault(self, connector_id: int, *, role: Role = Role.ADMIN) -> CommandResult:
        """Clear latched faults whose cause the hardware shows is gone. A fault that is not latched clears
        by itself; one whose cause remains, or whose device cannot tell, stays (a Reset clears it)."""
        self._require(role, Role.ADMIN, "clearing a latched fault")
        rt = self._connector(connector_id)
        s = rt.state
        latched = {getattr(k, "value", k) for k in s.latched}
        if not latched:
            raise CommandError(CommandError.NOT_POSSIBLE, f"connector {connector_id} has no latched fault")
        present = {getattr(k, "value", k) for k in s.faults}
        if present - latched:
            raise CommandError(CommandError.NOT_POSSIBLE,
                               "other faults are still present: " + ", ".join(sorted(present - latched)))
        hw = rt.hw
        for kind in sorted(latched):
            if kind == "rcd":
                if getattr(hw.rcm, "tripped", True):
                    return CommandResult(False, "the residual current monitor still signals a fault")
            elif kind == "weld":
                clear = getattr(hw.contactor, "clear_weld", None)
                if clear is None or not clear():
                    return CommandResult(False, "the contactor's mirror contact still reads closed")
            else:
                return CommandResult(False, f"a latched {kind} fault is cleared by a Reset of the charger")
        self._post(connector_id, cm.ResetFaults())  # the step that clears them publishes FAULT "cleared"
        return CommandResult(True, "cleared: " + ", ".join(sorted(latched)))


__all__ = [
    "STATE_KINDS", "Change", "ChangeKind", "CommandError", "CommandResult", "ConnectorView", "FaultView",
    "ControllerApi", "LimitClaimView", "LinkView", "Role", "StationApi", "StationView", "Subscription",
]

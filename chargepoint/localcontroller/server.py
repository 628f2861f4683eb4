"""The local controller (OCPP 1.6 "local smart charging"): its own composition root.

* An OCPP 1.6J websocket server for the downstream charge points (``ws[s]://HOST:PORT/<id>``, subprotocol
  ``ocpp1.6``, Basic auth per box, TLS when configured). Unknown ids are refused at the upgrade (404, a log
  line naming the id), wrong passwords too (401).
* Per connected box one upstream connection to the central system under the box's own identity
  (:mod:`.upstream`); every frame is forwarded in both directions with its unique id and payload unchanged,
  except where the site logic steps in:

  - a frame from a box that is not valid OCPP-J 1.6 gets the CALLERROR the charge point's own link would
    give (OCPP-J §4.2.3, via ``chargepoint.protocol.link``'s frame and schema checks) and is not forwarded;
  - a ChargePointMaxProfile from the central system at our stack levels or above is answered Rejected (it
    would override the site limit on the box); others are forwarded and tracked as the box's own cap;
  - after an accepted ClearChargingProfile our profiles are installed again;
  - transaction ids handed out locally while offline are mapped to the central system's in both directions.

* Our own identity upstream (``[local_controller] id``): BootNotification, Heartbeat, and the group limit
  the central system sets as a ChargePointMaxProfile (§3.13.1, §5.16) on it.
* Group balancing: :class:`.site.Site` (pure) decides, this module sends its SetChargingProfile commands
  (ChargePointMaxProfile, connector 0: it limits the whole box and stacks with the central system's
  TxDefaultProfile/TxProfile, which still apply as the minimum of both, §3.13.1).
* Central system unreachable for a box: transaction-related messages (§4.7, §4.8, §4.10) and notifications
  are written to the store, answered locally, and delivered in order when it is back (see
  :mod:`.store`). OCPP 1.6 does not define a local controller's offline answers; these answers are those a
  charge point gives itself when offline (§3.1.? offline behaviour): StartTransaction gets a local
  transactionId (negative, replaced at delivery), the idTagInfo the central system last gave that idTag
  (Authorization Cache semantics, §3.5.2) or Accepted (the box authorized it already); Authorize is answered
  from that cache (unknown ids Invalid unless ``allow_unknown_offline``); Heartbeat/BootNotification with our
  clock (the box's BootNotification is delivered when the central system is reachable).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import itertools
import json
import logging
import math
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any

import websockets
from ocpp.v16.enums import Action

from chargepoint.localcontroller.config import DownstreamConfig, LocalControllerConfig
from chargepoint.localcontroller.site import Command, Site
from chargepoint.localcontroller.store import LcStore, ProfileMirror, digest
from chargepoint.localcontroller.upstream import Upstream, UpstreamOffline
from chargepoint.protocol.link import (
    CSMS_TO_CP_ACTIONS,
    FrameRefused,
    decode_frame,
    first_schema_error,
    schema_error_code,
)
from chargepoint.smart import CHARGE_POINT_MAX, InstalledProfiles, composite_schedule, limit_at
from chargepoint.smart.profiles import (
    ChargingProfile,
    ProfileLimits,
    ProfileRejected,
    parse_datetime,
    profile_from_ocpp,
)

log = logging.getLogger(__name__)

TX_ACTIONS = frozenset({"StartTransaction", "StopTransaction", "MeterValues"})
#: CALLs from a box that are stored and delivered later when the central system is unreachable.
QUEUED_ACTIONS = TX_ACTIONS | {
    "StatusNotification", "FirmwareStatusNotification", "DiagnosticsStatusNotification",
    "SecurityEventNotification", "LogStatusNotification", "SignedFirmwareStatusNotification",
}
CP_TO_CSMS_ACTIONS = frozenset(a.value for a in Action) - CSMS_TO_CP_ACTIONS
SAFE_PROFILE_ID = 880_001
ALLOC_PROFILE_ID = 880_002
#: The mirror of a box's (or our own identity's) profiles only counts what the box accepted already; the
#: box enforced its own limits on them (§3.13.5), so the mirror's only limit is a generous ceiling.
#: New measurements alone re-plan at most this often (s).
MEASUREMENT_REPLAN_S = 0.25
#: The safe default stays under the central system's own ChargePointMaxProfile on a box over this horizon…
SAFE_HORIZON_S = 7 * 86400
#: …and is checked again this often (a profile of the central system may have ended or begun meanwhile).
SAFE_RECHECK_S = 600.0
_MIRROR_LIMITS = ProfileLimits(max_stack_level=10_000, max_periods=10_000, max_profiles_installed=10_000)


def _iso(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _charge_point_max(entries: list[tuple[int, ChargingProfile]]) -> list[tuple[int, ChargingProfile]]:
    """The ChargePointMaxProfiles among a box's (connector id, profile) entries (they sit on connector 0)."""
    return [(c, p) for c, p in entries if c == 0 and p.purpose == CHARGE_POINT_MAX]


def _cap_profile(profile_id: int, stack: int, amps: float, now: datetime,
                 valid_to: datetime | None) -> dict[str, Any]:
    prof: dict[str, Any] = {
        "chargingProfileId": profile_id, "stackLevel": stack,
        "chargingProfilePurpose": "ChargePointMaxProfile", "chargingProfileKind": "Absolute",
        "chargingSchedule": {"chargingRateUnit": "A", "startSchedule": _iso(now),
                             "chargingSchedulePeriod": [{"startPeriod": 0, "limit": round(amps, 1)}]},
    }
    if valid_to is not None:
        prof["validTo"] = _iso(valid_to)
    return {"connectorId": 0, "csChargingProfiles": prof}


def parse_currents(payload: dict[str, Any], voltage: float = 230.0) -> tuple[float | None, ...] | None:
    """Per-phase current of the last meterValue: Current.Import (per phase or total), else derived from
    Power.Active.Import (W or kW over the phases reported). None when neither is there."""
    values = payload.get("meterValue") or []
    if not values:
        return None
    sampled = values[-1].get("sampledValue") or []
    cur: dict[int, float] = {}
    power: float | None = None
    for sv in sampled:
        meas = sv.get("measurand", "Energy.Active.Import.Register")
        try:
            v = float(sv.get("value"))
        except (TypeError, ValueError):
            continue
        phase = str(sv.get("phase") or "")
        if meas == "Current.Import":
            idx = {"L1": 0, "L2": 1, "L3": 2, "L1-N": 0, "L2-N": 1, "L3-N": 2}.get(phase)
            if idx is None:
                cur.setdefault(0, v)
            else:
                cur[idx] = v
        elif meas == "Power.Active.Import" and not phase:
            power = v * (1000.0 if sv.get("unit") == "kW" else 1.0)
    if cur:
        return tuple(cur.get(i) for i in range(3))
    if power is not None:
        per = power / voltage / 3
        return (per, per, per)
    return None


@dataclass
class _Session:
    cfg: DownstreamConfig
    ws: Any
    upstream: Upstream
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one CALL outstanding towards the box
    waiting: dict[str, asyncio.Future[list[Any]]] = field(default_factory=dict)
    calls: asyncio.Queue[tuple[list[Any], str]] = field(default_factory=asyncio.Queue)
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    #: open transactions as the box knows them: transactionId → (connectorId, start time)
    tx_connector: dict[int, tuple[int, datetime | None]] = field(default_factory=dict)
    #: the central system's profiles the box accepted (persisted: survives a restart of ours)
    profiles: InstalledProfiles = field(default_factory=InstalledProfiles)
    closed: bool = False
    safe_installed_a: float | None = None  # the safe default the box accepted
    safe_checked_at: float = 0.0  # monotonic time it was last computed


class LocalController:
    def __init__(self, config: LocalControllerConfig, store: LcStore, *,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC), meter: Any = None) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self.site = Site(config.settings(), [c.spec for c in config.charge_points])
        self._meter = meter
        self._sessions: dict[str, _Session] = {}
        self._drainers: dict[str, asyncio.Task[None]] = {}
        self._idle_upstreams: dict[str, Upstream] = {}
        self._server: Any = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._kick = asyncio.Event()  # something changed: plan
        self._urgent = asyncio.Event()  # …and it is more than a new measurement: plan now
        self._ids = itertools.count(1)
        self._group_profiles = InstalledProfiles(ProfileMirror(store, config.id))
        self.own: Upstream | None = None
        self.own_boot = "not sent"
        self.port = config.listen_port
        self.plan_count = 0
        self.last_plan_at: float | None = None
        self.forwarded = 0
        self.refused: list[str] = []
        self._group_limit(clock())  # a group limit stored before a restart holds from the first plan on
        #: Called after every plan (each change, and at least once a second); must not block or raise. The
        #: front ends' SiteApi (:mod:`.api`) only sets an event here.
        self.on_plan: list[Callable[[], None]] = []
        for cp, (amps, valid_to, safe) in store.installed().items():
            if self.site.knows(cp):  # a safe default at or below the share still holds the site
                self.site.restore(cp, amps, valid_to, safe is not None and safe <= self.site.safe_default_a(cp)
                                  + 1e-6, safe)
        #: open transactions per box, as the box knows them (transactionId → connector, start): kept across
        #: reconnects and restarts, so a TxProfile still caps its connector and is dropped at the stop
        self._open_tx = store.open_transactions()
        for cp, txs in self._open_tx.items():
            if self.site.knows(cp):
                for connector, _start in txs.values():
                    self.site.transaction(cp, connector, True, clock())

    # ================================================================== lifecycle
    def health_problem(self) -> str | None:
        """Why the controller is not healthy, or None: an essential task (planner, site meter) ended. The
        systemd watchdog withholds its ping on a problem, so systemd restarts the unit (the boxes hold their
        safe defaults meanwhile)."""
        for task in self._tasks:
            if task.done():
                return f"essential task {task.get_name()!r} ended"
        return None

    def summary_line(self) -> str:
        """One line for ``systemctl status``: "CSMS connected · 8/10 boxes connected · 3 charging · site 41/63 A"."""
        now = self.clock()
        boxes = self.site.view(now)
        charging = sum(1 for b in boxes if "Charging" in b["statuses"].values())
        limits, _ = self.site.limits(now)
        used = self.site.phase_sums(now)
        worst = max(range(len(limits)), key=lambda i: used[i] / limits[i] if limits[i] > 0 else float("inf"))
        return (f"CSMS {'connected' if self.own and self.own.online else 'offline'} · "
                f"{sum(1 for b in boxes if b['connected'])}/{len(boxes)} boxes connected · {charging} charging · "
                f"site {used[worst]:.0f}/{limits[worst]:.0f} A")

    @property
    def url(self) -> str:
        scheme = "wss" if self.config.tls_cert else "ws"
        return f"{scheme}://{self.config.listen_host}:{self.port}"

    def _ssl_server(self) -> ssl.SSLContext | None:
        if not self.config.tls_cert:
            return None
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(str(self.config.tls_cert), str(self.config.tls_key))
        return ctx

    def _ssl_client(self) -> ssl.SSLContext | None:
        if not self.config.csms_url.startswith("wss://"):
            return None
        ctx = ssl.create_default_context(cafile=str(self.config.upstream_ca) if self.config.upstream_ca else None)
        return ctx

    async def start(self) -> None:
        def select(connection: Any, subprotocols: Any) -> Any:
            return "ocpp1.6" if "ocpp1.6" in subprotocols else None

        self._server = await websockets.serve(
            self._handler, self.config.listen_host, self.config.listen_port,
            subprotocols=["ocpp1.6"],  # type: ignore[list-item]
            select_subprotocol=select, process_request=self._check_request, ssl=self._ssl_server(),
            max_size=1 << 20, ping_interval=60, ping_timeout=60,
            compression=None,  # frames of a few hundred bytes on the site's LAN: deflate costs CPU, saves nothing
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self.own = Upstream(self.config.id, self.config.csms_url, password=self.config.password,
                            ssl_context=self._ssl_client(), on_call=self._own_call,
                            on_online=self._own_online)
        self.own.start()
        self._tasks.append(asyncio.create_task(self._planner(), name="site planner"))
        if self._meter is not None and self.config.site_meter is not None:
            await self._meter.start(self._meter_event)
            self._tasks.append(asyncio.create_task(self._meter_loop(), name="site meter"))
        # Boxes with queued messages but no connection: deliver them anyway.
        for cp in {q.cp for q in self.store.queued()}:
            if cp not in self._sessions and self.site.knows(cp):
                self._ensure_drain(cp, self._idle_upstream(cp))
        log.info("local controller %s listening on %s for %d charge points, site limit %s A",
                 self.config.id, self.url, len(self.config.charge_points), "/".join(
                     f"{x:g}" for x in self.config.site_limit_a))

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for t in self._tasks + list(self._drainers.values()):
            t.cancel()
        if self._meter is not None and self.config.site_meter is not None:
            with contextlib.suppress(Exception):
                await self._meter.stop()  # closes the serial port
        for s in list(self._sessions.values()):
            await s.upstream.stop()
            for t in s.tasks:
                t.cancel()
        for u in self._idle_upstreams.values():
            await u.stop()
        if self.own is not None:
            await self.own.stop()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)

    # ================================================================== downstream server
    def _check_request(self, connection: Any, request: Any) -> Any:
        cp_id = request.path.rstrip("/").split("/")[-1]
        cfg = self.config.downstream(cp_id)
        if cfg is None:
            log.warning("charge point %r refused: not configured in [[local_controller.charge_points]]",
                        cp_id[:60])
            self.refused.append(cp_id[:60])
            return connection.respond(HTTPStatus.NOT_FOUND, "unknown charge point\n")
        if cfg.password is not None:
            expected = "Basic " + base64.b64encode(f"{cp_id}:{cfg.password}".encode()).decode()
            got = request.headers.get("Authorization", "")
            if not hmac.compare_digest(got.encode(), expected.encode()):
                log.warning("charge point %r refused: wrong or missing Basic credentials", cp_id)
                self.refused.append(cp_id)
                return connection.respond(HTTPStatus.UNAUTHORIZED, "Unauthorized\n")
        return None

    async def _handler(self, ws: Any) -> None:
        cp_id = ws.request.path.rstrip("/").split("/")[-1]
        cfg = self.config.downstream(cp_id)
        assert cfg is not None
        old = self._sessions.pop(cp_id, None)
        if old is not None:
            log.warning("charge point %s connected again: the older connection is closed", cp_id)
            old.closed = True
            await old.ws.close()
        drainer = self._drainers.get(cp_id)
        upstream = self._idle_upstreams.pop(cp_id, None)
        if upstream is None:
            upstream = Upstream(cp_id, self.config.csms_url, password=cfg.upstream_password,
                                ssl_context=self._ssl_client(), on_call=self._from_csms_for(cp_id),
                                on_online=lambda online, cp=cp_id: self._upstream_online(cp, online))
            upstream.start()
        else:
            upstream._on_call = self._from_csms_for(cp_id)
        sess = _Session(cfg, ws, upstream, profiles=InstalledProfiles(ProfileMirror(self.store, cp_id)),
                        tx_connector=self._open_tx.setdefault(cp_id, {}))
        self._update_caps(sess, self.clock())
        self._sessions[cp_id] = sess
        self.site.connected(cp_id, self.clock())
        log.info("charge point %s connected", cp_id)
        sess.tasks.append(asyncio.create_task(self._worker(sess), name=f"calls {cp_id}"))
        sess.tasks.append(asyncio.create_task(self._install_safe_default(sess), name=f"safe {cp_id}"))
        if drainer is None or drainer.done():
            self._ensure_drain(cp_id, upstream)
        try:
            async for raw in ws:
                await self._from_cp(sess, raw)
        except websockets.ConnectionClosed:
            pass
        finally:
            sess.closed = True
            for fut in sess.waiting.values():
                if not fut.done():
                    fut.set_exception(ConnectionError(f"charge point {cp_id} disconnected"))
            for t in sess.tasks:
                t.cancel()
            if self._sessions.get(cp_id) is sess:
                del self._sessions[cp_id]
                self.site.disconnected(cp_id, self.clock())
                log.info("charge point %s disconnected", cp_id)
                if self.store.queue_length(cp_id) or self.store.has_unsent_boot(cp_id):
                    self._idle_upstreams[cp_id] = upstream  # stays up until the queue is delivered
                    upstream._on_call = self._from_csms_for(cp_id)
                else:
                    await upstream.stop()
            self._replan()

    def _idle_upstream(self, cp_id: str) -> Upstream:
        cfg = self.config.downstream(cp_id)
        assert cfg is not None
        up = Upstream(cp_id, self.config.csms_url, password=cfg.upstream_password,
                      ssl_context=self._ssl_client(), on_call=self._from_csms_for(cp_id),
                      on_online=lambda online, cp=cp_id: self._upstream_online(cp, online))
        up.start()
        self._idle_upstreams[cp_id] = up
        return up

    async def _send_down(self, sess: _Session, frame: list[Any] | str) -> None:
        text = frame if isinstance(frame, str) else json.dumps(frame, separators=(",", ":"))
        with contextlib.suppress(websockets.ConnectionClosed):
            await sess.ws.send(text)

    async def _error_down(self, sess: _Session, uid: str, code: str, desc: str) -> None:
        log.warning("charge point %s: CALLERROR %s for %.40s: %s", sess.cfg.spec.id, code, uid, desc)
        await self._send_down(sess, [4, uid, code, desc[:255], {}])

    async def _from_cp(self, sess: _Session, raw: str | bytes) -> None:
        """One frame from a box: answers go to whoever waits; CALLs are checked, then queued for the worker."""
        if isinstance(raw, bytes):
            await self._error_down(sess, "-1", "FormationViolation", "binary frames are not OCPP-J")
            return
        try:
            msg = decode_frame(raw)
        except FrameRefused as refused:
            head = raw.lstrip()[:80]
            uid = "-1"
            with contextlib.suppress(Exception):
                uid = head.split('"')[1] if head.startswith("[2") else "-1"
            await self._error_down(sess, uid, refused.code, refused.description)
            return
        if not isinstance(msg, list) or len(msg) < 3 or not isinstance(msg[1], str):
            await self._error_down(sess, "-1", "FormationViolation", "frame is not [MessageTypeId, UniqueId, …]")
            return
        if msg[0] in (3, 4) and not isinstance(msg[0], bool):
            fut = sess.waiting.pop(msg[1], None)
            if fut is not None and not fut.done():
                fut.set_result(msg)
            else:
                log.warning("charge point %s: answer to no outstanding call dropped", sess.cfg.spec.id)
            return
        uid = msg[1]
        if msg[0] != 2 or isinstance(msg[0], bool):
            await self._error_down(sess, uid, "ProtocolError", f"unknown MessageTypeId {msg[0]!r:.40}")
            return
        if len(msg) != 4 or not isinstance(msg[2], str):
            await self._error_down(sess, uid, "FormationViolation", "a CALL is [2, UniqueId, Action, Payload]")
            return
        action, payload = msg[2], msg[3]
        if action not in CP_TO_CSMS_ACTIONS:
            code = "NotSupported" if action in CSMS_TO_CP_ACTIONS else "NotImplemented"
            await self._error_down(sess, uid, code, f"{action[:60]!r} is not sent by a charge point")
            return
        if not isinstance(payload, dict):
            await self._error_down(sess, uid, "FormationViolation", "payload must be a JSON object")
            return
        error = first_schema_error(action, payload)
        if error is not None:
            where = "/".join(str(p) for p in error.path) or "(payload)"
            await self._error_down(sess, uid, schema_error_code(error), f"{where}: {error.message}"[:255])
            return
        sess.calls.put_nowait((msg, raw))

    async def _worker(self, sess: _Session) -> None:
        while True:
            msg, raw = await sess.calls.get()
            try:
                await self._handle_cp_call(sess, msg, raw)
            except Exception:
                log.exception("charge point %s: handling %s failed", sess.cfg.spec.id, msg[2])
                await self._error_down(sess, msg[1], "InternalError", "the local controller could not handle it")

    # ================================================================== box → central system
    async def _handle_cp_call(self, sess: _Session, msg: list[Any], raw: str) -> None:
        cp = sess.cfg.spec.id
        _, uid, action, payload = msg
        now = self.clock()
        dig = digest(cp, action, payload) if action in QUEUED_ACTIONS else None
        if dig is not None:
            done = self.store.done_answer(dig)
            if done is not None:  # a repeat of a message the central system answered already
                log.info("charge point %s: %s repeated; answered as before, not sent again", cp, action)
                await self._send_down(sess, [3, uid, done])
                self._observe(sess, action, payload, done, now)
                return
            if self.store.is_queued(dig):
                await self._send_down(sess, [3, uid, self._local_answer_again(cp, action, payload, dig)])
                return
        up_payload = self._to_upstream(cp, payload) if action in ("StopTransaction", "MeterValues") else payload
        direct = (sess.upstream.online and not self.store.queue_length(cp) and up_payload is not None
                  and not self.store.has_unsent_boot(cp))
        if direct:
            text = raw if up_payload is payload else json.dumps([2, uid, action, up_payload])
            try:
                answer = await sess.upstream.call(uid, action, up_payload, raw=text,
                                                  timeout=self.config.response_timeout_s)
            except (UpstreamOffline, TimeoutError) as exc:
                log.warning("charge point %s: %s not delivered (%s): answered locally, queued", cp, action, exc)
            else:
                self.forwarded += 1
                if answer[0] == 3 and isinstance(answer[2], dict):
                    if dig is not None and action in TX_ACTIONS:
                        self.store.record_done(dig, answer[2], now, durable=action != "MeterValues")
                    if action == "BootNotification":
                        self.store.save_boot(cp, payload, sent=True)
                    self._remember_auth(action, payload, answer[2])
                    self._observe(sess, action, payload, answer[2], now)
                await self._send_down(sess, answer)
                return
        answer = self._answer_locally(cp, action, payload, now)
        self._observe(sess, action, payload, answer, now)
        await self._send_down(sess, [3, uid, answer])
        self._ensure_drain(cp, sess.upstream)

    def _to_upstream(self, cp: str, payload: dict[str, Any]) -> dict[str, Any] | None:
        """The payload with a local transactionId replaced by the central system's; None = not known yet."""
        tx = payload.get("transactionId")
        if isinstance(tx, int) and tx < 0:
            real = self.store.tx_for(cp, tx)
            if real is None:
                return None
            return {**payload, "transactionId": real}
        return payload

    def _remember_auth(self, action: str, payload: dict[str, Any], answer: dict[str, Any]) -> None:
        info = answer.get("idTagInfo")
        if action in ("Authorize", "StartTransaction") and isinstance(info, dict) and "idTag" in payload:
            self.store.put_auth(payload["idTag"], info)

    def _answer_locally(self, cp: str, action: str, payload: dict[str, Any], now: datetime) -> dict[str, Any]:
        """The answer while the central system is unreachable (see the module docstring)."""
        if action == "StartTransaction":
            local = self.store.new_local_tx(cp)
            self.store.enqueue(cp, action, payload, local_tx=local)
            return {"transactionId": local, "idTagInfo": self.store.auth(payload["idTag"]) or {"status": "Accepted"}}
        if action in QUEUED_ACTIONS:
            self.store.enqueue(cp, action, payload)
            return {}
        if action == "BootNotification":
            self.store.save_boot(cp, payload, sent=False)
            return {"status": "Accepted", "currentTime": _iso(now), "interval": 300}
        if action == "Heartbeat":
            return {"currentTime": _iso(now)}
        if action == "Authorize":
            info = self.store.auth(payload["idTag"])
            if info is None:
                info = {"status": "Accepted" if self.config.allow_unknown_offline else "Invalid"}
            return {"idTagInfo": info}
        if action in ("DataTransfer", "SignCertificate"):
            return {"status": "Rejected"}
        return {}

    def _local_answer_again(self, cp: str, action: str, payload: dict[str, Any], dig: str) -> dict[str, Any]:
        if action == "StartTransaction":
            for q in self.store.queued(cp):
                if q.digest == dig and q.local_tx is not None:
                    return {"transactionId": q.local_tx, "idTagInfo": self.store.auth(payload["idTag"])
                            or {"status": "Accepted"}}
        return {}

    def _observe(self, sess: _Session, action: str, payload: dict[str, Any], answer: dict[str, Any],
                 now: datetime) -> None:
        """What the site policy learns from a box's message."""
        cp = sess.cfg.spec.id
        if action == "StatusNotification":
            self.site.status(cp, payload["connectorId"], payload["status"], now)
            if payload["status"] == "Available":  # §7.7: no transaction on it (a StopTransaction went missing)
                for tx in [t for t, (c, _) in sess.tx_connector.items() if c == payload["connectorId"]]:
                    self._transaction_ended(sess, tx, now)
        elif action == "StartTransaction":
            status = (answer.get("idTagInfo") or {}).get("status", "Accepted")
            if isinstance(answer.get("transactionId"), int):
                try:
                    start: datetime | None = parse_datetime(payload.get("timestamp"), "timestamp")
                except (ProfileRejected, ValueError, TypeError):
                    start = None
                sess.tx_connector[answer["transactionId"]] = (payload["connectorId"], start)
                self.store.open_transaction(cp, answer["transactionId"], payload["connectorId"], start)
            if status == "Accepted":
                self.site.transaction(cp, payload["connectorId"], True, now)
        elif action == "StopTransaction":
            if not self._transaction_ended(sess, payload.get("transactionId"), now) and not sess.tx_connector:
                for c in self.site.open_transactions(cp):
                    self.site.transaction(cp, c, False, now)
        elif action == "MeterValues":
            currents = parse_currents(payload)
            if currents is not None:
                self.site.meter(cp, currents, now)
                self._replan(urgent=False)
            return
        else:
            return
        self._replan()

    # ================================================================== queue delivery
    def _upstream_online(self, cp: str, online: bool) -> None:
        if online:
            up = self._sessions[cp].upstream if cp in self._sessions else self._idle_upstreams.get(cp)
            if up is not None:
                self._ensure_drain(cp, up)

    def _ensure_drain(self, cp: str, upstream: Upstream) -> None:
        task = self._drainers.get(cp)
        if task is not None and not task.done():
            return
        if not self.store.queue_length(cp) and not self.store.has_unsent_boot(cp):
            return
        self._drainers[cp] = asyncio.create_task(self._drain(cp, upstream), name=f"drain {cp}")

    async def _drain(self, cp: str, upstream: Upstream) -> None:
        """Deliver the box's stored BootNotification and queued messages, in order, once each."""
        failures = 0
        while True:
            await upstream.connected.wait()
            boot = self.store.unsent_boot(cp)
            try:
                if boot is not None:
                    ans = await upstream.call(f"lc-{next(self._ids)}", "BootNotification", boot,
                                              timeout=self.config.response_timeout_s)
                    self.store.save_boot(cp, boot, sent=True)
                    log.info("charge point %s: stored BootNotification delivered (%s)", cp,
                             ans[2].get("status") if ans[0] == 3 else ans[2])
                    continue
                queue = self.store.queued(cp)
                if not queue:
                    break
                q = queue[0]
                payload = q.payload
                if q.action in ("StopTransaction", "MeterValues"):
                    mapped = self._to_upstream(cp, payload)
                    if mapped is None:
                        log.error("charge point %s: %s for local transaction %s whose start got no id; "
                                  "sent without it", cp, q.action, payload.get("transactionId"))
                        mapped = {k: v for k, v in payload.items() if k != "transactionId"}
                        if q.action == "StopTransaction":
                            mapped["transactionId"] = 0
                    payload = mapped
                ans = await upstream.call(f"lc-{next(self._ids)}", q.action, payload,
                                          timeout=self.config.response_timeout_s)
            except (UpstreamOffline, TimeoutError) as exc:
                log.info("charge point %s: delivery paused (%s)", cp, exc)
                await asyncio.sleep(1.0)
                continue
            now = self.clock()
            if ans[0] == 4:
                # OCPP 1.6 §4.10: a transaction-related message the central system answers with a CALLERROR is
                # retried, waiting TransactionMessageRetryInterval x the number of previous attempts, until
                # TransactionMessageAttempts; then it is dropped. The box handed the message to us (we
                # answered it), so ours is the charge point's duty and the same two settings apply.
                failures += 1
                attempts = self.config.transaction_message_attempts
                if failures < attempts:
                    wait = self.config.transaction_message_retry_interval_s * failures
                    log.warning("charge point %s: %s refused by the central system (%s), attempt %d of %d, "
                                "retried in %g s", cp, q.action, ans[2], failures, attempts, wait)
                    await asyncio.sleep(wait)
                    continue
                log.error("charge point %s: %s dropped after %d CALLERRORs (%s)", cp, q.action, failures, ans[2])
            failures = 0
            result = ans[2] if ans[0] == 3 and isinstance(ans[2], dict) else {}
            if q.action == "StartTransaction" and q.local_tx is not None and isinstance(
                    result.get("transactionId"), int):
                self.store.map_tx(cp, q.local_tx, result["transactionId"])
                self._remember_auth(q.action, q.payload, result)
            self.store.delivered(q, result, now)
            self.forwarded += 1
        self._drainers.pop(cp, None)
        idle = self._idle_upstreams.pop(cp, None)
        if idle is not None and cp not in self._sessions:
            await idle.stop()

    # ================================================================== central system → box
    def _from_csms_for(self, cp: str) -> Callable[[list[Any], str], Any]:
        async def handler(msg: list[Any], raw: str) -> None:
            await self._from_csms(cp, msg, raw)
        return handler

    async def _from_csms(self, cp: str, msg: list[Any], raw: str) -> None:
        sess = self._sessions.get(cp)
        up = sess.upstream if sess else self._idle_upstreams.get(cp)
        if up is None:
            return
        uid = msg[1]
        if sess is None or len(msg) != 4 or not isinstance(msg[3], dict):
            await up.send_raw(json.dumps([4, uid, "GenericError", f"charge point {cp} is not connected", {}]))
            return
        action, payload = msg[2], msg[3]
        stepped = self._step_in(sess, action, payload)
        if isinstance(stepped, list):
            await up.send_raw(json.dumps([3, uid, {"status": "Rejected"}]) if not stepped else
                              json.dumps(stepped))
            return
        text = raw if stepped is payload else json.dumps([2, uid, action, stepped])
        try:
            answer = await self._call_cp(sess, uid, text)
        except (ConnectionError, TimeoutError) as exc:
            await up.send_raw(json.dumps([4, uid, "GenericError", f"charge point did not answer: {exc}", {}]))
            return
        self.forwarded += 1
        await up.send_raw(json.dumps(answer))
        if answer[0] == 3 and isinstance(answer[2], dict) and answer[2].get("status") == "Accepted":
            if action == "SetChargingProfile":
                self._track_csms_profile(sess, stepped)
            elif action == "ClearChargingProfile":
                self._track_clear(sess, payload)

    def _step_in(self, sess: _Session, action: str, payload: dict[str, Any]) -> Any:
        """The payload to forward (the same object when unchanged), or [] = answer Rejected ourselves."""
        cp = sess.cfg.spec.id
        if action == "SetChargingProfile":
            prof = payload.get("csChargingProfiles") or {}
            if (prof.get("chargingProfilePurpose") == CHARGE_POINT_MAX
                    and isinstance(prof.get("stackLevel"), int) and prof["stackLevel"] >= self.config.stack_level):
                log.warning("charge point %s: ChargePointMaxProfile at stackLevel %s rejected: stack levels >= %d "
                            "belong to the local controller (the site limit)", cp, prof["stackLevel"],
                            self.config.stack_level)
                return []
            if prof.get("chargingProfileId") in (SAFE_PROFILE_ID, ALLOC_PROFILE_ID):
                log.warning("charge point %s: profile id %s is the local controller's: rejected", cp,
                            prof.get("chargingProfileId"))
                return []
            tx = prof.get("transactionId")
            if isinstance(tx, int):
                local = self.store.local_for(cp, tx)
                if local is not None:
                    return {**payload, "csChargingProfiles": {**prof, "transactionId": local}}
        elif action == "RemoteStopTransaction":
            local = self.store.local_for(cp, payload.get("transactionId"))
            if local is not None:
                return {**payload, "transactionId": local}
        return payload

    def _track_csms_profile(self, sess: _Session, payload: dict[str, Any]) -> None:
        """The box accepted a central-system profile (as forwarded to it): mirror it as the box installs it
        (§5.16.3 replacement by id or by purpose + stack level per connector)."""
        try:
            profile = profile_from_ocpp(payload["csChargingProfiles"])
            sess.profiles.install(int(payload.get("connectorId", 0)), profile, _MIRROR_LIMITS)
        except (ProfileRejected, KeyError, TypeError, ValueError) as exc:
            log.warning("charge point %s: accepted a profile the local controller cannot read (%s); "
                        "balanced without it", sess.cfg.spec.id, exc)
            return
        self._update_caps(sess, self.clock())
        self._check_safe_default(sess)

    def _track_clear(self, sess: _Session, payload: dict[str, Any]) -> None:
        """An accepted ClearChargingProfile.req (§5.5) clears on the box what its fields select: the mirror
        follows. When the selection can include our own profiles they are installed again (the site limit
        must hold; the central system's profiles it selected stay cleared)."""
        pid, conn = payload.get("id"), payload.get("connectorId")
        purpose, stack = payload.get("chargingProfilePurpose"), payload.get("stackLevel")
        sess.profiles.clear(id=pid, connector_id=conn, purpose=purpose, stack_level=stack)
        self._update_caps(sess, self.clock())
        if pid is not None:
            ours = pid in (SAFE_PROFILE_ID, ALLOC_PROFILE_ID)
        else:
            ours = (conn in (None, 0) and purpose in (None, CHARGE_POINT_MAX)
                    and stack in (None, self.config.stack_level, self.config.stack_level + 1))
        if ours:
            sess.tasks.append(asyncio.create_task(self._install_safe_default(sess, reinstall=True)))
        else:
            self._check_safe_default(sess)

    def _check_safe_default(self, sess: _Session) -> None:
        """Install the safe default again when the central system's profiles on the box change what it must be
        (:meth:`_safe_default_for`); a box that did not accept it yet gets it from the connect task."""
        sess.safe_checked_at = time.monotonic()
        if sess.safe_installed_a is None or sess.closed:
            return
        safe, _ = self._safe_default_for(sess, self.clock())
        if abs(safe - sess.safe_installed_a) > 0.05:
            sess.tasks.append(asyncio.create_task(self._install_safe_default(sess), name=f"safe {sess.cfg.spec.id}"))

    def _transaction_ended(self, sess: _Session, tx: Any, now: datetime) -> bool:
        """Forget an open transaction of the box; False when it was not known."""
        entry = sess.tx_connector.pop(tx, None) if isinstance(tx, int) else None
        if entry is None:
            return False
        cp = sess.cfg.spec.id
        self.store.close_transaction(cp, tx)
        self.site.transaction(cp, entry[0], False, now)
        sess.profiles.remove_tx_profiles(entry[0])  # §3.13.1: the box deletes them after the stop
        self._update_caps(sess, now)
        return True

    def _update_caps(self, sess: _Session, now: datetime) -> None:
        """What the central system's own profiles on the box allow now, for the balancer (so a box capped by
        its central system does not hold current the others could use): ChargePointMaxProfile on connector 0
        and, on each connector with an open transaction, the TxProfile/TxDefaultProfile in effect (§3.13.1
        stacking; their minChargingRate too, §7.13). Our own profiles are not in the mirror."""
        spec = sess.cfg.spec
        entries = sess.profiles.all()
        if not entries:
            self.site.cap(spec.id, None)
            return
        phases = len(spec.phases)
        cpmax = _charge_point_max(entries)
        cap = limit_at(cpmax, 0, now, tx_start=None, tx_id=None, voltage=230.0, phases=phases).amps \
            if cpmax else None
        connector_sum = 0.0
        min_rate: float | None = None
        for tx_id, (conn, start) in sess.tx_connector.items():
            sched = composite_schedule(entries, conn, now, 0, "A", tx_start=start or now, tx_id=tx_id,
                                       voltage=230.0, phases=phases, default_limit_a=spec.max_current_a)
            connector_sum += sched.periods[0].limit
            if sched.min_charging_rate is not None:
                min_rate = max(min_rate or 0.0, sched.min_charging_rate)
        if sess.tx_connector and connector_sum < spec.max_current_a:
            cap = connector_sum if cap is None else min(cap, connector_sum)
        self.site.cap(spec.id, cap, min_rate)

    async def _call_cp(self, sess: _Session, uid: str, text: str, timeout: float | None = None) -> list[Any]:
        async with sess.lock:
            if sess.closed:
                raise ConnectionError("charge point disconnected")
            fut: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
            sess.waiting[uid] = fut
            try:
                await sess.ws.send(text)
                return await asyncio.wait_for(fut, timeout or self.config.response_timeout_s)
            except websockets.ConnectionClosed as exc:
                raise ConnectionError(str(exc)) from exc
            finally:
                sess.waiting.pop(uid, None)

    # ================================================================== our profiles on the boxes
    async def _set_profile(self, sess: _Session, payload: dict[str, Any]) -> bool:
        uid = f"lc-{next(self._ids)}"
        try:
            ans = await self._call_cp(sess, uid, json.dumps([2, uid, "SetChargingProfile", payload]))
        except (ConnectionError, TimeoutError) as exc:
            log.warning("charge point %s: SetChargingProfile not answered: %s", sess.cfg.spec.id, exc)
            return False
        ok = ans[0] == 3 and isinstance(ans[2], dict) and ans[2].get("status") == "Accepted"
        if not ok:
            log.warning("charge point %s: our SetChargingProfile refused: %s", sess.cfg.spec.id, ans[2:])
        return ok

    def _safe_default_for(self, sess: _Session, now: datetime) -> tuple[float, str]:
        """The safe default for the box and why: its share of the fuse, or lower where the central system's own
        ChargePointMaxProfile on the box is lower at any time in the coming week.

        Why: ours sits at a higher stackLevel of the same purpose, so while it is the only one of ours in
        force (the local controller gone, the lease run out) it overrides the central system's (§3.13.2: the
        highest stackLevel prevails within a purpose). A constant that stays under both, over a week (a
        Recurring Weekly profile included), keeps the box within the central system's limit too; the week's
        lowest value is the price of one period every box accepts. Re-evaluated when the central system's
        profiles on the box change and every SAFE_RECHECK_S."""
        cp = sess.cfg.spec.id
        share = self.site.safe_default_a(cp)
        cpmax = _charge_point_max(sess.profiles.all())
        if not cpmax:
            return share, "share of the site fuse"
        spec = sess.cfg.spec
        sched = composite_schedule(cpmax, 0, now, SAFE_HORIZON_S, "A", tx_start=None, tx_id=None, voltage=230.0,
                                   phases=len(spec.phases), default_limit_a=spec.max_current_a)
        floor = min((p.limit for p in sched.periods), default=share)
        if floor >= share:
            return share, "share of the site fuse"
        return math.floor(max(floor, 0.0) * 10 + 1e-6) / 10, "the central system's ChargePointMaxProfile"

    async def _install_safe_default(self, sess: _Session, reinstall: bool = False) -> None:
        cp = sess.cfg.spec.id
        now = self.clock()
        safe, why = self._safe_default_for(sess, now)
        sess.safe_checked_at = time.monotonic()
        ok = await self._set_profile(sess, _cap_profile(SAFE_PROFILE_ID, self.config.stack_level, safe, now, None))
        self.site.safe_default_installed(cp, ok, safe)
        sess.safe_installed_a = safe if ok else None
        if ok:
            log.info("charge point %s: safe default %.1f A installed (stack level %d; %s)", cp, safe,
                     self.config.stack_level, why)
        if reinstall:
            self.site.restore(cp, None, None, ok, safe)  # the allocation went too: installed again by the plan
        row = self.store.installed().get(cp, (None, None, None))
        self.store.save_installed(cp, row[0], row[1], safe if ok else None)
        self._replan()

    async def _send_allocation(self, cmd: Command) -> None:
        sess = self._sessions.get(cmd.cp)
        now = self.clock()
        if sess is None:
            self.site.answered(cmd.cp, False, now)
            return
        ok = await self._set_profile(sess, _cap_profile(ALLOC_PROFILE_ID, self.config.stack_level + 1,
                                                        cmd.amps, now, cmd.valid_to))
        self.site.answered(cmd.cp, ok, self.clock())
        if ok:
            safe = self.site.safe_default_a(cmd.cp) if self.site._boxes[cmd.cp].safe_default_ok else None
            self.store.save_installed(cmd.cp, cmd.amps, cmd.valid_to, safe)
            log.debug("charge point %s: allocation %.1f A (%s)", cmd.cp, cmd.amps, cmd.reason)
        self._replan()

    def _replan(self, urgent: bool = True) -> None:
        """Ask the planner for a new plan. ``urgent=False`` (a new measurement only): at most one plan per
        MEASUREMENT_REPLAN_S, so fifty boxes' MeterValues cost a few plans a second, not one each."""
        if urgent:
            self._urgent.set()
        self._kick.set()

    async def _planner(self) -> None:
        """Re-plan on every change and at least every second (leases, follow times, turn-taking): at once for
        a change of who wants current, of the limits or of a connection; new measurements are gathered for up
        to MEASUREMENT_REPLAN_S (well inside one meter interval, which is the issue's reaction bound)."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), 1.0)
            if not self._urgent.is_set() and self.last_plan_at is not None:
                gap = MEASUREMENT_REPLAN_S - (time.monotonic() - self.last_plan_at)
                if gap > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._urgent.wait(), gap)
            self._kick.clear()
            self._urgent.clear()
            await asyncio.sleep(0)
            now = self.clock()
            self._group_limit(now)
            for sess in list(self._sessions.values()):
                if len(sess.profiles):
                    self._update_caps(sess, now)
                    if time.monotonic() - sess.safe_checked_at > SAFE_RECHECK_S:
                        self._check_safe_default(sess)
            try:
                commands = self.site.plan(now)
            except Exception:
                log.exception("site plan failed")
                continue
            self.plan_count += 1
            self.last_plan_at = time.monotonic()
            for notify in self.on_plan:
                try:
                    notify()
                except Exception:  # a front end's bug must not stop the planner
                    log.exception("site view notification failed")
            for cmd in commands:
                asyncio.create_task(self._send_allocation(cmd), name=f"allocate {cmd.cp}")

    def _meter_event(self, event: Any) -> None:
        log.info("site meter: %s", event)

    async def _meter_loop(self) -> None:
        from hal.interfaces import MeterError

        assert self.config.site_meter is not None
        silent = False  # logged once per outage, not once per poll (as the charge point's grid loop does)
        while True:
            try:
                reading = await asyncio.wait_for(self._meter.read(), 5.0)
                self.site.site_meter(reading.current_a, self.clock())
                if silent:
                    log.info("site meter answers again")
                silent = False
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a driver bug too: the loop goes on, the site is held as for a silent meter
                if not silent:
                    if isinstance(exc, MeterError | TimeoutError | OSError):
                        log.warning("site meter does not answer (%s): charging boxes get their minimum once its "
                                    "last reading is stale", exc)
                    else:
                        log.exception("site meter read failed: charging boxes get their minimum once its last "
                                      "reading is stale")
                silent = True
                self.site.site_meter(None, self.clock())
            self._replan(urgent=False)
            await asyncio.sleep(self.config.site_meter.poll_s)

    # ================================================================== our own identity
    def _own_online(self, online: bool) -> None:
        if online:
            asyncio.get_running_loop().create_task(self._own_boot())

    async def _own_boot(self) -> None:
        assert self.own is not None
        from chargepoint import __version__

        try:
            ans = await self.own.call(f"lc-{next(self._ids)}", "BootNotification", {
                "chargePointVendor": "pi-chargepoint", "chargePointModel": "local-controller",
                "firmwareVersion": __version__})
        except (UpstreamOffline, TimeoutError) as exc:
            self.own_boot = f"failed: {exc}"
            return
        self.own_boot = ans[2].get("status", "?") if ans[0] == 3 else f"CALLERROR {ans[2]}"
        interval = ans[2].get("interval", 300) if ans[0] == 3 else 300
        while self.own.online:
            await asyncio.sleep(max(10, interval))
            with contextlib.suppress(UpstreamOffline, TimeoutError):
                await self.own.call(f"lc-{next(self._ids)}", "Heartbeat", {})

    async def _own_call(self, msg: list[Any], raw: str) -> None:
        """The central system talks to the local controller itself: the group limit (ChargePointMaxProfile)."""
        assert self.own is not None
        uid = msg[1]
        action = msg[2] if len(msg) > 2 else None
        payload = msg[3] if len(msg) > 3 and isinstance(msg[3], dict) else {}
        if action == "SetChargingProfile":
            try:
                profile = profile_from_ocpp(payload["csChargingProfiles"])
            except (ProfileRejected, KeyError, TypeError, ValueError) as exc:
                log.warning("group limit refused: %s", exc)
                await self.own.send_raw(json.dumps([3, uid, {"status": "Rejected"}]))
                return
            if profile.purpose != CHARGE_POINT_MAX or payload.get("connectorId") != 0:
                await self.own.send_raw(json.dumps([3, uid, {"status": "Rejected"}]))
                return
            try:
                self._group_profiles.install(0, profile, _MIRROR_LIMITS)
            except ProfileRejected as exc:
                log.warning("group limit refused: %s", exc)
                await self.own.send_raw(json.dumps([3, uid, {"status": "Rejected"}]))
                return
            log.info("group limit profile %s installed by the central system", profile.charging_profile_id)
            self._replan()
            await self.own.send_raw(json.dumps([3, uid, {"status": "Accepted"}]))
        elif action == "ClearChargingProfile":
            cleared = self._group_profiles.clear(
                id=payload.get("id"), connector_id=payload.get("connectorId"),
                purpose=payload.get("chargingProfilePurpose"), stack_level=payload.get("stackLevel"))
            self._replan()
            await self.own.send_raw(json.dumps([3, uid, {"status": "Accepted" if cleared else "Unknown"}]))
        else:
            await self.own.send_raw(json.dumps(
                [4, uid, "NotSupported", f"{action!r:.60} is not supported by the local controller", {}]))

    def _group_limit(self, now: datetime) -> None:
        if not len(self._group_profiles):
            self.site.group_limit(None)
            return
        lim = limit_at(self._group_profiles.all(), 0, now, tx_start=None, tx_id=None, voltage=230.0, phases=3)
        self.site.group_limit(lim.amps)

    # ================================================================== status
    def snapshot(self) -> dict[str, Any]:
        now = self.clock()
        limits, src = self.site.limits(now)
        boxes = self.site.view(now)
        for b in boxes:
            sess = self._sessions.get(b["id"])
            up = sess.upstream if sess else self._idle_upstreams.get(b["id"])
            b["upstream"] = "connected" if up and up.online else ("connecting" if up else "offline")
            b["upstream_error"] = up.last_error if up else None
            b["queued"] = self.store.queue_length(b["id"])
        return {
            "kind": "local-controller",
            "id": self.config.id,
            "url": self.url,
            "csms": "connected" if self.own and self.own.online else "offline",
            "csms_url": self.config.csms_url,
            "boot": self.own_boot,
            "queued": self.store.queue_length(),
            "site": {
                "fuse_a": list(self.config.site_limit_a),
                "limit_a": [round(x, 1) for x in limits],
                "limit_source": src,
                "committed_a": [round(x, 1) for x in self.site.phase_sums(now)],
            },
            "charge_points": boxes,
            "connectors": [],
        }

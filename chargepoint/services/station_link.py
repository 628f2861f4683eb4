"""The charge point's side of the Core profile's own messages: registration, heartbeat, status, the clock.

* BootNotification until Accepted (OCPP 1.6 §4.2): nothing else is sent before that; Pending/Rejected wait
  the interval the central system asked for.
* Heartbeat every HeartbeatInterval (§4.6); its answer (and the BootNotification's) sets the clock.
* StatusNotification (§4.9) through one queue, in order, each waiting for the transaction message queued
  before it for the same connector; after every (re)connect the full picture once.
* The central system's clock: :meth:`StationLink.now` is the wall clock as the central system sees it.
* Calls that are not queued (``call_quietly``: dropped while offline, §4.7) and the outbox's way out
  (``send_queued``).

The websocket itself is the :class:`~chargepoint.protocol.link.OcppLink` (built by the controller); this
service is what the charge point says over it on its own initiative.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any

import websockets

from chargepoint import connector as cm
from chargepoint.config import Config
from chargepoint.keys import ConfigurationKeys
from chargepoint.metering import iso
from chargepoint.protocol.link import CallErrorReceived, OcppLink, OcppSession
from chargepoint.protocol.outbox import Outbox
from chargepoint.services.station import Connectors, Emit, KeyChanges

log = logging.getLogger(__name__)


class StationLink:
    """Registration, heartbeat, status notifications and the central system's clock."""

    def __init__(
        self,
        config: Config,
        connectors: Connectors,
        *,
        keys: ConfigurationKeys,
        key_changes: KeyChanges,
        link: Callable[[], OcppLink | None],
        outbox: Callable[[], Outbox | None],
        set_online: Callable[[bool], None],
        station_status: Callable[[], tuple[str, str]],
        emit: Emit,
        spawn: Callable[[Coroutine[Any, Any, Any], str], asyncio.Task[Any]],
        on_key_changed: Callable[[str, Any], None],
        session_starting: Callable[[], None],
        session_started: Callable[[], Awaitable[None]],
        registered: Callable[[], None],
        clock_moved: Callable[[float], None],
        link_error: Callable[[BaseException], None],
        status_info: Callable[[int], str | None] = lambda connector_id: None,
    ) -> None:
        self._config = config
        self._connectors = connectors
        self._keys = keys
        self._key_changes = key_changes
        self._link = link
        self._outbox = outbox
        self._set_online = set_online
        self._station_status = station_status
        self._emit = emit
        self._spawn = spawn
        self._on_key_changed = on_key_changed
        self._session_starting = session_starting
        self._session_started = session_started
        self._registered_hook = registered
        self._clock_moved = clock_moved
        self._link_error = link_error
        self._status_info = status_info
        self._boot_accepted = False
        self._registration = "Unknown"
        self._clock_offset = timedelta(0)
        self._status_queue: asyncio.Queue[tuple[int, str, str, int]] = asyncio.Queue()
        self._heartbeat_from = 0.0  # loop time the heartbeat interval counts from (boot, last heartbeat)

    # ------------------------------------------------------------------ what others may read
    @property
    def boot_accepted(self) -> bool:
        """The central system accepted a BootNotification (once per process, §4.2)."""
        return self._boot_accepted

    @property
    def registration(self) -> str:
        """The last BootNotification status: "Accepted", "Pending", "Rejected" or "Unknown"."""
        return self._registration

    def now(self) -> datetime:
        """Wall-clock time as the central system sees it (its BootNotification/Heartbeat time)."""
        return datetime.now(UTC) + self._clock_offset

    def online(self) -> bool:
        """Connected and registered: messages may be sent now."""
        link = self._link()
        return bool(link is not None and link.session is not None and self._boot_accepted)

    def state(self) -> str:
        """"connected" (registered), "connecting" (websocket up, not yet accepted) or "offline"."""
        link = self._link()
        link_up = bool(link and link.session is not None)
        return "connected" if link_up and self._boot_accepted else "connecting" if link_up else "offline"

    def statuses_pending(self) -> bool:
        """StatusNotifications still queued (tests wait until none are before stopping)."""
        return not self._status_queue.empty()

    # ------------------------------------------------------------------ sending
    async def call(self, action: str, payload: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        """A call that must be answered (Authorize.req): ConnectionError when there is no link."""
        link = self._link()
        if link is None:
            raise ConnectionError("not connected")
        return await link.call(action, payload, timeout)

    async def call_quietly(self, action: str, payload: dict[str, Any]) -> dict[str, Any] | None:
        """A message that is not queued: sent if connected, otherwise dropped (OCPP 1.6 §4.7)."""
        link = self._link()
        if not link or not self._boot_accepted:
            return None
        try:
            return await link.call(action, payload)
        except (TimeoutError, CallErrorReceived, ConnectionError) as exc:
            log.warning("%s not delivered: %s", action, exc)
            return None

    async def send_queued(self, action: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Send one outbox message. A link that is down or drops mid-call is a ConnectionError (the
        outbox waits for the reconnect and does not count an attempt); CALLERROR/timeout pass through."""
        link = self._link()
        if not link or not self._boot_accepted:
            raise ConnectionError("not connected")
        try:
            return await link.call(action, payload)
        except websockets.ConnectionClosed as exc:
            raise ConnectionError(f"link closed while sending {action}") from exc

    async def data_transfer(
        self, vendor_id: str, message_id: str | None = None, data: str | None = None
    ) -> dict[str, Any]:
        """DataTransfer from the charge point (OCPP 1.6 §4.3). Returns the central system's answer."""
        link = self._link()
        if not link or not self._boot_accepted:
            raise ConnectionError("not connected to the central system")
        payload: dict[str, Any] = {"vendorId": vendor_id}
        if message_id is not None:
            payload["messageId"] = message_id
        if data is not None:
            payload["data"] = data
        return await link.call("DataTransfer", payload)

    # ------------------------------------------------------------------ status notifications (§4.9)
    def queue_status(self, connector_id: int, status: str, error_code: str, barrier: int = 0) -> None:
        """Queue a StatusNotification; ``barrier``: the connector's transaction actions decided so far."""
        self._status_queue.put_nowait((connector_id, status, error_code, barrier))

    def status_changed(self, connector_id: int, status: str, error_code: str, barrier: int) -> None:
        """A connector's status changed: sent once registered (before that, the boot sends the picture)."""
        if self._boot_accepted:
            self.queue_status(connector_id, status, error_code, barrier)

    def report_local_list_conflict(self) -> None:
        """Connector 0 reports LocalListConflict (§3.5.3): the list and the central system disagree."""
        if self._boot_accepted:
            status, _code = self._station_status()
            self._spawn(self._send_status(0, status, "LocalListConflict"), "local-list-conflict")

    async def status_sender(self) -> None:
        """StatusNotifications in order. A status waits (up to 10 s) until the Start/StopTransaction queued
        before it for the same connector was delivered, so the central system never sees "Charging" before
        the transaction it belongs to."""
        while True:
            cid, status, code, barrier = await self._status_queue.get()
            rt = self._connectors.get(cid)
            outbox = self._outbox()
            if rt is not None and outbox is not None and barrier > 0:
                for _ in range(200):
                    if not self._boot_accepted:
                        break
                    if rt.tx_done >= barrier:
                        head = outbox.head()
                        if head is None or head.seq > rt.last_tx_seq:
                            break
                    await asyncio.sleep(0.02)
            if self._boot_accepted:
                await self._send_status(cid, status, code)

    async def _send_status(self, connector_id: int, status: str, error_code: str) -> None:
        payload = {
            "connectorId": connector_id,
            "status": status,
            "errorCode": error_code,
            "timestamp": iso(self.now()),
        }
        rt = self._connectors.get(connector_id)
        if rt is not None and error_code != "NoError" and rt.state.error_code == error_code:
            payload.update(cm.vendor_error_fields(rt.state))  # e.g. OtherError + InvalidCable
        if "info" not in payload and (info := self._status_info(connector_id)):
            payload["info"] = info  # §14a dimming: security-neutral, reported with the status (CiString50)
        await self.call_quietly("StatusNotification", payload)

    def _send_all_statuses(self) -> None:
        """After BootNotification.conf Accepted and after every reconnect: connector 0 and every connector,
        each once, with the status it is in now.

        OCPP 1.6 §4.9 asks for a StatusNotification on every change; a status that changed while the link
        was down was dropped (statuses are not queued, §4.7 style), and a central system that restarted or
        lost state in between knows nothing. So every (re)connect sends the full picture, not only what
        changed. Statuses still queued from before are superseded by it and dropped."""
        while not self._status_queue.empty():
            self._status_queue.get_nowait()
        status, code = self._station_status()
        self._status_queue.put_nowait((0, status, code, 0))
        for rt in self._connectors.values():
            if rt.state.status:
                self._status_queue.put_nowait((rt.id, rt.state.status, rt.state.error_code, rt.tx_issued))

    # ------------------------------------------------------------------ the session: boot (§4.2)
    async def on_session(self, session: OcppSession) -> None:
        """A websocket is up: boot once per process, then (on every reconnect) every status once.

        A failure here would leave the link connected but never registered: it is logged and the connection
        closed, so that the link connects and tries again (with its back-off)."""
        self._session_starting()
        try:
            if not self._boot_accepted:
                await self._boot(session)
            else:
                self._set_online(True)
                self._send_all_statuses()
        except (asyncio.CancelledError, ConnectionError, websockets.ConnectionClosed):
            raise
        except Exception:
            log.exception("starting the OCPP session failed; reconnecting")
            with contextlib.suppress(Exception):
                await session._connection.close()
        await self._session_started()

    def on_disconnect(self) -> None:
        self._set_online(False)
        self._emit("disconnected")

    def on_link_error(self, exc: BaseException) -> None:
        """The link could not connect (e.g. the central system's certificate did not verify)."""
        self._emit("link_error", error=f"{type(exc).__name__}: {exc}")
        self._link_error(exc)

    def boot_payload(self) -> dict[str, Any]:
        cfg = self._config
        from chargepoint import __version__

        payload: dict[str, Any] = {
            "chargePointVendor": cfg.vendor,
            "chargePointModel": cfg.model,
            "firmwareVersion": cfg.firmware_version or __version__,
        }
        if cfg.serial_number:
            payload["chargePointSerialNumber"] = cfg.serial_number
        return payload

    async def _boot(self, session: OcppSession) -> None:
        """BootNotification until Accepted (OCPP 1.6 §4.2): nothing else is sent before that."""
        while True:
            try:
                conf = await session.call_raw("BootNotification", self.boot_payload())
            except (TimeoutError, CallErrorReceived) as exc:
                log.warning("BootNotification failed (%s); retrying in 30 s", exc)
                await asyncio.sleep(30)
                continue
            self.set_clock(conf.get("currentTime"))
            self._registration = conf["status"]
            interval = int(conf.get("interval", 0))
            self._emit("boot", status=self._registration, interval=interval)
            if conf["status"] == "Accepted":
                if interval > 0:
                    self._keys.set_internal("HeartbeatInterval", interval)
                self._boot_accepted = True
                log.info("BootNotification accepted; heartbeat every %d s", self._keys["HeartbeatInterval"])
                self._heartbeat_from = asyncio.get_running_loop().time()
                self._key_changes.changed("HeartbeatInterval")  # the heartbeat loop counts from now
                self._set_online(True)
                self._send_all_statuses()
                self._registered_hook()
                return
            wait = interval if interval > 0 else int(self._keys["HeartbeatInterval"]) or 60
            log.warning("BootNotification %s; trying again in %d s", conf["status"], wait)
            await asyncio.sleep(wait)

    def triggered_boot(self, conf: dict[str, Any]) -> None:
        """The answer to a BootNotification sent on TriggerMessage (§5.17): clock, status, interval."""
        self.set_clock(conf.get("currentTime"))
        self._registration = conf["status"]
        interval = int(conf.get("interval", 0))
        if conf["status"] == "Accepted" and interval > 0 and interval != self._keys["HeartbeatInterval"]:
            self._keys.set_internal("HeartbeatInterval", interval)
            self._on_key_changed("HeartbeatInterval", interval)

    # ------------------------------------------------------------------ heartbeat (§4.6) and the clock
    async def heartbeat_loop(self) -> None:
        """Heartbeat every HeartbeatInterval (OCPP 1.6 §4.6) once registered; 0 means once a day.

        A changed interval (ChangeConfiguration, or the BootNotification's interval) applies at once: the
        next heartbeat is due one new interval after the previous one (or the boot), at once if that moment
        has already passed."""
        loop = asyncio.get_running_loop()
        self._heartbeat_from = loop.time()
        while True:
            interval = int(self._keys["HeartbeatInterval"]) or 86400
            if await self._key_changes.wait("HeartbeatInterval", self._heartbeat_from + interval - loop.time()):
                continue
            self._heartbeat_from = loop.time()
            link = self._link()
            if not self._boot_accepted or not link or link.session is None:
                continue
            try:
                conf = await link.call("Heartbeat", {})
                self.set_clock(conf.get("currentTime"))
            except (TimeoutError, CallErrorReceived, ConnectionError) as exc:
                log.warning("Heartbeat failed: %s", exc)

    def set_clock(self, current_time: str | None) -> None:
        """Take the central system's time; a jump is a security event (SettingSystemTime)."""
        before = self._clock_offset
        self._take_clock(current_time)
        self._clock_moved(abs((self._clock_offset - before).total_seconds()))

    def _take_clock(self, current_time: str | None) -> None:
        if not current_time:
            return
        try:
            csms = datetime.fromisoformat(current_time.replace("Z", "+00:00"))
        except ValueError:
            log.warning("central system sent an unreadable currentTime %r", current_time)
            return
        if csms.tzinfo is None:
            csms = csms.replace(tzinfo=UTC)
        self._clock_offset = csms - datetime.now(UTC)

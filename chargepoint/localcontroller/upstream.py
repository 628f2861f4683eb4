"""One upstream websocket to the central system under one identity (a downstream box's or our own).

The local controller forwards frames unchanged, so this is a raw OCPP-J client: ``call`` sends a CALL
with a given unique id (the box's own, so the central system sees the box's ids) and returns the answer
frame; CALLs from the central system go to ``on_call``. It reconnects with exponential back-off and full
jitter, like the charge point's own link (chargepoint/protocol/link.py); a central system that refuses
one identity (HTTP 401/404 at the upgrade) only delays that identity's retries.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import random
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import websockets

log = logging.getLogger(__name__)

OnCall = Callable[[list[Any], str], Awaitable[None]]


class UpstreamOffline(ConnectionError):
    """No connection to the central system for this identity."""


class Upstream:
    def __init__(
        self,
        identity: str,
        base_url: str,
        *,
        password: str | None,
        ssl_context: ssl.SSLContext | None,
        on_call: OnCall,
        on_online: Callable[[bool], None] = lambda online: None,
        max_backoff_s: float = 60.0,
    ) -> None:
        self.identity = identity
        self.url = f"{base_url.rstrip('/')}/{identity}"
        self._password = password
        self._ssl = ssl_context
        self._on_call = on_call
        self._on_online = on_online
        self._max_backoff = max_backoff_s
        self._ws: Any = None
        self._waiting: dict[str, asyncio.Future[list[Any]]] = {}
        self._lock = asyncio.Lock()  # OCPP-J §4.1.1: one CALL outstanding per direction
        self._task: asyncio.Task[None] | None = None
        self._calls: set[asyncio.Task[None]] = set()  # handlers of the central system's CALLs running now
        self.connected = asyncio.Event()
        self.last_error: str | None = None
        self.refused = 0

    @property
    def online(self) -> bool:
        return self._ws is not None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"upstream {self.identity}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._set_ws(None)

    def _set_ws(self, ws: Any) -> None:
        was = self._ws is not None
        self._ws = ws
        if ws is None:
            self.connected.clear()
            for fut in self._waiting.values():
                if not fut.done():
                    fut.set_exception(UpstreamOffline(f"{self.identity}: connection to the central system lost"))
            self._waiting.clear()
        else:
            self.connected.set()
        if was != (ws is not None):
            self._on_online(ws is not None)

    def _headers(self) -> dict[str, str]:
        if self._password is None:
            return {}
        token = base64.b64encode(f"{self.identity}:{self._password}".encode()).decode()
        return {"Authorization": f"Basic {token}"}

    async def _run(self) -> None:
        attempt = 0
        while True:
            try:
                async with websockets.connect(
                    self.url, subprotocols=["ocpp1.6"],  # type: ignore[list-item]
                    additional_headers=self._headers(), ssl=self._ssl, open_timeout=10,
                    ping_interval=60, ping_timeout=60, max_size=4 << 20,
                ) as ws:
                    if ws.subprotocol != "ocpp1.6":
                        raise ConnectionError("central system did not accept subprotocol ocpp1.6")
                    log.info("upstream %s connected to %s", self.identity, self.url)
                    self.last_error = None
                    attempt = 0
                    self._set_ws(ws)
                    try:
                        async for raw in ws:
                            self._route(raw)
                    finally:
                        self._set_ws(None)
                log.warning("upstream %s: connection closed by the central system", self.identity)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # refused, unreachable, TLS: retried, other identities go on
                self.last_error = f"{type(exc).__name__}: {exc}"
                if "HTTP 40" in str(exc):
                    self.refused += 1
                log.warning("upstream %s: %s", self.identity, self.last_error)
            attempt += 1
            await asyncio.sleep(random.uniform(0, min(self._max_backoff, 0.5 * 2 ** min(attempt, 10))))

    def _route(self, raw: str | bytes) -> None:
        if isinstance(raw, bytes):
            log.warning("upstream %s: binary frame dropped", self.identity)
            return
        try:
            msg = json.loads(raw)
        except ValueError:
            log.warning("upstream %s: malformed frame dropped: %.200s", self.identity, raw)
            return
        if not isinstance(msg, list) or len(msg) < 3 or not isinstance(msg[1], str):
            log.warning("upstream %s: frame is not OCPP-J, dropped: %.200s", self.identity, raw)
            return
        if msg[0] == 2:
            task = asyncio.get_running_loop().create_task(self._handle_call(msg, raw))
            self._calls.add(task)
            task.add_done_callback(self._calls.discard)
        elif msg[0] in (3, 4):
            fut = self._waiting.pop(msg[1], None)
            if fut is not None and not fut.done():
                fut.set_result(msg)
            else:
                log.warning("upstream %s: answer to no outstanding call dropped (%.40s)", self.identity, msg[1])

    async def _handle_call(self, msg: list[Any], raw: str) -> None:
        """One CALL from the central system. A bug in handling it must not pass silently nor leave the central
        system waiting: it is logged with its traceback and answered InternalError (OCPP-J §4.2.3)."""
        try:
            await self._on_call(msg, raw)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("upstream %s: handling %.40s from the central system failed", self.identity,
                          msg[2] if len(msg) > 2 else "?")
            await self.send_raw(json.dumps([4, msg[1], "InternalError",
                                            "the local controller could not handle it", {}]))

    async def call(self, unique_id: str, action: str, payload: dict[str, Any] | None, *,
                   raw: str | None = None, timeout: float = 30.0) -> list[Any]:
        """Send one CALL (``raw``: these exact bytes) and return the answer frame ([3, …] or [4, …]).
        UpstreamOffline when not connected or the connection drops; TimeoutError without an answer."""
        async with self._lock:
            ws = self._ws
            if ws is None:
                raise UpstreamOffline(f"{self.identity}: not connected to the central system")
            fut: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
            self._waiting[unique_id] = fut
            try:
                await ws.send(raw if raw is not None else json.dumps([2, unique_id, action, payload]))
                return await asyncio.wait_for(fut, timeout)
            except websockets.ConnectionClosed as exc:
                raise UpstreamOffline(f"{self.identity}: {exc}") from exc
            finally:
                self._waiting.pop(unique_id, None)

    async def send_raw(self, text: str) -> None:
        """An answer to the central system's CALL (or a CALLERROR); dropped when offline."""
        ws = self._ws
        if ws is None:
            log.warning("upstream %s offline: answer dropped", self.identity)
            return
        with contextlib.suppress(websockets.ConnectionClosed):
            await ws.send(text)

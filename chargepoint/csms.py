"""A small central system on loopback, built on the ``ocpp`` library's central-system side.

The demo embeds it, and the tests use it as the real websocket peer. It records
every message in both directions, answers with configurable behaviour and can
send any request to a connected charge point.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import websockets
from ocpp.routing import on
from ocpp.v16 import ChargePoint as _CentralSide
from ocpp.v16 import call_result

log = logging.getLogger(__name__)


@dataclass
class Record:
    direction: str  # "in" (from the charge point) or "out"
    action: str
    payload: dict[str, Any]
    at: datetime = field(default_factory=lambda: datetime.now(UTC))


async def poll_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.01) -> Any:
    """Poll ``predicate`` on the loop until it returns something truthy; TimeoutError after ``timeout`` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if loop.time() > deadline:
            raise TimeoutError(f"condition not met within {timeout:.1f} s")
        await asyncio.sleep(interval)


class CentralSystemBehaviour:
    """Answers the central system gives; tests change these attributes."""

    def __init__(self) -> None:
        self.boot_status = "Accepted"
        self.boot_interval = 300
        self.authorize_status: Callable[[str], str] = lambda tag: "Accepted"
        self.parent_id_tag: Callable[[str], str | None] = lambda tag: None
        self.start_status: Callable[[str], str] = lambda tag: "Accepted"
        self.fail_actions: set[str] = set()  # answered with a CALLERROR
        self.silent_actions: set[str] = set()  # never answered
        self.drop_once: set[str] = set()  # the connection is closed instead of answering, once per action
        self.sign_certificate_status = "Accepted"  # SignCertificate.conf (security extension)


class _Session(_CentralSide):
    def __init__(self, cp_id: str, ws: Any, server: CentralSystem) -> None:
        super().__init__(cp_id, ws, response_timeout=10)
        self.server = server

    async def route_message(self, raw_msg: str) -> None:  # record before the library handles it
        import json

        try:
            msg = json.loads(raw_msg)
            if isinstance(msg, list) and msg and msg[0] == 2:
                action, payload = msg[2], msg[3]
                self.server._record(Record("in", action, payload))
                if action in self.server.behaviour.silent_actions:
                    return
                if action in self.server.behaviour.drop_once:
                    self.server.behaviour.drop_once.discard(action)
                    await self._connection.close()
                    return
                if action in self.server.behaviour.fail_actions:
                    await self._send(json.dumps([4, msg[1], "InternalError", "test failure", {}]))
                    return
            else:
                self.server.raw_in.append(raw_msg)
        except Exception:  # the library reports malformed frames itself
            pass
        await super().route_message(raw_msg)

    def _b(self) -> CentralSystemBehaviour:
        return self.server.behaviour

    def _info(self, id_tag: str, status: str) -> dict[str, Any]:
        info: dict[str, Any] = {"status": status}
        parent = self._b().parent_id_tag(id_tag)
        if parent:
            info["parentIdTag"] = parent
        return info

    @on("BootNotification")
    def on_boot(self, **_: Any) -> Any:
        return call_result.BootNotification(
            current_time=datetime.now(UTC).isoformat(),
            interval=self._b().boot_interval,
            status=self._b().boot_status,
        )

    @on("Heartbeat")
    def on_heartbeat(self) -> Any:
        return call_result.Heartbeat(current_time=datetime.now(UTC).isoformat())

    @on("StatusNotification")
    def on_status(self, **_: Any) -> Any:
        return call_result.StatusNotification()

    @on("Authorize")
    def on_authorize(self, id_tag: str) -> Any:
        return call_result.Authorize(id_tag_info=self._info(id_tag, self._b().authorize_status(id_tag)))

    @on("StartTransaction")
    def on_start(self, id_tag: str, **_: Any) -> Any:
        tx_id = next(self.server.transaction_ids)
        return call_result.StartTransaction(
            transaction_id=tx_id, id_tag_info=self._info(id_tag, self._b().start_status(id_tag))
        )

    @on("StopTransaction")
    def on_stop(self, **_: Any) -> Any:
        return call_result.StopTransaction()

    @on("MeterValues")
    def on_meter_values(self, **_: Any) -> Any:
        return call_result.MeterValues()

    @on("DataTransfer")
    def on_data_transfer(self, **_: Any) -> Any:
        return call_result.DataTransfer(status="Accepted")

    @on("FirmwareStatusNotification")
    def on_fw_status(self, **_: Any) -> Any:
        return call_result.FirmwareStatusNotification()

    @on("DiagnosticsStatusNotification")
    def on_diag_status(self, **_: Any) -> Any:
        return call_result.DiagnosticsStatusNotification()

    @on("SecurityEventNotification")
    def on_security_event(self, **_: Any) -> Any:
        return call_result.SecurityEventNotification()

    @on("SignCertificate")
    def on_sign_certificate(self, **_: Any) -> Any:
        return call_result.SignCertificate(status=self._b().sign_certificate_status)

    @on("LogStatusNotification")
    def on_log_status(self, **_: Any) -> Any:
        return call_result.LogStatusNotification()

    @on("SignedFirmwareStatusNotification")
    def on_signed_fw_status(self, **_: Any) -> Any:
        return call_result.SignedFirmwareStatusNotification()


class CentralSystem:
    """``async with CentralSystem() as cs:`` listens on 127.0.0.1 on a free port (``cs.url``)."""

    def __init__(
        self,
        *,
        port: int = 0,
        password: str | None = None,
        on_record: Callable[[Record], None] | None = None,
        ssl_context: Any = None,
    ) -> None:
        self.port = port
        self.ssl_context = ssl_context
        self.password = password
        self.behaviour = CentralSystemBehaviour()
        self.records: list[Record] = []
        self.raw_in: list[str] = []
        self.sessions: dict[str, _Session] = {}
        self.connections = 0
        self.transaction_ids = itertools.count(1001)
        self._on_record = on_record
        self._server: Any = None
        self.last_request_headers: Any = None

    def _record(self, record: Record) -> None:
        self.records.append(record)
        if self._on_record:
            self._on_record(record)

    @property
    def url(self) -> str:
        scheme = "wss" if self.ssl_context is not None else "ws"
        return f"{scheme}://127.0.0.1:{self.port}/ocpp"

    async def __aenter__(self) -> CentralSystem:
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def start(self) -> None:
        def select(connection: Any, subprotocols: Any) -> Any:
            return "ocpp1.6" if "ocpp1.6" in subprotocols else None

        self._server = await websockets.serve(
            self._handler,
            "127.0.0.1",
            self.port,
            subprotocols=["ocpp1.6"],  # type: ignore[list-item]
            select_subprotocol=select,
            process_request=self._check_auth,
            ssl=self.ssl_context,
        )
        self.port = self._server.sockets[0].getsockname()[1]

    def _check_auth(self, connection: Any, request: Any) -> Any:
        self.last_request_headers = request.headers
        if self.password is None:
            return None
        import base64

        cp_id = request.path.rstrip("/").split("/")[-1]
        expected = "Basic " + base64.b64encode(f"{cp_id}:{self.password}".encode()).decode()
        if request.headers.get("Authorization") != expected:
            return connection.respond(401, "Unauthorized\n")
        return None

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def drop_connections(self) -> None:
        for s in list(self.sessions.values()):
            await s._connection.close()

    async def _handler(self, ws: Any) -> None:
        cp_id = ws.request.path.rstrip("/").split("/")[-1]
        session = _Session(cp_id, ws, self)
        self.sessions[cp_id] = session
        self.connections += 1
        try:
            await session.start()
        except websockets.ConnectionClosed:
            pass
        finally:
            if self.sessions.get(cp_id) is session:
                del self.sessions[cp_id]

    # ------------------------------------------------------------------ helpers for tests and the demo
    def received(self, action: str) -> list[dict[str, Any]]:
        return [r.payload for r in self.records if r.direction == "in" and r.action == action]

    async def wait_for(self, predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
        """Poll ``predicate`` until it returns something truthy (or raise TimeoutError)."""
        return await poll_until(predicate, timeout)

    async def wait_for_message(
        self,
        action: str,
        count: int = 1,
        timeout: float = 10.0,
        where: Callable[[dict[str, Any]], bool] = lambda p: True,
    ) -> dict[str, Any]:
        def matching() -> list[dict[str, Any]]:
            return [p for p in self.received(action) if where(p)]

        await self.wait_for(lambda: len(matching()) >= count, timeout)
        return matching()[count - 1]

    async def wait_connected(self, cp_id: str, timeout: float = 10.0) -> _Session:
        return await self.wait_for(lambda: self.sessions.get(cp_id), timeout)

    async def call(self, cp_id: str, action: str, payload: dict[str, Any], timeout: float = 10.0) -> Any:
        """Send a request to the charge point; returns the CALLRESULT payload or raises on CALLERROR."""
        from ocpp.messages import Call, MessageType

        session = await self.wait_connected(cp_id)
        import uuid

        call = Call(str(uuid.uuid4()), action, payload)
        self._record(Record("out", action, payload))
        async with session._call_lock:
            await session._send(call.to_json())
            response = await session._get_specific_response(call.unique_id, timeout)
        if response.message_type_id == MessageType.CallError:
            return {"__error__": response.error_code, "description": response.error_description}
        return response.payload

    async def send_raw(self, cp_id: str, frame: str, timeout: float = 5.0) -> list[Any]:
        """Send any text frame; returns the next frame(s) the charge point answers with that are not CALLs."""
        import json

        session = await self.wait_connected(cp_id)
        before = len(self.raw_in)
        await session._send(frame)
        await self.wait_for(lambda: len(self.raw_in) > before, timeout)
        return [json.loads(x) for x in self.raw_in[before:]]

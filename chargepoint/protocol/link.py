"""The OCPP-J link: one websocket to the central system, kept up for ever.

* URL = CSMS URL + "/" + charge point id, subprotocol ``ocpp1.6``; ``ws://`` or
  ``wss://`` (certificate checked against the system store or a configured CA
  file) with optional HTTP Basic authentication (user = charge point id).
* The transport follows the security profile (see ``OcppLink.url``): the OCPP 1.6
  security whitepaper's profiles 1 (ws + Basic), 2 (wss + Basic) and 3 (wss +
  client certificate).
* Reconnects with exponential back-off and full jitter.
* Incoming frames are checked before the ``ocpp`` library routes them, so that
  every malformed frame gets the CALLERROR the OCPP-J 1.6 specification (§4.2.3,
  table "Valid Error Codes") names, spelled as 1.6 spells them.
* ``call(action, payload)`` sends one CALL and waits for its answer; at most one
  CALL is outstanding at a time (OCPP-J §4.1.1).
"""

from __future__ import annotations

import asyncio
import base64
import decimal
import json
import logging
import random
import re
import ssl
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import ocpp.v16 as ocpp_v16
import websockets
from jsonschema.exceptions import ValidationError as SchemaValidationError
from ocpp import messages as ocpp_messages
from ocpp.exceptions import OCPPError
from ocpp.messages import Call, CallError, CallResult, MessageType, get_validator, validate_payload
from ocpp.v16 import ChargePoint as _LibraryChargePoint
from ocpp.v16.enums import Action

from chargepoint.protocol.outbox import CallErrorReceived

# Schema validation of a 1.6 payload takes ~0.2 ms; the library's default runs it in a thread pool, and the
# thread hop costs twice that. Validate on the loop (replay of a queue: 589 → 794 messages/s).
ocpp_messages.ASYNC_VALIDATION = False

log = logging.getLogger(__name__)

# Actions the central system may send to a charge point (OCPP 1.6 + security extension).
CSMS_TO_CP_ACTIONS = frozenset(
    {
        "CancelReservation", "ChangeAvailability", "ChangeConfiguration", "ClearCache", "ClearChargingProfile",
        "DataTransfer", "GetCompositeSchedule", "GetConfiguration", "GetDiagnostics", "GetLocalListVersion",
        "RemoteStartTransaction", "RemoteStopTransaction", "ReserveNow", "Reset", "SendLocalList",
        "SetChargingProfile", "TriggerMessage", "UnlockConnector", "UpdateFirmware", "CertificateSigned",
        "DeleteCertificate", "ExtendedTriggerMessage", "GetInstalledCertificateIds", "GetLog",
        "InstallCertificate", "SignedUpdateFirmware",
    }
)  # fmt: skip

# The 1.6 spelling of error codes the library names in the 2.0 way.
_V16_CODES = {
    "FormatViolation": "FormationViolation",
    "OccurrenceConstraintViolation": "OccurenceConstraintViolation",
}
_UNIQUE_ID = re.compile(r'^\s*\[\s*\d+\s*,\s*"([^"\\]{1,36})"')


class _Disconnected:
    unique_id = None


_DISCONNECTED = _Disconnected()


def _schema_error_code(error: SchemaValidationError) -> str:
    """Which 1.6 error code a schema violation is (OCPP-J 1.6 §4.2.3)."""
    if error.validator == "type":
        return "TypeConstraintViolation"
    if error.validator in ("required", "minItems", "maxItems"):
        return "OccurenceConstraintViolation"
    if error.validator == "additionalProperties":
        return "FormationViolation"
    return "PropertyConstraintViolation"  # enum, maxLength, minimum, format, multipleOf …


# Actions whose schema has "multipleOf": 0.1: validated with Decimal numbers, as the ocpp library does, so that
# a limit of 21.4 A is not refused for binary floating point.
_DECIMAL_ACTIONS = frozenset({"SetChargingProfile", "RemoteStartTransaction"})
_FAST: dict[str, Any] = {}


def _fast_validator(action: str) -> Any:
    """A compiled validator (fastjsonschema: ~10× faster than jsonschema on a 10,000-entry SendLocalList)."""
    if action not in _FAST:
        try:
            import fastjsonschema

            path = Path(ocpp_v16.__file__).parent / "schemas" / f"{action}.json"
            _FAST[action] = fastjsonschema.compile(json.loads(path.read_text(encoding="utf-8")))
        except Exception:  # no such schema or not compilable: the precise path decides alone
            _FAST[action] = None
    return _FAST[action]


def _first_schema_error(action: str, payload: dict[str, Any]) -> SchemaValidationError | None:
    """The first violation of the OCPP 1.6 request schema, or None. Valid payloads take the fast path; an
    invalid one is examined by jsonschema, which names the violated keyword for the error code."""
    fast = _fast_validator(action)
    if fast is not None:
        try:
            fast(payload)
            return None
        except Exception:
            pass
    try:
        if action in _DECIMAL_ACTIONS:
            validator = get_validator(MessageType.Call, action, "1.6", parse_float=decimal.Decimal)
            payload = json.loads(json.dumps(payload), parse_float=decimal.Decimal)
        else:
            validator = get_validator(MessageType.Call, action, "1.6")
        return next(iter(sorted(validator.iter_errors(payload), key=lambda e: list(e.path))), None)
    except (OSError, ValueError):  # a schema the library lacks
        return None


class OcppSession(_LibraryChargePoint):
    """One websocket connection. Handler mixins (grouped by profile) are added by subclassing."""

    def __init__(self, cp_id: str, connection: Any, response_timeout: float, controller: Any = None) -> None:
        super().__init__(cp_id, connection, response_timeout=response_timeout, logger=log)
        self.controller = controller
        self.accept_calls: Callable[[str], str | None] = lambda action: None

    # ------------------------------------------------------------------ incoming
    async def route_message(self, raw_msg: str | bytes) -> None:
        unique_id = "-1"
        if isinstance(raw_msg, bytes):
            await self._send_error(unique_id, "FormationViolation", "binary frames are not OCPP-J")
            return
        m = _UNIQUE_ID.match(raw_msg)
        if m:
            unique_id = m.group(1)
        try:
            msg = json.loads(raw_msg)
        except (json.JSONDecodeError, UnicodeDecodeError):
            await self._send_error(unique_id, "FormationViolation", "frame is not valid JSON")
            return
        if not isinstance(msg, list) or len(msg) < 3 or not isinstance(msg[1], str):
            await self._send_error(
                unique_id, "FormationViolation", "frame is not [MessageTypeId, UniqueId, …]"
            )
            return
        type_id = msg[0]
        if type_id in (MessageType.CallResult, MessageType.CallError):
            try:
                parsed = CallResult(*msg[1:]) if type_id == MessageType.CallResult else CallError(*msg[1:])
            except TypeError:
                log.warning("ignoring malformed response frame: %.200s", raw_msg)
                return
            self._response_queue.put_nowait(parsed)
            return
        if type_id != MessageType.Call:
            await self._send_error(unique_id, "ProtocolError", f"unknown MessageTypeId {type_id!r}")
            return
        if len(msg) != 4 or not isinstance(msg[2], str):
            await self._send_error(
                unique_id, "FormationViolation", "a CALL is [2, UniqueId, Action, Payload]"
            )
            return
        _, unique_id, action, payload = msg
        if action not in CSMS_TO_CP_ACTIONS:
            try:
                Action(action)
                await self._send_error(unique_id, "NotSupported", f"{action} is not sent to a charge point")
            except ValueError:
                await self._send_error(unique_id, "NotImplemented", f"unknown action {action!r}")
            return
        if action not in self.route_map or "_on_action" not in self.route_map[action]:
            await self._send_error(unique_id, "NotSupported", f"{action} is not supported")
            return
        if not isinstance(payload, dict):
            await self._send_error(unique_id, "FormationViolation", "payload must be a JSON object")
            return
        error = _first_schema_error(action, payload)
        if error is not None:
            where = "/".join(str(p) for p in error.path) or "(payload)"
            await self._send_error(unique_id, _schema_error_code(error), f"{where}: {error.message}"[:255])
            return
        refusal = self.accept_calls(action)
        if refusal is not None:
            await self._send_error(unique_id, "GenericError", refusal)
            return
        # Validated above with the 1.6 error-code mapping: the library need not validate the request again
        # (a SendLocalList of 10,000 entries costs ~150 ms per validation).
        self.route_map[action]["_skip_schema_validation"] = True
        log.info("← %s %s", action, json.dumps(payload)[:500], extra={"OCPP_ACTION": action})
        try:
            await self._handle_call(Call(unique_id, action, payload))
        except OCPPError as exc:
            await self._send_error(unique_id, exc.code, exc.description or "")
        except Exception:
            log.exception("handler for %s failed", action)
            await self._send_error(
                unique_id, "InternalError", "the charge point could not handle the request"
            )

    async def _send_error(self, unique_id: str, code: str, description: str) -> None:
        log.warning("→ CALLERROR %s for %s: %s", code, unique_id, description)
        await self._send(json.dumps([4, unique_id, code, description, {}]))

    async def _send(self, message: str) -> None:
        if message.startswith("[4,"):
            try:
                frame = json.loads(message)
                frame[2] = _V16_CODES.get(frame[2], frame[2])
                message = json.dumps(frame, separators=(",", ":"))
            except (ValueError, IndexError):
                pass
        log.debug("→ %s", message[:1000])
        await self._connection.send(message)

    # ------------------------------------------------------------------ outgoing
    async def call_raw(
        self, action: str, payload: dict[str, Any], timeout: float | None = None
    ) -> dict[str, Any]:
        """Send a CALL and return the CALLRESULT payload (camelCase).

        Raises CallErrorReceived (CALLERROR or an invalid answer), asyncio.TimeoutError, or
        ConnectionError when the link goes down while waiting.
        """
        call = Call(str(uuid.uuid4()), action, payload)
        await validate_payload(call, "1.6")  # our own bug if it fails: let it raise
        timeout = self._response_timeout if timeout is None else timeout
        async with self._call_lock:
            while not self._response_queue.empty():  # stale answers of a timed-out call
                self._response_queue.get_nowait()
            try:
                await self._send(call.to_json())
            except websockets.ConnectionClosed as exc:
                raise ConnectionError("link closed") from exc
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise TimeoutError(f"no answer to {action} within {timeout:.0f} s")
                async with asyncio.timeout(remaining):  # unlike wait_for, never loses a cancellation
                    response = await self._response_queue.get()
                if response is _DISCONNECTED:
                    raise ConnectionError("link closed while waiting for an answer")
                if response.unique_id == call.unique_id:
                    break
                log.warning("ignoring answer with unknown unique id %s", response.unique_id)
        if response.message_type_id == MessageType.CallError:
            raise CallErrorReceived(response.error_code, response.error_description)
        response.action = action
        try:
            await validate_payload(response, "1.6")
        except OCPPError as exc:
            raise CallErrorReceived(
                "FormationViolation", f"invalid {action}.conf: {exc.description}"
            ) from exc
        return response.payload

    def connection_lost(self) -> None:
        self._response_queue.put_nowait(_DISCONNECTED)


class OcppLink:
    """Keeps one session up: connect, hand it to ``on_session``, reconnect with back-off when it drops."""

    def __init__(
        self,
        *,
        url: str,
        charge_point_id: str,
        session_factory: Callable[[Any], OcppSession],
        on_session: Callable[[OcppSession], Awaitable[None]],
        on_disconnect: Callable[[], None],
        password: str | None | Callable[[], str | None] = None,
        ca_file: str | None | Callable[[], str | None] = None,
        client_cert: Callable[[], tuple[Any, Any] | None] | None = None,
        on_connect_error: Callable[[BaseException], None] | None = None,
        reconnect_min_s: float = 1.0,
        reconnect_max_s: float = 300.0,
        ping_interval: Callable[[], float | None] = lambda: 60.0,
        security_profile: Callable[[], int] | None = None,
    ) -> None:
        self.configured_url = url.rstrip("/") + "/" + charge_point_id
        self._security_profile = security_profile
        self.charge_point_id = charge_point_id
        self._session_factory = session_factory
        self._on_session = on_session
        self._on_disconnect = on_disconnect
        self._password = password
        self._ca_file = ca_file
        self._client_cert = client_cert
        self._on_connect_error = on_connect_error
        self._min = reconnect_min_s
        self._max = reconnect_max_s
        self._ping_interval = ping_interval
        self.session: OcppSession | None = None
        self.connected = asyncio.Event()
        self.attempts = 0
        self.ever_connected = False  # a websocket to the central system was open at least once
        self._ws: Any = None

    @property
    def security_profile(self) -> int:
        """The SecurityProfile key, read at every connect (0 when the link was built without it)."""
        return int(self._security_profile()) if self._security_profile is not None else 0

    @property
    def url(self) -> str:
        """The URL of the next connection.

        Security profiles 2 and 3 are TLS (OCPP 1.6 security whitepaper ed. 2, §1.3): with either, a
        configured ``ws://`` URL is connected as its ``wss://`` form (same host, port and path), never in
        plain text. 1.6 has no key for a second URL, so after a central system raised the profile over a
        ws:// link this is the only endpoint the charge point can know (the OCTT's "upgrade security
        profile" case restarts its server with TLS on the same endpoint). A wss:// URL stays wss:// under
        every profile: the link is never weaker than configured."""
        scheme, sep, rest = self.configured_url.partition("://")
        if self.security_profile >= 2 and scheme.lower() == "ws":
            return f"wss{sep}{rest}"
        return self.configured_url

    def _headers(self) -> dict[str, str]:
        if self.security_profile >= 3:
            return {}  # profile 3: the client certificate authenticates the charge point, no password sent
        password = self._password() if callable(self._password) else self._password
        if not password:
            return {}
        token = base64.b64encode(f"{self.charge_point_id}:{password}".encode()).decode()
        return {"Authorization": f"Basic {token}"}

    def _ssl(self) -> ssl.SSLContext | None:
        """Read at every connect, so installed CA certificates and a new client certificate take effect on the
        next connection (security profiles 2 and 3). Profile 3 without a client certificate does not
        connect (ConnectionError): a TLS connection without one would be profile 2, a fallback."""
        if not self.url.lower().startswith("wss://"):
            return None
        client = self._client_cert() if self._client_cert is not None else None
        if client is None and self.security_profile >= 3:
            log.error("SecurityProfile 3 needs the charge point's client certificate (SignCertificate / "
                      "CertificateSigned), and none is installed: not connecting with a lower profile")
            raise ConnectionError("SecurityProfile 3: no client certificate installed")
        ca_file = self._ca_file() if callable(self._ca_file) else self._ca_file
        context = ssl.create_default_context(cafile=ca_file) if ca_file else ssl.create_default_context()
        if client is not None:
            context.load_cert_chain(str(client[0]), str(client[1]))
        return context

    async def run(self) -> None:
        failures = 0
        while True:
            self.attempts += 1
            try:
                ping = self._ping_interval() or None
                async with websockets.connect(
                    self.url,
                    subprotocols=["ocpp1.6"],  # type: ignore[list-item]
                    additional_headers=self._headers(),
                    ssl=self._ssl(),
                    ping_interval=ping,
                    ping_timeout=ping,
                    open_timeout=30,
                    max_size=2**22,
                ) as ws:
                    if ws.subprotocol != "ocpp1.6":
                        log.error(
                            "central system did not accept subprotocol ocpp1.6 (got %r)", ws.subprotocol
                        )
                        raise ConnectionError("subprotocol not accepted")
                    failures = 0
                    self.ever_connected = True
                    self._ws = ws
                    session = self._session_factory(ws)
                    self.session = session
                    self.connected.set()
                    log.info("connected to %s", self.url)
                    reader = asyncio.create_task(session.start(), name="ocpp-reader")
                    starter = asyncio.create_task(self._on_session(session), name="ocpp-session")
                    try:
                        await reader
                    except websockets.ConnectionClosed as exc:
                        log.warning(
                            "connection to the central system closed (%s)", exc.rcvd or "no close frame"
                        )
                    finally:
                        starter.cancel()
                        session.connection_lost()
            except asyncio.CancelledError:
                raise
            except websockets.InvalidStatus as exc:
                log.error("central system refused the connection: HTTP %s", exc.response.status_code)
            except (TimeoutError, OSError, websockets.WebSocketException, ConnectionError) as exc:
                log.warning("cannot reach the central system at %s: %s", self.url, exc or type(exc).__name__)
                if self._on_connect_error is not None:
                    try:
                        self._on_connect_error(exc)
                    except Exception:
                        log.exception("connect-error hook failed")
            finally:
                if self.session is not None:
                    self.session = None
                    self.connected.clear()
                    self._ws = None
                    self._on_disconnect()
            failures += 1
            delay = random.uniform(self._min, min(self._max, self._min * 2 ** min(failures, 16)))
            await asyncio.sleep(delay)

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()

    async def call(
        self, action: str, payload: dict[str, Any], timeout: float | None = None
    ) -> dict[str, Any]:
        session = self.session
        if session is None:
            raise ConnectionError("not connected to the central system")
        return await session.call_raw(action, payload, timeout)

"""The OCPP-J link: one websocket to the central system, kept up for ever.

* URL = CSMS URL + "/" + charge point id, subprotocol ``ocpp1.6``; ``ws://`` or
  ``wss://`` (certificate checked against the system store or a configured CA
  file) with optional HTTP Basic authentication (user = charge point id).
* The transport follows the security profile (see ``OcppLink.url``): the OCPP 1.6
  security whitepaper's profiles 1 (ws + Basic), 2 (wss + Basic) and 3 (wss +
  client certificate).
* Reconnects with exponential back-off and full jitter; the back-off is reset only by a session that lasted
  (BootNotification accepted, or a minute connected), never by a mere websocket upgrade.
* Incoming frames are checked before the ``ocpp`` library routes them, so that
  every malformed frame gets the CALLERROR the OCPP-J 1.6 specification (§4.2.3,
  table "Valid Error Codes") names, spelled as 1.6 spells them.
* ``call(action, payload)`` sends one CALL and waits for its answer; at most one
  CALL is outstanding at a time (OCPP-J §4.1.1).
"""

from __future__ import annotations

import asyncio
import base64
import calendar
import decimal
import json
import logging
import math
import random
import re
import ssl
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import ocpp.v16 as ocpp_v16
import websockets
from jsonschema import Draft4Validator, FormatChecker
from jsonschema.exceptions import ValidationError as SchemaValidationError
from ocpp import messages as ocpp_messages
from ocpp.exceptions import OCPPError
from ocpp.messages import Call, CallError, CallResult, MessageType, validate_payload
from ocpp.v16 import ChargePoint as _LibraryChargePoint
from ocpp.v16.enums import Action

from chargepoint.privacy import mask_tags_in_text
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
# MessageTypeId and UniqueId read from the raw text, so that even a frame that is not JSON gets its CALLERROR
# under the right id (and a response that is not JSON is recognised as one and dropped).
_FRAME_HEAD = re.compile(r'^\s*\[\s*(\d+)\s*,\s*"([^"\\]{1,36})"')

# The deepest legitimate OCPP 1.6 frame has 6 levels ([2, id, "SetChargingProfile", {csChargingProfiles:
# {chargingSchedule: {chargingSchedulePeriod: [{…}]}}}]). Far deeper frames are refused before anything
# recursive (the schema validators, the library's key translation, json.dumps) sees them: Python's recursion
# limit is 1,000 frames, and a 2 kB frame nested 1,000 deep used to end the link with a RecursionError.
MAX_NESTING = 32
# Integers beyond 64 bits fit no field a charge point stores (SQLite INTEGER, C int64); OCPP 1.6 gives no
# range for "integer", OCPP 2.0.1 part 2 §2.1.3 makes it 32-bit. 64 bits refuses nothing a real system sends.
_INT64_MAX = 2**63 - 1


class FrameRefused(Exception):
    """An incoming frame that cannot be acted on, with the OCPP-J 1.6 §4.2.3 error code that says why."""

    def __init__(self, code: str, description: str) -> None:
        super().__init__(description)
        self.code = code
        self.description = description


def _refuse_constant(name: str) -> Any:
    raise FrameRefused("FormationViolation", f"{name} is not a JSON number (RFC 8259 §6)")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400 is valid JSON, but no finite double
        raise FrameRefused("PropertyConstraintViolation", f"number {text[:40]} is out of range")
    return value


def _int64(text: str) -> int:
    # The length test comes first: int() of more than 4,300 digits raises ValueError (CPython gh-95778).
    if len(text) > 20 or not -_INT64_MAX - 1 <= (value := int(text)) <= _INT64_MAX:
        raise FrameRefused("PropertyConstraintViolation", f"integer {text[:40]}… is out of range")
    return value


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """RFC 8259 §4: with duplicate names "the behavior of software … is unpredictable" — a ``Reset`` with
    ``"type"`` twice must not be guessed at, so the frame is refused."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        duplicate = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise FrameRefused(
            "FormationViolation", f"member name {duplicate[:40]!r} appears twice (RFC 8259 §4)"
        )
    return obj


def _nested_deeper_than(value: Any, limit: int) -> bool:
    """Level by level, without recursion."""
    level = [value]
    for _ in range(limit):
        level = [
            child
            for container in level
            for child in (container.values() if type(container) is dict else container)
            if type(child) is dict or type(child) is list
        ]
        if not level:
            return False
    return True


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def decode_frame(raw: str) -> Any:
    """Parse one OCPP-J text frame as strict RFC 8259 JSON; FrameRefused for anything not to be acted on.

    Python's ``json`` is lenient where a charge point must not be: it accepts ``NaN``/``Infinity`` (not JSON,
    RFC 8259 §6), turns ``1e400`` into ``inf``, keeps the last of duplicate names, and recurses once per
    nesting level. Each of these is refused here, with the code OCPP-J 1.6 §4.2.3 gives it.
    """
    try:
        value = json.loads(
            raw,
            parse_constant=_refuse_constant,
            parse_float=_finite_float,
            parse_int=_int64,
            object_pairs_hook=_unique_members,
        )
    except RecursionError:
        raise FrameRefused("FormationViolation", f"nested deeper than {MAX_NESTING} levels") from None
    except ValueError:  # JSONDecodeError, UnicodeDecodeError
        raise FrameRefused("FormationViolation", "frame is not valid JSON") from None
    if raw.count("[") + raw.count("{") > MAX_NESTING and _nested_deeper_than(value, MAX_NESTING):
        raise FrameRefused("FormationViolation", f"nested deeper than {MAX_NESTING} levels")
    if _SURROGATE_ESCAPE.search(raw):
        try:  # a lone UTF-16 surrogate (RFC 8259 §8.2) cannot be stored, logged or sent back as UTF-8
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise FrameRefused("FormationViolation", "string with an unpaired UTF-16 surrogate") from None
    return value


_TAG_FIELDS = frozenset({"idTag", "parentIdTag"})


def _for_log(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, id tags masked (they identify a driver's card)."""
    return mask_tags_in_text(text[:limit])


class _Disconnected:
    unique_id = None


_DISCONNECTED = _Disconnected()


def _is_int(value: Any, *allowed: int) -> bool:
    """A MessageTypeId is a JSON integer (OCPP-J 1.6 §4.1.3): ``true`` or ``3.0`` is none."""
    return type(value) is int and value in allowed


def schema_error_code(error: SchemaValidationError) -> str:
    """Which 1.6 error code a schema violation is (OCPP-J 1.6 §4.2.3). A malformed date-time is a value of
    the wrong data type (dateTime, OCPP 1.6 §7), not a constraint on a valid one."""
    if error.validator in ("type", "format"):
        return "TypeConstraintViolation"
    if error.validator in ("required", "minItems", "maxItems"):
        return "OccurenceConstraintViolation"
    if error.validator == "additionalProperties":
        return "FormationViolation"
    return "PropertyConstraintViolation"  # enum, maxLength, minimum, multipleOf …


_RFC3339_DATE_TIME = re.compile(
    r"([0-9]{4})-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])[Tt]([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]"
    r"(?:\.[0-9]+)?(?:[Zz]|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])?"
)


def is_rfc3339_date_time(value: object) -> bool:
    """RFC 3339 §5.6 ``date-time``, the JSON-schema format of every OCPP 1.6 dateTime, with the calendar
    checked (no 30 February, no hour 24). Readings: ``T``/``Z`` in either case (RFC 3339 §5.6 note); no space
    instead of ``T``; a missing offset is read as UTC, as this charge point does everywhere (OCPP 1.6 §3.14:
    UTC); no leap second (:60) and no year 0000, which no clock of ours can hold."""
    if not isinstance(value, str):
        return True  # formats constrain strings only; "type" judges the rest
    m = _RFC3339_DATE_TIME.fullmatch(value)
    if m is None:
        return False
    year, month, day = m.group(1, 2, 3)
    if year == "0000":
        return False
    return day <= "28" or int(day) <= calendar.monthrange(int(year), int(month))[1]


_FORMATS = FormatChecker(formats=())
_FORMATS.checks("date-time")(is_rfc3339_date_time)

# Actions whose schema has "multipleOf": 0.1: validated with Decimal numbers, as the ocpp library does, so that
# a limit of 21.4 A is not refused for binary floating point.
_DECIMAL_ACTIONS = frozenset({"SetChargingProfile", "RemoteStartTransaction"})
_FAST: dict[str, Any] = {}
_PRECISE: dict[str, Draft4Validator | None] = {}


def _schema_text(action: str) -> str:
    return (Path(ocpp_v16.__file__).parent / "schemas" / f"{action}.json").read_text(encoding="utf-8-sig")


def _fast_validator(action: str) -> Any:
    """A compiled validator (fastjsonschema: ~10× faster than jsonschema on a 10,000-entry SendLocalList)."""
    if action not in _FAST:
        try:
            import fastjsonschema

            _FAST[action] = fastjsonschema.compile(
                json.loads(_schema_text(action)), formats={"date-time": is_rfc3339_date_time}
            )
        except Exception:  # no such schema or not compilable: the precise path decides alone
            _FAST[action] = None
    return _FAST[action]


def _precise_validator(action: str) -> Draft4Validator | None:
    """jsonschema names the violated keyword (for the error code); same date-time check as the fast path."""
    if action not in _PRECISE:
        try:
            parse_float = decimal.Decimal if action in _DECIMAL_ACTIONS else float
            schema = json.loads(_schema_text(action), parse_float=parse_float)
            _PRECISE[action] = Draft4Validator(schema, format_checker=_FORMATS)
        except (OSError, ValueError):  # a schema the library lacks
            _PRECISE[action] = None
    return _PRECISE[action]


def first_schema_error(action: str, payload: dict[str, Any]) -> SchemaValidationError | None:
    """The first violation of the OCPP 1.6 request schema, or None. Valid payloads take the fast path; an
    invalid one is examined by jsonschema, which names the violated keyword for the error code."""
    fast = _fast_validator(action)
    if fast is not None:
        try:
            fast(payload)
            return None
        except Exception:
            pass
    validator = _precise_validator(action)
    if validator is None:
        return None
    if action not in _DECIMAL_ACTIONS:
        return next(iter(sorted(validator.iter_errors(payload), key=lambda e: list(e.path))), None)
    # Numbers are finite here (decode_frame). multipleOf computes value % 0.1, whose integer quotient must fit
    # the context's precision: 28 digits refuse 1e308 with InvalidOperation; 400 hold any double's quotient.
    with decimal.localcontext(prec=400):
        payload = json.loads(json.dumps(payload), parse_float=decimal.Decimal)
        return next(iter(sorted(validator.iter_errors(payload), key=lambda e: list(e.path))), None)


class OcppSession(_LibraryChargePoint):
    """One websocket connection. Handler mixins (grouped by profile) are added by subclassing."""

    def __init__(self, cp_id: str, connection: Any, response_timeout: float, controller: Any = None) -> None:
        super().__init__(cp_id, connection, response_timeout=response_timeout, logger=log)
        self.controller = controller
        self.accept_calls: Callable[[str], str | None] = lambda action: None
        self._awaiting_id: str | None = None  # the unique id of our outstanding CALL (OCPP-J §4.1.1: one)
        self.boot_accepted = False  # the central system accepted a BootNotification on this connection
        self._unanswered_call_id: str | None = None  # the incoming CALL being handled, until answered

    # ------------------------------------------------------------------ incoming
    async def start(self) -> None:
        """Read frames until the connection closes (ConnectionClosed). The library's loop logs every raw
        frame whole at INFO (up to 4 MB); here each incoming CALL is logged once, cut short and with its tags
        masked, when it has been validated (``_route``), and answers at DEBUG (``_accept_response``)."""
        while True:
            await self.route_message(await self._connection.recv())

    async def route_message(self, raw_msg: str | bytes) -> None:
        """Answer or drop one frame. Nothing a frame contains ends the reader: any failure while a CALL is
        handled becomes that CALL's CALLERROR (InternalError) unless it was answered already; a failure on
        any other frame is logged."""
        self._unanswered_call_id = None
        try:
            await self._route(raw_msg)
        except websockets.ConnectionClosed:
            raise
        except Exception:
            log.exception(
                "handling a frame from the central system failed: %s",
                _for_log(raw_msg if isinstance(raw_msg, str) else repr(raw_msg), 200),
            )
            if self._unanswered_call_id is not None:
                await self._send_error(
                    self._unanswered_call_id, "InternalError", "the charge point could not handle the request"
                )

    async def _route(self, raw_msg: str | bytes) -> None:
        if isinstance(raw_msg, bytes):
            await self._send_error("-1", "FormationViolation", "binary frames are not OCPP-J")
            return
        head = _FRAME_HEAD.match(raw_msg)
        try:
            msg = decode_frame(raw_msg)
        except FrameRefused as refused:
            if head is not None and int(head.group(1)) in (MessageType.CallResult, MessageType.CallError):
                self._drop_response(head.group(2), str(refused), raw_msg)
                return
            await self._send_error(head.group(2) if head else "-1", refused.code, refused.description)
            return
        if isinstance(msg, list) and msg and _is_int(msg[0], MessageType.CallResult, MessageType.CallError):
            self._accept_response(msg, raw_msg)
            return
        unique_id = msg[1] if isinstance(msg, list) and len(msg) > 1 and isinstance(msg[1], str) else "-1"
        if not isinstance(msg, list) or len(msg) < 3 or not isinstance(msg[1], str):
            await self._send_error(
                unique_id, "FormationViolation", "frame is not [MessageTypeId, UniqueId, …]"
            )
            return
        if not _is_int(msg[0], MessageType.Call):
            await self._send_error(unique_id, "ProtocolError", f"unknown MessageTypeId {msg[0]!r:.40}")
            return
        self._unanswered_call_id = unique_id
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
                await self._send_error(unique_id, "NotImplemented", f"unknown action {action[:60]!r}")
            return
        if action not in self.route_map or "_on_action" not in self.route_map[action]:
            await self._send_error(unique_id, "NotSupported", f"{action} is not supported")
            return
        if not isinstance(payload, dict):
            await self._send_error(unique_id, "FormationViolation", "payload must be a JSON object")
            return
        error = first_schema_error(action, payload)
        if error is not None:
            where = "/".join(str(p) for p in error.path) or "(payload)"
            if error.path and error.path[-1] in _TAG_FIELDS:  # the message would quote the tag
                reason = f"{where}: violates {error.validator} {error.validator_value!r}"
            else:
                reason = f"{where}: {error.message}"
            await self._send_error(unique_id, schema_error_code(error), reason[:255])
            return
        refusal = self.accept_calls(action)
        if refusal is not None:
            await self._send_error(unique_id, "GenericError", refusal)
            return
        # Validated above with the 1.6 error-code mapping: the library need not validate the request again
        # (a SendLocalList of 10,000 entries costs ~150 ms per validation).
        self.route_map[action]["_skip_schema_validation"] = True
        log.info("← %s %s", action, _for_log(raw_msg, 500), extra={"OCPP_ACTION": action})
        try:
            await self._handle_call(Call(unique_id, action, payload))
        except OCPPError as exc:
            await self._send_error(unique_id, exc.code, exc.description or "")

    def _accept_response(self, msg: list[Any], raw_msg: str) -> None:
        """A CALLRESULT/CALLERROR goes to the one CALL waiting for it. OCPP-J 1.6 §4.2: only a CALL is
        answered, so a malformed response, or one for an id nobody waits for, is logged and dropped (and
        not queued: a central system repeating them must not fill memory)."""
        try:
            if msg[0] == MessageType.CallResult:
                if len(msg) != 3 or not isinstance(msg[1], str) or not isinstance(msg[2], dict):
                    raise ValueError("a CALLRESULT is [3, UniqueId, Payload]")
                response: CallResult | CallError = CallResult(msg[1], msg[2])
            else:
                if (
                    len(msg) != 5
                    or not all(isinstance(x, str) for x in msg[1:4])
                    or not isinstance(msg[4], dict)
                ):
                    raise ValueError(
                        "a CALLERROR is [4, UniqueId, ErrorCode, ErrorDescription, ErrorDetails]"
                    )
                response = CallError(*msg[1:])
        except ValueError as exc:
            self._drop_response(msg[1] if len(msg) > 1 else None, str(exc), raw_msg)
            return
        if log.isEnabledFor(logging.DEBUG):
            log.debug("← %s", _for_log(raw_msg, 1000))
        if response.unique_id != self._awaiting_id:
            log.warning("dropping an answer to no outstanding call (unique id %.40r)", response.unique_id)
            return
        self._response_queue.put_nowait(response)

    def _drop_response(self, unique_id: Any, reason: str, raw_msg: str) -> None:
        """Never answered; but when it carries the id of our outstanding CALL, that CALL fails now with
        FormationViolation rather than waiting for its timeout."""
        log.warning("dropping a malformed response (%s): %s", reason, _for_log(raw_msg, 200))
        if unique_id is not None and unique_id == self._awaiting_id:
            self._response_queue.put_nowait(CallError(unique_id, "FormationViolation", reason[:255], {}))

    async def _send_error(self, unique_id: str, code: str, description: str) -> None:
        log.warning("→ CALLERROR %s for %s: %s", code, unique_id, description)
        await self._send(json.dumps([4, unique_id, code, description, {}]))

    async def _send(self, message: str) -> None:
        if not message.startswith("[2,"):  # an answer: frames are handled one at a time, so it is this one's
            self._unanswered_call_id = None
        if message.startswith("[4,"):
            try:
                frame = json.loads(message)
                frame[2] = _V16_CODES.get(frame[2], frame[2])
                message = json.dumps(frame, separators=(",", ":"))
            except (ValueError, IndexError):
                pass
        if log.isEnabledFor(logging.DEBUG):
            log.debug("→ %s", _for_log(message, 1000))
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
                if self._response_queue.get_nowait() is _DISCONNECTED:
                    raise ConnectionError("link closed")
            self._awaiting_id = call.unique_id
            try:
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
            finally:
                self._awaiting_id = None
        if response.message_type_id == MessageType.CallError:
            raise CallErrorReceived(response.error_code, response.error_description)
        error = first_schema_error(f"{action}Response", response.payload)
        if error is not None:
            where = "/".join(str(p) for p in error.path) or "(payload)"
            raise CallErrorReceived("FormationViolation", f"invalid {action}.conf: {where}: {error.message}")
        if action == "BootNotification" and response.payload.get("status") == "Accepted":
            self.boot_accepted = True
        return response.payload

    def connection_lost(self) -> None:
        self._response_queue.put_nowait(_DISCONNECTED)


def _log_session_start_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        exc = task.exception()
        if isinstance(exc, ConnectionError | TimeoutError):
            log.info("session start ended: %s", exc)
        else:
            log.error("session start failed", exc_info=exc)


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
        reconnect_max_s: float = 60.0,
        ping_interval: Callable[[], float | None] = lambda: 60.0,
        session_lasted_s: float = 60.0,
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
        self._session_lasted_s = session_lasted_s
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
        """Connect, serve the session, reconnect — until cancelled; no frame and no failure ends this loop.

        Back-off: full jitter over a window that doubles per failure up to ``reconnect_max_s``. The window
        goes back to ``reconnect_min_s`` only after a session that lasted (BootNotification accepted on it,
        or connected for ``session_lasted_s``). A central system that takes the websocket upgrade and closes
        it at once (1008, its usual answer to an unknown charge point id) is a failure like a refused
        connection: resetting on every upgrade made a new connection every ~1.5 s for ever.
        """
        failures = 0
        while True:
            self.attempts += 1
            lasted = False
            try:
                lasted = await self._serve_one_connection()
            except asyncio.CancelledError:
                raise
            except websockets.InvalidStatus as exc:
                self._log_refusal(exc.response.status_code)
            except (TimeoutError, OSError, websockets.WebSocketException, ConnectionError) as exc:
                log.warning("cannot reach the central system at %s: %s", self.url, exc or type(exc).__name__)
                if self._on_connect_error is not None:
                    try:
                        self._on_connect_error(exc)
                    except Exception:
                        log.exception("connect-error hook failed")
            except Exception:  # a bug (a session factory, a TLS setting …): logged, and the link carries on
                log.exception("OCPP link failed; reconnecting")
            finally:
                if self.session is not None:
                    self.session = None
                    self.connected.clear()
                    self._ws = None
                    self._on_disconnect()
            failures = 1 if lasted else failures + 1
            delay = random.uniform(self._min, min(self._max, self._min * 2 ** min(failures, 16)))
            await asyncio.sleep(delay)

    async def _serve_one_connection(self) -> bool:
        """One websocket, from the upgrade until it closes; True if the session lasted (see ``run``)."""
        loop = asyncio.get_running_loop()
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
                log.error("central system did not accept subprotocol ocpp1.6 (got %r)", ws.subprotocol)
                raise ConnectionError("subprotocol not accepted")
            self.ever_connected = True
            self._ws = ws
            session = self._session_factory(ws)
            self.session = session
            self.connected.set()
            connected_at = loop.time()
            log.info("connected to %s", self.url)
            reader = asyncio.create_task(session.start(), name="ocpp-reader")
            starter = asyncio.create_task(self._on_session(session), name="ocpp-session")
            starter.add_done_callback(_log_session_start_failure)
            try:
                await reader
            except websockets.ConnectionClosed as exc:
                self._log_closed(exc)
            except Exception:  # route_message answers every frame itself: this is a bug, not a frame
                log.exception("the OCPP reader failed; reconnecting")
            finally:
                starter.cancel()
                reader.cancel()
                session.connection_lost()
            return session.boot_accepted or loop.time() - connected_at >= self._session_lasted_s

    def _log_closed(self, exc: websockets.ConnectionClosed) -> None:
        if exc.rcvd is not None and exc.rcvd.code == 1008:  # RFC 6455 §7.4.1 policy violation
            log.warning(
                "the central system closed the connection with 1008 (policy violation%s): it may not know "
                "charge point id %r (charge_point_id) or refuse it",
                f": {exc.rcvd.reason[:100]}" if exc.rcvd.reason else "",
                self.charge_point_id,
            )
        else:
            log.warning("connection to the central system closed (%s)", exc.rcvd or "no close frame")

    def _log_refusal(self, status: int) -> None:
        """Name the setting to check (security whitepaper profile 1/2: HTTP Basic, user = charge point id)."""
        if status in (401, 403):
            if self._headers():
                hint = (
                    f"check csms.password: it is sent as HTTP Basic authentication with user = charge point id "
                    f"{self.charge_point_id!r} (an AuthorizationKey set by the central system replaces it)"
                )
            else:
                hint = (
                    f"no password is configured: set csms.password (HTTP Basic authentication, user = charge "
                    f"point id {self.charge_point_id!r})"
                )
            if status == 403:
                hint += f", and that the central system knows charge point id {self.charge_point_id!r}"
        elif status == 404:
            hint = f"check csms.url and charge_point_id: nothing is served at {self.url}"
        else:
            hint = f"at {self.url}"
        log.error("central system refused the connection: HTTP %s — %s", status, hint)

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

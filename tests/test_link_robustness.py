"""No frame from the central system takes the OCPP link down (OCPP-J 1.6 §4.2.3), and a central system that
refuses the charge point right after the websocket upgrade is not hammered with reconnects.

Every test drives the real link against a real websocket central system on 127.0.0.1: after each bad frame
the charge point answers it (a CALL) or drops it (a CALLRESULT/CALLERROR), stays on the same connection and
answers the next good call.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import websockets
from conftest import Station, running_station

import chargepoint.protocol.link as link_module
from chargepoint.csms import poll_until
from chargepoint.protocol.link import OcppLink, OcppSession


async def _answers(station: Station, frame: str) -> list[Any]:
    """Send ``frame``, then a good call; return the frames (CALLRESULT/CALLERROR) the charge point sent
    before the good call's answer, after checking that the good call was answered on the same connection."""
    session = await station.csms.wait_connected(station.cp_id)
    connections = station.csms.connections
    before = len(station.csms.raw_in)
    await session._send(frame)
    answer = await station.call("GetConfiguration", {"key": ["HeartbeatInterval"]})
    assert answer.get("configurationKey"), f"no answer to a good call after {frame[:80]!r}: {answer}"
    assert station.csms.connections == connections, "the charge point reconnected"
    assert station.csms.sessions.get(station.cp_id) is session
    frames = [json.loads(x) for x in station.csms.raw_in[before:]]
    return frames[:-1]  # the last one is the good call's CALLRESULT


async def _callerror(station: Station, frame: str) -> list[Any]:
    frames = await _answers(station, frame)
    assert len(frames) == 1 and frames[0][0] == 4, f"expected one CALLERROR for {frame[:80]!r}: {frames}"
    assert isinstance(frames[0][3], str) and frames[0][4] == {}
    return frames[0]


# ---------------------------------------------------------------------------------------------- nesting
@pytest.mark.parametrize("depth", [1_000, 200_000])
async def test_deeply_nested_frame_is_a_formation_violation(station: Station, depth: int) -> None:
    frame = '[2,"x","DataTransfer",{"vendorId":"x","data":"y","extra":' + "[" * depth + "]" * depth + "}]"
    error = await _callerror(station, frame)
    assert error[1] == "x" and error[2] == "FormationViolation"


async def test_brackets_inside_strings_do_not_count_as_nesting(station: Station) -> None:
    data = "[" * 5_000 + '\\"{' * 1_000
    frame = json.dumps([2, "s1", "DataTransfer", {"vendorId": "x", "data": data}])
    frames = await _answers(station, frame)
    assert [f[:2] for f in frames] == [[3, "s1"]], frames  # a CALLRESULT, not a CALLERROR


# ---------------------------------------------------------------------------------------------- numbers
def _profile(purpose: str, limit: str) -> str:
    """A profile as raw text, so that ``limit`` can be a token json.dumps would never write."""
    return (
        (
            '{"chargingProfileId":7,"stackLevel":0,"chargingProfilePurpose":"PURPOSE","chargingProfileKind":'
            '"Relative","chargingSchedule":{"chargingRateUnit":"A","chargingSchedulePeriod":[{"startPeriod":0,'
            '"limit":LIMIT}]}}'
        )
        .replace("PURPOSE", purpose)
        .replace("LIMIT", limit)
    )


NUMBERS = [
    ("NaN", "FormationViolation"),
    ("Infinity", "FormationViolation"),
    ("-Infinity", "FormationViolation"),
    ("1e400", "PropertyConstraintViolation"),
    ("-1e400", "PropertyConstraintViolation"),
    ("1" * 5_000, "PropertyConstraintViolation"),  # beyond Python's int-string limit (ValueError)
]


@pytest.mark.parametrize(("number", "code"), NUMBERS)
async def test_non_finite_limit_in_set_charging_profile(station: Station, number: str, code: str) -> None:
    profile = _profile("TxDefaultProfile", number)
    frame = '[2,"n1","SetChargingProfile",{"connectorId":1,"csChargingProfiles":' + profile + "}]"
    error = await _callerror(station, frame)
    assert error[1] == "n1" and error[2] == code


@pytest.mark.parametrize(("number", "code"), NUMBERS)
async def test_non_finite_limit_in_remote_start(station: Station, number: str, code: str) -> None:
    station.bench.ev(1).plug()
    profile = _profile("TxProfile", number)
    frame = (
        '[2,"n2","RemoteStartTransaction",{"idTag":"TAG1","connectorId":1,"chargingProfile":' + profile + "}]"
    )
    error = await _callerror(station, frame)
    assert error[1] == "n2" and error[2] == code
    assert station.csms.received("StartTransaction") == []
    assert not station.controller.connectors[1].hw.contactor.is_closed


@pytest.mark.parametrize("unit", ["A", "W"])
async def test_huge_finite_limit_is_rejected_not_an_internal_error(station: Station, unit: str) -> None:
    """1e308 is a finite double and a multiple of 0.1: the schema check must take it (Decimal's default 28
    digits did not), and the profile is Rejected — installed, it made every later limit computation
    overflow — while a CSMS's 999,999,999 for "no limit" is still accepted."""
    for limit, status in (("1e308", "Rejected"), ("999999999", "Accepted")):
        profile = _profile("TxDefaultProfile", limit).replace('"A"', f'"{unit}"')
        frame = '[2,"h1","SetChargingProfile",{"connectorId":1,"csChargingProfiles":' + profile + "}]"
        frames = await _answers(station, frame)
        assert frames == [[3, "h1", {"status": status}]], (limit, frames)
    conf = await station.call(
        "GetCompositeSchedule", {"connectorId": 1, "duration": 60, "chargingRateUnit": "W"}
    )
    assert conf["status"] == "Accepted", conf  # the installed profile computes (1e308 overflowed)
    assert (station.controller.limits.limit(1) or 0) <= 32.0


def test_profile_limit_bounds() -> None:
    from chargepoint.smart.profiles import (
        MAX_RATE,
        ProfileLimits,
        ProfileRejected,
        profile_from_ocpp,
        validate_profile,
    )

    def check(limit: float) -> None:
        profile = profile_from_ocpp(json.loads(_profile("TxDefaultProfile", repr(limit))))
        validate_profile(
            profile,
            1,
            limits=ProfileLimits(max_stack_level=8),
            active_transaction_id=None,
            number_of_connectors=1,
        )

    check(MAX_RATE)
    for bad in (MAX_RATE * 1.01, 1e308, -0.1):
        with pytest.raises(ProfileRejected):
            check(bad)


async def test_integer_beyond_64_bits_is_out_of_range(station: Station) -> None:
    frame = f'[2,"i1","ClearChargingProfile",{{"id":{2**64}}}]'
    error = await _callerror(station, frame)
    assert error[1] == "i1" and error[2] == "PropertyConstraintViolation"


# ---------------------------------------------------------------------------------------------- any failure
async def test_exception_while_routing_a_call_is_an_internal_error(station: Station) -> None:
    """Whatever fails while one CALL is handled is that call's CALLERROR, never the end of the link."""
    session = station.controller.link.session  # type: ignore[union-attr]
    assert session is not None

    def broken(action: str) -> str | None:
        if action == "ClearCache":
            raise RuntimeError("simulated bug")
        return None

    session.accept_calls = broken
    error = await _callerror(station, '[2,"e1","ClearCache",{}]')
    assert error[1] == "e1" and error[2] == "InternalError"


async def test_exception_in_validation_is_an_internal_error(
    station: Station, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = link_module.first_schema_error

    def broken(action: str, payload: dict[str, Any]) -> Any:
        if action == "ClearCache":
            raise TypeError("simulated bug")
        return real(action, payload)

    monkeypatch.setattr(link_module, "first_schema_error", broken)
    error = await _callerror(station, '[2,"e2","ClearCache",{}]')
    assert error[1] == "e2" and error[2] == "InternalError"


# ---------------------------------------------------------------------------------------------- responses
@pytest.mark.parametrize(
    "frame",
    [
        '[3,"nobody-asked",{}]',
        '[4,"nobody-asked","GenericError","",{}]',
        "[3,5,{}]",
        "[3,null,{}]",
        '[3,"x"]',
        "[3]",
        '[3,"x",{},"extra"]',
        '[3,"x","not an object"]',
        '[4,"x","GenericError"]',
        "[4,7,5,6,7]",
        '[4,"x",5,6,7]',
    ],
)
async def test_responses_are_never_answered(station: Station, frame: str) -> None:
    """OCPP-J 1.6 §4.2.3: only a CALL is answered; a CALLRESULT/CALLERROR nobody waits for is dropped."""
    assert await _answers(station, frame) == []


# ---------------------------------------------------------------------------------------------- date-times
@pytest.mark.parametrize(
    "when",
    [
        "2024-01-01",
        "2024-02-30T00:00:00Z",
        "2024-01-01T24:00:00Z",
        "2024-01-01T10:61:00Z",
        "2024-01-01 10:00:00Z",
        "2024-01-01T10:00:00+0100",
        "2024-01-01T10:00:00+25:00",
        "10:00:00Z",
        "next tuesday",
    ],
)
async def test_invalid_date_time_is_a_schema_error(station: Station, when: str) -> None:
    frame = json.dumps(
        [2, "d1", "ReserveNow", {"connectorId": 1, "expiryDate": when, "idTag": "TAG1", "reservationId": 3}]
    )
    error = await _callerror(station, frame)
    assert error[1] == "d1" and error[2] == "TypeConstraintViolation"
    frame = json.dumps([2, "d2", "GetDiagnostics", {"location": "ftp://127.0.0.1/", "startTime": when}])
    error = await _callerror(station, frame)
    assert error[1] == "d2" and error[2] == "TypeConstraintViolation"


@pytest.mark.parametrize(
    "when",
    [
        "2030-01-01T10:00:00Z",
        "2030-01-01t10:00:00.123456z",
        "2030-01-01T10:00:00+01:00",
        "2030-01-01T10:00:00",
    ],
)
async def test_valid_date_time_passes(station: Station, when: str) -> None:
    frame = json.dumps(
        [2, "d3", "ReserveNow", {"connectorId": 1, "expiryDate": when, "idTag": "TAG1", "reservationId": 3}]
    )
    frames = await _answers(station, frame)
    assert [f[:2] for f in frames] == [[3, "d3"]], frames


# ---------------------------------------------------------------------------------------------- duplicates
async def test_duplicate_member_names_are_refused(tmp_path: Path) -> None:
    """RFC 8259 §4: with duplicate names the behaviour is unpredictable; a charger must not act on it."""
    resets: list[str] = []
    async with running_station(tmp_path, restart=resets.append) as station:
        error = await _callerror(station, '[2,"r1","Reset",{"type":"Bogus","type":"Hard"}]')
        assert error[1] == "r1" and error[2] == "FormationViolation"
        nested = '[2,"r2","ChangeAvailability",{"connectorId":1,"type":"Operative","type":"Inoperative"}]'
        error = await _callerror(station, nested)
        assert error[1] == "r2" and error[2] == "FormationViolation"
        await asyncio.sleep(0)  # a Reset's after-handler would have been scheduled by now
        assert resets == []
        assert station.controller.connectors[1].state.status != "Unavailable"


# ---------------------------------------------------------------------------------------------- 401
async def test_unauthorized_handshake_names_the_setting(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="chargepoint.protocol.link")
    async with running_station(tmp_path, password="wrong", csms_password="right", cp_id="CP-401"):
        await poll_until(lambda: "HTTP 401" in caplog.text, 10)
    line = next(r.getMessage() for r in caplog.records if "HTTP 401" in r.getMessage())
    assert "csms.password" in line and "CP-401" in line
    assert "wrong" not in line


# ---------------------------------------------------------------------------------------------- back-off
class _RefusingCentralSystem:
    """Accepts the websocket upgrade, then closes with 1008 (policy violation) — the usual answer to an
    unknown charge point id. ``accept_boot`` connections first answer a BootNotification Accepted."""

    def __init__(self) -> None:
        self.attempts: list[float] = []
        self.accept_boot: set[int] = set()
        self.hold_s: dict[int, float] = {}  # connection number → seconds kept open before closing
        self._server: Any = None

    async def __aenter__(self) -> _RefusingCentralSystem:
        self._server = await websockets.serve(
            self._handler,
            "127.0.0.1",
            0,
            subprotocols=["ocpp1.6"],  # type: ignore[list-item]
        )
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self._server.close()
        await self._server.wait_closed()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/ocpp"

    async def _handler(self, ws: Any) -> None:
        self.attempts.append(asyncio.get_running_loop().time())
        if len(self.attempts) in self.accept_boot:
            call = json.loads(await ws.recv())
            assert call[2] == "BootNotification"
            conf = {"status": "Accepted", "currentTime": "2030-01-01T00:00:00Z", "interval": 300}
            await ws.send(json.dumps([3, call[1], conf]))
            await asyncio.sleep(0.05)
        await asyncio.sleep(self.hold_s.get(len(self.attempts), 0))
        await ws.close(1008, "unknown charge point")

    def gaps(self) -> list[float]:
        return [b - a for a, b in zip(self.attempts, self.attempts[1:], strict=False)]


class _UpperBound:
    """Full jitter made deterministic: always the upper end of the window."""

    @staticmethod
    def uniform(low: float, high: float) -> float:
        return high


@pytest.fixture
def no_jitter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(link_module, "random", _UpperBound)


@pytest.fixture
async def refusing_csms() -> AsyncIterator[_RefusingCentralSystem]:
    async with _RefusingCentralSystem() as cs:
        yield cs


def _link(url: str, **kwargs: Any) -> OcppLink:
    async def boot(session: OcppSession) -> None:
        await session.call_raw(
            "BootNotification", {"chargePointVendor": "test", "chargePointModel": "test"}, timeout=2
        )

    return OcppLink(
        url=url,
        charge_point_id="CP-STORM",
        session_factory=lambda ws: OcppSession("CP-STORM", ws, 2.0),
        on_session=boot,
        on_disconnect=lambda: None,
        ping_interval=lambda: None,
        **kwargs,
    )


async def _run_until(link: OcppLink, cs: _RefusingCentralSystem, attempts: int) -> list[float]:
    task = asyncio.create_task(link.run())
    try:
        await poll_until(lambda: len(cs.attempts) >= attempts, 15)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return cs.gaps()


def _at_least(gaps: list[float], delays: list[float]) -> bool:
    """Each gap between connection attempts is at least the back-off before it (sleep never ends early;
    its overrun under load only lengthens a gap)."""
    return all(g >= 0.95 * d for g, d in zip(gaps, delays, strict=False))


async def test_refused_sessions_back_off_exponentially(
    refusing_csms: _RefusingCentralSystem, no_jitter: None, caplog: pytest.LogCaptureFixture
) -> None:
    """A central system that accepts the upgrade and closes at once is not a session that lasted: the
    back-off keeps doubling up to its ceiling (was: reset on every upgrade, a new connection every ~1.5 s
    for ever)."""
    link = _link(refusing_csms.url, reconnect_min_s=0.05, reconnect_max_s=0.4)
    gaps = await _run_until(link, refusing_csms, 7)
    assert _at_least(gaps, [0.1, 0.2, 0.4, 0.4, 0.4, 0.4]), gaps  # was 0.1 each time
    assert max(gaps[3:6]) < 1.0, gaps  # the ceiling holds (doubling on would make 0.8, 1.6, 3.2)
    closed = [r.getMessage() for r in caplog.records if "1008" in r.getMessage()]
    assert closed and "CP-STORM" in closed[0]  # the log says which setting the refusal is about


async def test_backoff_is_reset_after_a_session_that_lasted(
    refusing_csms: _RefusingCentralSystem, no_jitter: None
) -> None:
    """A session in which BootNotification was accepted lasted: the next reconnect starts from the shortest
    back-off again, while refused sessions before and after it let the back-off grow."""
    refusing_csms.accept_boot = {5}
    link = _link(refusing_csms.url, reconnect_min_s=0.05, reconnect_max_s=1.6)
    gaps = await _run_until(link, refusing_csms, 8)
    assert _at_least(gaps[:4], [0.1, 0.2, 0.4, 0.8]), gaps  # growing before the lasting session
    # gaps[4]: the lasting session (~50 ms connected) + the shortest back-off; without the reset ≥ 1.6 s
    assert gaps[4] < 0.8, gaps
    assert _at_least(gaps[5:], [0.2, 0.4]), gaps  # and growing again afterwards


async def test_backoff_is_reset_after_a_long_enough_connection(
    refusing_csms: _RefusingCentralSystem, no_jitter: None
) -> None:
    """Connected for ``session_lasted_s`` (a minute by default) counts as a session that lasted, even
    without a BootNotification (reconnects after the first boot send none, OCPP 1.6 §4.2)."""
    refusing_csms.hold_s = {5: 0.3}

    async def no_boot(session: OcppSession) -> None:
        await asyncio.Event().wait()

    link = OcppLink(
        url=refusing_csms.url,
        charge_point_id="CP-STORM",
        session_factory=lambda ws: OcppSession("CP-STORM", ws, 2.0),
        on_session=no_boot,
        on_disconnect=lambda: None,
        ping_interval=lambda: None,
        reconnect_min_s=0.05,
        reconnect_max_s=1.6,
        session_lasted_s=0.2,
    )
    gaps = await _run_until(link, refusing_csms, 7)
    assert _at_least(gaps[:4], [0.1, 0.2, 0.4, 0.8]), gaps
    assert _at_least(gaps[4:5], [0.3 + 0.1]) and gaps[4] < 0.3 + 0.8, gaps  # without the reset 0.3 + 1.6
    assert _at_least(gaps[5:], [0.2]), gaps


def test_default_ceiling_reaches_a_returning_central_system_within_a_minute() -> None:
    from chargepoint.config import CsmsConfig

    assert CsmsConfig(url="ws://127.0.0.1/ocpp").reconnect_max_s <= 60


# ---------------------------------------------------------------------------------------------- odds and ends
async def test_unpaired_surrogate_is_a_formation_violation(station: Station) -> None:
    """RFC 8259 §8.2: a lone UTF-16 surrogate is no character; it could be neither stored nor logged."""
    error = await _callerror(station, '[2,"u1","RemoteStartTransaction",{"idTag":"AB\\ud800"}]')
    assert error[1] == "u1" and error[2] == "FormationViolation"
    assert station.csms.received("StartTransaction") == []


async def test_link_log_masks_id_tags(station: Station, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="chargepoint.protocol.link")
    frames = await _answers(station, '[2,"t1","RemoteStartTransaction",{"idTag":"SECRET-TAG-0815"}]')
    assert frames and frames[0][:2] == [3, "t1"]
    await _callerror(station, '[2,"t2","RemoteStartTransaction",{"idTag":"SECRET-TAG-0815-MUCH-TOO-LONG"}]')
    link_lines = [r.getMessage() for r in caplog.records if r.name == "chargepoint.protocol.link"]
    assert any("RemoteStartTransaction" in line for line in link_lines)
    assert not [line for line in link_lines if "SECRET-TAG" in line]


async def test_malformed_answer_to_our_call_fails_it_at_once() -> None:
    """A CALLRESULT for our outstanding CALL that is not [3, UniqueId, {…}] is not answered (OCPP-J answers
    only CALLs) and ends that CALL with FormationViolation at once, not after the response timeout."""
    outcome: list[BaseException] = []

    async def answer_badly(ws: Any) -> None:
        call = json.loads(await ws.recv())
        await ws.send(json.dumps([3, call[1]]))
        try:
            extra = await asyncio.wait_for(ws.recv(), 2)
        except (TimeoutError, websockets.ConnectionClosed):
            return
        outcome.append(AssertionError(f"the charge point answered a response: {extra}"))

    async def boot(session: OcppSession) -> None:
        try:
            await session.call_raw(
                "BootNotification", {"chargePointVendor": "v", "chargePointModel": "m"}, 30
            )
        except Exception as exc:
            outcome.append(exc)

    server = await websockets.serve(answer_badly, "127.0.0.1", 0, subprotocols=["ocpp1.6"])  # type: ignore[list-item]
    port = server.sockets[0].getsockname()[1]
    link = OcppLink(
        url=f"ws://127.0.0.1:{port}/ocpp",
        charge_point_id="CP-BAD-ANSWER",
        session_factory=lambda ws: OcppSession("CP-BAD-ANSWER", ws, 30.0),
        on_session=boot,
        on_disconnect=lambda: None,
        ping_interval=lambda: None,
    )
    task = asyncio.create_task(link.run())
    try:
        await poll_until(lambda: outcome, 5)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        server.close()
        await server.wait_closed()
    assert isinstance(outcome[0], link_module.CallErrorReceived), outcome
    assert outcome[0].code == "FormationViolation"

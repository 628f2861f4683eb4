"""The application API (chargepoint/api.py) against a real controller on simulated hardware and a loopback
central system: the snapshot front ends see, the change stream, and every command with its bad inputs."""

from __future__ import annotations

import asyncio
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from e2e_helpers import Rig
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chargepoint.api import (
    STATE_KINDS,
    Change,
    ChangeKind,
    CommandError,
    CommandResult,
    ControllerApi,
    Role,
    StationApi,
    StationView,
)
from chargepoint.status_socket import CONNECTOR_KEYS, check_snapshot
from hal.interfaces import FaultKind

pytest_plugins = ["e2e_helpers"]

TAG = "04A2B3C4D5"


def api_of(rig: Rig) -> ControllerApi:
    api = rig.controller.api
    assert isinstance(api, ControllerApi)
    return api


def closed(rig: Rig, connector: int = 1) -> bool:
    return rig.controller.connectors[connector].hw.contactor.is_closed


async def next_change(sub: Any, kind: ChangeKind, where: Any = lambda c: True, timeout: float = 5.0) -> Change:
    async with asyncio.timeout(timeout):
        while True:
            change = await sub.get()
            if change.kind == kind and where(change):
                return change


# ---------------------------------------------------------------------------------------- snapshot


async def test_snapshot_is_typed_and_keeps_the_status_socket_shape(e2e_rig: Any) -> None:
    rig = await e2e_rig(connectors=2)
    api = api_of(rig)
    assert isinstance(api, StationApi)
    view = api.snapshot()
    assert isinstance(view, StationView)
    assert view.charge_point_id == rig.cp_id and view.firmware_version
    assert [c.id for c in view.connectors] == [1, 2]
    assert view.link.state == "connected" and view.link.registration == "Accepted"
    assert view.link.connected_since is not None
    c1 = view.connector(1)
    assert c1 is not None and c1.status == "Available" and c1.available and c1.contactor == "open"
    assert c1.transaction_id is None and c1.session_energy_wh is None and not c1.faults
    assert view.connector(3) is None
    d = view.as_dict()
    assert check_snapshot(d) == []
    legacy = rig.controller.snapshot()
    for key in ("charge_point_id", "csms", "registration", "queued"):
        assert d[key] == legacy[key]
    for new, old in zip(d["connectors"], legacy["connectors"], strict=True):
        assert {k: new[k] for k in CONNECTOR_KEYS} == {k: old[k] for k in CONNECTOR_KEYS}
        assert "claims" in new and "session_energy_wh" in new
    assert d["link"]["state"] == "connected" and d["firmware_version"] == view.firmware_version


async def test_snapshot_during_a_session_masks_the_tag_and_counts_session_energy(e2e_rig: Any) -> None:
    rig = await e2e_rig()
    rig.bench.ev(1).plug()
    rig.tap(TAG)
    await rig.wait(lambda: closed(rig))
    await rig.wait(lambda: (api_of(rig).snapshot().connectors[0].session_energy_wh or 0) > 0, timeout=8)
    c = api_of(rig).snapshot().connectors[0]
    assert c.id_tag is not None and TAG not in c.id_tag
    assert c.session_started is not None and c.session_started.endswith("Z")
    assert c.offered_a and c.limit_a and c.limit_source
    assert TAG not in repr(api_of(rig).snapshot().as_dict())


# ---------------------------------------------------------------------------------------- change stream


async def test_changes_flow_without_polling_and_mask_tags(e2e_rig: Any) -> None:
    rig = await e2e_rig()
    sub = api_of(rig).subscribe()
    rig.bench.ev(1).plug()
    pilot = await next_change(sub, ChangeKind.PILOT)
    assert pilot.connector_id == 1 and pilot.data["state"] == "B"
    rig.tap(TAG)
    auth = await next_change(sub, ChangeKind.AUTHORIZATION, lambda c: c.data.get("event") == "authorized")
    assert TAG not in repr(auth.data)
    await next_change(sub, ChangeKind.CONTACTOR, lambda c: c.data.get("closed") is True)
    started = await next_change(sub, ChangeKind.TRANSACTION, lambda c: c.data["event"] == "started")
    assert started.connector_id == 1 and TAG not in repr(started.data)
    meter = await next_change(sub, ChangeKind.METER, lambda c: (c.data.get("power_w") or 0) > 0, timeout=8)
    assert meter.connector_id == 1
    rig.bench.ev(1).unplug()
    ended = await next_change(sub, ChangeKind.TRANSACTION, lambda c: c.data["event"] == "ended")
    assert ended.data["reason"] == "EVDisconnected"
    sub.close()
    with pytest.raises(EOFError):
        await sub.get()


async def test_a_slow_subscriber_loses_old_state_not_the_controllers_time(e2e_rig: Any) -> None:
    rig = await e2e_rig()
    api = api_of(rig)
    slow = api.subscribe(maxsize=3)  # never read until the end
    for _ in range(5):
        rig.bench.ev(1).plug()
        await rig.wait(lambda: rig.controller.connectors[1].state.pilot.value == "B")
        rig.bench.ev(1).unplug()
        await rig.wait(lambda: rig.controller.connectors[1].state.pilot.value == "A")
    # the controller went on at full speed: a session starts as fast as ever
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    rig.bench.ev(1).plug()
    rig.tap(TAG)
    await rig.wait(lambda: closed(rig))
    assert loop.time() - t0 < 3.0
    assert slow.dropped > 0
    await rig.settle(1.5)  # more state changes (meter, status) keep arriving while nobody reads
    kept = [await slow.get() for _ in range(3)]
    # state changes were dropped first, and a flood of them did not push the transaction's start out
    assert all(c.kind not in STATE_KINDS for c in kept), kept
    assert any(c.kind == ChangeKind.TRANSACTION and c.data["event"] == "started" for c in kept), kept
    slow.close()


async def test_faults_are_events_a_flood_of_state_does_not_push_out(e2e_rig: Any) -> None:
    rig = await e2e_rig()
    api = api_of(rig)
    sub = api.subscribe()
    slow = api.subscribe(maxsize=2)  # never read until the end
    rig.bench.inject(1, FaultKind.RCD)
    raised = await next_change(sub, ChangeKind.FAULT)
    assert raised.connector_id == 1 and raised.data["event"] == "raised"
    assert raised.data["raised"] == ["rcd"] and raised.data["latched"] == ["rcd"]
    for amps in (10, None, 12, None):  # state changes (LIMIT) flood the slow subscriber
        await api.set_local_limit(1, amps)
    assert slow.dropped > 0
    kept = [await slow.get() for _ in range(2)]
    assert any(c.kind == ChangeKind.FAULT and c.data["event"] == "raised" for c in kept), kept
    slow.close()
    rig.bench.clear(1, FaultKind.RCD)
    assert (await api.clear_fault(1, role=Role.ADMIN)).accepted
    cleared = await next_change(sub, ChangeKind.FAULT, lambda c: c.data["event"] == "cleared")
    assert cleared.data["cleared"] == ["rcd"] and cleared.data["faults"] == []
    sub.close()
    assert not api._subs  # closing removes the subscriber


async def test_only_events_queued_the_oldest_goes_counted_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    api = ControllerApi(_FakeController())
    sub = api.subscribe(maxsize=2)
    for n in range(4):
        api.publish(ChangeKind.TRANSACTION, 1, event="started", n=n)
    api.publish(ChangeKind.METER, 1, power_w=1.0)  # a state change never pushes an event out
    assert sub.dropped == 3
    assert [(await sub.get()).data["n"] for _ in range(2)] == [2, 3]
    assert sum("too slowly" in r.getMessage() for r in caplog.records) == 1
    sub.close()


async def test_a_slow_subscriber_never_blocks_the_publisher() -> None:
    api = ControllerApi(_FakeController())
    subs = [api.subscribe(maxsize=8) for _ in range(20)]  # none of them reads
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    for n in range(20_000):
        api.publish(ChangeKind.METER if n % 10 else ChangeKind.TRANSACTION, 1, n=n)
    took = loop.time() - t0
    assert all(len(s._queue) == 8 for s in subs)
    print(f"20 subscribers, 20000 changes: {took * 1e3:.0f} ms")  # a number, not a timed assertion
    for s in subs:
        s.close()
    assert not api._subs


# ---------------------------------------------------------------------------------------- commands


async def test_start_and_stop_a_session_through_the_api(e2e_rig: Any) -> None:
    rig = await e2e_rig()
    api = api_of(rig)
    rig.bench.ev(1).plug()
    await rig.wait_status(1, "Preparing")
    result = await api.start_session(1, TAG)
    assert result == CommandResult(True, "charging starts")
    start = await rig.cs.wait_for_message("StartTransaction")
    assert start["idTag"] == TAG and start["connectorId"] == 1
    assert rig.cs.received("Authorize") == [{"idTag": TAG}]  # authorized as a tap would be
    await rig.wait(lambda: closed(rig))
    with pytest.raises(CommandError) as busy:
        await api.start_session(1, TAG)
    assert busy.value.code == CommandError.NOT_POSSIBLE
    assert (await api.stop_session(1)).accepted
    stop = await rig.cs.wait_for_message("StopTransaction")
    assert stop["reason"] == "Local"
    await rig.wait(lambda: not closed(rig))
    with pytest.raises(CommandError) as nothing:
        await api.stop_session(1)
    assert nothing.value.code == CommandError.NOT_POSSIBLE


async def test_a_refused_tag_starts_nothing(e2e_rig: Any) -> None:
    rig = await e2e_rig()
    rig.cs.behaviour.authorize_status = lambda tag: "Invalid"
    rig.bench.ev(1).plug()
    await rig.wait_status(1, "Preparing")
    result = await api_of(rig).start_session(1, TAG)
    assert not result.accepted and TAG not in result.message
    await rig.settle(0.3)
    assert rig.cs.received("StartTransaction") == [] and not closed(rig)


async def test_free_vend_needs_configuration(e2e_rig: Any) -> None:
    rig = await e2e_rig()
    with pytest.raises(CommandError) as exc:
        await api_of(rig).start_session(1, None)
    assert exc.value.code == CommandError.NOT_POSSIBLE and "free vend" in exc.value.message


async def test_availability_through_the_api(e2e_rig: Any) -> None:
    rig = await e2e_rig()
    api = api_of(rig)
    assert (await api.set_available(1, False)).message == "unavailable"
    await rig.wait_sent_status(1, "Unavailable")
    assert not api.snapshot().connectors[0].available
    with pytest.raises(CommandError):
        await api.start_session(1, TAG)
    assert (await api.set_available(1, True)).accepted
    await rig.wait_sent_status(1, "Available")


async def test_clearing_a_latched_fault_needs_an_admin_and_a_gone_cause(e2e_rig: Any) -> None:
    rig = await e2e_rig()
    api = api_of(rig)
    with pytest.raises(CommandError) as none:
        await api.clear_fault(1)
    assert none.value.code == CommandError.NOT_POSSIBLE
    rig.bench.inject(1, FaultKind.RCD)
    await rig.wait_sent_status(1, "Faulted")
    fault = api.snapshot().connectors[0].faults[0]
    assert fault.kind == "rcd" and fault.latched and "admin" in fault.action
    with pytest.raises(CommandError) as user:
        await api.clear_fault(1, role=Role.USER)
    assert user.value.code == CommandError.NOT_PERMITTED
    still = await api.clear_fault(1, role=Role.ADMIN)
    assert not still.accepted and "still" in still.message
    rig.bench.clear(1, FaultKind.RCD)
    await rig.settle(0.1)
    assert rig.controller.connectors[1].state.faults  # latched: the cause going is not enough
    assert (await api.clear_fault(1, role=Role.ADMIN)).accepted
    await rig.wait_sent_status(1, "Available")


async def test_local_limit_is_one_more_claim(e2e_rig: Any) -> None:
    rig = await e2e_rig()
    api = api_of(rig)
    rig.bench.ev(1).plug()
    rig.tap(TAG)
    await rig.wait(lambda: closed(rig))
    await rig.wait(lambda: (rig.controller.connectors[1].hw.pilot.offered_amps or 0) > 10)
    assert (await api.set_local_limit(1, 10)).accepted
    await rig.wait(lambda: rig.controller.connectors[1].hw.pilot.offered_amps == pytest.approx(10, abs=0.6))
    c = api.snapshot().connectors[0]
    assert c.local_limit_a == 10 and c.limit_a == 10 and "local" in c.limit_source
    assert any("local" in claim.source and claim.amps == 10 for claim in c.claims)
    assert (await api.set_local_limit(1, None)).accepted
    await rig.wait(lambda: (rig.controller.connectors[1].hw.pilot.offered_amps or 0) > 10)
    assert api.snapshot().connectors[0].local_limit_a is None


async def test_a_reserved_connector_is_not_started_for_another_card(e2e_rig: Any) -> None:
    rig = await e2e_rig()
    api = api_of(rig)
    expiry = (datetime.now(UTC) + timedelta(minutes=10)).isoformat().replace("+00:00", "Z")
    answer = await rig.call("ReserveNow", {"connectorId": 1, "expiryDate": expiry, "idTag": "04HOLDER00",
                                           "reservationId": 7})
    assert answer["status"] == "Accepted"
    await rig.wait_sent_status(1, "Reserved")
    sub = api.subscribe()
    result = await api.start_session(1, TAG)
    assert not result.accepted and "reserved" in result.message
    refused = await next_change(sub, ChangeKind.AUTHORIZATION)
    assert refused.data["event"] == "refused" and TAG not in repr(refused.data)
    assert (await api.start_session(1, "04HOLDER00")).accepted  # the holder may
    authorized = await next_change(sub, ChangeKind.AUTHORIZATION)
    assert authorized.data["event"] == "authorized"
    rig.bench.ev(1).plug()
    start = await rig.cs.wait_for_message("StartTransaction")
    assert start["idTag"] == "04HOLDER00" and start["reservationId"] == 7
    sub.close()


async def test_a_station_wide_local_limit_is_shared(e2e_rig: Any) -> None:
    rig = await e2e_rig(connectors=2)
    api = api_of(rig)
    tops = [rig.controller.connectors[c].max_current_a for c in (1, 2)]
    assert (await api.set_local_limit(None, sum(tops))).accepted  # up to every connector's maximum
    with pytest.raises(CommandError) as exc:
        await api.set_local_limit(None, sum(tops) + 1)
    assert exc.value.code == CommandError.BAD_VALUE and f"{sum(tops):g}" in exc.value.message
    with pytest.raises(CommandError):
        await api.set_local_limit(1, tops[0] + 1)  # one connector: its own maximum
    assert (await api.set_local_limit(None, 0)).message == "paused by the local limit"
    assert (await api.set_local_limit(None, None)).message == "local limit lifted"
    claims = api.snapshot().connectors[0].claims
    assert [c.priority for c in claims] == list(range(len(claims)))  # the arbiter's order


BAD_CONNECTORS = [0, 2, -1, 99, True, "1", 1.0, None]
BAD_AMPS = [math.nan, math.inf, -math.inf, -1, 3, 5.9, 33, 1e9, "10", True, [10]]
BAD_TAGS = ["", "   ", "x" * 21, "tag\n", "tåg", 12345, b"04A2"]


async def test_bad_input_is_a_clear_error_and_switches_nothing(e2e_rig: Any) -> None:
    rig = await e2e_rig()
    api = api_of(rig)
    rig.bench.ev(1).plug()
    await rig.wait_status(1, "Preparing")
    before = api.snapshot().as_dict()
    for cid in BAD_CONNECTORS:
        calls = [api.start_session(cid, TAG), api.stop_session(cid), api.set_available(cid, False),
                 api.clear_fault(cid, role=Role.ADMIN)]
        if cid is not None:  # None is "every connector" for a local limit
            calls.append(api.set_local_limit(cid, 10))
        for call in calls:
            with pytest.raises(CommandError) as exc:
                await call
            assert exc.value.code in (CommandError.UNKNOWN_CONNECTOR, CommandError.BAD_VALUE)
            assert exc.value.message
    for amps in BAD_AMPS:
        with pytest.raises(CommandError) as exc:
            await api.set_local_limit(1, amps)  # type: ignore[arg-type]
        assert exc.value.code == CommandError.BAD_VALUE, amps
    for tag in BAD_TAGS:
        with pytest.raises(CommandError) as exc:
            await api.start_session(1, tag)  # type: ignore[arg-type]
        assert exc.value.code in (CommandError.BAD_VALUE, CommandError.NOT_POSSIBLE), tag
    with pytest.raises(CommandError) as exc:
        await api.set_available(1, "no")  # type: ignore[arg-type]
    assert exc.value.code == CommandError.BAD_VALUE
    for role in (Role.VIEWER, "admin", 2):
        for call in (api.start_session(1, TAG, role=role), api.stop_session(1, role=role),  # type: ignore[arg-type]
                     api.set_local_limit(1, 10, role=role), api.set_available(1, False, role=role)):  # type: ignore[arg-type]
            with pytest.raises(CommandError) as exc:
                await call
            assert exc.value.code == CommandError.NOT_PERMITTED
    await rig.settle(0.2)
    after = api.snapshot().as_dict()
    assert after["connectors"][0]["status"] == before["connectors"][0]["status"] == "Preparing"
    assert rig.cs.received("Authorize") == [] and rig.cs.received("StartTransaction") == []
    assert not closed(rig) and api.snapshot().connectors[0].available


values = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True),
                   st.text(max_size=30), st.binary(max_size=8), st.lists(st.integers(), max_size=2))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(connector=values, amps=values, tag=values, role=st.one_of(st.sampled_from(Role), values))
async def test_fuzzed_arguments_never_raise_anything_but_command_error(
    tmp_path: Any, connector: Any, amps: Any, tag: Any, role: Any
) -> None:
    # a bare controller object is enough: every bad value is refused before anything is touched
    api = _OFFLINE_API
    for call in (lambda: api.set_local_limit(connector, amps), lambda: api.start_session(connector, tag),
                 lambda: api.set_available(connector, amps), lambda: api.stop_session(connector),
                 lambda: api.clear_fault(connector, role=role), lambda: api.set_local_limit(connector, amps, role=role),
                 lambda: api.start_session(connector, tag, role=role)):
        try:
            result = await call()
        except CommandError as exc:
            assert exc.code and exc.message
        else:
            assert isinstance(result, CommandResult)


class _FakeRuntime:
    """Enough of a connector for argument checks; anything deeper fails the test."""

    max_current_a = 32.0
    tx = None

    class state:  # noqa: N801
        in_transaction = False
        session_tag = None
        operative = True
        faults: frozenset[Any] = frozenset()
        latched: frozenset[Any] = frozenset()

        class pilot:  # noqa: N801
            vehicle_connected = False


class _FakeServices:
    """The services the API's commands reach (authorization, availability, transactions, limits, reservations)."""

    async def authorize(self, id_tag: str) -> tuple[bool, None]:
        return False, None

    async def change_availability(self, cid: int, operative: bool) -> str:
        return "Accepted"

    def session(self, cid: int) -> None:
        return None

    def stop(self, cid: int, reason: str) -> bool:
        return False

    def set_local_limit(self, cid: int | None, amps: float | None) -> None:
        pass

    def reservation_allows(self, cid: int, id_tag: str) -> bool:
        return True


class _FakeController:
    def __init__(self) -> None:
        self.listeners: list[Any] = []
        self.connectors = {1: _FakeRuntime()}
        self.posted: list[Any] = []
        self.authorization = self.availability = self.transactions = self.limits = self.reservations = _FakeServices()

    def post(self, cid: int, event: Any) -> None:
        self.posted.append(event)

    @staticmethod
    def monotonic() -> float:
        return 0.0


_OFFLINE_API = ControllerApi(_FakeController())


# ---------------------------------------------------------------------------------------- free vend

FREE = "FREEVEND"


async def test_free_vend_starts_on_plug_in_with_the_configured_tag(e2e_rig: Any) -> None:
    rig = await e2e_rig(config_overrides={"free_vend_id_tag": FREE})
    assert api_of(rig).snapshot().free_vend
    rig.bench.ev(1).plug()
    start = await rig.cs.wait_for_message("StartTransaction")
    assert start["idTag"] == FREE and start["connectorId"] == 1
    assert rig.cs.received("Authorize") == [{"idTag": FREE}]  # the central system still decides
    await rig.wait(lambda: closed(rig))
    # stopped by the owner with the car still plugged in: nothing restarts by itself
    await api_of(rig).stop_session(1)
    await rig.cs.wait_for_message("StopTransaction")
    await rig.settle(0.5)
    assert len(rig.cs.received("StartTransaction")) == 1 and not closed(rig)
    # unplug and plug again: a new free-vend session
    rig.bench.ev(1).unplug()
    await rig.wait_status(1, "Available")
    rig.bench.ev(1).plug()
    await rig.cs.wait_for_message("StartTransaction", count=2)


async def test_a_card_tapped_before_plug_in_wins_over_free_vend(e2e_rig: Any) -> None:
    rig = await e2e_rig(config_overrides={"free_vend_id_tag": FREE})
    rig.tap(TAG)
    await rig.wait(lambda: rig.controller.connectors[1].state.session_tag == TAG)
    rig.bench.ev(1).plug()
    start = await rig.cs.wait_for_message("StartTransaction")
    assert start["idTag"] == TAG
    await rig.settle(0.3)
    assert [p["idTag"] for p in rig.cs.received("Authorize")] == [TAG]


async def test_free_vend_refused_by_the_central_system_starts_nothing(e2e_rig: Any) -> None:
    rig = await e2e_rig(config_overrides={"free_vend_id_tag": FREE})
    rig.cs.behaviour.authorize_status = lambda tag: "Blocked"
    rig.bench.ev(1).plug()
    await rig.cs.wait_for_message("Authorize")
    await rig.settle(0.3)
    assert rig.cs.received("StartTransaction") == [] and not closed(rig)
    assert (await api_of(rig).start_session(1, TAG)).accepted is False  # Blocked for every tag here


# ---------------------------------------------------------------------------------------- status socket


async def test_status_socket_and_follow_are_clients_of_the_api(e2e_rig: Any, tmp_path: Any) -> None:
    from chargepoint.status_socket import fetch_status, follow_status, format_change, format_status

    path = tmp_path / "status.sock"
    rig = await e2e_rig(config_overrides={"status_socket": str(path)})
    await rig.wait(lambda: path.exists())
    snap = await fetch_status(path)
    assert snap["link"]["state"] == "connected" and "claims" in snap["connectors"][0]
    assert "CABLE" in format_status(snap).splitlines()[3]
    seen: list[dict[str, Any]] = []

    async def follow() -> None:
        async for obj in follow_status(path):
            seen.append(obj)

    task = asyncio.create_task(follow())
    await rig.wait(lambda: len(seen) >= 1)
    assert "connectors" in seen[0]  # the snapshot comes first
    rig.bench.ev(1).plug()
    rig.tap(TAG)
    await rig.wait(lambda: any(o.get("kind") == "transaction" for o in seen[1:]))
    lines = [format_change(o) for o in seen[1:]]
    assert any(line.startswith("pilot") and "connector 1" in line for line in lines), lines
    assert TAG not in repr(seen)
    assert len(rig.controller.api._subs) == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await rig.wait(lambda: not rig.controller.api._subs)  # the server noticed the client went away

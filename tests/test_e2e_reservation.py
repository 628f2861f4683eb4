"""End to end: Reservation profile (OCPP 1.6 §5.13 ReserveNow, §5.1 CancelReservation) against the loopback
central system: statuses, who may use a reservation, expiry, connector 0, persistence."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from chargepoint.metering import iso

if TYPE_CHECKING:
    from e2e_helpers import Rig

pytest_plugins = ["e2e_helpers"]

HOLDER = "04A2B3C4D5"
OTHER = "04B0B0B0B0"
FRIEND = "04F0F0F0F0"


def reserve_payload(
    connector: int, tag: str = HOLDER, rid: int = 1, seconds: float = 600, parent: str | None = None
) -> dict[str, Any]:
    p: dict[str, Any] = {
        "connectorId": connector,
        "expiryDate": iso(datetime.now(UTC) + timedelta(seconds=seconds)),
        "idTag": tag,
        "reservationId": rid,
    }
    if parent:
        p["parentIdTag"] = parent
    return p


async def reserve(rig: Rig, connector: int, **kw: Any) -> str:
    return (await rig.call("ReserveNow", reserve_payload(connector, **kw)))["status"]


async def test_reserved_connector_refuses_other_tag_and_serves_holder(e2e_rig: Any) -> None:
    rig = await e2e_rig()
    assert await reserve(rig, 1, rid=42) == "Accepted"
    await rig.wait_sent_status(1, "Reserved")
    assert [r.reservation_id for r in rig.controller.store.reservations()] == [42]
    rig.bench.ev(1).plug()
    await rig.settle(0.05)
    assert rig.controller.connectors[1].state.status == "Reserved"  # a plugged car does not take it
    rig.tap(OTHER)
    await rig.wait_event("refused", lambda d: d["id_tag"] == OTHER)
    await rig.settle(0.05)
    assert rig.controller.connectors[1].state.session_tag is None
    assert rig.cs.received("StartTransaction") == []
    rig.tap(HOLDER)
    start = await rig.cs.wait_for_message("StartTransaction")
    assert start["idTag"] == HOLDER and start["reservationId"] == 42
    # the reservation is used up (§5.13 (1)): gone from memory and store, no Reserved after the session
    assert len(rig.controller.reservations) == 0 and rig.controller.store.reservations() == []
    await rig.wait_sent_status(1, "Charging")
    rig.bench.ev(1).unplug()
    await rig.cs.wait_for_message("StopTransaction")
    await rig.wait_sent_status(1, "Available", count=2)
    await rig.settle(0.05)
    assert rig.sent_statuses(1)[-1] == "Available"


async def test_parent_id_tag_of_reservation_lets_group_member_use_it(e2e_rig: Any) -> None:
    rig = await e2e_rig()
    rig.cs.behaviour.parent_id_tag = lambda tag: "FLEET" if tag == FRIEND else None
    assert await reserve(rig, 1, rid=7, parent="FLEET") == "Accepted"
    rig.bench.ev(1).plug()
    rig.tap(FRIEND)
    start = await rig.cs.wait_for_message("StartTransaction")
    assert start["idTag"] == FRIEND and start["reservationId"] == 7


async def test_reservation_expires_with_a_timer(e2e_rig: Any) -> None:
    rig = await e2e_rig()
    assert await reserve(rig, 1, rid=3, seconds=0.4) == "Accepted"
    await rig.wait_sent_status(1, "Reserved")
    timer = rig.controller.reservations.expiry_timer  # one timer for the earliest expiry, no polling
    assert timer is not None and timer.when() - asyncio.get_running_loop().time() <= 0.4
    await rig.wait_event("reservation_expired", lambda d: d["reservation_id"] == 3, timeout=3)
    await rig.wait_sent_status(1, "Available", count=2)
    assert len(rig.controller.reservations) == 0 and rig.controller.store.reservations() == []
    assert rig.controller.reservations.expiry_timer is None
    rig.bench.ev(1).plug()
    rig.tap(OTHER)
    start = await rig.cs.wait_for_message("StartTransaction")
    assert start["idTag"] == OTHER and "reservationId" not in start


async def test_reserve_now_answers(e2e_rig: Any) -> None:
    rig = await e2e_rig(connectors=2)
    # a connector that does not exist, a negative one, an expiry in the past: Rejected, nothing stored
    assert await reserve(rig, 3) == "Rejected"
    assert await reserve(rig, -1) == "Rejected"
    assert await reserve(rig, 1, seconds=-5) == "Rejected"
    assert rig.controller.store.reservations() == [] and len(rig.controller.reservations) == 0
    # idTag over 20 characters is a schema violation: CALLERROR
    bad = await rig.call("ReserveNow", reserve_payload(1, tag="X" * 21))
    assert bad["__error__"] == "PropertyConstraintViolation"
    # a car plugged in: Occupied
    rig.bench.ev(2).plug()
    await rig.wait_status(2, "Preparing")
    assert await reserve(rig, 2) == "Occupied"
    # Unavailable
    assert (await rig.call("ChangeAvailability", {"connectorId": 1, "type": "Inoperative"}))[
        "status"
    ] == "Accepted"
    assert await reserve(rig, 1) == "Unavailable"
    await rig.call("ChangeAvailability", {"connectorId": 1, "type": "Operative"})
    await rig.wait_status(1, "Available")
    # Faulted
    from hal.interfaces import FaultKind

    rig.bench.inject(1, FaultKind.OVERTEMP)
    await rig.wait_status(1, "Faulted")
    assert await reserve(rig, 1) == "Faulted"
    assert rig.controller.store.reservations() == []


async def test_same_reservation_id_moves_and_cancel(e2e_rig: Any) -> None:
    rig = await e2e_rig(connectors=2)
    assert await reserve(rig, 1, rid=5) == "Accepted"
    await rig.wait_sent_status(1, "Reserved")
    assert await reserve(rig, 1, rid=6, tag=OTHER) == "Occupied"  # another reservation on it
    assert await reserve(rig, 2, rid=5) == "Accepted"  # same id replaces: moves to connector 2
    await rig.wait_sent_status(2, "Reserved")
    await rig.wait_sent_status(1, "Available", count=2)
    assert [(r.reservation_id, r.connector_id) for r in rig.controller.store.reservations()] == [(5, 2)]
    assert (await rig.call("CancelReservation", {"reservationId": 99}))["status"] == "Rejected"
    assert (await rig.call("CancelReservation", {"reservationId": 5}))["status"] == "Accepted"
    await rig.wait_sent_status(2, "Available", count=2)
    assert rig.controller.store.reservations() == []
    assert rig.controller.reservations.expiry_timer is None


async def test_connector_zero_single_connector(e2e_rig: Any) -> None:
    rig = await e2e_rig()
    assert await reserve(rig, 0, rid=10) == "Accepted"
    await rig.wait_sent_status(1, "Reserved")  # the only connector is held for the holder
    rig.bench.ev(1).plug()
    rig.tap(OTHER)
    await rig.wait_event("refused", lambda d: d["id_tag"] == OTHER)
    rig.tap(HOLDER)
    start = await rig.cs.wait_for_message("StartTransaction")
    assert start["reservationId"] == 10 and start["connectorId"] == 1


async def test_connector_zero_two_connectors(e2e_rig: Any) -> None:
    """Both stay Available until one is taken; then the other is Reserved for the holder."""
    rig = await e2e_rig(connectors=2)
    assert await reserve(rig, 0, rid=11) == "Accepted"
    await rig.settle(0.1)
    assert rig.sent_statuses(1)[-1] == "Available" and rig.sent_statuses(2)[-1] == "Available"
    rig.bench.ev(1).plug()
    rig.tap(OTHER)
    start = await rig.cs.wait_for_message("StartTransaction")
    assert start["connectorId"] == 1 and "reservationId" not in start
    await rig.wait_sent_status(2, "Reserved")
    rig.bench.ev(2).plug()
    rig.tap(FRIEND)
    await rig.wait_event("refused", lambda d: d["id_tag"] == FRIEND)
    rig.tap(HOLDER)
    start = await rig.cs.wait_for_message("StartTransaction", count=2)
    assert start["connectorId"] == 2 and start["reservationId"] == 11 and start["idTag"] == HOLDER


async def test_connector_zero_not_supported(e2e_rig: Any) -> None:
    rig = await e2e_rig(ocpp_keys={"ReserveConnectorZeroSupported": False})
    assert await reserve(rig, 0) == "Rejected"


async def test_unavailable_ends_the_reservation(e2e_rig: Any) -> None:
    rig = await e2e_rig()
    assert await reserve(rig, 1, rid=20) == "Accepted"
    await rig.wait_sent_status(1, "Reserved")
    await rig.call("ChangeAvailability", {"connectorId": 1, "type": "Inoperative"})
    await rig.wait_sent_status(1, "Unavailable")
    await rig.wait(lambda: rig.controller.store.reservations() == [])
    assert len(rig.controller.reservations) == 0
    await rig.call("ChangeAvailability", {"connectorId": 1, "type": "Operative"})
    await rig.wait_sent_status(1, "Available", count=2)


async def test_remote_start_respects_reservation(e2e_rig: Any) -> None:
    rig = await e2e_rig()
    assert await reserve(rig, 1, rid=30) == "Accepted"
    await rig.wait_status(1, "Reserved")
    rig.bench.ev(1).plug()
    wrong = await rig.call("RemoteStartTransaction", {"idTag": OTHER, "connectorId": 1})
    assert wrong["status"] == "Rejected"
    right = await rig.call("RemoteStartTransaction", {"idTag": HOLDER, "connectorId": 1})
    assert right["status"] == "Accepted"
    start = await rig.cs.wait_for_message("StartTransaction")
    assert start["idTag"] == HOLDER and start["reservationId"] == 30


async def test_reservation_survives_restart(tmp_path: Any, e2e_rig: Any) -> None:
    state = tmp_path / "keep"
    rig = await e2e_rig(state_dir=state)
    assert await reserve(rig, 1, rid=50) == "Accepted"
    assert await reserve(rig, 0, rid=51, tag=OTHER) == "Occupied"  # the only connector is held
    await rig.wait_sent_status(1, "Reserved")
    await rig.stop()
    again = await e2e_rig(state_dir=state)
    assert again.controller.store.persistent
    assert [r.reservation_id for r in again.controller.reservations.all()] == [50]
    await again.wait_sent_status(1, "Reserved")
    assert again.sent_statuses(1)[0] == "Reserved"  # the first status after boot already says so


async def test_expired_while_off_is_dropped_at_start(tmp_path: Any, e2e_rig: Any) -> None:
    state = tmp_path / "keep"
    rig = await e2e_rig(state_dir=state)
    assert await reserve(rig, 1, rid=60, seconds=0.3) == "Accepted"
    await rig.stop()
    await rig.settle(0.4)
    again = await e2e_rig(state_dir=state)
    assert len(again.controller.reservations) == 0 and again.controller.store.reservations() == []
    assert "Reserved" not in again.sent_statuses(1)


async def test_reserve_now_store_failure_is_rejected_and_not_applied(e2e_rig: Any) -> None:
    from chargepoint.store import StoreWriteError

    rig = await e2e_rig()

    def broken(*_: Any) -> None:
        raise StoreWriteError("could not save reservation 1: disk full", "full")

    rig.controller.store.put_reservation = broken
    assert await reserve(rig, 1, rid=1) == "Rejected"
    assert len(rig.controller.reservations) == 0
    await rig.settle(0.1)
    assert "Reserved" not in rig.sent_statuses(1)
    rig.bench.ev(1).plug()
    rig.tap(OTHER)
    assert (await rig.cs.wait_for_message("StartTransaction"))["idTag"] == OTHER

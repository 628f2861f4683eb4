"""Reservations (OCPP 1.6 §5.13 ReserveNow, §5.1 CancelReservation)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from chargepoint.reservations import Reservation, ReservationError, Reservations

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
LATER = NOW + timedelta(hours=1)

TWO_FREE = {1: "Available", 2: "Available"}


def req(rid: int = 1, cid: int = 1, tag: str = "ALICE", parent: str | None = None, expiry=LATER) -> dict:  # type: ignore[no-untyped-def]
    out = {"reservationId": rid, "connectorId": cid, "idTag": tag, "expiryDate": expiry.isoformat()}
    if parent is not None:
        out["parentIdTag"] = parent
    return out


def reserve(model: Reservations, request, states=TWO_FREE, zero: bool = True, now=NOW) -> str:  # type: ignore[no-untyped-def]
    return model.reserve(request, now=now, connector_states=states, reserve_connector_zero_supported=zero)


# ---------------------------------------------------------------------------------------------- Reservation


def test_reservation_from_ocpp_camel_and_snake() -> None:
    r = Reservation.from_ocpp(req(parent="FAMILY"))
    assert r == Reservation(1, 1, "ALICE", "FAMILY", LATER)
    s = Reservation.from_ocpp(
        {
            "reservation_id": 1,
            "connector_id": 1,
            "id_tag": "ALICE",
            "parent_id_tag": "FAMILY",
            "expiry_date": LATER,
        }
    )
    assert s == r
    assert r.to_ocpp() == {
        "reservationId": 1,
        "connectorId": 1,
        "idTag": "ALICE",
        "parentIdTag": "FAMILY",
        "expiryDate": "2024-05-01T13:00:00Z",
    }


@pytest.mark.parametrize(
    ("patch", "fragment"),
    [
        ({"idTag": "X" * 21}, "idTag"),
        ({"connectorId": -1}, "connectorId"),
        ({"reservationId": "7"}, "reservationId"),
        ({"expiryDate": "later"}, "expiryDate"),
        ({"parentIdTag": "P" * 21}, "parentIdTag"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_reservation_from_ocpp_rejects_bad_fields(patch: dict, fragment: str) -> None:
    with pytest.raises(ReservationError, match=fragment):
        Reservation.from_ocpp({**req(), **patch})


def test_reservation_from_ocpp_requires_fields() -> None:
    raw = req()
    del raw["expiryDate"]
    with pytest.raises(ReservationError, match="expiryDate"):
        Reservation.from_ocpp(raw)


# ---------------------------------------------------------------------------------------------- ReserveNow


def test_reserve_accepted_and_stored() -> None:
    m = Reservations()
    assert reserve(m, req()) == "Accepted"
    assert m.get(1) == Reservation(1, 1, "ALICE", None, LATER)
    assert m.for_connector(1) == [m.get(1)]
    assert m.for_connector(2) == []


@pytest.mark.parametrize("cid", [3, 99])
def test_reserve_connector_that_does_not_exist_is_rejected(cid: int) -> None:
    m = Reservations()
    assert reserve(m, req(cid=cid)) == "Rejected"
    assert len(m) == 0
    status, _res, reason = m.check_reserve(
        req(cid=cid), now=NOW, connector_states=TWO_FREE, reserve_connector_zero_supported=True
    )
    assert status == "Rejected" and "does not exist" in reason


def test_reserve_negative_connector_is_rejected() -> None:
    assert reserve(Reservations(), req(cid=-1)) == "Rejected"


@pytest.mark.parametrize(("state", "expected"), [("Faulted", "Faulted"), ("Unavailable", "Unavailable")])
def test_reserve_faulted_or_unavailable_connector(state: str, expected: str) -> None:
    m = Reservations()
    assert reserve(m, req(), states={1: state, 2: "Available"}) == expected
    assert len(m) == 0


@pytest.mark.parametrize(("state", "expected"), [("Faulted", "Faulted"), ("Unavailable", "Unavailable")])
def test_reserve_when_whole_charge_point_is_down(state: str, expected: str) -> None:
    m = Reservations()
    assert reserve(m, req(), states={0: state, 1: "Available", 2: "Available"}) == expected


@pytest.mark.parametrize("state", ["Preparing", "Charging", "SuspendedEV", "SuspendedEVSE", "Finishing"])
def test_reserve_occupied_connector(state: str) -> None:
    m = Reservations()
    assert reserve(m, req(), states={1: state, 2: "Available"}) == "Occupied"
    assert len(m) == 0


@pytest.mark.parametrize("tag", ["BOB", "ALICE"])  # "reserved for the same or another idTag"
def test_reserve_connector_reserved_under_another_id_is_occupied(tag: str) -> None:
    m = Reservations()
    assert reserve(m, req(rid=1, tag="ALICE")) == "Accepted"
    states = {1: "Reserved", 2: "Available"}
    assert reserve(m, req(rid=2, tag=tag), states=states) == "Occupied"
    assert m.get(2) is None and m.get(1) is not None


def test_same_reservation_id_replaces() -> None:
    m = Reservations()
    assert reserve(m, req(rid=5, cid=1, tag="ALICE")) == "Accepted"
    # same id, same connector (now shown Reserved because of it): replaced
    states = {1: "Reserved", 2: "Available"}
    assert (
        reserve(m, req(rid=5, cid=1, tag="BOB", expiry=LATER + timedelta(hours=1)), states=states)
        == "Accepted"
    )
    assert m.get(5) == Reservation(5, 1, "BOB", None, LATER + timedelta(hours=1))
    # same id moved to connector 2
    assert reserve(m, req(rid=5, cid=2, tag="BOB"), states=states) == "Accepted"
    assert len(m) == 1 and m.for_connector(1) == [] and m.get(5).connector_id == 2  # type: ignore[union-attr]


def test_refused_replacement_keeps_old_reservation() -> None:
    m = Reservations()
    assert reserve(m, req(rid=5, cid=1)) == "Accepted"
    assert reserve(m, req(rid=5, cid=2, tag="BOB"), states={1: "Reserved", 2: "Charging"}) == "Occupied"
    assert m.get(5) == Reservation(5, 1, "ALICE", None, LATER)


def test_reserve_with_past_expiry_is_rejected() -> None:
    m = Reservations()
    assert reserve(m, req(expiry=NOW)) == "Rejected"
    assert reserve(m, req(expiry=NOW - timedelta(seconds=1))) == "Rejected"


def test_reserve_disabled_is_rejected() -> None:
    m = Reservations()
    st = m.reserve(
        req(), now=NOW, connector_states=TWO_FREE, reserve_connector_zero_supported=True, enabled=False
    )
    assert st == "Rejected" and len(m) == 0


def test_reserve_malformed_request_is_rejected() -> None:
    assert reserve(Reservations(), {"reservationId": 1}) == "Rejected"
    assert reserve(Reservations(), req(tag="X" * 21)) == "Rejected"


def test_reserve_unknown_connector_status_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="connector_states"):
        reserve(Reservations(), req(), states={1: "Sleeping"})


def test_expired_reservation_does_not_block_new_one() -> None:
    m = Reservations()
    assert reserve(m, req(rid=1, expiry=NOW + timedelta(minutes=1))) == "Accepted"
    later = NOW + timedelta(minutes=2)
    assert reserve(m, req(rid=2, tag="BOB", expiry=later + timedelta(hours=1)), now=later) == "Accepted"


# ---------------------------------------------------------------------------------------------- connector 0


def test_connector_zero_rejected_when_not_supported() -> None:
    m = Reservations()
    assert reserve(m, req(cid=0), zero=False) == "Rejected"
    assert len(m) == 0


def test_connector_zero_accepted_while_a_connector_is_free() -> None:
    m = Reservations()
    assert reserve(m, req(rid=1, cid=0)) == "Accepted"
    assert reserve(m, req(rid=2, cid=0, tag="BOB")) == "Accepted"  # two free connectors, two holders
    assert reserve(m, req(rid=3, cid=0, tag="CAROL")) == "Occupied"


def test_connector_zero_occupied_when_no_connector_free() -> None:
    assert reserve(Reservations(), req(cid=0), states={1: "Charging", 2: "Preparing"}) == "Occupied"


def test_connector_zero_faulted_or_unavailable_when_all_down() -> None:
    assert reserve(Reservations(), req(cid=0), states={1: "Faulted", 2: "Faulted"}) == "Faulted"
    assert reserve(Reservations(), req(cid=0), states={1: "Faulted", 2: "Unavailable"}) == "Unavailable"
    assert reserve(Reservations(), req(cid=0), states={1: "Faulted", 2: "Charging"}) == "Occupied"


def test_specific_reservation_may_not_starve_connector_zero_reservation() -> None:
    m = Reservations()
    assert reserve(m, req(rid=1, cid=0, tag="ALICE")) == "Accepted"
    assert reserve(m, req(rid=2, cid=1, tag="BOB")) == "Accepted"  # connector 2 stays free for ALICE
    assert reserve(m, req(rid=3, cid=2, tag="CAROL"), states={1: "Reserved", 2: "Available"}) == "Occupied"


def test_connector_zero_not_counting_specifically_reserved_connectors() -> None:
    m = Reservations()
    assert reserve(m, req(rid=1, cid=1, tag="BOB")) == "Accepted"
    assert reserve(m, req(rid=2, cid=0), states={1: "Reserved", 2: "Available"}) == "Accepted"
    assert reserve(m, req(rid=3, cid=0, tag="C"), states={1: "Reserved", 2: "Available"}) == "Occupied"


# ---------------------------------------------------------------------------------------------- may_use


def test_may_use_right_and_wrong_tag() -> None:
    m = Reservations()
    reserve(m, req(rid=1, cid=1, tag="ALICE"))
    r = m.get(1)
    states = {1: "Preparing", 2: "Available"}
    assert m.may_use(1, "alice", None, NOW, connector_states=states) == (True, r)
    assert m.may_use(1, "BOB", None, NOW, connector_states=states) == (False, r)
    assert m.may_use(2, "BOB", None, NOW, connector_states=states) == (True, None)


@pytest.mark.parametrize(
    ("res_parent", "tag", "tag_parent", "allowed"),
    [
        ("FAMILY", "BOB", "FAMILY", True),  # parent matches reservation parent
        (None, "BOB", "ALICE", True),  # incoming parent is the reserved idTag
        ("FAMILY", "FAMILY", None, True),  # incoming idTag is the reservation's parent
        ("FAMILY", "BOB", "OTHER", False),
        ("FAMILY", "BOB", None, False),
        (None, "BOB", None, False),
    ],
)
def test_may_use_parent_id_tag(
    res_parent: str | None, tag: str, tag_parent: str | None, allowed: bool
) -> None:
    m = Reservations()
    reserve(m, req(rid=1, cid=1, tag="ALICE", parent=res_parent))
    ok, r = m.may_use(1, tag, tag_parent, NOW, connector_states=TWO_FREE)
    assert ok is allowed and r == m.get(1)


def test_may_use_after_expiry_is_open() -> None:
    m = Reservations()
    reserve(m, req(rid=1, cid=1, tag="ALICE"))
    assert m.may_use(1, "BOB", None, LATER, connector_states=TWO_FREE) == (True, None)


def test_may_use_refuses_connector_zero() -> None:
    with pytest.raises(ValueError, match="connector_id"):
        Reservations().may_use(0, "A", None, NOW, connector_states=TWO_FREE)


def test_connector_zero_reservation_on_single_connector_blocks_others() -> None:
    m = Reservations()
    one = {1: "Available"}
    assert reserve(m, req(rid=1, cid=0, tag="ALICE"), states=one) == "Accepted"
    assert m.connector_reserved_effectively(1, one, NOW) is True
    assert m.may_use(1, "BOB", None, NOW, connector_states={1: "Preparing"}) == (False, m.get(1))
    assert m.may_use(1, "ALICE", None, NOW, connector_states={1: "Preparing"}) == (True, m.get(1))


def test_connector_zero_reservation_keeps_one_connector_free() -> None:
    m = Reservations()
    assert reserve(m, req(rid=1, cid=0, tag="ALICE")) == "Accepted"
    # BOB plugs into 1: connector 2 is still free for ALICE
    assert m.connector_reserved_effectively(1, TWO_FREE, NOW) is False
    assert m.may_use(1, "BOB", None, NOW, connector_states={1: "Preparing", 2: "Available"}) == (True, None)
    # while BOB charges on 1, CAROL may not take 2
    states = {1: "Charging", 2: "Preparing"}
    assert m.connector_reserved_effectively(2, states, NOW) is True
    assert m.may_use(2, "CAROL", None, NOW, connector_states=states) == (False, m.get(1))
    # ALICE may, and gets her reservation
    assert m.may_use(2, "ALICE", None, NOW, connector_states=states) == (True, m.get(1))


def test_connector_reserved_effectively_specific() -> None:
    m = Reservations()
    reserve(m, req(rid=1, cid=2))
    assert m.connector_reserved_effectively(2, TWO_FREE, NOW) is True
    assert m.connector_reserved_effectively(1, TWO_FREE, NOW) is False
    assert m.connector_reserved_effectively(2, TWO_FREE, LATER) is False  # expired


def test_specific_reservation_wins_over_connector_zero_match() -> None:
    m = Reservations()
    reserve(m, req(rid=1, cid=0, tag="ALICE"))
    reserve(m, req(rid=2, cid=1, tag="BOB"))
    assert m.may_use(1, "ALICE", None, NOW, connector_states={1: "Reserved", 2: "Available"}) == (
        False,
        m.get(2),
    )


# ---------------------------------------------------------------------------------------------- lifecycle


def test_cancel() -> None:
    m = Reservations()
    reserve(m, req(rid=1))
    assert m.cancel(1) == "Accepted"
    assert m.cancel(1) == "Rejected"
    assert m.cancel(42) == "Rejected"
    assert len(m) == 0


def test_consume() -> None:
    m = Reservations()
    reserve(m, req(rid=1))
    assert m.consume(1) == Reservation(1, 1, "ALICE", None, LATER)
    assert m.consume(1) is None
    assert m.may_use(1, "BOB", None, NOW, connector_states=TWO_FREE) == (True, None)


def test_expire_and_next_expiry() -> None:
    m = Reservations()
    assert m.next_expiry() is None
    reserve(m, req(rid=1, cid=1, expiry=NOW + timedelta(minutes=10)))
    reserve(m, req(rid=2, cid=2, tag="BOB", expiry=NOW + timedelta(minutes=5)))
    assert m.next_expiry() == NOW + timedelta(minutes=5)
    assert m.expire(NOW + timedelta(minutes=4, seconds=59)) == []
    gone = m.expire(NOW + timedelta(minutes=5))  # at expiryDate the reservation ends
    assert [r.reservation_id for r in gone] == [2]
    assert m.next_expiry() == NOW + timedelta(minutes=10)
    assert [r.reservation_id for r in m.expire(NOW + timedelta(hours=1))] == [1]
    assert m.next_expiry() is None and len(m) == 0


def test_terminate_unusable() -> None:
    m = Reservations()
    three = {1: "Available", 2: "Available", 3: "Available"}
    reserve(m, req(rid=1, cid=1), states=three)
    reserve(m, req(rid=2, cid=2, tag="B"), states=three)
    reserve(m, req(rid=3, cid=0, tag="C"), states=three)
    gone = m.terminate_unusable({1: "Faulted", 2: "Reserved", 3: "Available"})
    assert [r.reservation_id for r in gone] == [1]
    # connector 3 still usable: the connector-0 reservation stays
    assert m.terminate_unusable({1: "Faulted", 2: "Reserved", 3: "Available"}) == []
    gone = m.terminate_unusable({1: "Faulted", 2: "Unavailable", 3: "Faulted"})
    assert [r.reservation_id for r in gone] == [2, 3]
    assert len(m) == 0


def test_terminate_unusable_charge_point_down_ends_all() -> None:
    m = Reservations()
    reserve(m, req(rid=1, cid=1))
    reserve(m, req(rid=2, cid=0, tag="B"))
    gone = m.terminate_unusable({0: "Unavailable", 1: "Reserved", 2: "Available"})
    assert sorted(r.reservation_id for r in gone) == [1, 2] and len(m) == 0


def test_rows_roundtrip() -> None:
    m = Reservations()
    reserve(m, req(rid=2, cid=0, tag="B", parent="G"))
    reserve(m, req(rid=1, cid=1))
    rows = m.to_rows()
    assert rows == [(1, 1, "ALICE", None, "2024-05-01T13:00:00Z"), (2, 0, "B", "G", "2024-05-01T13:00:00Z")]
    again = Reservations.from_rows(rows)
    assert again.all() == m.all()


@pytest.mark.parametrize(
    "rows",
    [
        [(1, 1, "A", None)],
        [(1, 1, "A", None, "soon")],
        [(1, -1, "A", None, "2024-05-01T13:00:00Z")],
        [(1, 1, "A", None, "2024-05-01T13:00:00Z"), (1, 2, "B", None, "2024-05-01T13:00:00Z")],
    ],
)
def test_from_rows_rejects_corrupt_rows(rows: list) -> None:
    with pytest.raises(ReservationError):
        Reservations.from_rows(rows)

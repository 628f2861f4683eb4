"""Malformed OCPP-J frames get the CALLERROR OCPP-J 1.6 §4.2.3 names, and the controller goes on."""

from __future__ import annotations

import json

import pytest
from conftest import Station


async def _error(station: Station, frame: str) -> list:
    answers = await station.csms.send_raw(station.cp_id, frame)
    errors = [a for a in answers if a and a[0] == 4]
    assert errors, f"no CALLERROR for {frame!r}: {answers}"
    return errors[0]


@pytest.mark.parametrize(
    ("frame", "code", "unique_id"),
    [
        ("this is not json", "FormationViolation", "-1"),
        ('[2, "id1", "Reset"', "FormationViolation", "id1"),
        ('{"not": "an array"}', "FormationViolation", "-1"),
        ('[2, "id2"]', "FormationViolation", "id2"),
        ('[9, "id3", "Reset", {}]', "ProtocolError", "id3"),
        ('[2, "id4", "Reset", "payload"]', "FormationViolation", "id4"),
        ('[2, "id5", "FlyToTheMoon", {}]', "NotImplemented", "id5"),
        (
            '[2, "id6", "BootNotification", {"chargePointVendor": "x", "chargePointModel": "y"}]',
            "NotSupported",
            "id6",
        ),
        ('[2, "id7", "Reset", {"type": "Medium"}]', "PropertyConstraintViolation", "id7"),
        ('[2, "id8", "Reset", {}]', "OccurenceConstraintViolation", "id8"),
        (
            '[2, "id9", "ChangeAvailability", {"connectorId": "one", "type": "Operative"}]',
            "TypeConstraintViolation",
            "id9",
        ),
        ('[2, "id10", "Reset", {"type": "Soft", "extra": 1}]', "FormationViolation", "id10"),
        (
            '[2, "id11", "RemoteStartTransaction", {"idTag": "ABCDEFGHIJKLMNOPQRSTUVWXYZ"}]',
            "PropertyConstraintViolation",
            "id11",
        ),
    ],
)
async def test_bad_frame_gets_callerror(station: Station, frame: str, code: str, unique_id: str) -> None:
    error = await _error(station, frame)
    assert error[1] == unique_id and error[2] == code
    assert isinstance(error[3], str) and error[4] == {}
    # the controller goes on: a valid request still works afterwards
    assert (await station.call("GetConfiguration", {"key": ["HeartbeatInterval"]}))["configurationKey"]


async def test_bad_frames_never_close_the_contactor(station: Station) -> None:
    station.bench.ev(1).plug()
    for frame in [
        '[2,"a","RemoteStartTransaction",{"idTag":1}]',
        '[2,"b","RemoteStartTransaction",{}]',
        '[2,"c","SetChargingProfile",{"connectorId":1}]',
        "\x00\x01",
        "[]",
        "[2]",
    ]:
        await station.csms.send_raw(station.cp_id, frame)
    assert not station.controller.connectors[1].hw.contactor.is_closed
    assert station.csms.received("StartTransaction") == []
    assert station.status() == "Preparing"


async def test_unknown_response_is_ignored(station: Station) -> None:
    session = await station.csms.wait_connected(station.cp_id)
    await session._send(json.dumps([3, "nobody-asked", {}]))
    await session._send(json.dumps([4, "nobody-asked", "GenericError", "", {}]))
    assert (await station.call("ClearCache", {}))["status"] == "Accepted"


async def test_decimal_limits_are_not_refused_by_floating_point(station: Station) -> None:
    """SetChargingProfile's limit has multipleOf 0.1 in the 1.6 schema: 21.4 must pass validation."""
    profile = {
        "chargingProfileId": 7,
        "stackLevel": 0,
        "chargingProfilePurpose": "TxDefaultProfile",
        "chargingProfileKind": "Absolute",
        "chargingSchedule": {
            "chargingRateUnit": "A",
            "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 21.4}],
        },
    }
    answer = await station.call("SetChargingProfile", {"connectorId": 1, "csChargingProfiles": profile})
    assert "__error__" not in answer
    bad = dict(
        profile,
        chargingSchedule={
            "chargingRateUnit": "A",
            "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 21.45}],
        },
    )
    answer = await station.call("SetChargingProfile", {"connectorId": 1, "csChargingProfiles": bad})
    assert answer["__error__"] == "PropertyConstraintViolation"

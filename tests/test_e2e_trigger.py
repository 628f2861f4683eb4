"""End to end: Remote Trigger profile (OCPP 1.6 §5.17 TriggerMessage) against the loopback central system.

Every requested message is checked to arrive after the TriggerMessage.conf on the wire ("The Charge Point
SHALL first send the TriggerMessage.conf response, before sending the requested message")."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from e2e_helpers import Rig

pytest_plugins = ["e2e_helpers"]


async def wire_log(rig: Rig) -> list[list[Any]]:
    """Every frame the central system receives from the charge point, in arrival order."""
    assert rig.cs is not None
    session = await rig.cs.wait_connected(rig.cp_id)
    frames: list[list[Any]] = []
    original = session.route_message

    async def logging_route(raw: str) -> None:
        frames.append(json.loads(raw))
        await original(raw)

    session.route_message = logging_route  # type: ignore[method-assign]
    return frames


async def trigger(
    rig: Rig, frames: list[list[Any]], message: str, connector: int | None = None, expect: int = 1
) -> tuple[str, list[dict[str, Any]]]:
    """Send TriggerMessage; return (status, payloads of the ``expect`` messages that followed). Asserts the
    conf came first on the wire."""
    mark = len(frames)
    payload: dict[str, Any] = {"requestedMessage": message}
    if connector is not None:
        payload["connectorId"] = connector
    answer = await rig.call("TriggerMessage", payload)
    if "__error__" in answer:
        return answer["__error__"], []
    if answer["status"] != "Accepted":
        await rig.settle(0.2)
        assert [f for f in frames[mark:] if f[0] == 2] == [], "nothing may be sent after a refusal"
        return answer["status"], []

    def sent() -> list[list[Any]]:
        return [f for f in frames[mark:] if f[0] == 2 and f[2] == message]

    await rig.wait(lambda: len(sent()) >= expect)
    await rig.settle(0.1)
    first_call = next(i for i, f in enumerate(frames[mark:]) if f[0] == 2 and f[2] == message)
    answers = [i for i, f in enumerate(frames[mark:]) if f[0] == 3 and f[2] == {"status": "Accepted"}]
    assert answers and answers[0] < first_call, "TriggerMessage.conf must precede the triggered message"
    return answer["status"], [f[3] for f in sent()]


async def test_boot_notification_and_heartbeat(e2e_rig: Any) -> None:
    rig = await e2e_rig()
    frames = await wire_log(rig)
    status, sent = await trigger(rig, frames, "BootNotification")
    assert status == "Accepted" and sent[0]["chargePointModel"] == rig.controller.config.model
    assert len(rig.cs.received("BootNotification")) == 2
    # connectorId is not relevant to a BootNotification: ignored, even one that does not exist (§5.17)
    status, _ = await trigger(rig, frames, "BootNotification", connector=9)
    assert status == "Accepted"
    status, sent = await trigger(rig, frames, "Heartbeat")
    assert status == "Accepted" and sent == [{}]


async def test_firmware_and_diagnostics_status(e2e_rig: Any) -> None:
    rig = await e2e_rig()
    frames = await wire_log(rig)
    c = rig.controller
    status, sent = await trigger(rig, frames, "FirmwareStatusNotification")
    assert status == "Accepted"
    assert sent == [{"status": c.firmware.status()}]
    status, sent = await trigger(rig, frames, "DiagnosticsStatusNotification")
    assert status == "Accepted"
    assert sent == [{"status": c.firmware.diagnostics_status()}]


async def test_status_notification_per_connector_and_all(e2e_rig: Any) -> None:
    rig = await e2e_rig(connectors=2)
    frames = await wire_log(rig)
    rig.bench.ev(2).plug()
    await rig.wait_sent_status(2, "Preparing")
    status, sent = await trigger(rig, frames, "StatusNotification", connector=2)
    assert status == "Accepted" and [(p["connectorId"], p["status"]) for p in sent] == [(2, "Preparing")]
    status, sent = await trigger(rig, frames, "StatusNotification", connector=0)
    assert status == "Accepted" and [(p["connectorId"], p["status"]) for p in sent] == [(0, "Available")]
    # absent connectorId: the charge point and every connector
    status, sent = await trigger(rig, frames, "StatusNotification", expect=3)
    assert status == "Accepted"
    assert [(p["connectorId"], p["status"]) for p in sent] == [
        (0, "Available"),
        (1, "Available"),
        (2, "Preparing"),
    ]


async def test_meter_values_while_charging(e2e_rig: Any) -> None:
    rig = await e2e_rig(connectors=2, ocpp_keys={"MeterValueSampleInterval": 0})
    frames = await wire_log(rig)
    rig.bench.ev(1).plug()
    rig.tap("04A2B3C4D5")
    await rig.wait(lambda: (tx := rig.controller.connectors[1].tx) is not None and tx.transaction_id)
    tx_id = rig.controller.connectors[1].tx.transaction_id
    status, sent = await trigger(rig, frames, "MeterValues", connector=1)
    assert status == "Accepted" and len(sent) == 1
    mv = sent[0]
    assert mv["connectorId"] == 1 and mv["transactionId"] == tx_id
    values = mv["meterValue"][0]["sampledValue"]
    assert {v["context"] for v in values} == {"Trigger"}
    configured = rig.controller.keys.csl("MeterValuesSampledData")
    assert {v["measurand"] for v in values} <= set(configured)
    assert "Energy.Active.Import.Register" in {v["measurand"] for v in values}
    # absent connectorId: every connector; the idle one has no transactionId
    status, sent = await trigger(rig, frames, "MeterValues", expect=2)
    assert status == "Accepted"
    assert [(p["connectorId"], "transactionId" in p) for p in sent] == [(1, True), (2, False)]


@pytest.mark.parametrize(
    ("message", "connector", "expected"),
    [
        ("StatusNotification", 5, "Rejected"),  # no such connector
        ("MeterValues", 5, "Rejected"),
        ("StatusNotification", -1, "Rejected"),
        ("MeterValues", 0, "Rejected"),  # no main meter: only per-connector meters
    ],
)
async def test_refused_triggers_send_nothing(
    e2e_rig: Any, message: str, connector: int, expected: str
) -> None:
    rig = await e2e_rig()
    frames = await wire_log(rig)
    status, sent = await trigger(rig, frames, message, connector=connector)
    assert (status, sent) == (expected, [])


async def test_unknown_requested_message_is_a_schema_error(e2e_rig: Any) -> None:
    rig = await e2e_rig()
    answer = await rig.call("TriggerMessage", {"requestedMessage": "StartTransaction"})
    assert answer["__error__"] == "PropertyConstraintViolation"

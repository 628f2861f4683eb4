"""Remote Trigger profile handler (OCPP 1.6 §5.17 TriggerMessage).

Readings of §5.17:

* The answer goes first, the requested message after it (``@after``): "The Charge Point SHALL first send
  the TriggerMessage.conf response, before sending the requested message."
* connectorId matters for StatusNotification and MeterValues only. For the other messages it "should be
  ignored" and the message is still sent. For those two a connectorId this charge point does not have
  (or a negative one) is Rejected; absent means "all allowed values": StatusNotification for the charge
  point (connector 0) and every connector, MeterValues for every connector. MeterValues for connector 0
  (a main meter) is Rejected: this charge point has a meter per connector only.
* NotImplemented would be the answer for a message this charge point does not implement; every message the
  1.6 schema allows is implemented (anything else never reaches here: the schema check answers it with a
  CALLERROR).
* Triggered messages are current information, sent if connected and not queued. MeterValues carry context
  "Trigger" and the measurands of MeterValuesSampledData, with the transactionId of a running transaction.
* A triggered BootNotification updates the clock, the registration status and HeartbeatInterval; it does
  not restart the boot sequence.
"""

from __future__ import annotations

import logging
from typing import Any

from ocpp.routing import after, on
from ocpp.v16 import call_result

from chargepoint.metering import iso
from chargepoint.protocol.outbox import CallErrorReceived

log = logging.getLogger(__name__)

IMPLEMENTED = frozenset(
    {
        "BootNotification",
        "DiagnosticsStatusNotification",
        "FirmwareStatusNotification",
        "Heartbeat",
        "MeterValues",
        "StatusNotification",
    }
)
PER_CONNECTOR = frozenset({"MeterValues", "StatusNotification"})


class TriggerHandlers:
    controller: Any

    def _trigger_status(self, requested_message: str, connector_id: int | None) -> str:
        if requested_message not in IMPLEMENTED:
            return "NotImplemented"
        if requested_message in PER_CONNECTOR and connector_id is not None:
            if connector_id == 0:
                return "Accepted" if requested_message == "StatusNotification" else "Rejected"
            if connector_id not in self.controller.connectors:
                return "Rejected"
        return "Accepted"

    # -------------------------------------------------------------- TriggerMessage §5.17
    @on("TriggerMessage")
    def on_trigger_message(self, requested_message: str, connector_id: int | None = None, **_: Any) -> Any:
        status = self._trigger_status(requested_message, connector_id)
        log.info("TriggerMessage %s (connector %s): %s", requested_message, connector_id, status)
        return call_result.TriggerMessage(status=status)

    @after("TriggerMessage")
    async def after_trigger_message(
        self, requested_message: str, connector_id: int | None = None, **_: Any
    ) -> None:
        if self._trigger_status(requested_message, connector_id) != "Accepted":
            return
        c = self.controller
        if requested_message == "BootNotification":
            conf = await self._send_triggered("BootNotification", c.station_link.boot_payload())
            if conf is not None:
                c.station_link.triggered_boot(conf)
        elif requested_message == "Heartbeat":
            conf = await self._send_triggered("Heartbeat", {})
            if conf is not None:
                c.station_link.set_clock(conf.get("currentTime"))
        elif requested_message == "FirmwareStatusNotification":
            status = c.firmware.status()
            await self._send_triggered("FirmwareStatusNotification", {"status": status})
        elif requested_message == "DiagnosticsStatusNotification":
            status = c.firmware.diagnostics_status()
            await self._send_triggered("DiagnosticsStatusNotification", {"status": status})
        elif requested_message == "StatusNotification":
            targets = [0, *c.connectors] if connector_id is None else [connector_id]
            for cid in targets:
                if cid == 0:
                    status, code = c.availability.station_status()
                else:
                    rt = c.connectors[cid]
                    status, code = rt.state.status or "Available", rt.state.error_code
                payload = {
                    "connectorId": cid,
                    "status": status,
                    "errorCode": code,
                    "timestamp": iso(c.station_link.now()),
                }
                await self._send_triggered("StatusNotification", payload)
        elif requested_message == "MeterValues":
            targets = list(c.connectors) if connector_id is None else [connector_id]
            for cid in targets:
                await self._send_meter_values(c.connectors[cid])

    async def _send_meter_values(self, rt: Any) -> None:
        c = self.controller
        reading = await c.transactions.read_meter(rt)
        if reading is None or not rt.meter_ok:
            log.warning("triggered MeterValues for connector %d: no meter reading", rt.id)
            return
        values = c.transactions.measured_values(rt, reading, "MeterValuesSampledData", "Trigger")
        if not values:
            log.warning("triggered MeterValues for connector %d: no measurand configured", rt.id)
            return
        payload: dict[str, Any] = {
            "connectorId": rt.id,
            "meterValue": [{"timestamp": iso(c.station_link.now()), "sampledValue": values}],
        }
        if rt.tx is not None and rt.tx.transaction_id is not None:
            payload["transactionId"] = rt.tx.transaction_id
        await self._send_triggered("MeterValues", payload)

    async def _send_triggered(self, action: str, payload: dict[str, Any]) -> dict[str, Any] | None:
        link = self.controller.link
        if link is None:
            return None
        try:
            return await link.call(action, payload)
        except (TimeoutError, CallErrorReceived, ConnectionError) as exc:
            log.warning("triggered %s not delivered: %s", action, exc or type(exc).__name__)
            return None

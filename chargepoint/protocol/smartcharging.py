"""Smart Charging profile handlers (OCPP 1.6 §5.16 SetChargingProfile, §5.5 ClearChargingProfile,
§5.7 GetCompositeSchedule). Each calls the smart charging service (``chargepoint.services.smartcharging.SmartCharging``).

Malformed payloads (an unknown chargingRateUnit, a missing field) never reach these handlers: the session
answers them with a CALLERROR from the JSON schema (OCPP-J §4.2.3). What the schema cannot express
(period order, negative limits, stack levels, a TxProfile without transaction …) is answered Rejected.
"""

from __future__ import annotations

import logging
from typing import Any

from ocpp.routing import on
from ocpp.v16 import call_result

log = logging.getLogger(__name__)


class SmartChargingHandlers:
    controller: Any

    # -------------------------------------------------------------- SetChargingProfile §5.16
    @on("SetChargingProfile")
    def on_set_charging_profile(self, connector_id: int, cs_charging_profiles: dict[str, Any], **_: Any) -> Any:
        c = self.controller
        if connector_id != 0 and connector_id not in c.connectors:
            log.warning("SetChargingProfile for unknown connector %s: Rejected", connector_id)
            return call_result.SetChargingProfile(status="Rejected")
        return call_result.SetChargingProfile(status=c.smart.set_charging_profile(connector_id, cs_charging_profiles))

    # -------------------------------------------------------------- ClearChargingProfile §5.5
    @on("ClearChargingProfile")
    def on_clear_charging_profile(
        self,
        id: int | None = None,  # noqa: A002 - the OCPP field name
        connector_id: int | None = None,
        charging_profile_purpose: str | None = None,
        stack_level: int | None = None,
        **_: Any,
    ) -> Any:
        status = self.controller.smart.clear_charging_profile(
            id=id, connector_id=connector_id, purpose=charging_profile_purpose, stack_level=stack_level
        )
        return call_result.ClearChargingProfile(status=status)

    # -------------------------------------------------------------- GetCompositeSchedule §5.7
    @on("GetCompositeSchedule")
    def on_get_composite_schedule(
        self, connector_id: int, duration: int, charging_rate_unit: str | None = None, **_: Any
    ) -> Any:
        """Connector 0 = the charge point total. Rejected for an unknown connector or a unit the charge
        point does not support (ChargingScheduleAllowedChargingRateUnit)."""
        if duration < 0:
            return call_result.GetCompositeSchedule(status="Rejected")
        schedule = self.controller.smart.composite_schedule(connector_id, duration, charging_rate_unit)
        if schedule is None:
            return call_result.GetCompositeSchedule(status="Rejected")
        conf = schedule.conf_payload(connector_id)
        return call_result.GetCompositeSchedule(
            status="Accepted",
            connector_id=connector_id,
            schedule_start=conf["scheduleStart"],
            charging_schedule=conf["chargingSchedule"],
        )

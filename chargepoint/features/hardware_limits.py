"""Limits the hardware itself sets: the plugged cable's rating (PP) and the connector's temperature.

Two more limit claims next to the fuse, the balancer and the profiles (``limit_claims``; the lowest wins
in ``ControllerCore.decide_limit``), so ``status`` names them as the source when they decide:

* **cable** (IEC 61851-1 Annex B, IEC 62196-2): a socket (``[connectors.pp]`` with a driver) claims
  the rating its PP input reads; until a valid rating is read — no cable, an invalid coding, an
  unreadable input — it claims ``None`` (nothing offered). The state machine enforces the same on its
  own (``ConnectorState.cable_required``/``cable_a``, ``safety.cable_known``), so the claim is the
  visible reason, not the only guard. A tethered cable (``driver = "none"``) claims its configured
  ``rating_a``.
* **temperature** (chargepoint/thermal.py): the NTC's and the meter's temperatures; derating claims
  ``derate_current_a``; the stop raises OVERTEMP (OCPP HighTemperature) and claims ``None``.

An OVERTEMP can also come from a driver (RAPI board state 0A, ``fault C overtemp`` in ``simulate``):
the fault clears only when neither source holds it.

A mixin placed first among the features (before SmartChargingFeature, whose ``limit_claims`` does not
call ``super()``), see chargepoint/features/__init__.py.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from chargepoint import connector as cm
from chargepoint.thermal import ThermalGuard, ThermalLevel, ThermalLimits
from hal.interfaces import (
    CableChanged,
    CableState,
    FaultCleared,
    FaultKind,
    FaultRaised,
    HalEvent,
    MeterReading,
    TemperatureReading,
)

if TYPE_CHECKING:
    from chargepoint.controller import ConnectorRuntime, ControllerCore

    _Base = ControllerCore
else:
    _Base = object

log = logging.getLogger(__name__)

METER_SENSOR = "meter"


class HardwareLimitsFeature(_Base):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._cable: dict[int, CableChanged] = {}
        self._thermal: dict[int, ThermalGuard] = {}
        self._hal_overtemp: set[int] = set()  # connectors whose driver reports OVERTEMP itself

    # ------------------------------------------------------------------ helpers
    def _connector_config(self, cid: int) -> Any:
        return next((c for c in self.config.connectors if c.id == cid), None)

    def thermal_guard(self, cid: int) -> ThermalGuard:
        guard = self._thermal.get(cid)
        if guard is None:
            cc = self._connector_config(cid)
            t = cc.temperature if cc is not None else None
            limits = ThermalLimits() if t is None else ThermalLimits(
                derate_c=t.derate_c, stop_c=t.stop_c, hysteresis_c=t.hysteresis_c,
                derate_current_a=t.derate_current_a)
            guard = self._thermal[cid] = ThermalGuard(limits)
        return guard

    # ------------------------------------------------------------------ events in
    def _on_hal_event(self, event: HalEvent) -> None:
        if isinstance(event, CableChanged):
            self._on_cable(event)
            return
        if isinstance(event, TemperatureReading):
            if event.connector_id in self.connectors:
                self._on_temperature(event.connector_id, event.sensor, event.celsius)
            return
        if isinstance(event, FaultRaised) and event.kind == FaultKind.TEMP_SENSOR:
            guard = self.thermal_guard(event.connector_id)
            for sensor in [s for s in guard.readings if s != METER_SENSOR]:
                self._thermal_changed(event.connector_id, guard.level, guard.forget(sensor))
        if isinstance(event, FaultRaised) and event.kind == FaultKind.OVERTEMP:
            self._hal_overtemp.add(event.connector_id)
        if isinstance(event, FaultCleared) and event.kind == FaultKind.OVERTEMP:
            self._hal_overtemp.discard(event.connector_id)
            guard = self._thermal.get(event.connector_id)
            if guard is not None and guard.level == ThermalLevel.STOPPED:
                log.warning("connector %d: over-temperature stays: %s", event.connector_id, guard.describe())
                return
        super()._on_hal_event(event)

    def _on_cable(self, event: CableChanged) -> None:
        rt = self.connectors.get(event.connector_id)
        if rt is None:
            return
        cc = self._connector_config(rt.id)
        if cc is None or not cc.cable.socket:
            return
        self._cable[rt.id] = event
        extra = {"CONNECTOR_ID": rt.id}
        if event.state == CableState.INVALID:
            log.error("connector %d: invalid cable: %s", rt.id, event.detail, extra=extra)
        else:
            log.info("connector %d: cable %s %s", rt.id, event.state.value, event.detail, extra=extra)
        self._emit_timeline("cable", connector=rt.id, state=event.state.value, amps=event.amps,
                            detail=event.detail)
        self.post(rt.id, cm.Cable(event.state, event.amps, event.detail))
        self._recompute_all_limits()

    def _on_temperature(self, cid: int, sensor: str, celsius: float) -> None:
        guard = self.thermal_guard(cid)
        before = guard.level
        self._thermal_changed(cid, before, guard.update(sensor, celsius))

    def _thermal_changed(self, cid: int, before: ThermalLevel, after: ThermalLevel) -> None:
        if after == before:
            return
        guard = self._thermal[cid]
        extra = {"CONNECTOR_ID": cid}
        log.warning("connector %d: %s", cid, guard.describe(), extra=extra)
        self._emit_timeline("temperature", connector=cid, level=after.value, detail=guard.describe())
        if after == ThermalLevel.STOPPED:
            self.post(cid, cm.Fault(FaultKind.OVERTEMP, False, guard.describe()[:50]))
        elif before == ThermalLevel.STOPPED and cid not in self._hal_overtemp:
            self.post(cid, cm.FaultClear(FaultKind.OVERTEMP))
        self._recompute_all_limits()

    async def _read_meter(self, rt: ConnectorRuntime, timeout: float = 3.0) -> MeterReading | None:
        reading = await super()._read_meter(rt, timeout)
        if reading is not None and rt.meter_ok and reading.temperature_c is not None:
            self._on_temperature(rt.id, METER_SENSOR, reading.temperature_c)
        return reading

    # ------------------------------------------------------------------ claims
    def cable_claim(self, rt: ConnectorRuntime) -> tuple[float | None, str] | None:
        cc = self._connector_config(rt.id)
        if cc is None:
            return None
        if not cc.cable.socket:
            rating = cc.cable.tethered_rating_a
            return None if rating is None else (rating, "tethered cable rating (configuration)")
        seen = self._cable.get(rt.id)
        if seen is not None and seen.state == CableState.RATED and seen.amps:
            return seen.amps, f"cable rating {seen.amps:g} A (PP)"
        if seen is None or seen.state == CableState.ABSENT:
            # An empty socket does not pause the connector's limit (it is what the next cable is offered,
            # up to its rating); the state machine offers nothing without a rating. A car on the pilot
            # without a cable reading is shown as the reason.
            if rt.state.pilot.vehicle_connected:
                return None, "no cable rating read (PP)"
            return None
        if seen.state == CableState.INVALID:
            return None, f"invalid cable ({seen.detail})"
        return None, f"cable rating unknown ({seen.detail})"

    def limit_claims(self, rt: ConnectorRuntime) -> list[tuple[float | None, str]]:
        claims = super().limit_claims(rt)
        cable = self.cable_claim(rt)
        if cable is not None:
            claims.append(cable)
        guard = self._thermal.get(rt.id)
        if guard is not None:
            thermal = guard.claim(rt.max_current_a, rt.state.min_current_a)
            if thermal is not None:
                claims.append(thermal)
        return claims

    # ------------------------------------------------------------------ snapshot
    def snapshot(self) -> dict[str, Any]:
        snap = super().snapshot()
        for c in snap["connectors"]:
            cc = self._connector_config(c["id"])
            seen = self._cable.get(c["id"])
            if cc is not None and cc.cable.socket:
                c["cable"] = {"socket": True, "state": seen.state.value if seen else "not read",
                              "detail": seen.detail if seen else ""}
                c["cable_a"] = seen.amps if seen and seen.state == CableState.RATED else None
            else:
                rating = cc.cable.tethered_rating_a if cc is not None else None
                c["cable"] = {"socket": False, "state": "tethered", "detail": "tethered cable"}
                c["cable_a"] = rating if rating is not None else (cc.max_current_a if cc else None)
            guard = self._thermal.get(c["id"])
            c["temperature"] = {
                "level": guard.level.value if guard else ThermalLevel.NORMAL.value,
                "sensors": dict(guard.readings) if guard else {},
            }
        return snap

"""Limits the hardware itself sets: the plugged cable's rating (PP) and the connector's temperature.

Two claim providers on the limit arbiter (chargepoint/services/limits.py), so ``status`` names them as the
source when they decide:

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
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from chargepoint import connector as cm
from chargepoint.config import ConnectorConfig
from chargepoint.services.station import Claim, Connectors, Emit, Post
from chargepoint.thermal import ThermalGuard, ThermalLevel, ThermalLimits
from hal.interfaces import (
    CableChanged,
    CableState,
    FaultCleared,
    FaultKind,
    FaultRaised,
    HalEvent,
    TemperatureReading,
)

log = logging.getLogger(__name__)

METER_SENSOR = "meter"


class HardwareLimits:
    """Cable rating and temperature of each connector, as limit claims and OVERTEMP faults."""

    def __init__(
        self,
        connectors: Connectors,
        configs: list[ConnectorConfig],
        *,
        post: Post,
        emit: Emit,
        limits_changed: Callable[[], None],
    ) -> None:
        self._connectors = connectors
        self._configs = {c.id: c for c in configs}
        self._post = post
        self._emit = emit
        self._limits_changed = limits_changed
        self._cable: dict[int, CableChanged] = {}
        self._thermal: dict[int, ThermalGuard] = {}
        self._hal_overtemp: set[int] = set()  # connectors whose driver reports OVERTEMP itself

    def thermal_guard(self, cid: int) -> ThermalGuard:
        guard = self._thermal.get(cid)
        if guard is None:
            cc = self._configs.get(cid)
            t = cc.temperature if cc is not None else None
            limits = ThermalLimits() if t is None else ThermalLimits(
                derate_c=t.derate_c, stop_c=t.stop_c, hysteresis_c=t.hysteresis_c,
                derate_current_a=t.derate_current_a)
            guard = self._thermal[cid] = ThermalGuard(limits)
        return guard

    # ------------------------------------------------------------------ events in
    def on_hal_event(self, event: HalEvent) -> bool:
        """Take the hardware events that are this service's; True if the dispatcher must not see it."""
        if isinstance(event, CableChanged):
            self._on_cable(event)
            return True
        if isinstance(event, TemperatureReading):
            if event.connector_id in self._connectors:
                self.temperature(event.connector_id, event.sensor, event.celsius)
            return True
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
                return True
        return False

    def _on_cable(self, event: CableChanged) -> None:
        rt = self._connectors.get(event.connector_id)
        if rt is None:
            return
        cc = self._configs.get(rt.id)
        if cc is None or not cc.cable.socket:
            return
        self._cable[rt.id] = event
        extra = {"CONNECTOR_ID": rt.id}
        if event.state == CableState.INVALID:
            log.error("connector %d: invalid cable: %s", rt.id, event.detail, extra=extra)
        else:
            log.info("connector %d: cable %s %s", rt.id, event.state.value, event.detail, extra=extra)
        self._emit("cable", connector=rt.id, state=event.state.value, amps=event.amps, detail=event.detail)
        self._post(rt.id, cm.Cable(event.state, event.amps, event.detail))
        self._limits_changed()

    def temperature(self, cid: int, sensor: str, celsius: float) -> None:
        """A temperature reading of one of the connector's sensors (NTC, or the meter's own)."""
        guard = self.thermal_guard(cid)
        before = guard.level
        self._thermal_changed(cid, before, guard.update(sensor, celsius))

    def meter_temperature(self, cid: int, celsius: float) -> None:
        self.temperature(cid, METER_SENSOR, celsius)

    def _thermal_changed(self, cid: int, before: ThermalLevel, after: ThermalLevel) -> None:
        if after == before:
            return
        guard = self._thermal[cid]
        extra = {"CONNECTOR_ID": cid}
        log.warning("connector %d: %s", cid, guard.describe(), extra=extra)
        self._emit("temperature", connector=cid, level=after.value, detail=guard.describe())
        if after == ThermalLevel.STOPPED:
            self._post(cid, cm.Fault(FaultKind.OVERTEMP, False, guard.describe()[:50]))
        elif before == ThermalLevel.STOPPED and cid not in self._hal_overtemp:
            self._post(cid, cm.FaultClear(FaultKind.OVERTEMP))
        self._limits_changed()

    # ------------------------------------------------------------------ claims
    def cable_claims(self, cid: int) -> list[Claim]:
        rt = self._connectors[cid]
        cc = self._configs.get(cid)
        if cc is None:
            return []
        if not cc.cable.socket:
            rating = cc.cable.tethered_rating_a
            return [] if rating is None else [(rating, "tethered cable rating (configuration)")]
        seen = self._cable.get(cid)
        if seen is not None and seen.state == CableState.RATED and seen.amps:
            return [(seen.amps, f"cable rating {seen.amps:g} A (PP)")]
        if seen is None or seen.state == CableState.ABSENT:
            # An empty socket does not pause the connector's limit (it is what the next cable is offered,
            # up to its rating); the state machine offers nothing without a rating. A car on the pilot
            # without a cable reading is shown as the reason.
            if rt.state.pilot.vehicle_connected:
                return [(None, "no cable rating read (PP)")]
            return []
        if seen.state == CableState.INVALID:
            return [(None, f"invalid cable ({seen.detail})")]
        return [(None, f"cable rating unknown ({seen.detail})")]

    def temperature_claims(self, cid: int) -> list[Claim]:
        guard = self._thermal.get(cid)
        if guard is None:
            return []
        rt = self._connectors[cid]
        thermal = guard.claim(rt.max_current_a, rt.state.min_current_a)
        return [] if thermal is None else [thermal]

    # ------------------------------------------------------------------ snapshot
    def annotate(self, c: dict[str, Any]) -> None:
        """Add ``cable``, ``cable_a`` and ``temperature`` to one connector's snapshot."""
        cc = self._configs.get(c["id"])
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

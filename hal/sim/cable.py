"""Simulated proximity pilot (PP) and temperature sensor of a connector.

The PP follows the simulated car's cable (``SimulatedEV.plugged`` and ``cable_a``): unplugged = open,
``cable_a`` > 0 = a cable coded for that current, 0 = a cable without a valid coding (invalid). The
temperature sensor reports what the bench sets (``set(celsius)``, or ``fail(True)`` for a broken NTC).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hal.interfaces import (
    CableChanged,
    CableState,
    Emit,
    FaultCleared,
    FaultKind,
    FaultRaised,
    TemperatureReading,
)
from hal.registry import BuildContext
from hal.sim.board import _ev, _noop
from hal.sim.ev import SimulatedEV


class SimCableInput:
    def __init__(self, connector_id: int, ev: SimulatedEV) -> None:
        self.connector_id = connector_id
        self.ev = ev
        self._emit: Emit = _noop
        self._last: tuple[CableState, float | None] | None = None

    def _reading(self) -> tuple[CableState, float | None]:
        if not self.ev.plugged:
            return CableState.ABSENT, None
        if self.ev.cable_a and self.ev.cable_a > 0:
            return CableState.RATED, float(self.ev.cable_a)
        return CableState.INVALID, None

    @property
    def state(self) -> CableState | None:
        return self._last[0] if self._last else None

    @property
    def amps(self) -> float | None:
        return self._last[1] if self._last else None

    async def start(self, emit: Emit) -> None:
        self._emit = emit
        self.ev.subscribe(self._on_ev)
        self._on_ev()

    async def stop(self) -> None:
        self._emit = _noop

    def _on_ev(self) -> None:
        reading = self._reading()
        if reading == self._last:
            return
        self._last = reading
        state, amps = reading
        if state == CableState.RATED:
            detail = f"simulated {amps:g} A cable"
        elif state == CableState.INVALID:
            detail = "simulated cable without a valid coding"
        else:
            detail = "PP open: no cable"
        self._emit(CableChanged(self.connector_id, state, amps, detail))


class SimTemperature:
    def __init__(self, connector_id: int, sensor: str = "socket", celsius: float = 25.0) -> None:
        self.connector_id = connector_id
        self.sensor = sensor
        self.celsius: float | None = celsius
        self.failed = False
        self._emit: Emit = _noop

    async def start(self, emit: Emit) -> None:
        self._emit = emit
        if self.celsius is not None:
            emit(TemperatureReading(self.connector_id, self.sensor, self.celsius))

    async def stop(self) -> None:
        self._emit = _noop

    def set(self, celsius: float) -> None:
        self.celsius = celsius
        if not self.failed:
            self._emit(TemperatureReading(self.connector_id, self.sensor, celsius))

    def fail(self, failed: bool) -> None:
        if failed == self.failed:
            return
        self.failed = failed
        if failed:
            self._emit(FaultRaised(self.connector_id, FaultKind.TEMP_SENSOR, f"{self.sensor} NTC open (simulated)"))
        else:
            self._emit(FaultCleared(self.connector_id, FaultKind.TEMP_SENSOR))
            if self.celsius is not None:
                self._emit(TemperatureReading(self.connector_id, self.sensor, self.celsius))


def build_cable_input(options: Mapping[str, Any], key: str, connector_id: int, ctx: BuildContext) -> SimCableInput:
    dev = SimCableInput(connector_id, _ev(ctx, connector_id, options, key))
    ctx.get_or_create("sim_cables", dict)[connector_id] = dev
    return dev


def build_temperature(
    options: Mapping[str, Any], key: str, connector_id: int, ctx: BuildContext
) -> SimTemperature:
    dev = SimTemperature(connector_id, str(options.get("name", "socket")))
    ctx.get_or_create("sim_temperatures", dict)[connector_id] = dev
    return dev

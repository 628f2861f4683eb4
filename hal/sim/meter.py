"""A simulated energy meter that integrates the power the simulated car draws."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from hal.interfaces import Emit, HardwareConfigError, MeterError, MeterReading
from hal.registry import BuildContext
from hal.sim.board import _ev, bench
from hal.sim.ev import SimulatedEV


class SimMeter:
    """Energy is integrated exactly between changes of the car's draw (piecewise-constant power)."""

    def __init__(
        self,
        ev: SimulatedEV,
        *,
        voltage_v: float = 230.0,
        phases: int = 3,
        initial_wh: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        persist_path: str | Path | None = None,
    ) -> None:
        """``persist_path``: keep the register in that file (read at start, rewritten on every reading),
        so a simulated charger killed and restarted sees its meter continue like a real one would."""
        self.ev = ev
        self.voltage_v = voltage_v
        self.phases = phases
        self.failing = False
        self._clock = clock
        self._persist = Path(persist_path) if persist_path else None
        self._energy_wh = initial_wh
        if self._persist is not None and self._persist.exists():
            try:
                self._energy_wh = float(self._persist.read_text().strip() or initial_wh)
            except (OSError, ValueError):
                pass
        self._power_w = 0.0
        self.supply_phases = 3  # what a phase relay (hal/sim/energy.py) leaves connected
        self._since = clock()
        ev.subscribe(self._on_change)

    async def start(self, emit: Emit) -> None:
        pass

    async def stop(self) -> None:
        pass

    def _phases_drawing(self) -> int:
        return min(self.phases, self.ev.phases, self.supply_phases)

    def set_supply_phases(self, phases: int) -> None:
        """The simulated phase relay switched (the car's draw is re-integrated from now)."""
        self._integrate()
        self.supply_phases = phases
        self._on_change()

    def _integrate(self) -> None:
        now = self._clock()
        self._energy_wh += self._power_w * (now - self._since) / 3600.0
        self._since = now
        if self._persist is not None:
            tmp = self._persist.with_name(self._persist.name + ".tmp")
            try:
                tmp.write_text(repr(self._energy_wh))
                os.replace(tmp, self._persist)
            except OSError:
                pass

    def _on_change(self) -> None:
        self._integrate()
        self._power_w = self.ev.drawn_a * self.voltage_v * self._phases_drawing()

    @property
    def energy_wh(self) -> float:
        self._integrate()
        return self._energy_wh

    def snapshot(self) -> MeterReading:
        self._integrate()
        n = self._phases_drawing()
        amps = self.ev.drawn_a
        current = tuple(amps if i < n else 0.0 for i in range(3))
        voltage = tuple(self.voltage_v if i < self.phases else None for i in range(3))
        return MeterReading(
            energy_wh=self._energy_wh,
            power_w=self._power_w,
            current_a=current,  # type: ignore[arg-type]
            voltage_v=voltage,  # type: ignore[arg-type]
            frequency_hz=50.0,
        )

    async def read(self) -> MeterReading:
        if self.failing:
            raise MeterError("simulated meter does not answer")
        return self.snapshot()


def build_meter(options: Mapping[str, Any], key: str, connector_id: int, ctx: BuildContext) -> Any:
    if connector_id == 0:  # the grid (house) meter
        try:
            house_a = float(options.get("house_a", 0.0))
        except (TypeError, ValueError):
            raise HardwareConfigError(f"{key}.house_a", options.get("house_a"), "a number of amperes") from None
        grid = SimGridMeter(bench(ctx).meters, house_a=house_a)
        bench(ctx).grid = grid
        return grid
    kwargs: dict[str, Any] = {}
    for name, kind in (("voltage_v", float), ("phases", int), ("initial_wh", float)):
        if name in options:
            try:
                kwargs[name] = kind(options[name])
            except (TypeError, ValueError):
                raise HardwareConfigError(f"{key}.{name}", options[name], f"a {kind.__name__}") from None
    if kwargs.get("phases", 3) not in (1, 3):
        raise HardwareConfigError(f"{key}.phases", kwargs["phases"], "1 or 3")
    if options.get("persist_path"):
        kwargs["persist_path"] = str(options["persist_path"])
    meter = SimMeter(_ev(ctx, connector_id, options, key), **kwargs)
    bench(ctx).meters[connector_id] = meter
    return meter


class SimGridMeter:
    """The house connection: a settable house load plus whatever the simulated connectors draw, less what
    the PV produces: ``pv_w`` (``simulate``: ``sun W``) or a scripted ``pv_profile(t)`` (hal/sim/sun.py's
    SunProfile.pv_w with passing clouds; ``t`` from ``profile_clock``). Export reads as negative power and
    negative phase currents (a 3-phase inverter feeds the three phases evenly)."""

    def __init__(self, bench_meters: dict[int, Any], *, house_a: float = 0.0, voltage_v: float = 230.0) -> None:
        self._meters = bench_meters
        self.house_a = house_a
        self.voltage_v = voltage_v
        self.failing = False
        self.pv_w = 0.0
        self.pv_profile: Callable[[float], float] | None = None
        self.profile_clock: Callable[[], float] = time.monotonic

    def pv_now_w(self) -> float:
        return self.pv_profile(self.profile_clock()) if self.pv_profile is not None else self.pv_w

    async def start(self, emit: Emit) -> None:
        pass

    async def stop(self) -> None:
        pass

    phases = 3

    async def read(self) -> MeterReading:
        if self.failing:
            raise MeterError("simulated grid meter does not answer")
        per_phase = [self.house_a - self.pv_now_w() / (3 * self.voltage_v)] * 3
        for meter in self._meters.values():
            snap = meter.snapshot()
            for i, amps in enumerate(snap.current_a):
                per_phase[i] += amps or 0.0
        power = sum(per_phase) * self.voltage_v
        return MeterReading(energy_wh=0.0, power_w=power, current_a=tuple(per_phase),  # type: ignore[arg-type]
                            voltage_v=(self.voltage_v,) * 3)  # type: ignore[arg-type]

"""Simulated energy-management hardware: the phase relay (it changes the phases the simulated meter sees)
and the grid operator's control input (``simulate``: ``dim on|off``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from hal.energy_io import SAFE_PHASES
from hal.interfaces import Emit, HardwareConfigError
from hal.registry import BuildContext
from hal.sim.board import bench


class SimPhaseSwitch:
    """``stuck = True`` makes the relay ignore commands (a welded or unwired relay: the meter still shows the
    old phase count, which the sequence must find); ``fail = True`` makes ``set_phases`` raise."""

    def __init__(self, connector_id: int, meters: dict[int, Any]) -> None:
        self.connector_id = connector_id
        self._meters = meters
        self._phases = SAFE_PHASES
        self.stuck = False
        self.fail = False
        self.switches = 0
        self.switched_under_load = 0  # set_phases while the simulated car drew current (must stay 0)

    @property
    def phases(self) -> int:
        return self._phases

    def _apply(self, phases: int) -> None:
        meter = self._meters.get(self.connector_id)
        if meter is not None:
            if meter.ev.drawn_a > 0.0:
                self.switched_under_load += 1
            meter.set_supply_phases(phases)

    async def start(self, emit: Emit) -> None:
        self._phases = SAFE_PHASES
        self._apply(SAFE_PHASES)

    async def set_phases(self, phases: int) -> None:
        if phases not in (1, 3):
            raise ValueError("phases: 1 or 3")
        if self.fail:
            raise OSError("simulated relay driver failure")
        self._phases = phases
        self.switches += 1
        if not self.stuck:
            self._apply(phases)

    async def stop(self) -> None:
        self._phases = SAFE_PHASES


class SimControlInput:
    def __init__(self) -> None:
        self._active = False
        self._callbacks: list[Callable[[bool], None]] = []

    @property
    def active(self) -> bool:
        return self._active

    def on_change(self, callback: Callable[[bool], None]) -> None:
        self._callbacks.append(callback)

    def set(self, active: bool) -> None:
        if active != self._active:
            self._active = active
            for cb in self._callbacks:
                cb(active)

    async def start(self, emit: Emit) -> None:
        pass

    async def stop(self) -> None:
        pass


def build_phase_switch(options: Mapping[str, Any], key: str, connector_id: int, ctx: BuildContext) -> SimPhaseSwitch:
    for name in options:
        raise HardwareConfigError(f"{key}.{name}", options[name], "unknown option (the sim driver has none)")
    dev = SimPhaseSwitch(connector_id, bench(ctx).meters)
    ctx.get_or_create("sim_phase_switches", dict)[connector_id] = dev
    return dev


def build_control_input(options: Mapping[str, Any], key: str, connector_id: int, ctx: BuildContext) -> SimControlInput:
    for name in options:
        raise HardwareConfigError(f"{key}.{name}", options[name], "unknown option (the sim driver has none)")
    dev = SimControlInput()
    ctx.shared["sim_dimming_input"] = dev
    return dev


def energy_command(shared: dict[str, Any], cmd: str, args: list[str]) -> dict[str, Any]:
    """``simulate``'s energy commands (the simulated *hardware*): ``dim on|off`` (the grid operator's contact),
    ``sun W`` (the PV power the simulated grid meter sees; export = PV − house − cars), ``phases C 1|3``
    (the simulated car's on-board charger: a 1-phase or a 3-phase car)."""
    sim = shared.get("sim_bench")
    if cmd == "dim" and len(args) == 1 and args[0].lower() in ("on", "off"):
        dev = shared.get("sim_dimming_input")
        if dev is None:
            raise ValueError("no simulated dimming input: configure [energy.dimming]")
        dev.set(args[0].lower() == "on")
        return {"ok": True}
    if cmd == "sun" and len(args) == 1:
        if sim is None or sim.grid is None:
            raise ValueError("no simulated grid meter: configure [station.grid]")
        try:
            watts = float(args[0])
        except ValueError:
            raise ValueError(f"sun: the PV power in W, not {args[0]!r}") from None
        if not 0 <= watts <= 100_000:
            raise ValueError("sun: 0 to 100000 W")
        sim.grid.pv_profile = None
        sim.grid.pv_w = watts
        return {"ok": True}
    if cmd == "phases" and len(args) == 2 and args[1] in ("1", "3"):
        try:
            ev = sim.ev(int(args[0])) if sim is not None else None
        except (KeyError, ValueError):
            ev = None
        if ev is None:
            raise ValueError(f"no simulated connector {args[0]!r}")
        ev.phases = int(args[1])
        ev._notify()
        return {"ok": True}
    raise ValueError(f"usage: dim on|off | sun W | phases C 1|3 (not {' '.join([cmd, *args])!r})")

"""Simulated pilot board, contactor, lock, residual-current monitor and indicator.

All devices of one connector share a ``SimulatedEV`` (through the build context),
so what the pilot offers is what the car sees, and the contactor's position
decides whether the car can draw. Faults are injected through ``SimBench``, the
operator's bench that ``chargepoint simulate`` drives.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from hal.interfaces import (
    CpState,
    Emit,
    FaultCleared,
    FaultKind,
    FaultRaised,
    HardwareConfigError,
    IndicatorPattern,
    PilotChanged,
)
from hal.registry import BuildContext
from hal.sim.ev import SimulatedEV

log = logging.getLogger(__name__)

LATCHED_KINDS = {FaultKind.RCD, FaultKind.WELD}


def _noop(_event: object) -> None:
    pass


class SimBench:
    """The simulated station: the cars and the fault switches, per connector."""

    def __init__(self) -> None:
        self.evs: dict[int, SimulatedEV] = {}
        self.emits: dict[int, Emit] = {}
        self.contactors: dict[int, SimContactor] = {}
        self.locks: dict[int, SimLock] = {}
        self.rcms: dict[int, SimRcm] = {}
        self.meters: dict[int, Any] = {}
        self.readers: list[Any] = []
        self.grid: Any = None  # the simulated house connection, when configured

    def ev(self, connector_id: int) -> SimulatedEV:
        try:
            return self.evs[connector_id]
        except KeyError:
            raise KeyError(f"no simulated connector {connector_id}") from None

    def inject(self, connector_id: int, kind: FaultKind) -> None:
        """Make the hardware misbehave the way ``kind`` describes."""
        if kind == FaultKind.METER:
            self.meters[connector_id].failing = True
            return
        if kind == FaultKind.WELD:
            self.contactors[connector_id].welded = True
        if kind == FaultKind.RCD and connector_id in self.rcms:
            self.rcms[connector_id].tripped = True
        if kind == FaultKind.LOCK and connector_id in self.locks:
            self.locks[connector_id].jammed = True  # the lock cannot move (and says so)
        if kind == FaultKind.DIODE:
            self.ev(connector_id).diode_ok = False
        if kind == FaultKind.CP_SHORT:
            self.ev(connector_id).cp_shorted = True
            self.ev(connector_id)._update()
            return
        self.emits.get(connector_id, _noop)(
            FaultRaised(connector_id, kind, info="simulated", latched=kind in LATCHED_KINDS)
        )

    def clear(self, connector_id: int, kind: FaultKind) -> None:
        if kind == FaultKind.METER:
            self.meters[connector_id].failing = False
            return
        if kind == FaultKind.WELD:
            self.contactors[connector_id].welded = False
        if kind == FaultKind.RCD and connector_id in self.rcms:
            self.rcms[connector_id].tripped = False
        if kind == FaultKind.LOCK and connector_id in self.locks:
            self.locks[connector_id].jammed = False
        if kind == FaultKind.DIODE:
            self.ev(connector_id).diode_ok = True
        if kind == FaultKind.CP_SHORT:
            self.ev(connector_id).cp_shorted = False
            self.ev(connector_id)._update()
            return
        self.emits.get(connector_id, _noop)(FaultCleared(connector_id, kind))


def bench(ctx: BuildContext) -> SimBench:
    return ctx.get_or_create("sim_bench", SimBench)


def _ev(ctx: BuildContext, connector_id: int, options: Mapping[str, Any], key: str) -> SimulatedEV:
    sim = bench(ctx)
    if connector_id not in sim.evs:
        kwargs: dict[str, Any] = {}
        for name, kind in (("ev_max_current_a", float), ("ev_phases", int), ("ev_reaction_s", float)):
            if name in options:
                try:
                    kwargs[name[3:]] = kind(options[name])
                except (TypeError, ValueError):
                    raise HardwareConfigError(f"{key}.{name}", options[name], f"a {kind.__name__}") from None
        sim.evs[connector_id] = SimulatedEV(**kwargs)
    return sim.evs[connector_id]


class SimPilot:
    def __init__(self, connector_id: int, ev: SimulatedEV, sim: SimBench) -> None:
        self.connector_id = connector_id
        self.ev = ev
        self._sim = sim
        self._emit: Emit = _noop
        self._last = ev.cp_state
        self._offered: float | None = None
        self.ev.set_offer(None, unavailable=True)  # safe default: state F until the controller decides
        self._last = ev.cp_state
        self.history: list[tuple[str, float | None]] = []  # (command, amps) for tests and benchmarks

    async def start(self, emit: Emit) -> None:
        self._emit = emit
        self._sim.emits[self.connector_id] = emit
        self.ev.subscribe(self._on_ev)
        emit(PilotChanged(self.connector_id, self.ev.cp_state))

    async def stop(self) -> None:
        self._emit = _noop
        self.ev.set_offer(None, unavailable=True)

    def _on_ev(self) -> None:
        state = self.ev.cp_state
        if state != self._last:
            self._last = state
            self._emit(PilotChanged(self.connector_id, state))
            if state in (CpState.C, CpState.D) and not self.ev.diode_ok:
                self._emit(FaultRaised(self.connector_id, FaultKind.DIODE, "diode check failed"))

    @property
    def state(self) -> CpState:
        return self.ev.cp_state

    @property
    def offered_amps(self) -> float | None:
        return self._offered

    async def offer(self, amps: float | None) -> None:
        self._offered = amps
        self.history.append(("offer", amps))
        self.ev.set_offer(amps)

    async def set_unavailable(self) -> None:
        self._offered = None
        self.history.append(("F", None))
        self.ev.set_offer(None, unavailable=True)


class SimContactor:
    def __init__(self, connector_id: int, ev: SimulatedEV, sim: SimBench) -> None:
        self.connector_id = connector_id
        self.ev = ev
        self._sim = sim
        self._closed = False
        self.welded = False
        self.switch_count = 0
        self._emit: Emit = _noop

    async def start(self, emit: Emit) -> None:
        self._emit = emit

    async def stop(self) -> None:
        await self.open()

    @property
    def is_closed(self) -> bool:
        return self._closed

    async def close(self) -> None:
        if self.welded:
            # the mirror contact reads closed although we never closed: refuse
            self._emit(
                FaultRaised(self.connector_id, FaultKind.WELD, "mirror contact closed before closing", True)
            )
            return
        if not self._closed:
            self.switch_count += 1
        self._closed = True
        self.ev.set_contactor(True)

    async def open(self) -> None:
        if self._closed:
            self.switch_count += 1
        self._closed = False
        if self.welded:
            self._emit(FaultRaised(self.connector_id, FaultKind.WELD, "mirror contact still closed", True))
            return  # the contacts stay together: the car can still draw
        self.ev.set_contactor(False)


class SimLock:
    """A cable lock; ``jammed`` (``fault C lock``) makes it refuse to move, as a blocked actuator does."""

    def __init__(self) -> None:
        self._locked = False
        self.jammed = False

    async def start(self, emit: Emit) -> None:
        pass

    async def stop(self) -> None:
        pass

    @property
    def is_locked(self) -> bool:
        return self._locked

    async def lock(self) -> bool:
        if self.jammed:
            return False
        self._locked = True
        return True

    async def unlock(self) -> bool:
        if self.jammed:
            return False
        self._locked = False
        return True


class SimRcm:
    def __init__(self) -> None:
        self.self_test_ok = True
        self.tripped = False  # the module's fault output, as GpioRcm.tripped reads it

    async def start(self, emit: Emit) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def self_test(self) -> bool:
        return self.self_test_ok


class SimIndicator:
    def __init__(self) -> None:
        self.pattern = IndicatorPattern.OFF
        self.history: list[IndicatorPattern] = []

    async def start(self, emit: Emit) -> None:
        pass

    async def stop(self) -> None:
        self.show(IndicatorPattern.OFF)

    def show(self, pattern: IndicatorPattern) -> None:
        if pattern != self.pattern:
            self.history.append(pattern)
        self.pattern = pattern


def build_pilot(options: Mapping[str, Any], key: str, connector_id: int, ctx: BuildContext) -> SimPilot:
    return SimPilot(connector_id, _ev(ctx, connector_id, options, key), bench(ctx))


def build_contactor(
    options: Mapping[str, Any], key: str, connector_id: int, ctx: BuildContext
) -> SimContactor:
    contactor = SimContactor(connector_id, _ev(ctx, connector_id, options, key), bench(ctx))
    bench(ctx).contactors[connector_id] = contactor
    return contactor


def build_lock(options: Mapping[str, Any], key: str, connector_id: int, ctx: BuildContext) -> SimLock:
    lock = SimLock()
    bench(ctx).locks[connector_id] = lock
    return lock


def build_rcm(options: Mapping[str, Any], key: str, connector_id: int, ctx: BuildContext) -> SimRcm:
    rcm = SimRcm()
    bench(ctx).rcms[connector_id] = rcm
    return rcm


def build_indicator(
    options: Mapping[str, Any], key: str, connector_id: int, ctx: BuildContext
) -> SimIndicator:
    return SimIndicator()

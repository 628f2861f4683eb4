"""Energy-management hardware (issue 16): the 1p/3p phase relay and the grid operator's control input.

Both are small devices of their own (not in hal/interfaces.py's event union): the energy service
(chargepoint/energy/service.py) drives the relay and subscribes to the input.

**Phase relay, safe state.** The relay (or second contactor) connects L2 and L3 to the main contactor when
*energized*; de-energized the connector has one phase. Outputs start de-energized (hal/interfaces.py), so a
controller that starts, crashes or loses the relay's supply leaves the connector on 1 phase. That is the
safe direction: an unplanned change is then 3 → 1 (less power, which every car tolerates; openEMS and
EVerest report cars that even follow it under load), never 1 → 3, which EVerest's EvseManager documentation
warns can permanently damage some cars (first-generation Renault Zoe) and which would add load the
installation did not plan for. The controller energizes it (3 phases) only with the contactor open and no
current flowing (chargepoint/energy/phase_switch.py).

**Control input (§14a EnWG).** The grid operator's control box closes a potential-free contact; with the
input's pull-up a closed contact reads low. ``active_low = true`` (default): a closed contact is "dimmed".
A broken wire then reads "not dimmed" — the operator's box supervises its own relay; the charger cannot
tell a broken wire from an open contact.

gpiozero objects are created in ``start()`` (check-config needs no Pi); edge callbacks arrive on
gpiozero's thread and reach the loop through ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

from hal.driver_options import Options, claim_pins
from hal.interfaces import Device, Emit

log = logging.getLogger(__name__)

SAFE_PHASES = 1  # the de-energized relay


@runtime_checkable
class PhaseSwitch(Device, Protocol):
    @property
    def phases(self) -> int:
        """The commanded position: 1 (de-energized) or 3."""

    async def set_phases(self, phases: int) -> None:
        """Switch the relay. Only ever called with the contactor open and no current flowing."""


@runtime_checkable
class ControlInput(Device, Protocol):
    @property
    def active(self) -> bool: ...

    def on_change(self, callback: Callable[[bool], None]) -> None:
        """``callback(active)`` on the event loop whenever the input changes."""


class GpioPhaseSwitch:
    def __init__(self, *, pin: int, active_high: bool = True, pin_factory: Any = None) -> None:
        self.pin = pin
        self.active_high = active_high
        self._pf = pin_factory
        self._relay: Any = None
        self._phases = SAFE_PHASES

    @property
    def phases(self) -> int:
        return self._phases

    async def start(self, emit: Emit) -> None:
        from gpiozero import DigitalOutputDevice

        self._relay = DigitalOutputDevice(self.pin, active_high=self.active_high, initial_value=False,
                                          pin_factory=self._pf)
        self._phases = SAFE_PHASES

    async def set_phases(self, phases: int) -> None:
        if phases not in (1, 3):
            raise ValueError("phases: 1 or 3")
        if self._relay is None:
            raise RuntimeError("phase switch not started")
        if phases == 3:
            self._relay.on()
        else:
            self._relay.off()
        self._phases = phases

    async def stop(self) -> None:
        if self._relay is not None:
            self._relay.off()
            self._relay.close()
            self._relay = None
        self._phases = SAFE_PHASES


class GpioControlInput:
    def __init__(self, *, pin: int, active_low: bool = True, bounce_s: float = 0.05,
                 pin_factory: Any = None) -> None:
        self.pin = pin
        self.active_low = active_low
        self.bounce_s = bounce_s
        self._pf = pin_factory
        self._input: Any = None
        self._callbacks: list[Callable[[bool], None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def active(self) -> bool:
        if self._input is None:
            return False
        low = bool(self._input.is_active)  # pull_up=True: is_active == pin low
        return low if self.active_low else not low

    def on_change(self, callback: Callable[[bool], None]) -> None:
        self._callbacks.append(callback)

    def _edge(self) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        loop.call_soon_threadsafe(self._notify)

    def _notify(self) -> None:
        state = self.active
        for cb in self._callbacks:
            cb(state)

    async def start(self, emit: Emit) -> None:
        from gpiozero import DigitalInputDevice

        self._loop = asyncio.get_running_loop()
        self._input = DigitalInputDevice(self.pin, pull_up=True, bounce_time=self.bounce_s or None,
                                         pin_factory=self._pf)
        self._input.when_activated = self._edge
        self._input.when_deactivated = self._edge

    async def stop(self) -> None:
        if self._input is not None:
            self._input.close()
            self._input = None


def _pin_factory(ctx: Any) -> Any:
    return ctx.shared.get("gpio_pin_factory") if ctx is not None else None


def build_phase_switch(options: Mapping[str, Any], key: str, connector_id: int, ctx: Any) -> GpioPhaseSwitch:
    o = Options(options, key)
    pins = {"pin": o.pin("pin", 26)}
    dev = GpioPhaseSwitch(pin=pins["pin"], active_high=o.bool("active_high", True),  # type: ignore[arg-type]
                          pin_factory=_pin_factory(ctx))
    o.finish()
    claim_pins(ctx, key, pins)
    return dev


def build_control_input(options: Mapping[str, Any], key: str, connector_id: int, ctx: Any) -> GpioControlInput:
    o = Options(options, key)
    pins = {"pin": o.pin("pin", 13)}
    dev = GpioControlInput(pin=pins["pin"], active_low=o.bool("active_low", True),  # type: ignore[arg-type]
                           bounce_s=o.float("bounce_s", 0.05, lo=0.0, hi=1.0), pin_factory=_pin_factory(ctx))
    o.finish()
    claim_pins(ctx, key, pins)
    return dev

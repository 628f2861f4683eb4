"""Wiring emulators for gpiozero's MockFactory: outputs that move inputs like real parts do."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gpiozero.pins.mock import MockFactory, MockPin


class LinkedPin(MockPin):
    """A mock output pin that tells listeners when the driver changes it."""

    def __init__(self, factory: Any, info: Any) -> None:
        super().__init__(factory, info)
        self.listeners: list[Callable[[bool], None]] = []

    def _change_state(self, value: bool) -> bool:
        changed = super()._change_state(value)
        if changed and self._function == "output":
            for listener in self.listeners:
                listener(value)
        return changed


class WiredInputPin(MockPin):
    """An input driven by external hardware: the level it is driven to beats the (weak) pull resistor."""

    def __init__(self, factory: Any, info: Any) -> None:
        super().__init__(factory, info)
        self.external: bool | None = None

    def _set_pull(self, value: str) -> None:
        super()._set_pull(value)
        if self.external is not None:
            self.drive(self.external)

    def drive(self, level: bool) -> None:
        self.external = level
        if self._function == "input":
            if level:
                self.drive_high()
            else:
                self.drive_low()
        else:
            self._state = level


def wired(factory: MockFactory, pin: int) -> WiredInputPin:
    p = factory.pin(pin, pin_class=WiredInputPin)
    assert isinstance(p, WiredInputPin)
    return p


def linked(factory: MockFactory, pin: int) -> LinkedPin:
    p = factory.pin(pin, pin_class=LinkedPin)
    assert isinstance(p, LinkedPin)
    return p


class FakeContactor:
    """Relay coil -> contactor -> NC mirror contact to GND (hardware-docs/pinout.md): low = main poles open."""

    def __init__(self, factory: MockFactory, relay_pin: int = 17, mirror_pin: int = 27) -> None:
        self.relay = linked(factory, relay_pin)
        self.mirror = wired(factory, mirror_pin)
        self.mirror.drive(False)
        self.welded = False  # contacts stuck closed
        self.coil_broken = False  # never closes
        self.relay.listeners.append(self._on_relay)

    def _on_relay(self, energized: bool) -> None:
        closed = self.welded or (energized and not self.coil_broken)
        self.set_mirror(closed)

    def set_mirror(self, closed: bool) -> None:
        self.mirror.drive(closed)  # NC auxiliary contact: poles closed -> aux open -> pull-up wins -> high

    def weld(self) -> None:
        self.welded = True
        self.set_mirror(True)


class FakeLockMotor:
    """A lock actuator: a pulse on lock/unlock moves it unless jammed; feedback closes to GND when locked."""

    def __init__(self, factory: MockFactory, lock_pin: int = 22, unlock_pin: int = 23,
                 feedback_pin: int = 24) -> None:
        self.lock_out = linked(factory, lock_pin)
        self.unlock_out = linked(factory, unlock_pin)
        self.feedback = wired(factory, feedback_pin)
        self.feedback.drive(True)  # unlocked: switch open, pull-up
        self.jammed = False
        self.jam_after: int | None = None  # moves that succeed before jamming
        self.pulses = 0
        self.both_on_seen = False
        self.lock_out.listeners.append(lambda on: self._pulse(on, True))
        self.unlock_out.listeners.append(lambda on: self._pulse(on, False))

    def _pulse(self, on: bool, to_locked: bool) -> None:
        if self.lock_out.state and self.unlock_out.state:
            self.both_on_seen = True
        if not on:
            return
        self.pulses += 1
        if self.jam_after is not None and self.pulses > self.jam_after:
            self.jammed = True
        if self.jammed:
            return
        self.feedback.drive(not to_locked)  # switch closes to GND when locked


class FakeRcm:
    """RCM module: driving its test input raises its fault output while the test current flows."""

    def __init__(self, factory: MockFactory, fault_pin: int = 5, test_pin: int = 6) -> None:
        self.fault = wired(factory, fault_pin)
        self.fault.drive(False)
        self.test_in = linked(factory, test_pin)
        self.dead = False  # test current has no effect
        self.stuck = False  # fault output stays high after a test
        self.test_in.listeners.append(self._on_test)

    def _on_test(self, on: bool) -> None:
        if self.dead:
            return
        if on:
            self.fault.drive(True)
        elif not self.stuck:
            self.fault.drive(False)

    def trip(self) -> None:
        self.fault.drive(True)

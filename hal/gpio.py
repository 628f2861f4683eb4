"""GPIO drivers (gpiozero): contactor relay with mirror contact, socket lock motor,
residual-current monitor and the LED/buzzer indicator.

Default pin map (BCM numbers, see hardware-docs/drivers.md): contactor relay 17, mirror
contact 27; lock motor lock 22 / unlock 23 / feedback 24; RCM fault in 5, RCM test out 6;
LEDs green 16, red 20, blue 12; buzzer 21. This is hardware-docs/pinout.md. GPIO18 (pilot PWM), 8-11 (SPI for the MCP3008)
and 14/15 (UART) stay free.

gpiozero objects are created in ``start()`` (so ``check-config`` does not need a Pi) and
every output is created with ``initial_value=False``: relays and motors start
de-energized. gpiozero calls edge callbacks from its own thread; they reach the event
loop through ``loop.call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Mapping
from typing import Any

from hal.driver_options import Options, claim_pins
from hal.interfaces import (
    Emit,
    FaultCleared,
    FaultKind,
    FaultRaised,
    HalEvent,
    IndicatorPattern,
)

log = logging.getLogger(__name__)


def _pin_factory(ctx: Any) -> Any:
    """Tests (and exotic setups) can hand a gpiozero pin factory through the BuildContext."""
    return ctx.shared.get("gpio_pin_factory") if ctx is not None else None


class _Emitter:
    """Holds ``emit`` and the loop so that any thread can hand an event over safely."""

    def __init__(self) -> None:
        self._emit: Emit | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def bind(self, emit: Emit) -> None:
        self._emit = emit
        self._loop = asyncio.get_running_loop()

    def __call__(self, event: HalEvent) -> None:
        if self._emit is None or self._loop is None:
            log.warning("event before start(): %s", event)
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            self._emit(event)
        elif not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._emit, event)


# ---------------------------------------------------------------- contactor


class GpioContactor:
    """Contactor coil on a relay output with an optional mirror (auxiliary) contact input.

    Welding: the mirror must read open before the relay is energized (else refuse to close)
    and again ``weld_check_s`` after opening (IEC 61851-1 practice, see HARDWARE-FACTS
    "welding check"). A weld is latched: close() keeps refusing until ``clear_weld()``.
    """

    def __init__(self, connector_id: int, *, relay_pin: int, mirror_pin: int | None = None,
                 mirror_contact: str = "nc", close_check_s: float = 0.2, weld_check_s: float = 0.5,
                 pin_factory: Any = None) -> None:
        self.connector_id = connector_id
        self.relay_pin = relay_pin
        self.mirror_pin = mirror_pin
        self.mirror_contact = mirror_contact
        self.close_check_s = close_check_s
        self.weld_check_s = weld_check_s
        self._pf = pin_factory
        self._relay: Any = None
        self._mirror: Any = None
        self._closed = False
        self._welded = False
        self._emit = _Emitter()
        self._check_task: asyncio.Task[None] | None = None
        self._no_close_reported = False

    @property
    def is_closed(self) -> bool:
        return self._closed

    @property
    def welded(self) -> bool:
        return self._welded

    @property
    def mirror_closed(self) -> bool | None:
        """Whether the mirror contact says the main poles are closed (None without a mirror input).

        The input has a pull-up and the auxiliary contact switches it to GND. Reference build
        (hardware-docs/pinout.md): an NC auxiliary contact, so GND (low) = main poles open and a broken
        wire reads "closed" -- the safe direction, it blocks closing. ``mirror_contact = "no"`` inverts.
        """
        if self._mirror is None:
            return None
        pin_low = bool(self._mirror.is_active)  # pull_up=True: active == low
        return pin_low if self.mirror_contact == "no" else not pin_low

    async def start(self, emit: Emit) -> None:
        from gpiozero import DigitalInputDevice, DigitalOutputDevice

        self._emit.bind(emit)
        self._relay = DigitalOutputDevice(self.relay_pin, active_high=True, initial_value=False,
                                          pin_factory=self._pf)
        if self.mirror_pin is not None:
            self._mirror = DigitalInputDevice(self.mirror_pin, pull_up=True, pin_factory=self._pf)
            if self.mirror_closed:
                self._latch_weld("mirror contact reads closed at start while the relay is off")

    def _latch_weld(self, info: str) -> None:
        self._welded = True
        log.error("connector %s: contactor welded: %s", self.connector_id, info)
        self._emit(FaultRaised(self.connector_id, FaultKind.WELD, info, latched=True))

    async def close(self) -> None:
        if self._relay is None:
            raise RuntimeError("contactor not started")
        if self._welded:
            self._latch_weld("refusing to close: contactor weld latched")
            return
        if self.mirror_closed:
            self._latch_weld("refusing to close: mirror contact reads closed while the relay is off")
            return
        self._cancel_check()
        self._relay.on()
        self._closed = True
        if self._mirror is not None:
            self._check_task = asyncio.create_task(self._check_after_close())

    async def open(self) -> None:
        if self._relay is None:
            return
        self._cancel_check()
        self._relay.off()
        was_closed, self._closed = self._closed, False
        if self._mirror is not None and (was_closed or not self._welded):
            self._check_task = asyncio.create_task(self._check_after_open())

    def _cancel_check(self) -> None:
        if self._check_task is not None and not self._check_task.done():
            self._check_task.cancel()
        self._check_task = None

    async def _check_after_open(self) -> None:
        await asyncio.sleep(self.weld_check_s)
        if not self._closed and self.mirror_closed:
            self._latch_weld(f"mirror contact still closed {self.weld_check_s:.2f} s after opening")

    async def _check_after_close(self) -> None:
        await asyncio.sleep(self.close_check_s)
        if self._closed and self.mirror_closed is False:
            # Not dangerous (no power flows) but the contactor disagrees with the command.
            self._no_close_reported = True
            self._emit(FaultRaised(self.connector_id, FaultKind.WELD,
                                   "contactor did not close (mirror contact open)", latched=False))
        elif self._closed and self._no_close_reported:
            self._no_close_reported = False
            self._emit(FaultCleared(self.connector_id, FaultKind.WELD))

    async def wait_checks(self) -> None:
        """Wait for a pending mirror check (commissioning and tests)."""
        if self._check_task is not None:
            await asyncio.gather(self._check_task, return_exceptions=True)

    def clear_weld(self) -> bool:
        """Technician reset: clears the latch only when the mirror now reads open."""
        if self.mirror_closed:
            return False
        self._welded = False
        return True

    async def stop(self) -> None:
        self._cancel_check()
        if self._relay is not None:
            self._relay.off()
            self._relay.close()
        if self._mirror is not None:
            self._mirror.close()
        self._closed = False
        self._relay = self._mirror = None


def build_contactor(options: Mapping[str, Any], key: str, connector_id: int, ctx: Any) -> GpioContactor:
    o = Options(options, key)
    relay = o.pin("relay_pin", 17)
    mirror = o.pin("mirror_pin", 27, optional=True)
    dev = GpioContactor(
        connector_id,
        relay_pin=relay,  # type: ignore[arg-type]
        mirror_pin=mirror,
        mirror_contact=o.str("mirror_contact", "nc", choices=("nc", "no")),
        close_check_s=o.float("close_check_s", 0.2, lo=0.05, hi=2.0),
        weld_check_s=o.float("weld_check_s", 0.5, lo=0.2, hi=1.0),
        pin_factory=_pin_factory(ctx),
    )
    o.finish()
    claim_pins(ctx, key, {"relay_pin": relay, "mirror_pin": mirror})
    return dev


# ---------------------------------------------------------------- socket lock


class GpioLock:
    """Socket lock motor driven by two outputs (lock / unlock pulse) with a feedback switch.

    A move is a pulse of ``pulse_s``; moves are spaced at least ``min_interval_s`` apart and
    limited to ``max_moves_per_minute`` (openWB uses 10) so that a jammed or bouncing
    actuator cannot burn out. After ``retries`` failed attempts a LOCK fault is emitted.
    """

    def __init__(self, connector_id: int, *, lock_pin: int, unlock_pin: int, feedback_pin: int | None,
                 feedback_active_low: bool = True, pulse_s: float = 0.5, retries: int = 2,
                 min_interval_s: float = 1.0, max_moves_per_minute: int = 10, pin_factory: Any = None) -> None:
        self.connector_id = connector_id
        self.lock_pin, self.unlock_pin, self.feedback_pin = lock_pin, unlock_pin, feedback_pin
        self.feedback_active_low = feedback_active_low
        self.pulse_s = pulse_s
        self.retries = retries
        self.min_interval_s = min_interval_s
        self.max_moves_per_minute = max_moves_per_minute
        self._pf = pin_factory
        self._out_lock: Any = None
        self._out_unlock: Any = None
        self._feedback: Any = None
        self._commanded_locked = False
        self._moves: collections.deque[float] = collections.deque()
        self._last_move_end = -1e9
        self._mutex = asyncio.Lock()
        self._faulted = False
        self._emit = _Emitter()

    @property
    def is_locked(self) -> bool:
        if self._feedback is not None:
            return bool(self._feedback.is_active)
        return self._commanded_locked

    @property
    def moves_last_minute(self) -> int:
        self._prune(time.monotonic())
        return len(self._moves)

    async def start(self, emit: Emit) -> None:
        from gpiozero import DigitalInputDevice, DigitalOutputDevice

        self._emit.bind(emit)
        self._out_lock = DigitalOutputDevice(self.lock_pin, initial_value=False, pin_factory=self._pf)
        self._out_unlock = DigitalOutputDevice(self.unlock_pin, initial_value=False, pin_factory=self._pf)
        if self.feedback_pin is not None:
            self._feedback = DigitalInputDevice(self.feedback_pin, pull_up=self.feedback_active_low,
                                                pin_factory=self._pf)
            self._commanded_locked = bool(self._feedback.is_active)

    async def lock(self) -> bool:
        return await self._move(True)

    async def unlock(self) -> bool:
        return await self._move(False)

    def _prune(self, now: float) -> None:
        while self._moves and now - self._moves[0] >= 60.0:
            self._moves.popleft()

    async def _move(self, to_locked: bool) -> bool:
        if self._out_lock is None:
            raise RuntimeError("lock not started")
        what = "lock" if to_locked else "unlock"
        async with self._mutex:
            if self._feedback is not None and self.is_locked == to_locked:
                self._commanded_locked = to_locked
                return self._succeeded()
            reason = "no attempt made"
            for attempt in range(1, self.retries + 2):
                now = time.monotonic()
                self._prune(now)
                if len(self._moves) >= self.max_moves_per_minute:
                    reason = f"rate limit: {len(self._moves)} moves in the last 60 s"
                    break
                wait = self._last_move_end + self.min_interval_s - now
                if wait > 0:
                    await asyncio.sleep(wait)
                self._moves.append(time.monotonic())
                await self._pulse(self._out_lock if to_locked else self._out_unlock)
                self._commanded_locked = to_locked
                if self._feedback is None or self.is_locked == to_locked:
                    return self._succeeded()
                reason = f"feedback did not confirm {what} after {attempt} attempt(s)"
                log.warning("connector %s: %s", self.connector_id, reason)
            self._faulted = True
            self._emit(FaultRaised(self.connector_id, FaultKind.LOCK, f"{what} failed: {reason}"))
            return False

    def _succeeded(self) -> bool:
        if self._faulted:
            self._faulted = False
            self._emit(FaultCleared(self.connector_id, FaultKind.LOCK))
        return True

    async def _pulse(self, out: Any) -> None:
        try:
            out.on()
            await asyncio.sleep(self.pulse_s)
        finally:
            out.off()
            self._last_move_end = time.monotonic()

    async def stop(self) -> None:
        for dev in (self._out_lock, self._out_unlock, self._feedback):
            if dev is not None:
                if hasattr(dev, "off"):
                    dev.off()
                dev.close()
        self._out_lock = self._out_unlock = self._feedback = None


def build_lock(options: Mapping[str, Any], key: str, connector_id: int, ctx: Any) -> GpioLock:
    o = Options(options, key)
    pins = {"lock_pin": o.pin("lock_pin", 22), "unlock_pin": o.pin("unlock_pin", 23),
            "feedback_pin": o.pin("feedback_pin", 24, optional=True)}
    dev = GpioLock(
        connector_id,
        lock_pin=pins["lock_pin"],  # type: ignore[arg-type]
        unlock_pin=pins["unlock_pin"],  # type: ignore[arg-type]
        feedback_pin=pins["feedback_pin"],
        feedback_active_low=o.bool("feedback_active_low", True),
        pulse_s=o.float("pulse_s", 0.5, lo=0.3, hi=1.0),
        retries=o.int("retries", 2, lo=0, hi=5),
        min_interval_s=o.float("min_interval_s", 1.0, lo=1.0, hi=30.0),
        max_moves_per_minute=o.int("max_moves_per_minute", 10, lo=1, hi=30),
        pin_factory=_pin_factory(ctx),
    )
    o.finish()
    claim_pins(ctx, key, pins)
    return dev


# ---------------------------------------------------------------- residual current monitor


class GpioRcm:
    """Residual current monitor (e.g. 6 mA DC RDC-M) with a fault output and a test input.

    A trip is latched (FaultRaised(RCD, latched=True)); it needs a Reset or a technician.
    ``self_test`` drives the test pin for ``test_pulse_s`` and expects the fault output to
    rise during the pulse and fall again within ``release_timeout_s``.
    """

    def __init__(self, connector_id: int, *, fault_pin: int, test_pin: int | None,
                 fault_active_high: bool = True, test_pulse_s: float = 0.1, release_timeout_s: float = 3.0,
                 pin_factory: Any = None) -> None:
        self.connector_id = connector_id
        self.fault_pin, self.test_pin = fault_pin, test_pin
        self.fault_active_high = fault_active_high
        self.test_pulse_s = test_pulse_s
        self.release_timeout_s = release_timeout_s
        self._pf = pin_factory
        self._fault: Any = None
        self._test: Any = None
        self._testing = False
        self._emit = _Emitter()

    @property
    def tripped(self) -> bool:
        return self._fault is not None and bool(self._fault.is_active)

    async def start(self, emit: Emit) -> None:
        from gpiozero import DigitalInputDevice, DigitalOutputDevice

        self._emit.bind(emit)
        self._fault = DigitalInputDevice(self.fault_pin, pull_up=not self.fault_active_high,
                                         pin_factory=self._pf)
        if self.test_pin is not None:
            self._test = DigitalOutputDevice(self.test_pin, initial_value=False, pin_factory=self._pf)
        self._fault.when_activated = self._on_trip  # called from gpiozero's thread
        if self._fault.is_active:
            self._trip("residual current monitor signals a fault at start")

    def _on_trip(self) -> None:
        if not self._testing:
            self._trip("residual current monitor tripped")

    def _trip(self, info: str) -> None:
        log.error("connector %s: %s", self.connector_id, info)
        self._emit(FaultRaised(self.connector_id, FaultKind.RCD, info, latched=True))

    async def self_test(self) -> bool:
        if self._fault is None:
            raise RuntimeError("RCM not started")
        if self._test is None:
            log.warning("connector %s: RCM has no test pin; self-test skipped", self.connector_id)
            return True
        if self._fault.is_active:
            self._trip("self-test impossible: fault output already active")
            return False
        self._testing = True
        rose = False
        try:
            self._test.on()
            end = time.monotonic() + self.test_pulse_s
            while time.monotonic() < end:
                rose = rose or bool(self._fault.is_active)
                await asyncio.sleep(0.005)
            rose = rose or bool(self._fault.is_active)
        finally:
            self._test.off()
        try:
            fell = False
            end = time.monotonic() + self.release_timeout_s
            while time.monotonic() < end:
                if not self._fault.is_active:
                    fell = True
                    break
                await asyncio.sleep(0.01)
        finally:
            self._testing = False
        if rose and fell:
            return True
        why = "fault output did not rise during the test pulse" if not rose else \
            f"fault output still active {self.release_timeout_s:.1f} s after the test pulse"
        self._trip(f"self-test failed: {why}")
        return False

    async def stop(self) -> None:
        if self._test is not None:
            self._test.off()
            self._test.close()
        if self._fault is not None:
            self._fault.close()
        self._fault = self._test = None


def build_rcm(options: Mapping[str, Any], key: str, connector_id: int, ctx: Any) -> GpioRcm:
    o = Options(options, key)
    pins = {"fault_pin": o.pin("fault_pin", 5), "test_pin": o.pin("test_pin", 6, optional=True)}
    dev = GpioRcm(
        connector_id,
        fault_pin=pins["fault_pin"],  # type: ignore[arg-type]
        test_pin=pins["test_pin"],
        fault_active_high=o.bool("fault_active_high", True),
        test_pulse_s=o.float("test_pulse_s", 0.1, lo=0.02, hi=1.0),
        release_timeout_s=o.float("release_timeout_s", 3.0, lo=0.1, hi=10.0),
        pin_factory=_pin_factory(ctx),
    )
    o.finish()
    claim_pins(ctx, key, pins)
    return dev


# ---------------------------------------------------------------- indicator

# pattern -> (green, red, blue, buzzer); an LED entry is "off", "on" or (on_s, off_s) blink;
# the buzzer entry is None or (on_s, off_s, count).
_LedSpec = str | tuple[float, float]
_PATTERNS: dict[IndicatorPattern, tuple[_LedSpec, _LedSpec, _LedSpec, tuple[float, float, int] | None]] = {
    IndicatorPattern.OFF: ("off", "off", "off", None),
    IndicatorPattern.IDLE: ("on", "off", "off", None),
    IndicatorPattern.WAITING_FOR_PLUG: ((1.0, 1.0), "off", "off", None),
    IndicatorPattern.ACCEPTED: ((0.15, 0.15), "off", "off", (0.1, 0.1, 1)),
    IndicatorPattern.REFUSED: ("off", (0.15, 0.15), "off", (0.1, 0.1, 3)),
    IndicatorPattern.CHARGING: ("off", "off", "on", None),
    IndicatorPattern.SUSPENDED: ("off", "off", (1.0, 1.0), None),
    IndicatorPattern.RESERVED: ("off", "off", (0.2, 1.8), None),
    IndicatorPattern.UNAVAILABLE: ("off", (1.0, 1.0), "off", None),
    IndicatorPattern.FAULT: ("off", "on", "off", (0.5, 0.5, 1)),
}


class GpioIndicator:
    """Green/red/blue LEDs and an optional buzzer; pattern table in hardware-docs/drivers.md."""

    def __init__(self, *, green_pin: int | None, red_pin: int | None, blue_pin: int | None,
                 buzzer_pin: int | None, pin_factory: Any = None) -> None:
        self.pins = (green_pin, red_pin, blue_pin)
        self.buzzer_pin = buzzer_pin
        self._pf = pin_factory
        self._leds: list[Any] = []
        self._buzzer: Any = None
        self.pattern = IndicatorPattern.OFF

    async def start(self, emit: Emit) -> None:
        from gpiozero import LED, Buzzer

        self._leds = [LED(p, initial_value=False, pin_factory=self._pf) if p is not None else None
                      for p in self.pins]
        if self.buzzer_pin is not None:
            self._buzzer = Buzzer(self.buzzer_pin, initial_value=False, pin_factory=self._pf)

    def show(self, pattern: IndicatorPattern) -> None:
        if pattern == self.pattern or not self._leds:
            self.pattern = pattern
            return
        self.pattern = pattern
        *leds, beep = _PATTERNS[pattern]
        for led, spec in zip(self._leds, leds, strict=True):
            if led is None:
                continue
            if spec == "on":
                led.on()
            elif spec == "off":
                led.off()
            else:
                on_s, off_s = spec  # type: ignore[misc]
                led.blink(on_time=on_s, off_time=off_s, background=True)
        if self._buzzer is not None:
            if beep is None:
                self._buzzer.off()
            else:
                self._buzzer.beep(on_time=beep[0], off_time=beep[1], n=beep[2], background=True)

    async def stop(self) -> None:
        for dev in [*self._leds, self._buzzer]:
            if dev is not None:
                dev.off()
                dev.close()
        self._leds, self._buzzer = [], None


def build_indicator(options: Mapping[str, Any], key: str, connector_id: int, ctx: Any) -> GpioIndicator:
    o = Options(options, key)
    pins = {"green_pin": o.pin("green_pin", 16, optional=True), "red_pin": o.pin("red_pin", 20, optional=True),
            "blue_pin": o.pin("blue_pin", 12, optional=True),
            "buzzer_pin": o.pin("buzzer_pin", 21, optional=True)}
    dev = GpioIndicator(pin_factory=_pin_factory(ctx), **pins)
    o.finish()
    claim_pins(ctx, key, pins)
    return dev

"""GPIO drivers on gpiozero's MockFactory pins, wired to emulated contactor, lock motor and RCM."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from gpiozero.pins.mock import MockFactory

from hal import gpio
from hal.interfaces import (
    FaultCleared,
    FaultKind,
    FaultRaised,
    HalEvent,
    HardwareConfigError,
    IndicatorPattern,
)
from hal.registry import BuildContext, build
from tests.fakes.gpio_rig import FakeContactor, FakeLockMotor, FakeRcm


@pytest.fixture
def factory() -> Iterator[MockFactory]:
    f = MockFactory()
    yield f
    f.reset()


@pytest.fixture
def ctx(factory: MockFactory) -> BuildContext:
    return BuildContext(gpio_pin_factory=factory)


def faults(events: list[HalEvent], kind: FaultKind) -> list[FaultRaised]:
    return [e for e in events if isinstance(e, FaultRaised) and e.kind == kind]


# ---------------------------------------------------------------- contactor


async def test_contactor_starts_open_and_follows_commands(factory: MockFactory, ctx: BuildContext) -> None:
    rig = FakeContactor(factory)
    dev = build("contactor", {"driver": "gpio", "weld_check_s": 0.2}, "connectors.1.contactor", 1, ctx)
    events: list[HalEvent] = []
    await dev.start(events.append)
    assert rig.relay.state is False and dev.is_closed is False
    await dev.close()
    assert rig.relay.state is True and dev.is_closed and dev.mirror_closed is True
    await dev.wait_checks()
    await dev.open()
    assert rig.relay.state is False and not dev.is_closed
    await dev.wait_checks()
    assert events == []
    await dev.stop()


async def test_weld_detected_before_close_refuses(factory: MockFactory, ctx: BuildContext) -> None:
    rig = FakeContactor(factory)
    dev = build("contactor", {"driver": "gpio"}, "c", 1, ctx)
    events: list[HalEvent] = []
    await dev.start(events.append)
    rig.weld()  # mirror says closed while the relay is off
    await dev.close()
    assert rig.relay.state is False and not dev.is_closed
    [fault] = faults(events, FaultKind.WELD)
    assert fault.latched and fault.connector_id == 1
    # The latch holds even when the mirror later reads open (technician must clear it).
    rig.welded = False
    rig.set_mirror(False)
    await dev.close()
    assert rig.relay.state is False
    assert len(faults(events, FaultKind.WELD)) == 2
    assert dev.clear_weld()
    await dev.close()
    assert rig.relay.state is True
    await dev.stop()
    assert rig.relay.state is False


async def test_weld_at_start_is_reported(factory: MockFactory, ctx: BuildContext) -> None:
    rig = FakeContactor(factory)
    rig.weld()
    dev = build("contactor", {"driver": "gpio"}, "c", 2, ctx)
    events: list[HalEvent] = []
    await dev.start(events.append)
    assert [f.latched for f in faults(events, FaultKind.WELD)] == [True]
    await dev.stop()


async def test_weld_detected_after_open(factory: MockFactory, ctx: BuildContext) -> None:
    rig = FakeContactor(factory)
    dev = build("contactor", {"driver": "gpio", "weld_check_s": 0.2}, "c", 1, ctx)
    events: list[HalEvent] = []
    await dev.start(events.append)
    await dev.close()
    rig.welded = True  # contacts fuse while carrying current
    await dev.open()
    assert rig.relay.state is False
    assert faults(events, FaultKind.WELD) == []  # not yet: checked 0.2 s after opening
    await dev.wait_checks()
    [fault] = faults(events, FaultKind.WELD)
    assert fault.latched and "after opening" in fault.info
    await dev.close()  # refused
    assert rig.relay.state is False
    await dev.stop()


async def test_contactor_that_does_not_close_is_reported_not_latched(
        factory: MockFactory, ctx: BuildContext) -> None:
    rig = FakeContactor(factory)
    rig.coil_broken = True
    dev = build("contactor", {"driver": "gpio", "close_check_s": 0.05}, "c", 1, ctx)
    events: list[HalEvent] = []
    await dev.start(events.append)
    await dev.close()
    await dev.wait_checks()
    [fault] = faults(events, FaultKind.WELD)
    assert not fault.latched and "did not close" in fault.info
    await dev.stop()


async def test_contactor_without_mirror(factory: MockFactory, ctx: BuildContext) -> None:
    dev = build("contactor", {"driver": "gpio", "mirror_pin": "none"}, "c", 1, ctx)
    events: list[HalEvent] = []
    await dev.start(events.append)
    await dev.close()
    assert factory.pin(17).state is True and dev.mirror_closed is None
    await dev.open()
    assert factory.pin(17).state is False and events == []
    await dev.stop()


@pytest.mark.parametrize(
    ("options", "key", "allowed"),
    [
        ({"relay_pin": 40}, "c.relay_pin", "BCM GPIO"),
        ({"relay_pin": 18}, "c.relay_pin", "pilot hardware PWM"),
        ({"relay_pin": 9}, "c.relay_pin", "SPI"),
        ({"weld_check_s": 3}, "c.weld_check_s", "0.2 to 1.0"),
        ({"mirror_contact": "maybe"}, "c.mirror_contact", "'nc', 'no'"),
        ({"relay_pn": 17}, "c.relay_pn", "unknown option"),
    ],
)
def test_contactor_option_errors_name_the_key(ctx: BuildContext, options: dict, key: str, allowed: str) -> None:
    with pytest.raises(HardwareConfigError) as exc:
        build("contactor", {"driver": "gpio", **options}, "c", 1, ctx)
    assert exc.value.key == key and allowed in exc.value.allowed


def test_two_devices_cannot_share_a_pin(ctx: BuildContext) -> None:
    build("contactor", {"driver": "gpio"}, "connectors.1.contactor", 1, ctx)
    with pytest.raises(HardwareConfigError) as exc:
        build("lock", {"driver": "gpio", "feedback_pin": 27}, "connectors.1.lock", 1, ctx)
    assert exc.value.key == "connectors.1.lock.feedback_pin"
    assert "connectors.1.contactor.mirror_pin" in exc.value.allowed


# ---------------------------------------------------------------- lock


def fast_lock(factory: MockFactory, **kw: object) -> gpio.GpioLock:
    params: dict = dict(lock_pin=22, unlock_pin=23, feedback_pin=24, pulse_s=0.02, retries=2,
                        min_interval_s=0.03, max_moves_per_minute=10, pin_factory=factory)
    params.update(kw)
    return gpio.GpioLock(1, **params)


async def test_lock_and_unlock_with_feedback(factory: MockFactory) -> None:
    motor = FakeLockMotor(factory)
    lock = fast_lock(factory)
    events: list[HalEvent] = []
    await lock.start(events.append)
    assert not lock.is_locked and motor.lock_out.state is False and motor.unlock_out.state is False
    assert await lock.lock() is True
    assert lock.is_locked and motor.pulses == 1 and motor.lock_out.state is False
    assert await lock.lock() is True  # already there: no move
    assert motor.pulses == 1
    assert await lock.unlock() is True
    assert not lock.is_locked and motor.pulses == 2
    assert not motor.both_on_seen and events == []
    await lock.stop()


async def test_lock_moves_are_spaced(factory: MockFactory) -> None:
    FakeLockMotor(factory)
    lock = fast_lock(factory, min_interval_s=0.15)
    await lock.start(lambda e: None)
    loop = asyncio.get_running_loop()
    await lock.lock()
    t0 = loop.time()
    await lock.unlock()
    assert loop.time() - t0 >= 0.15 + 0.02 - 0.01  # waited the interval, then pulsed
    await lock.stop()


async def test_jammed_lock_retries_then_faults_and_clears(factory: MockFactory) -> None:
    motor = FakeLockMotor(factory)
    motor.jammed = True
    lock = fast_lock(factory, retries=2)
    events: list[HalEvent] = []
    await lock.start(events.append)
    assert await lock.lock() is False
    assert motor.pulses == 3  # first attempt + 2 retries
    [fault] = faults(events, FaultKind.LOCK)
    assert "3 attempt" in fault.info and fault.connector_id == 1
    motor.jammed = False
    assert await lock.lock() is True
    assert events[-1] == FaultCleared(1, FaultKind.LOCK)
    await lock.stop()


async def test_lock_rate_limit(factory: MockFactory) -> None:
    motor = FakeLockMotor(factory)
    lock = fast_lock(factory, max_moves_per_minute=4, min_interval_s=0.01)
    events: list[HalEvent] = []
    await lock.start(events.append)
    for _ in range(2):
        assert await lock.lock()
        assert await lock.unlock()
    assert lock.moves_last_minute == 4
    assert await lock.lock() is False  # fifth move within a minute refused without moving
    assert motor.pulses == 4
    [fault] = faults(events, FaultKind.LOCK)
    assert "rate limit" in fault.info
    await lock.stop()


def test_lock_build_enforces_safe_timing(ctx: BuildContext) -> None:
    with pytest.raises(HardwareConfigError) as exc:
        build("lock", {"driver": "gpio", "pulse_s": 2.5}, "connectors.1.lock", 1, ctx)
    assert exc.value.key == "connectors.1.lock.pulse_s"
    with pytest.raises(HardwareConfigError) as exc:
        build("lock", {"driver": "gpio", "min_interval_s": 0.2}, "connectors.1.lock", 1, ctx)
    assert exc.value.key == "connectors.1.lock.min_interval_s"
    dev = build("lock", {"driver": "gpio"}, "connectors.1.lock", 1, ctx)
    assert (dev.lock_pin, dev.unlock_pin, dev.feedback_pin, dev.max_moves_per_minute) == (22, 23, 24, 10)


# ---------------------------------------------------------------- RCM


async def test_rcm_trip_emits_latched_rcd_fault(factory: MockFactory, ctx: BuildContext) -> None:
    rig = FakeRcm(factory)
    dev = build("rcm", {"driver": "gpio"}, "connectors.1.rcm", 1, ctx)
    events: list[HalEvent] = []
    await dev.start(events.append)
    assert events == []
    rig.trip()
    await asyncio.sleep(0)  # the callback hands the event over with call_soon_threadsafe
    await asyncio.sleep(0)
    [fault] = faults(events, FaultKind.RCD)
    assert fault.latched and fault.connector_id == 1
    await dev.stop()


async def test_rcm_trip_from_another_thread_reaches_the_loop(factory: MockFactory, ctx: BuildContext) -> None:
    rig = FakeRcm(factory)
    dev = build("rcm", {"driver": "gpio"}, "r", 1, ctx)
    got = asyncio.Event()
    loop = asyncio.get_running_loop()
    threads: list[object] = []

    def emit(event: HalEvent) -> None:
        threads.append(asyncio.get_running_loop())
        got.set()

    await dev.start(emit)
    await asyncio.to_thread(rig.trip)  # like lgpio's callback thread
    await asyncio.wait_for(got.wait(), 2)
    assert threads == [loop]
    await dev.stop()


async def test_rcm_self_test_pass(factory: MockFactory, ctx: BuildContext) -> None:
    rig = FakeRcm(factory)
    dev = build("rcm", {"driver": "gpio", "test_pulse_s": 0.05}, "r", 1, ctx)
    events: list[HalEvent] = []
    await dev.start(events.append)
    assert await dev.self_test() is True
    assert rig.test_in.state is False
    assert events == []  # the expected rise during the test is not a trip
    await dev.stop()


@pytest.mark.parametrize("defect", ["dead", "stuck"])
async def test_rcm_self_test_fail(factory: MockFactory, ctx: BuildContext, defect: str) -> None:
    rig = FakeRcm(factory)
    setattr(rig, defect, True)
    dev = build("rcm", {"driver": "gpio", "test_pulse_s": 0.05, "release_timeout_s": 0.1}, "r", 1, ctx)
    events: list[HalEvent] = []
    await dev.start(events.append)
    assert await dev.self_test() is False
    assert rig.test_in.state is False
    [fault] = faults(events, FaultKind.RCD)
    assert fault.latched and "self-test failed" in fault.info
    await dev.stop()


# ---------------------------------------------------------------- indicator


async def test_indicator_patterns(factory: MockFactory, ctx: BuildContext) -> None:
    dev = build("indicator", {"driver": "gpio"}, "indicator", 0, ctx)
    await dev.start(lambda e: None)
    green, red, blue, buzzer = (factory.pin(p) for p in (16, 20, 12, 21))
    assert not any(p.state for p in (green, red, blue, buzzer))
    dev.show(IndicatorPattern.IDLE)
    assert (green.state, red.state, blue.state) == (True, False, False)
    dev.show(IndicatorPattern.FAULT)
    assert (green.state, red.state, blue.state) == (False, True, False)
    dev.show(IndicatorPattern.CHARGING)
    assert (green.state, red.state, blue.state) == (False, False, True)
    await asyncio.sleep(0.6)  # FAULT's single 0.5 s beep is over
    red.clear_states()
    buzzer.clear_states()
    dev.show(IndicatorPattern.REFUSED)
    await asyncio.sleep(0.5)
    assert [s.state for s in red.states].count(True) >= 2  # red blinks
    assert [s.state for s in buzzer.states].count(True) == 3  # three short beeps
    dev.show(IndicatorPattern.OFF)
    await asyncio.sleep(0.05)
    assert not any(p.state for p in (green, red, blue, buzzer))
    await dev.stop()

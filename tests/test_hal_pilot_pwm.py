"""Pilot on the Pi: sysfs PWM in a fake sysfs tree, CP sensing through gpiozero's MCP3008 on mock SPI."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from gpiozero import Device
from gpiozero.pins.mock import MockFactory

from hal.interfaces import (
    CpState,
    FaultCleared,
    FaultKind,
    FaultRaised,
    HalEvent,
    HardwareConfigError,
    PilotChanged,
)
from hal.pilot_duty import NO_CURRENT_DUTY, amps_to_duty, duty_to_amps
from hal.pilot_pwm import PwmPilot, classify
from hal.registry import BuildContext, build
from tests.fakes.mcp3008 import FakeMCP3008


def make_sysfs(root: Path, exported: bool = True) -> Path:
    chip = root / "pwmchip0"
    chip.mkdir(parents=True)
    (chip / "export").write_text("")
    (chip / "npwm").write_text("2\n")
    if exported:
        export_channel(chip, 0)
    return chip


def export_channel(chip: Path, n: int) -> None:
    d = chip / f"pwm{n}"
    d.mkdir()
    for name, value in (("period", "0"), ("duty_cycle", "0"), ("enable", "0"), ("polarity", "normal")):
        (d / name).write_text(value + "\n")


def sysfs(chip: Path, name: str) -> str:
    return (chip / "pwm0" / name).read_text().strip()


@pytest.fixture
def factory() -> Iterator[MockFactory]:
    f = MockFactory()
    old = Device.pin_factory
    Device.pin_factory = f  # gpiozero's software SPI bus ignores pin_factory= and uses the default
    yield f
    f.reset()
    Device.pin_factory = old


@pytest.fixture
def adc(factory: MockFactory) -> FakeMCP3008:
    return FakeMCP3008(pin_factory=factory)


def set_cp(adc: FakeMCP3008, volts: float, channel: int = 0) -> None:
    """Board calibration defaults: volts = fraction * 24 - 12."""
    adc.channels[channel] = (volts + 12.0) / 24.0 * adc.vref


# ---------------------------------------------------------------- pure parts


@pytest.mark.parametrize(
    ("amps", "duty"),
    [(None, None), (0, None), (5.8, None), (5.95, 10.0), (6, 10.0), (10, 16.667), (16, 26.667), (32, 53.333),
     (51, 85.0), (52, 85.0), (60, 88.0), (80, 96.0), (100, 96.0)],
)
def test_duty_formula(amps: float | None, duty: float | None) -> None:
    """The driver's duty is hal.pilot_duty's (issue 13: one conversion): None = no PWM = constant +12 V (100 %);
    the exact formula rounded DOWN to the 0.01 % resolution, never above it."""
    got = amps_to_duty(amps)
    if duty is None:
        assert got == NO_CURRENT_DUTY
    else:
        assert got == pytest.approx(duty, abs=0.01) and got <= duty + 1e-3


@pytest.mark.parametrize("amps", [6, 6.5, 10, 13, 16, 20, 25, 32, 40, 51, 53, 63, 70, 80])
def test_ev_reads_back_the_offered_current(amps: float) -> None:
    """What the EV decodes is the offer within the 0.01 % duty resolution (0.006 A below 51 A, 0.025 A
    above), and never more than the offer."""
    duty = amps_to_duty(amps)
    got = duty_to_amps(duty)
    assert duty != NO_CURRENT_DUTY and got == pytest.approx(amps, abs=0.025) and got <= amps + 1e-9


def test_classify_thresholds_and_hysteresis() -> None:
    assert [classify(v, None, 0.4) for v in (12, 9, 6, 3, 0, -12)] == list("ABCDEF")
    assert classify(10.3, CpState.A, 0.4) == CpState.A  # inside hysteresis
    assert classify(10.0, CpState.A, 0.4) == CpState.B
    assert classify(10.8, CpState.B, 0.4) == CpState.B
    assert classify(11.0, CpState.B, 0.4) == CpState.A
    assert classify(7.3, CpState.B, 0.4) == CpState.B and classify(7.3, None, 0.4) == CpState.C


# ---------------------------------------------------------------- PWM output


async def test_pwm_output_duty_and_safe_states(tmp_path: Path, factory: MockFactory, adc: FakeMCP3008) -> None:
    chip = make_sysfs(tmp_path)
    set_cp(adc, -12.0)
    pilot = build("pilot", {"driver": "pwm", "sysfs_root": str(tmp_path)}, "connectors.1.pilot", 1,
                  BuildContext(gpio_pin_factory=factory))
    await pilot.start(lambda e: None)
    assert (sysfs(chip, "period"), sysfs(chip, "duty_cycle"), sysfs(chip, "enable")) == ("1000000", "0", "1")
    assert pilot.state == CpState.F and pilot.offered_amps is None
    await pilot.offer(16)
    # 26.66 % (rounded down, hal/pilot_duty.py): the EV reads 15.996 A, never more than 16
    assert sysfs(chip, "duty_cycle") == "266600" and pilot.offered_amps == pytest.approx(16, abs=0.01)
    assert pilot.offered_amps <= 16
    await pilot.offer(None)
    assert sysfs(chip, "duty_cycle") == "1000000" and pilot.offered_amps is None  # constant +12 V
    await pilot.offer(3)
    assert sysfs(chip, "duty_cycle") == "1000000"  # below 6 A: no PWM
    await pilot.set_unavailable()
    assert sysfs(chip, "duty_cycle") == "0"  # constant -12 V: state F
    await pilot.offer(32)
    await pilot.stop()
    assert sysfs(chip, "duty_cycle") == "0"  # stopped = state F


async def test_inverting_driver(tmp_path: Path, factory: MockFactory, adc: FakeMCP3008) -> None:
    chip = make_sysfs(tmp_path)
    pilot = build("pilot", {"driver": "pwm", "sysfs_root": str(tmp_path), "invert": True}, "p", 1,
                  BuildContext(gpio_pin_factory=factory))
    await pilot.start(lambda e: None)
    assert sysfs(chip, "duty_cycle") == "1000000"  # inverted: 100 % high time is -12 V
    await pilot.offer(16)
    assert sysfs(chip, "duty_cycle") == "733400"  # 100 % - 26.66 % (rounded down, hal/pilot_duty.py)
    await pilot.stop()


async def test_channel_is_exported_when_missing(tmp_path: Path, factory: MockFactory, adc: FakeMCP3008) -> None:
    chip = make_sysfs(tmp_path, exported=False)

    def kernel() -> None:  # what the kernel does when "0" is written to export
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            if (chip / "export").read_text().strip() == "0":
                export_channel(chip, 0)
                return
            time.sleep(0.01)

    t = threading.Thread(target=kernel)
    t.start()
    pilot = build("pilot", {"driver": "pwm", "sysfs_root": str(tmp_path)}, "p", 1,
                  BuildContext(gpio_pin_factory=factory))
    await pilot.start(lambda e: None)
    t.join()
    assert sysfs(chip, "enable") == "1"
    await pilot.stop()


@pytest.mark.parametrize("access_tracks_udev", [True, False])
async def test_export_waits_for_udev_permissions(tmp_path: Path, factory: MockFactory, adc: FakeMCP3008,
                                                 monkeypatch: pytest.MonkeyPatch, access_tracks_udev: bool) -> None:
    """After export the files exist but are root-only until udev has run: writes fail with PermissionError.

    We run as root here, so the permission window is emulated: writes to pwm0 raise PermissionError
    until "udev" is done; os.access either reports that (True) or lies (False: only the retry helps)."""
    chip = make_sysfs(tmp_path, exported=False)
    udev_pending = threading.Event()
    real_write = Path.write_text

    def write_text(self: Path, data: str, *args: object, **kwargs: object) -> int:
        if udev_pending.is_set() and self.parent.name == "pwm0" and threading.current_thread() is not t:
            raise PermissionError(13, "Permission denied", str(self))
        return real_write(self, data, *args, **kwargs)  # type: ignore[arg-type]

    real_access = os.access
    monkeypatch.setattr(Path, "write_text", write_text)
    monkeypatch.setattr(
        "hal.pilot_pwm.os.access",
        lambda path, mode: real_access(path, mode) and not (access_tracks_udev and udev_pending.is_set()),
    )

    def kernel_and_udev() -> None:
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            if (chip / "export").read_text().strip() == "0":
                udev_pending.set()
                export_channel(chip, 0)
                time.sleep(0.2)  # udev changes group/mode a moment later
                udev_pending.clear()
                return
            time.sleep(0.005)

    t = threading.Thread(target=kernel_and_udev)
    t.start()
    pilot = build("pilot", {"driver": "pwm", "sysfs_root": str(tmp_path)}, "p", 1,
                  BuildContext(gpio_pin_factory=factory))
    await pilot.start(lambda e: None)
    t.join()
    assert (sysfs(chip, "period"), sysfs(chip, "duty_cycle"), sysfs(chip, "enable")) == ("1000000", "0", "1")
    await pilot.stop()


async def test_levels_set_before_start_are_applied_at_open(tmp_path: Path, factory: MockFactory,
                                                            adc: FakeMCP3008) -> None:
    chip = make_sysfs(tmp_path, exported=False)
    pilot = build("pilot", {"driver": "pwm", "sysfs_root": str(tmp_path)}, "p", 1,
                  BuildContext(gpio_pin_factory=factory))
    await pilot.set_unavailable()  # pwm0 not exported yet: no FileNotFoundError
    await pilot.offer(16)
    assert not (chip / "pwm0").exists()
    export_channel(chip, 0)
    await pilot.start(lambda e: None)
    assert sysfs(chip, "enable") == "1" and sysfs(chip, "duty_cycle") == "266600"
    assert pilot.offered_amps == pytest.approx(16, abs=0.01)
    await pilot.stop()
    assert sysfs(chip, "duty_cycle") == "0"


async def test_missing_pwm_chip_explains_the_overlay(tmp_path: Path, factory: MockFactory) -> None:
    pilot = build("pilot", {"driver": "pwm", "sysfs_root": str(tmp_path)}, "p", 1,
                  BuildContext(gpio_pin_factory=factory))
    with pytest.raises(OSError, match="dtoverlay=pwm"):
        await pilot.start(lambda e: None)


# ---------------------------------------------------------------- CP sensing


async def wait_for(cond, timeout: float = 3.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_cp_states_are_sensed_and_reported(tmp_path: Path, factory: MockFactory, adc: FakeMCP3008) -> None:
    make_sysfs(tmp_path)
    set_cp(adc, 12.0)
    pilot = build("pilot", {"driver": "pwm", "sysfs_root": str(tmp_path), "poll_hz": 100}, "p", 1,
                  BuildContext(gpio_pin_factory=factory))
    events: list[HalEvent] = []
    await pilot.start(events.append)
    assert pilot.state == CpState.A
    for volts, state in ((9.0, CpState.B), (6.1, CpState.C), (2.9, CpState.D), (0.2, CpState.E),
                         (8.8, CpState.B), (11.7, CpState.A)):
        set_cp(adc, volts)
        # Wait for the event, not pilot.state: the state changes in the poll thread before the event
        # handed over with call_soon_threadsafe reaches the loop.
        await wait_for(lambda s=state: bool(events) and events[-1] == PilotChanged(1, s))  # type: ignore[misc]
        assert pilot.state == state
    assert [e.state for e in events if isinstance(e, PilotChanged)] == list("BCDEBA")
    assert all(e.connector_id == 1 for e in events)
    await pilot.stop()


async def test_calibration_scale_and_offset(tmp_path: Path, factory: MockFactory, adc: FakeMCP3008) -> None:
    make_sysfs(tmp_path)
    # A board whose divider maps 0..3.3 V to -13..+14 V instead of the nominal -12..+12 V.
    pilot = build("pilot", {"driver": "pwm", "sysfs_root": str(tmp_path), "scale": 27.0, "offset": -13.0}, "p", 1,
                  BuildContext(gpio_pin_factory=factory))
    adc.channels[0] = (6.0 + 13.0) / 27.0 * adc.vref
    await pilot.start(lambda e: None)
    assert pilot.state == CpState.C and pilot.last_volts == pytest.approx(6.0, abs=0.05)
    await pilot.stop()


async def test_short_glitch_is_debounced(tmp_path: Path, factory: MockFactory, adc: FakeMCP3008) -> None:
    make_sysfs(tmp_path)
    set_cp(adc, 9.0)
    pilot = build("pilot", {"driver": "pwm", "sysfs_root": str(tmp_path), "poll_hz": 50, "debounce_ms": 300},
                  "p", 1, BuildContext(gpio_pin_factory=factory))
    events: list[HalEvent] = []
    await pilot.start(events.append)
    seen = pilot.samples
    set_cp(adc, 6.0)
    await wait_for(lambda: pilot.samples >= seen + 1)  # exactly one or two samples see the glitch
    set_cp(adc, 9.0)
    await asyncio.sleep(0.4)
    assert events == [] and pilot.state == CpState.B
    set_cp(adc, 6.0)
    await wait_for(lambda: pilot.state == CpState.C)
    assert [e.state for e in events] == [CpState.C]  # type: ignore[union-attr]
    await pilot.stop()


async def test_diode_check(tmp_path: Path, factory: MockFactory, adc: FakeMCP3008) -> None:
    make_sysfs(tmp_path)
    set_cp(adc, 9.0)
    set_cp(adc, -12.0, channel=1)
    pilot = build("pilot", {"driver": "pwm", "sysfs_root": str(tmp_path), "negative_channel": 1, "poll_hz": 100},
                  "p", 1, BuildContext(gpio_pin_factory=factory))
    events: list[HalEvent] = []
    await pilot.start(events.append)
    await pilot.offer(16)
    set_cp(adc, -8.8, channel=1)  # EV without diode: low phase pulled up
    await wait_for(lambda: any(isinstance(e, FaultRaised) for e in events))
    [fault] = [e for e in events if isinstance(e, FaultRaised)]
    assert fault.kind == FaultKind.DIODE and fault.connector_id == 1
    set_cp(adc, -12.0, channel=1)
    await wait_for(lambda: FaultCleared(1, FaultKind.DIODE) in events)
    await pilot.offer(None)  # no PWM: no diode check (no low phase to look at)
    set_cp(adc, -8.8, channel=1)
    await asyncio.sleep(0.2)
    assert len([e for e in events if isinstance(e, FaultRaised)]) == 1
    await pilot.stop()


async def test_adc_failure_reports_f_and_pilot_board_fault(tmp_path: Path, factory: MockFactory,
                                                           adc: FakeMCP3008) -> None:
    """A dead ADC while the car is in C must not leave the pilot reading C (contactor closed) for ever."""
    make_sysfs(tmp_path)
    set_cp(adc, 6.0)
    pilot = build("pilot", {"driver": "pwm", "sysfs_root": str(tmp_path), "poll_hz": 100}, "p", 1,
                  BuildContext(gpio_pin_factory=factory))
    events: list[HalEvent] = []
    await pilot.start(events.append)
    assert pilot.state == CpState.C
    adc.fail = True
    await wait_for(lambda: PilotChanged(1, CpState.F) in events)
    assert pilot.state == CpState.F
    [fault] = [e for e in events if isinstance(e, FaultRaised)]
    assert fault.kind == FaultKind.PILOT_BOARD and fault.connector_id == 1 and "ADC" in fault.info
    assert events.index(fault) < events.index(PilotChanged(1, CpState.F))
    await asyncio.sleep(0.1)
    assert len([e for e in events if isinstance(e, FaultRaised)]) == 1  # reported once, not per read
    adc.fail = False
    await wait_for(lambda: PilotChanged(1, CpState.C) in events)
    assert FaultCleared(1, FaultKind.PILOT_BOARD) in events
    assert events.index(FaultCleared(1, FaultKind.PILOT_BOARD)) < events.index(PilotChanged(1, CpState.C))
    await pilot.stop()


def test_options(factory: MockFactory) -> None:
    ctx = BuildContext(gpio_pin_factory=factory)
    for options, key in (({"channel": 8}, "p.channel"), ({"negative_channel": 0}, "p.negative_channel"),
                         ({"period_ns": 500000}, "p.period_ns"), ({"poll_hz": 1}, "p.poll_hz"),
                         ({"scael": 2}, "p.scael")):
        with pytest.raises(HardwareConfigError) as exc:
            build("pilot", {"driver": "pwm", **options}, "p", 1, ctx)
        assert exc.value.key == key
    build("pilot", {"driver": "pwm"}, "connectors.1.pilot", 1, ctx)
    with pytest.raises(HardwareConfigError) as exc:
        build("pilot", {"driver": "pwm", "channel": 2}, "connectors.2.pilot", 2, ctx)
    assert exc.value.key == "connectors.2.pilot.pwm_channel" and "connectors.1.pilot" in exc.value.allowed
    assert isinstance(build("pilot", {"driver": "pwm", "pwm_channel": 1, "channel": 2}, "c3", 3, ctx), PwmPilot)

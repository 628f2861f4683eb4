"""Control pilot generated directly by the Pi: kernel hardware PWM (sysfs) + MCP3008 behind peak holds.

The circuit is the reference pilot / PP board (hardware-docs/pilot-circuit.md, schematic
hardware-docs/pilot-board.svg, every value in hardware-docs/pilot/values.toml, simulated with ngspice by
tests/test_pilot_circuit.py). The defaults below are that board's; tests/test_hardware_values.py checks
they agree with values.toml.

Generator: GPIO18 (``dtoverlay=pwm``; the chip and channel found from sysfs, see ``find_gpio18_pwm``) ->
Schmitt buffer supplied from the 3.000 V reference (a clean 0 / 3 V) -> a non-inverting op-amp stage on
±15 V working linearly (gain 8 around 1.714 V) -> +12.0 V / -12.0 V -> the 1 kΩ source resistor -> CP.
GPIO high -> +12 V, low -> -12 V: duty 100 % = constant +12 V (X1, no current offered), duty 0 % =
constant -12 V = state F. A stopped or crashed process (PWM disabled, pin low) and a Pi that is off (the
100 kΩ pull-down on GPIO18) therefore also give state F. A board with an inverting driver sets
``invert = true``. The duty for a current comes from hal/pilot_duty.py (rounded down: an EV never reads
more than was decided).

Sensing: Python cannot sample inside a 100 µs pulse, so the board holds the peaks. CP -> divider offset
from the reference (-12..+12 V -> 0..VREF, hence the default calibration volts = fraction * 24 - 12) ->
two active peak detectors (detector + follower): MCP3008 ``channel`` (CH0) holds the high phase, the
optional ``negative_channel`` (CH1 on the reference board) the low phase for the EV diode check (below
``diode_threshold_v`` = -10.5 V expected while PWM runs). Holds bleed with tau = 150 ms, so a state change
is seen within a few milliseconds. volts = adc_fraction * scale + offset (per board calibration).
States are classified at the midpoints of IEC 61851-1 Annex A's levels, 10.5/7.5/4.5/1.5 V (and -6 V
between E and F), with hysteresis and debounce, in a polling thread.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hal.driver_options import Options
from hal.interfaces import (
    CpState,
    Emit,
    FaultCleared,
    FaultKind,
    FaultRaised,
    HalEvent,
    HardwareConfigError,
    PilotChanged,
)
from hal.pilot_duty import NO_CURRENT_DUTY, amps_to_duty, duty_to_amps

log = logging.getLogger(__name__)

# Lower edge of each state's band (high level of the pilot, volts).
BANDS: list[tuple[CpState, float, float]] = [
    (CpState.A, 10.5, math.inf),
    (CpState.B, 7.5, 10.5),
    (CpState.C, 4.5, 7.5),
    (CpState.D, 1.5, 4.5),
    (CpState.E, -6.0, 1.5),
    (CpState.F, -math.inf, -6.0),
]


def classify(volts: float, current: CpState | None, hysteresis: float) -> CpState:
    """State for ``volts``; stays in ``current`` while within its band widened by ``hysteresis``."""
    if current is not None:
        for state, lo, hi in BANDS:
            if state == current and lo - hysteresis <= volts < hi + hysteresis:
                return current
    for state, lo, hi in BANDS:
        if lo <= volts < hi:
            return state
    return CpState.F


# PWM controllers that drive GPIO18 with the overlay deploy/install.sh writes (dtoverlay=pwm,pin=18,func=2),
# by the name of the device a pwmchip belongs to (the target of /sys/class/pwm/pwmchipN/device): which of
# its channels is GPIO18. The pwmchip *number* is not stable (it depends on probe order and kernel version;
# RP1's PWM0 has been seen as pwmchip2 and pwmchip0), the device name is the controller's bus address.
# Sources and what could not be checked on hardware: hardware-docs/pinout.md ("Raspberry Pi 5").
GPIO18_PWM_CONTROLLERS: dict[str, tuple[int, str]] = {
    "1f00098000.pwm": (2, "Raspberry Pi 5, RP1 PWM0 (GPIO18 = PWM0_CHAN2)"),
    "fe20c000.pwm": (0, "Raspberry Pi 4, BCM2711 PWM0 (GPIO18 = PWM0_0)"),
    "3f20c000.pwm": (0, "Raspberry Pi 3 / Zero 2 W, BCM2837 PWM0 (GPIO18 = PWM0_0)"),
}


def _chip_number(chip_dir: Path) -> int:
    return int(chip_dir.name.removeprefix("pwmchip"))


def _controller_name(chip_dir: Path) -> str | None:
    """Name of the device behind a pwmchip (``fe20c000.pwm``); None where sysfs has no ``device`` link."""
    device = chip_dir / "device"
    if not device.exists():
        return None
    return device.resolve().name


def find_gpio18_pwm(root: Path, chip: int | None = None) -> tuple[int, int, str]:
    """(chip number, channel, description) of the hardware PWM on GPIO18, from what sysfs reports.

    ``chip`` given: that chip; its channel from the controller table (0 for a controller not in it).
    Otherwise the one chip whose controller is in GPIO18_PWM_CONTROLLERS. A tree without ``device``
    links (a hand-made one) with exactly one chip uses that chip's channel 0, as before. Anything
    else is an error naming what was found: a PWM on the wrong pin would leave the pilot at -12 V
    (state F), so a guess cannot start a charge, but it could drive a pin wired to something else.
    """
    chips = sorted((d for d in root.glob("pwmchip*") if d.name[7:].isdigit()), key=_chip_number)
    if chip is not None:
        chip_dir = root / f"pwmchip{chip}"
        name = _controller_name(chip_dir) if chip_dir.is_dir() else None
        channel, what = GPIO18_PWM_CONTROLLERS.get(name or "", (0, f"pwmchip{chip} ({name or 'configured'})"))
        return chip, channel, what
    if not chips:
        raise OSError(f"no PWM chip in {root}: is dtoverlay=pwm set in /boot/firmware/config.txt "
                      "(deploy/install.sh writes it)?")
    names = {_chip_number(d): _controller_name(d) for d in chips}
    known = [(n, GPIO18_PWM_CONTROLLERS[name]) for n, name in names.items()
             if name in GPIO18_PWM_CONTROLLERS]
    if len(known) == 1:
        n, (channel, what) = known[0]
        return n, channel, what
    if not known and len(chips) == 1 and names[_chip_number(chips[0])] is None:
        return _chip_number(chips[0]), 0, f"{chips[0].name} (no device link)"
    found = ", ".join(f"pwmchip{n} -> {name or '?'}" for n, name in names.items())
    raise OSError(f"cannot tell which PWM chip drives GPIO18 ({found}): set pwm_chip and pwm_channel "
                  "in the pilot's configuration (hardware-docs/pinout.md)")


class SysfsPwm:
    """``/sys/class/pwm/pwmchipN/pwmM``; the root is configurable so tests use a directory tree.

    ``chip``/``channel`` None: found at open() by find_gpio18_pwm (sysfs is complete only after boot).
    """

    def __init__(self, root: Path, chip: int | None, channel: int | None, period_ns: int = 1_000_000,
                 invert: bool = False) -> None:
        self.root = root
        self._want_chip, self._want_channel = chip, channel
        self.chip_dir: Path | None = None if chip is None or channel is None else root / f"pwmchip{chip}"
        self.dir: Path | None = None if self.chip_dir is None else self.chip_dir / f"pwm{channel}"
        self.channel = channel
        self.period_ns = period_ns
        self.invert = invert
        self.duty_percent: float | None = None
        self._pending: float | None = None
        self._what: str | None = None  # the controller find_gpio18_pwm named, once resolved

    def describe(self) -> str:
        """Which PWM output this is, for people (the commissioning hints): the chip and channel in use, or,
        before open() resolved "auto", what sysfs reports now (or why nothing matches)."""
        if self.chip_dir is not None and self.dir is not None:
            how = self._what or ("configured" if self._want_chip is not None else "")
            return f"{self.chip_dir.name}/{self.dir.name}" + (f", {how}" if how else "")
        try:
            chip, channel, what = find_gpio18_pwm(self.root, self._want_chip)
        except OSError as exc:
            return f'pwm_chip = "auto": not yet found ({exc})'
        if self._want_channel is not None:
            channel = self._want_channel
        return f'pwm_chip = "auto": pwmchip{chip}/pwm{channel} would be used, {what} (not opened yet)'

    def _resolve(self) -> tuple[Path, Path]:
        if self.chip_dir is None or self.dir is None:
            chip, channel, what = find_gpio18_pwm(self.root, self._want_chip)
            if self._want_channel is not None:
                channel = self._want_channel
            self.chip_dir = self.root / f"pwmchip{chip}"
            self.dir = self.chip_dir / f"pwm{channel}"
            self.channel = channel
            self._what = what
            log.info("pilot PWM: %s, %s", what, self.dir)
        return self.chip_dir, self.dir

    def _write(self, name: str, value: int | str, retry_s: float = 0.0) -> None:
        """Write one attribute; a PermissionError is retried for ``retry_s`` (udev may not be done yet)."""
        assert self.dir is not None  # resolved by open()
        deadline = time.monotonic() + retry_s
        while True:
            try:
                (self.dir / name).write_text(f"{value}\n")
                return
            except PermissionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def open(self, export_timeout_s: float = 1.0) -> None:
        chip_dir, pwm_dir = self._resolve()
        if not chip_dir.is_dir():
            raise OSError(f"{chip_dir} missing: is dtoverlay=pwm set in /boot/firmware/config.txt?")
        npwm = chip_dir / "npwm"
        if npwm.is_file() and self.channel is not None and self.channel >= int(npwm.read_text().strip() or 0):
            raise OSError(f"{chip_dir} has {npwm.read_text().strip()} channels, no pwm{self.channel}: "
                          "check pwm_chip/pwm_channel (hardware-docs/pinout.md)")
        duty = pwm_dir / "duty_cycle"
        deadline = time.monotonic() + export_timeout_s
        if not pwm_dir.is_dir():
            (chip_dir / "export").write_text(f"{self.channel}\n")
        # After export the kernel creates the files owned by root; a udev rule changes group and mode a
        # moment later. Until then the non-root service user gets PermissionError on the first write.
        while not (duty.exists() and os.access(duty, os.W_OK)):
            if time.monotonic() > deadline:
                if not duty.exists():
                    raise OSError(f"{self.dir} did not appear after export")
                break  # not writable: the retrying writes below give the real error
            time.sleep(0.02)
        retry_s = max(deadline - time.monotonic(), 0.0) + 0.2
        pending = self._pending
        # duty must never exceed the period: zero it before changing the period.
        self._write("duty_cycle", 0, retry_s)
        self._write("period", self.period_ns, retry_s)
        self._apply(0.0, retry_s)
        self._write("enable", 1, retry_s)
        self._pending = None
        if pending is not None:  # a level asked for before open()
            self._apply(pending)

    def set_percent(self, percent: float) -> None:
        """Safe before open(): without an exported channel the level is remembered and applied by open()."""
        if self.dir is None or not (self.dir / "duty_cycle").exists():
            self._pending = percent
            return
        self._apply(percent)

    def _apply(self, percent: float, retry_s: float = 0.0) -> None:
        fraction = min(max(percent, 0.0), 100.0) / 100.0
        if self.invert:
            fraction = 1.0 - fraction
        self._write("duty_cycle", int(round(self.period_ns * fraction)), retry_s)
        self.duty_percent = percent

    def close(self) -> None:
        self.set_percent(0.0)  # state F; the channel stays enabled at a constant level


class PwmPilot:
    """Pilot generator + sensor of one connector on the Pi itself."""

    def __init__(self, connector_id: int, pwm: SysfsPwm, *, channel: int = 0, negative_channel: int | None = None,
                 spi_port: int = 0, spi_device: int = 0, scale: float = 24.0, offset: float = -12.0,
                 neg_scale: float = 24.0, neg_offset: float = -12.0, hysteresis_v: float = 0.4,
                 debounce_ms: float = 40.0, poll_hz: float = 50.0, diode_threshold_v: float = -10.5,
                 pin_factory: Any = None) -> None:
        self.connector_id = connector_id
        self.pwm = pwm
        self.channel = channel
        self.negative_channel = negative_channel
        self.spi_port, self.spi_device = spi_port, spi_device
        self.scale, self.offset = scale, offset
        self.neg_scale, self.neg_offset = neg_scale, neg_offset
        self.hysteresis_v = hysteresis_v
        self.poll_hz = poll_hz
        self.debounce_samples = max(1, math.ceil(debounce_ms / 1000.0 * poll_hz))
        self.diode_threshold_v = diode_threshold_v
        self._pf = pin_factory
        self._state = CpState.F
        self._offered: float | None = None
        self._emit: Emit | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._adc: Any = None
        self._adc_neg: Any = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._diode_fault = False
        # ~100 ms of failed reads in a row: the reading can no longer be trusted (see _poll).
        self.adc_fail_limit = max(1, math.ceil(0.1 * poll_hz))
        self._adc_fault = False
        self.last_volts: float | None = None
        self.last_negative_volts: float | None = None
        self.samples = 0

    @property
    def state(self) -> CpState:
        return self._state

    @property
    def offered_amps(self) -> float | None:
        return self._offered

    def _hand_over(self, event: HalEvent) -> None:
        if self._loop is not None and self._emit is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._emit, event)

    async def start(self, emit: Emit) -> None:
        from gpiozero import MCP3008

        self._emit = emit
        self._loop = asyncio.get_running_loop()
        await asyncio.to_thread(self.pwm.open)  # state F (duty 0) before anything else
        self._adc = MCP3008(channel=self.channel, port=self.spi_port, device=self.spi_device,
                            pin_factory=self._pf)
        if self.negative_channel is not None:
            self._adc_neg = MCP3008(channel=self.negative_channel, port=self.spi_port, device=self.spi_device,
                                    pin_factory=self._pf)
        self._state = classify(self.read_volts(), None, 0.0)
        self._stop.clear()
        self._thread = threading.Thread(target=self._poll, name=f"pilot-{self.connector_id}", daemon=True)
        self._thread.start()

    def read_volts(self) -> float:
        volts = float(self._adc.value) * self.scale + self.offset
        self.last_volts = volts
        return volts

    def _poll(self) -> None:
        period = 1.0 / self.poll_hz
        candidate: CpState | None = None
        count = 0
        diode_bad = 0
        failures = 0
        next_t = time.monotonic()
        while not self._stop.is_set():
            try:
                volts = self.read_volts()
                neg = None
                if self._adc_neg is not None:
                    neg = float(self._adc_neg.value) * self.neg_scale + self.neg_offset
                    self.last_negative_volts = neg
            except Exception as exc:
                # SPI/ADC error. Keeping the last state would leave a car "in C" (contactor closed) for
                # ever; after ~100 ms of failures report state F + PILOT_BOARD so the controller opens.
                failures += 1
                if failures == 1:
                    log.error("pilot %s: ADC read failed: %s", self.connector_id, exc)
                if failures >= self.adc_fail_limit and not self._adc_fault:
                    self._adc_fault = True
                    candidate, count = None, 0
                    self._hand_over(FaultRaised(self.connector_id, FaultKind.PILOT_BOARD,
                                                f"pilot ADC (MCP3008) read failed {failures} times: {exc}"))
                    if self._state != CpState.F:
                        self._state = CpState.F
                        self._hand_over(PilotChanged(self.connector_id, CpState.F))
                self._stop.wait(period)
                next_t = time.monotonic()
                continue
            failures = 0
            if self._adc_fault:
                self._adc_fault = False
                log.warning("pilot %s: ADC reads work again", self.connector_id)
                self._hand_over(FaultCleared(self.connector_id, FaultKind.PILOT_BOARD))
            self.samples += 1
            new = classify(volts, self._state, self.hysteresis_v)
            if new == self._state:
                candidate, count = None, 0
            elif new == candidate:
                count += 1
            else:
                candidate, count = new, 1
            if candidate is not None and count >= self.debounce_samples:
                self._state = candidate
                candidate, count = None, 0
                self._hand_over(PilotChanged(self.connector_id, self._state))
            if neg is not None:
                pwm_on = self.pwm.duty_percent is not None and 0.0 < self.pwm.duty_percent < 100.0
                bad = pwm_on and self._state.vehicle_connected and neg > self.diode_threshold_v
                diode_bad = diode_bad + 1 if bad else 0
                if diode_bad >= self.debounce_samples and not self._diode_fault:
                    self._diode_fault = True
                    self._hand_over(FaultRaised(self.connector_id, FaultKind.DIODE,
                                                f"pilot low phase {neg:.1f} V, expected -12 V: EV diode missing"))
                elif self._diode_fault and not bad and (self._state == CpState.A or pwm_on):
                    self._diode_fault = False
                    self._hand_over(FaultCleared(self.connector_id, FaultKind.DIODE))
            next_t += period
            delay = next_t - time.monotonic()
            if delay < -period:  # fell behind (system busy): do not try to catch up in a burst
                next_t = time.monotonic()
                delay = 0
            self._stop.wait(max(delay, 0.0))

    async def offer(self, amps: float | None) -> None:
        # Rounded down (hal/pilot_duty.py): the EV never reads more than decided; offered_amps is what
        # it reads (16 A -> 26.66 % -> 15.996 A).
        duty = amps_to_duty(amps)
        await asyncio.to_thread(self.pwm.set_percent, duty)
        self._offered = None if duty == NO_CURRENT_DUTY else duty_to_amps(duty)

    async def set_unavailable(self) -> None:
        await asyncio.to_thread(self.pwm.set_percent, 0.0)
        self._offered = None

    async def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 2)
        self._thread = None
        await asyncio.to_thread(self.pwm.close)
        self._offered = None
        for adc in (self._adc, self._adc_neg):
            if adc is not None:
                adc.close()
        self._adc = self._adc_neg = None


def build_pilot(options: Mapping[str, Any], key: str, connector_id: int, ctx: Any) -> PwmPilot:
    o = Options(options, key)
    root = Path(o.str("sysfs_root", "/sys/class/pwm"))
    # "auto": the chip/channel that drives GPIO18, from what sysfs reports (find_gpio18_pwm).
    chip = None if o.raw("pwm_chip", "auto") == "auto" else o.int("pwm_chip", None, lo=0, hi=15)
    pwm_channel = None if o.raw("pwm_channel", "auto") == "auto" else o.int("pwm_channel", None, lo=0, hi=3)
    pwm = SysfsPwm(root, chip, pwm_channel, o.int("period_ns", 1_000_000, lo=990_000, hi=1_010_000),
                   o.bool("invert", False))
    channel = o.int("channel", 0, lo=0, hi=7)
    neg = o.raw("negative_channel", "none")
    if neg != "none" and (isinstance(neg, bool) or not isinstance(neg, int) or not 0 <= neg <= 7):
        raise HardwareConfigError(key + ".negative_channel", neg, 'an MCP3008 channel 0-7 or "none"')
    if neg == channel:
        raise HardwareConfigError(key + ".negative_channel", neg, f"a channel other than channel ({channel})")
    dev = PwmPilot(
        connector_id, pwm,
        channel=channel, negative_channel=None if neg == "none" else neg,
        spi_port=o.int("spi_port", 0, lo=0, hi=1), spi_device=o.int("spi_device", 0, lo=0, hi=1),
        scale=o.float("scale", 24.0, lo=1.0, hi=100.0), offset=o.float("offset", -12.0, lo=-50.0, hi=50.0),
        neg_scale=o.float("negative_scale", 24.0, lo=1.0, hi=100.0),
        neg_offset=o.float("negative_offset", -12.0, lo=-50.0, hi=50.0),
        hysteresis_v=o.float("hysteresis_v", 0.4, lo=0.0, hi=1.0),
        debounce_ms=o.float("debounce_ms", 40.0, lo=0.0, hi=500.0),
        poll_hz=o.float("poll_hz", 50.0, lo=5.0, hi=500.0),
        diode_threshold_v=o.float("diode_threshold_v", -10.5, lo=-12.0, hi=-6.0),
        pin_factory=ctx.shared.get("gpio_pin_factory") if ctx is not None else None,
    )
    o.finish()
    claimed: dict[str, str] = ctx.get_or_create("pilot_pwm.channels", dict)
    chip_id = "auto" if chip is None else chip
    channel_id = "auto" if pwm_channel is None else pwm_channel
    for what, ident in (("pwm_channel", f"pwm:{root}:{chip_id}:{channel_id}"),
                        ("channel", f"adc:{dev.spi_port}.{dev.spi_device}:{channel}")):
        if ident in claimed:
            raise HardwareConfigError(f"{key}.{what}", o.raw(what), f"one not used by {claimed[ident]}")
        claimed[ident] = key
    return dev

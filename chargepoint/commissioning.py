"""``chargepoint check-hardware``: walk an installer through the wallbox one device at a time.

Each step prints ``PASS``, ``FAIL`` or ``SKIP`` and, when it fails, what to check (wiring, port,
address, baud rate). Mains is switched (contactor) only after an explicit "yes" -- or ``--yes``.
Steps that need a person (tap a card, set an EV test adapter) wait for the event with a timeout;
with ``--yes`` and nobody there they end as SKIP, not FAIL.

``ask`` is a blocking callable (``input``); it runs in a worker thread so the drivers' own tasks
(pilot sensing, RAPI heartbeat) keep running while the installer reads the question. When standard
input ends (``ssh host chargepoint check-hardware`` without a terminal) ``ask`` raises EOFError: every
further question is answered "no" (nothing is switched without a person confirming it) and the result
is reported as incomplete.

The "check:" hints name the driver that is really configured and its pins, port or address, read from
the built device, not the reference build's defaults.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hal.interfaces import (
    CableChanged,
    CableState,
    ConnectorHardware,
    CpState,
    Device,
    FaultKind,
    FaultRaised,
    HalEvent,
    IndicatorPattern,
    MeterError,
    StationHardware,
    TagPresented,
    TemperatureReading,
)

PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"


@dataclass
class Timeouts:
    tag_s: float = 20.0
    adapter_s: float = 30.0
    settle_s: float = 1.0


@dataclass
class Session:
    station: StationHardware
    ask: Callable[[str], str]
    say: Callable[[str], None]
    assume_yes: bool
    timeouts: Timeouts
    events: list[HalEvent] = field(default_factory=list)
    results: list[tuple[str, str]] = field(default_factory=list)
    input_closed: bool = False

    def report(self, status: str, title: str, detail: str = "", hints: tuple[str, ...] = ()) -> str:
        self.results.append((status, title))
        self.say(f"[{status}] {title}" + (f": {detail}" if detail else ""))
        if status == FAIL:
            for h in hints:
                self.say(f"       check: {h}")
        return status

    async def _ask(self, text: str) -> str | None:
        """The installer's answer; None once standard input has ended (nobody can answer any more)."""
        if self.input_closed:
            self.say(f"{text} -> no (standard input closed)")
            return None
        try:
            return str(await asyncio.to_thread(self.ask, text))
        except EOFError:
            self.input_closed = True
            self.say("")
            self.say("standard input closed: nobody can answer, so every question from here on is answered "
                     "'no' and nothing more is switched. Run it in a terminal (ssh -t), or with --yes "
                     "for an unattended check.")
            return None

    async def question(self, text: str, default_yes: bool = False) -> bool:
        if self.assume_yes:
            self.say(f"{text} -> yes (--yes)")
            return True
        suffix = " [Y/n]" if default_yes else " [y/N]"
        answer = await self._ask(text + suffix)
        if answer is None:
            return False  # never a default "yes" without a person there
        answer = answer.strip().lower()
        if not answer:
            return default_yes
        return answer in ("y", "yes", "j", "ja")

    async def prompt(self, text: str) -> bool:
        """Ask the installer to do something; False when they type 's' to skip."""
        if self.assume_yes:
            self.say(f"{text} (not asking: --yes; waiting for it to happen)")
            return True
        answer = await self._ask(text + " [Enter = done, s = skip]")
        return answer is not None and answer.strip().lower() not in ("s", "skip")

    def faults_since(self, mark: int, kinds: tuple[FaultKind, ...] | None = None) -> list[FaultRaised]:
        return [e for e in self.events[mark:] if isinstance(e, FaultRaised) and (kinds is None or e.kind in kinds)]


async def _wait(cond: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


def _name(dev: Any) -> str:
    return type(dev).__name__


def _driver(dev: Any) -> str:
    """The configuration's driver name of a built device (``hal.rapi`` → ``rapi``, ``hal.sim.*`` → ``sim``)."""
    module = type(dev).__module__
    if module.startswith("hal.sim"):
        return "sim"
    return {"hal.pilot_pwm": "pwm", "hal.rapi": "rapi", "hal.gpio": "gpio", "hal.modbus": "modbus",
            "hal.pcsc": "pcsc", "hal.rdm6300": "rdm6300"}.get(module, module.rsplit(".", 1)[-1])


def _gpio(dev: Any, attr: str) -> str:
    pin = getattr(dev, attr, None)
    return f"GPIO{pin}" if isinstance(pin, int) else "not configured"


SIM_HINT = "this device is simulated (driver = \"sim\"): set the real driver in the configuration"


def _meter_hints(meter: Any) -> tuple[str, ...]:
    driver = _driver(meter)
    bus = getattr(meter, "bus", None)
    model = getattr(getattr(meter, "model", None), "name", None)
    model_hint = f"model {model!r}: the register map must match the meter (hal/meters/*.toml)"
    address = f"the meter's Modbus address (device_id = {getattr(meter, 'device_id', '?')})"
    if driver == "modbus" and getattr(bus, "kind", None) == "tcp":
        return (
            f"the network path to {bus.describe()}: cable, IP address, `nc -vz` to the port from the Pi",
            "Modbus TCP enabled in the meter (or its gateway) and the port it listens on",
            f"{address}: the unit id the meter or gateway answers to",
            model_hint,
        )
    if driver == "modbus":
        port = bus.settings.get("port") if bus is not None else "?"
        return (
            "RS-485 wiring: A to A, B to B (swap A/B if nothing answers), GND/shield, 120 Ω termination",
            f"the port {port} exists (ls -l /dev/ttyUSB* /dev/chargepoint-meter /dev/ttyAMA0; the header UART is "
            "ttyAMA0 on every board, serial0 is the debug connector on a Pi 5)",
            f"{address}, baud rate and parity in its menu match the configuration ({bus.describe()})"
            if bus is not None else f"{address}, baud rate and parity in its menu",
            model_hint,
        )
    if driver == "sim":
        return (SIM_HINT,)
    return ("the meter configuration",)


def _pilot_hints(pilot: Any) -> tuple[str, ...]:
    driver = _driver(pilot)
    if driver == "pwm":
        pwm = getattr(pilot, "pwm", None)
        describe = getattr(pwm, "describe", None)
        # "auto" (the default) is resolved when the pilot starts: before that describe() says what sysfs
        # reports, never "pwmNone".
        output = describe() if callable(describe) else "?"
        return (
            "CP wiring from the socket to the pilot circuit (1 kΩ series resistor, PE as reference)",
            f"pilot driver pwm: the PWM output ({output}; GPIO18 with the pwm overlay) and the MCP3008 channel "
            f"{getattr(pilot, 'channel', '?')} on SPI {getattr(pilot, 'spi_port', 0)}.{getattr(pilot, 'spi_device', 0)}"
            f"; scale/offset calibration (now {getattr(pilot, 'scale', '?')}/{getattr(pilot, 'offset', '?')})",
            "the ±15 V supply of the pilot board (isolated DC-DC; its generator makes the ±12 V on CP, "
            "hardware-docs/pilot-circuit.md)",
        )
    if driver == "rapi":
        board = getattr(pilot, "board", None)
        return (
            "CP wiring from the OpenEVSE board's pilot output to the socket, PE connected",
            f"pilot driver rapi: the board on {getattr(board, 'port', '?')} at "
            f"{getattr(board, 'baudrate', '?')} baud answers (its display/LED shows it powered)",
            "the board's own self-test and its ±12 V supply",
        )
    if driver == "sim":
        return (SIM_HINT,)
    return ("the pilot configuration",)


def _contactor_hints(c: Any) -> tuple[str, ...]:
    if _driver(c) == "sim":
        return (SIM_HINT,)
    mirror = getattr(c, "mirror_pin", None)
    return (
        f"relay driver input on relay_pin ({_gpio(c, 'relay_pin')}) and its 12 V supply; the coil relay for a "
        "230 V coil",
        f"mirror contact wiring ({_gpio(c, 'mirror_pin')} to the auxiliary contact, other side to GND) and "
        f"mirror_contact = {getattr(c, 'mirror_contact', 'nc')!r} as fitted (\"nc\" or \"no\")"
        if mirror is not None else "no mirror contact configured (mirror_pin): a weld cannot be detected",
    )


def _rcm_hints(rcm: Any) -> tuple[str, ...]:
    if _driver(rcm) == "sim":
        return (SIM_HINT,)
    return (
        f"fault output to fault_pin ({_gpio(rcm, 'fault_pin')}) through its optocoupler; fault_active_high "
        f"= {str(getattr(rcm, 'fault_active_high', True)).lower()} must match how the module drives it",
        f"test input from test_pin ({_gpio(rcm, 'test_pin')}); the module's supply",
        "a latched RCM fault needs the module's own reset first",
    )


def _lock_hints(lock: Any) -> tuple[str, ...]:
    if _driver(lock) == "sim":
        return (SIM_HINT,)
    return (
        f"motor wiring to the H-bridge (lock_pin {_gpio(lock, 'lock_pin')}, unlock_pin "
        f"{_gpio(lock, 'unlock_pin')}) and its 12 V supply",
        f"feedback switch on feedback_pin ({_gpio(lock, 'feedback_pin')}) and feedback_active_low",
        "pulse_s for this actuator (0.3-1 s)",
    )


def _indicator_hints(ind: Any) -> tuple[str, ...]:
    if _driver(ind) == "sim":
        return (SIM_HINT,)
    pins = getattr(ind, "pins", (None, None, None))
    named = ", ".join(f"{colour} {'GPIO' + str(pin) if isinstance(pin, int) else 'none'}"
                      for colour, pin in zip(("green", "red", "blue"), pins, strict=False))
    return (f"LED pins ({named}) and their transistors",)


def _reader_hints(reader: Any) -> tuple[str, ...]:
    driver = _driver(reader)
    if driver == "pcsc":
        wanted = getattr(reader, "reader_filter", None)
        return (
            "PC/SC: `pcsc_scan` lists the reader" + (f" (its name must contain {wanted!r})" if wanted else "")
            + "; pcscd runs (systemctl status pcscd)",
            "ACR122U: blacklist the pn533/nfc kernel modules (they take the reader from pcscd)",
            "hold the card flat on the reader for a second",
        )
    if driver == "rdm6300":
        return (
            f"RDM6300: port {getattr(reader, 'port', '?')} at {getattr(reader, 'baudrate', 9600)} baud, module "
            "TX to the Pi's RX (GPIO15 for /dev/ttyAMA0), 5 V supply",
            "the serial console is off on that UART (raspi-config), enable_uart=1",
            "hold the card flat on the reader for a second",
        )
    if driver == "sim":
        return (SIM_HINT,)
    return ("the reader configuration",)


def _mask(tag: str) -> str:
    if len(tag) <= 6:
        return tag[:2] + "…"
    return f"{tag[:4]}…{tag[-2:]} ({len(tag)} characters)"


def _fmt(values: tuple[float | None, ...], unit: str, phases: int) -> str:
    return " / ".join("–" if v is None else f"{v:.1f} {unit}" for v in values[:phases])


# ---------------------------------------------------------------- steps


async def check_meter(s: Session, conn: ConnectorHardware) -> str:
    title = f"connector {conn.connector_id} meter"
    meter = conn.meter
    where = ""
    bus = getattr(meter, "bus", None)
    if bus is not None and hasattr(bus, "describe"):
        where = f" ({getattr(meter, 'model', None) and meter.model.name}, address {meter.device_id}, {bus.describe()})"
    try:
        r = await meter.read()
    except MeterError as exc:
        return s.report(FAIL, title + where, str(exc), _meter_hints(meter))
    except Exception as exc:  # a driver bug must not end the walk-through
        return s.report(FAIL, title + where, f"{type(exc).__name__}: {exc}", _meter_hints(meter))
    phases = getattr(meter, "phases", 3)
    s.say(f"       voltage {_fmt(r.voltage_v, 'V', phases)}, current {_fmt(r.current_a, 'A', phases)}, "
          f"power {'–' if r.power_w is None else f'{r.power_w:.0f} W'}, "
          f"energy {r.energy_wh / 1000:.3f} kWh"
          + ("" if r.frequency_hz is None else f", {r.frequency_hz:.2f} Hz"))
    volts = [v for v in r.voltage_v[:phases] if v is not None]
    if volts and not all(207.0 <= v <= 253.0 for v in volts):
        s.say("       note: voltage outside 230 V ± 10 % -- expected 0 V only if the meter sits after the "
              "contactor; otherwise check the voltage taps and phases")
    return s.report(PASS, title + where, "meter answers")


async def check_pilot(s: Session, conn: ConnectorHardware) -> None:
    pilot = conn.pilot
    cid = conn.connector_id
    hints_sense = _pilot_hints(pilot)

    def volts() -> str:
        v = getattr(pilot, "last_volts", None)
        return "" if v is None else f" (measured {v:+.1f} V)"

    await pilot.offer(None)
    ok = await _wait(lambda: pilot.state == CpState.A, s.timeouts.settle_s)
    s.report(PASS if ok else FAIL, f"connector {cid} pilot, nothing plugged in",
             f"state {pilot.state.value}{volts()}, expected A (+12 V)", (*hints_sense,
             "nothing may be plugged into the socket during this step"))
    await pilot.set_unavailable()
    ok = await _wait(lambda: pilot.state == CpState.F, s.timeouts.settle_s)
    s.report(PASS if ok else FAIL, f"connector {cid} pilot, unavailable", f"state {pilot.state.value}{volts()}, "
             "expected F (-12 V)", ("the -12 V rail and the op-amp output stage", *hints_sense[1:2])
             if _driver(pilot) == "pwm" else hints_sense)
    await pilot.offer(None)
    if not await s.prompt(f"Connector {cid}: plug in an EV test adapter set to state B (vehicle connected)."):
        s.report(SKIP, f"connector {cid} pilot with test adapter", "skipped by the installer")
        return
    adapter_hints = (*hints_sense, "the test adapter's state switch and its CP/PE contacts")
    ok = await _wait(lambda: pilot.state == CpState.B, s.timeouts.adapter_s)
    if not ok:
        status = SKIP if s.assume_yes else FAIL
        s.report(status, f"connector {cid} pilot, test adapter in B", f"state {pilot.state.value}{volts()} "
                 f"after {s.timeouts.adapter_s:.0f} s, expected B (+9 V)", adapter_hints)
        return
    s.report(PASS, f"connector {cid} pilot, test adapter in B", f"state B{volts()}")
    await pilot.offer(16.0)
    s.say(f"       offering 16 A on the pilot (duty {16 / 0.6:.1f} %)")
    if not await s.prompt(f"Connector {cid}: set the test adapter to state C (vehicle asks for power)."):
        s.report(SKIP, f"connector {cid} pilot, test adapter in C", "skipped by the installer")
    else:
        ok = await _wait(lambda: pilot.state == CpState.C, s.timeouts.adapter_s)
        status = PASS if ok else (SKIP if s.assume_yes else FAIL)
        s.report(status, f"connector {cid} pilot, test adapter in C", f"state {pilot.state.value}{volts()}, "
                 "expected C (+6 V)", adapter_hints)
    await pilot.offer(None)
    await s.prompt(f"Connector {cid}: set the test adapter back to A and unplug it.")
    await _wait(lambda: pilot.state == CpState.A, s.timeouts.adapter_s if not s.assume_yes else s.timeouts.settle_s)


async def check_contactor(s: Session, conn: ConnectorHardware) -> str:
    c = conn.contactor
    cid = conn.connector_id
    title = f"connector {cid} contactor"
    if hasattr(c, "board") and not hasattr(c, "mirror_closed"):
        return s.report(SKIP, title, "the pilot board switches its relay itself when an EV asks for power; "
                        "verify it with the test adapter in state C and a voltage tester")
    mirror = getattr(c, "mirror_closed", None)
    hints = _contactor_hints(c)
    if mirror is not None:
        s.say(f"       mirror contact reads {'CLOSED' if mirror else 'open'} with the relay off")
        if mirror:
            return s.report(FAIL, title, "mirror contact reads closed while the contactor is off: welded "
                            "contactor or wrong mirror_contact setting", hints)
    if not await s.question(f"Connector {cid}: switch the contactor ON for about one second? The socket "
                            "becomes live if mains is on -- nobody may touch it"):
        return s.report(SKIP, title, "not switched (no confirmation)")
    mark = len(s.events)
    await c.close()
    await asyncio.sleep(0.3)
    closed_reading = getattr(c, "mirror_closed", None)
    await asyncio.sleep(0.7)
    await c.open()
    wait_checks = getattr(c, "wait_checks", None)
    if wait_checks is not None:
        await wait_checks()
    else:
        await asyncio.sleep(s.timeouts.settle_s)
    open_reading = getattr(c, "mirror_closed", None)
    welds = s.faults_since(mark, (FaultKind.WELD,))
    if closed_reading is None:
        if s.assume_yes:
            return s.report(SKIP, title, "switched on and off; no mirror contact to verify it")
        heard = await s.question("Did the contactor click on and then off?")
        return s.report(PASS if heard else FAIL, title, "no mirror contact; installer " +
                        ("heard" if heard else "did not hear") + " it", hints[:1])
    s.say(f"       mirror contact: {'closed' if closed_reading else 'OPEN'} while on, "
          f"{'CLOSED' if open_reading else 'open'} after switching off")
    if welds or open_reading:
        return s.report(FAIL, title, "contactor did not open (welded?) -- keep the wallbox out of service: "
                        + "; ".join(f.info for f in welds), hints)
    if not closed_reading:
        return s.report(FAIL, title, "mirror contact did not follow: contactor did not close", hints)
    return s.report(PASS, title, "closed and opened, mirror contact followed")


async def check_rcm(s: Session, conn: ConnectorHardware) -> str:
    title = f"connector {conn.connector_id} residual current monitor"
    if conn.rcm is None:
        return s.report(SKIP, title, "none configured")
    if not await s.question(f"Connector {conn.connector_id}: run the RCM self-test now?", default_yes=True):
        return s.report(SKIP, title, "skipped by the installer")
    ok = await conn.rcm.self_test()
    return s.report(PASS if ok else FAIL, title, "self-test " + ("passed" if ok else "failed"),
                    _rcm_hints(conn.rcm))


async def check_lock(s: Session, conn: ConnectorHardware) -> str:
    title = f"connector {conn.connector_id} socket lock"
    lock = conn.lock
    if lock is None:
        return s.report(SKIP, title, "none configured")
    if not await s.question(f"Connector {conn.connector_id}: lock and unlock the socket now? Nothing may be "
                            "plugged in", default_yes=True):
        return s.report(SKIP, title, "skipped by the installer")
    hints = _lock_hints(lock)
    locked = await lock.lock()
    unlocked = await lock.unlock() if locked else False
    if locked and unlocked and not lock.is_locked:
        return s.report(PASS, title, "locked and unlocked, feedback followed")
    if locked and not unlocked:
        return s.report(FAIL, title, "locked but did NOT unlock -- a cable would be stuck", hints)
    return s.report(FAIL, title, "did not lock", hints)


async def check_indicator(s: Session, ind: Any, where: str) -> str:
    title = f"{where} indicator"
    for pattern, what in ((IndicatorPattern.IDLE, "green"), (IndicatorPattern.FAULT, "red"),
                          (IndicatorPattern.CHARGING, "blue")):
        ind.show(pattern)
        s.say(f"       {what} on")
        await asyncio.sleep(s.timeouts.settle_s)
    ind.show(IndicatorPattern.OFF)
    if s.assume_yes:
        return s.report(SKIP, title, "shown green, red, blue; nobody asked to confirm")
    seen = await s.question("Did you see green, then red, then blue?")
    return s.report(PASS if seen else FAIL, title, "installer " + ("saw" if seen else "did not see") + " it",
                    _indicator_hints(ind))


async def check_reader(s: Session, reader: Device, index: int) -> str:
    title = f"RFID reader {index} ({_name(reader)})"
    gone = [f for f in s.events if isinstance(f, FaultRaised) and f.kind == FaultKind.READER]
    hints = _reader_hints(reader)
    mark = len(s.events)
    if not await s.prompt(f"Tap a card on RFID reader {index} (waiting {s.timeouts.tag_s:.0f} s)."):
        return s.report(SKIP, title, "skipped by the installer")
    ok = await _wait(lambda: any(isinstance(e, TagPresented) for e in s.events[mark:]), s.timeouts.tag_s)
    if not ok:
        why = f"no tag within {s.timeouts.tag_s:.0f} s" + (f"; reader fault: {gone[-1].info}" if gone else "")
        return s.report(SKIP if s.assume_yes and not gone else FAIL, title, why, hints)
    tag = next(e for e in s.events[mark:] if isinstance(e, TagPresented)).id_tag
    return s.report(PASS, title, f"tag {_mask(tag)}")


def _last_cable(s: Session, cid: int) -> CableChanged | None:
    return next((e for e in reversed(s.events) if isinstance(e, CableChanged) and e.connector_id == cid), None)


async def check_cable(s: Session, conn: ConnectorHardware) -> None:
    """Socket only: PP reads "no cable" when empty and 13 A with a 13 A cable / test adapter (1.5 kΩ)."""
    cid = conn.connector_id
    hints = ("PP wiring from the socket to the pull-up and MCP3008 channel, PE as reference",
             "pp options: channel, pullup_ohm, series_ohm, divider_ohm, supply_v (hardware-docs/drivers.md)")
    ok = await _wait(lambda: (c := _last_cable(s, cid)) is not None and c.state == CableState.ABSENT,
                     s.timeouts.settle_s)
    last = _last_cable(s, cid)
    s.report(PASS if ok else FAIL, f"connector {cid} cable (PP), nothing plugged in",
             f"{last.state.value if last else 'no reading'} {last.detail if last else ''}".strip(), hints)
    if not await s.prompt(f"Plug a 13 A cable (or set the test adapter's PP to 13 A, 1.5 kΩ) into connector {cid}"):
        s.report(SKIP, f"connector {cid} cable (PP) 13 A", "skipped by the installer")
        return
    ok = await _wait(lambda: (c := _last_cable(s, cid)) is not None and c.state == CableState.RATED and c.amps == 13,
                     s.timeouts.adapter_s)
    last = _last_cable(s, cid)
    if not ok and s.assume_yes and (last is None or last.state == CableState.ABSENT):
        s.report(SKIP, f"connector {cid} cable (PP) 13 A", "nobody plugged a cable (--yes)")
        return
    s.report(PASS if ok else FAIL, f"connector {cid} cable (PP) 13 A",
             f"{last.state.value if last else 'no reading'} {last.detail if last else ''}".strip(), hints)


async def check_temperature(s: Session, conn: ConnectorHardware) -> str:
    cid = conn.connector_id
    title = f"connector {cid} temperature sensor"
    await _wait(lambda: any(isinstance(e, TemperatureReading) and e.connector_id == cid for e in s.events),
                s.timeouts.settle_s + 2.0)
    faults = [f for f in s.faults_since(0, (FaultKind.TEMP_SENSOR,)) if f.connector_id == cid]
    readings = [e for e in s.events if isinstance(e, TemperatureReading) and e.connector_id == cid]
    hints = ("the NTC's wires and its MCP3008 channel", "temperature options: r25_ohm, beta, series_ohm, ntc_position")
    if faults or not readings:
        return s.report(FAIL, title, faults[-1].info if faults else "no reading", hints)
    r = readings[-1]
    plausible = -10.0 <= r.celsius <= 45.0
    return s.report(PASS if plausible else FAIL, title,
                    f"{r.sensor} {r.celsius:.1f} °C" + ("" if plausible else ", expected room temperature"), hints)


# ---------------------------------------------------------------- walk-through


async def check_hardware(station: StationHardware, *, ask: Callable[[str], str], say: Callable[[str], None],
                         assume_yes: bool, timeouts: Timeouts | None = None) -> bool:
    """Walk through every device; True when nothing failed (SKIPs are allowed)."""
    s = Session(station, ask, say, assume_yes, timeouts or Timeouts())
    say("Hardware check. Outputs start off; mains is switched only after you confirm.")
    started: list[Device] = []
    try:
        for dev in station.devices():
            if dev in started:
                continue
            try:
                await dev.start(s.events.append)
                started.append(dev)
            except Exception as exc:
                s.report(FAIL, f"start {_name(dev)}", f"{type(exc).__name__}: {exc}",
                         ("the device's port/pins in the configuration and that the service is stopped "
                          "(sudo systemctl stop chargepoint)",))
        await asyncio.sleep(0.3)
        for f in s.faults_since(0):
            s.say(f"       fault reported at start: connector {f.connector_id} {f.kind.value}: {f.info}")
        for conn in station.connectors:
            say(f"--- connector {conn.connector_id}")
            if conn.meter in started:
                await check_meter(s, conn)
            if conn.pilot in started:
                await check_pilot(s, conn)
            if conn.pp is not None and conn.pp in started:
                await check_cable(s, conn)
            if conn.temperature is not None and conn.temperature in started:
                await check_temperature(s, conn)
            if conn.contactor in started:
                await check_contactor(s, conn)
            if conn.rcm is None or conn.rcm in started:
                await check_rcm(s, conn)
            if conn.lock is None or conn.lock in started:
                await check_lock(s, conn)
            if conn.indicator is not None and conn.indicator in started:
                await check_indicator(s, conn.indicator, f"connector {conn.connector_id}")
        if station.indicator is not None and station.indicator in started:
            await check_indicator(s, station.indicator, "station")
        for i, reader in enumerate(station.readers):
            if reader in started:
                await check_reader(s, reader, i)
    finally:
        for conn in station.connectors:  # safe state before stopping: contactor open, pilot F
            with contextlib.suppress(Exception):
                if conn.contactor in started:
                    await conn.contactor.open()
            with contextlib.suppress(Exception):
                if conn.pilot in started:
                    await conn.pilot.set_unavailable()
        for dev in reversed(started):
            with contextlib.suppress(Exception):
                await dev.stop()
    counts = {k: sum(1 for st, _ in s.results if st == k) for k in (PASS, FAIL, SKIP)}
    say(f"Result: {counts[PASS]} passed, {counts[FAIL]} failed, {counts[SKIP]} skipped."
        + (" Incomplete: standard input closed before every question was answered." if s.input_closed else ""))
    return counts[FAIL] == 0 and not s.input_closed

"""Narrow hardware interfaces the controller talks to.

Every device the controller drives or reads is one small Protocol here. Drivers
(real or simulated) implement them and know nothing about OCPP. Inputs reach the
controller as *events* through an ``emit`` callback handed to ``start()``; the
callback must be called on the event loop's thread (a driver that runs a thread
uses ``loop.call_soon_threadsafe(emit, event)``).

Outputs start de-energized: a freshly constructed contactor is open, a pilot
offers nothing (state F or constant +12 V) until told otherwise.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


class CpState(str, enum.Enum):
    """Control-pilot state per IEC 61851-1 (see shared/HARDWARE-FACTS.md)."""

    A = "A"  # +12 V, no vehicle
    B = "B"  # +9 V, vehicle connected, not asking for power
    C = "C"  # +6 V, vehicle asks for power
    D = "D"  # +3 V, asks for power with ventilation
    E = "E"  # 0 V, CP shorted or no supply: error
    F = "F"  # -12 V, EVSE not available

    @property
    def vehicle_connected(self) -> bool:
        return self in (CpState.B, CpState.C, CpState.D)

    @property
    def wants_power(self) -> bool:
        return self in (CpState.C, CpState.D)


class FaultKind(str, enum.Enum):
    """Hardware fault kinds a driver can report. The OCPP errorCode mapping lives in the controller."""

    RCD = "rcd"  # residual current detected / self-test failed
    WELD = "weld"  # contactor mirror contact disagrees with the command
    METER = "meter"  # energy meter does not answer
    OVERCURRENT = "overcurrent"  # EV draws more than the duty cycle allows
    DIODE = "diode"  # pilot low phase does not reach -12 V
    CP_SHORT = "cp_short"  # pilot in state E
    LOCK = "lock"  # socket lock did not reach its position
    READER = "reader"  # RFID reader gone
    OVERTEMP = "overtemp"
    OVERVOLTAGE = "overvoltage"
    UNDERVOLTAGE = "undervoltage"
    PILOT_BOARD = "pilot_board"  # pilot board does not answer
    OTHER = "other"
    CABLE = "cable"  # socket: the PP coding is no valid cable rating (IEC 61851-1 Annex B, IEC 62196-2)
    TEMP_SENSOR = "temp_sensor"  # NTC open or shorted: the temperature can no longer be watched
    PHASE_SWITCH = "phase_switch"  # the 1p/3p switch did not end on the phases asked (meter, relay driver)


class IndicatorPattern(str, enum.Enum):
    OFF = "off"
    IDLE = "idle"  # steady green: available
    WAITING_FOR_PLUG = "waiting_for_plug"  # slow pulse after an accepted tap
    ACCEPTED = "accepted"  # green blink
    REFUSED = "refused"  # red blink
    CHARGING = "charging"  # blue/green breathing
    SUSPENDED = "suspended"
    RESERVED = "reserved"
    UNAVAILABLE = "unavailable"
    FAULT = "fault"  # steady red


# ---------------------------------------------------------------- events


@dataclass(frozen=True)
class PilotChanged:
    connector_id: int
    state: CpState


@dataclass(frozen=True)
class TagPresented:
    id_tag: str
    reader: str = "reader"


@dataclass(frozen=True)
class FaultRaised:
    """A driver detected a fault. ``connector_id`` 0 means the whole station."""

    connector_id: int
    kind: FaultKind
    info: str = ""
    latched: bool = False  # True: needs a Reset or a technician to clear


@dataclass(frozen=True)
class FaultCleared:
    connector_id: int
    kind: FaultKind


class CableState(str, enum.Enum):
    """What the proximity pilot (PP) of a socket says about the plugged cable."""

    ABSENT = "absent"  # PP open: no cable in the socket
    RATED = "rated"  # a valid coding: ``amps`` is the cable's current capability
    INVALID = "invalid"  # between codes, outside every band or shorted: no offer, a fault
    UNKNOWN = "unknown"  # the PP input cannot be read (ADC failure): no offer


@dataclass(frozen=True)
class CableChanged:
    """The debounced PP reading of a socketed connector changed."""

    connector_id: int
    state: CableState
    amps: float | None = None  # RATED only
    detail: str = ""  # e.g. "PP 452 ohm (ADC 301): between the 20 A and 13 A codes"


@dataclass(frozen=True)
class TemperatureReading:
    """A (filtered) temperature of one sensor of a connector, e.g. the socket terminals' NTC."""

    connector_id: int
    sensor: str
    celsius: float


HalEvent = PilotChanged | TagPresented | FaultRaised | FaultCleared | CableChanged | TemperatureReading
Emit = Callable[[HalEvent], None]


# ---------------------------------------------------------------- readings


@dataclass(frozen=True)
class MeterReading:
    """One consistent read of an energy meter. Missing quantities are None."""

    energy_wh: float  # active energy import register, monotonic
    power_w: float | None = None
    current_a: tuple[float | None, float | None, float | None] = (None, None, None)
    voltage_v: tuple[float | None, float | None, float | None] = (None, None, None)
    frequency_hz: float | None = None
    temperature_c: float | None = None
    extra: dict[str, float] = field(default_factory=dict)


class MeterError(Exception):
    """The meter did not answer or answered garbage."""


class HardwareConfigError(ValueError):
    """A driver option is wrong. ``key`` is the dotted config path of the option."""

    def __init__(self, key: str, value: object, allowed: str) -> None:
        self.key = key
        self.value = value
        self.allowed = allowed
        super().__init__(f"{key} = {value!r}: {allowed}")


# ---------------------------------------------------------------- devices


@runtime_checkable
class Device(Protocol):
    async def start(self, emit: Emit) -> None:
        """Begin reporting events. Called once, on the event loop."""

    async def stop(self) -> None:
        """Stop reporting and return outputs to their safe state."""


@runtime_checkable
class Pilot(Device, Protocol):
    """The control-pilot generator and sensor of one connector."""

    @property
    def state(self) -> CpState: ...

    async def offer(self, amps: float | None) -> None:
        """Offer ``amps`` as PWM duty; ``None`` = constant +12 V (no current offered, X1)."""

    async def set_unavailable(self) -> None:
        """Constant -12 V (state F): the EVSE is not available."""

    @property
    def offered_amps(self) -> float | None:
        """The current in effect on the pilot now (None = no PWM)."""


@runtime_checkable
class Contactor(Device, Protocol):
    @property
    def is_closed(self) -> bool:
        """The commanded position."""

    async def close(self) -> None: ...

    async def open(self) -> None: ...


@runtime_checkable
class Meter(Device, Protocol):
    phases: int

    async def read(self) -> MeterReading:
        """Raises MeterError when the meter does not answer."""


@runtime_checkable
class TokenReader(Device, Protocol):
    """Emits TagPresented for every tap."""


@runtime_checkable
class ConnectorLock(Device, Protocol):
    @property
    def is_locked(self) -> bool: ...

    async def lock(self) -> bool:
        """True when the lock reached its position."""

    async def unlock(self) -> bool: ...


@runtime_checkable
class ResidualCurrentMonitor(Device, Protocol):
    """Emits FaultRaised(kind=RCD, latched=True) when it trips."""

    async def self_test(self) -> bool: ...


@runtime_checkable
class Indicator(Device, Protocol):
    def show(self, pattern: IndicatorPattern) -> None: ...


@dataclass
class ConnectorHardware:
    """Everything that belongs to one connector. Lock, RCM, indicator, PP and temperature are optional.

    ``pp`` reads the cable rating of a socket (emits ``CableChanged``); a tethered cable has none.
    ``temperature`` emits ``TemperatureReading`` (and ``FaultRaised(TEMP_SENSOR)`` for a broken sensor)."""

    connector_id: int
    pilot: Pilot
    contactor: Contactor
    meter: Meter
    lock: ConnectorLock | None = None
    rcm: ResidualCurrentMonitor | None = None
    indicator: Indicator | None = None
    pp: Device | None = None
    temperature: Device | None = None

    def devices(self) -> list[Device]:
        return [
            d
            for d in (self.pilot, self.contactor, self.meter, self.lock, self.rcm, self.indicator, self.pp,
                      self.temperature)
            if d
        ]


@dataclass
class StationHardware:
    connectors: list[ConnectorHardware]
    readers: list[TokenReader] = field(default_factory=list)
    indicator: Indicator | None = None

    def devices(self) -> list[Device]:
        out: list[Device] = []
        for c in self.connectors:
            out.extend(c.devices())
        out.extend(self.readers)
        if self.indicator:
            out.append(self.indicator)
        return out

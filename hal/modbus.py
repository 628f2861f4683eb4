"""Modbus energy meters over RTU (RS-485) or TCP, with register maps kept as data.

A meter model is a TOML file in ``hal/meters/`` (or any file given as ``map_file``): function code,
address, type, word order, scale and unit per quantity. Adding a meter means adding a file.

Several meters may share one RS-485 line: the bus object (shared through the BuildContext under
``modbus:rtu:<port>``) serializes requests and keeps ``request_gap_ms`` between them, as slow
meters on RS-485 need (HARDWARE-FACTS "Modbus energy meters").
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hal.driver_options import Options
from hal.interfaces import (
    Emit,
    FaultCleared,
    FaultKind,
    FaultRaised,
    HardwareConfigError,
    MeterError,
    MeterReading,
)

log = logging.getLogger(__name__)

METERS_DIR = Path(__file__).parent / "meters"

# type -> (registers, struct format of the big-endian byte string)
TYPES: dict[str, tuple[int, str]] = {
    "int16": (1, ">h"), "uint16": (1, ">H"),
    "int32": (2, ">i"), "uint32": (2, ">I"),
    "int64": (4, ">q"), "uint64": (4, ">Q"),
    "float32": (2, ">f"),
}
UNITS: dict[str, float] = {"V": 1, "A": 1, "W": 1, "kW": 1000, "Hz": 1, "Wh": 1, "kWh": 1000, "C": 1, "var": 1}
KNOWN = {"voltage_l1", "voltage_l2", "voltage_l3", "current_l1", "current_l2", "current_l3", "power",
         "frequency", "energy_import", "temperature"}


@dataclass(frozen=True)
class Register:
    name: str
    function: int
    address: int
    type: str
    word_order: str
    scale: float
    unit: str

    @property
    def count(self) -> int:
        return TYPES[self.type][0]


@dataclass(frozen=True)
class MeterModel:
    name: str
    phases: int
    registers: tuple[Register, ...]
    max_block: int
    invalid_all_ones: bool

    def blocks(self) -> list[tuple[int, int, int, list[Register]]]:
        """Group registers into requests of at most ``max_block`` registers: (function, start, count, regs)."""
        out: list[tuple[int, int, int, list[Register]]] = []
        for fc in sorted({r.function for r in self.registers}):
            regs = sorted((r for r in self.registers if r.function == fc), key=lambda r: r.address)
            start, group = regs[0].address, [regs[0]]
            for r in regs[1:]:
                end = max(g.address + g.count for g in group)
                if max(end, r.address + r.count) - start <= self.max_block:
                    group.append(r)
                else:
                    out.append((fc, start, end - start, group))
                    start, group = r.address, [r]
            end = max(g.address + g.count for g in group)
            out.append((fc, start, end - start, group))
        return out


def load_model(path: Path, key: str) -> MeterModel:
    """Parse a register map; errors name the file and the entry."""
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise HardwareConfigError(key, str(path), f"a readable TOML register map ({exc})") from exc
    where = f"{key} ({path.name})"

    def bad(entry: str, value: object, allowed: str) -> HardwareConfigError:
        return HardwareConfigError(f"{where}: {entry}", value, allowed)

    default_fc = data.get("function", 4)
    default_order = data.get("word_order", "big")
    regs: list[Register] = []
    table = data.get("registers")
    if not isinstance(table, dict) or "energy_import" not in table:
        raise bad("registers", table, "a [registers] table with at least energy_import")
    for name, spec in table.items():
        if not isinstance(spec, dict):
            raise bad(f"registers.{name}", spec, "an inline table {address=…, type=…}")
        fc = spec.get("function", default_fc)
        if fc not in (3, 4):
            raise bad(f"registers.{name}.function", fc, "3 (holding) or 4 (input)")
        typ = spec.get("type")
        if typ not in TYPES:
            raise bad(f"registers.{name}.type", typ, "one of " + ", ".join(sorted(TYPES)))
        order = spec.get("word_order", default_order)
        if order not in ("big", "little"):
            raise bad(f"registers.{name}.word_order", order, "'big' (high word first) or 'little'")
        unit = spec.get("unit", "")
        if unit not in UNITS and name in KNOWN:
            raise bad(f"registers.{name}.unit", unit, "one of " + ", ".join(UNITS))
        address = spec.get("address")
        if not isinstance(address, int) or not 0 <= address <= 0xFFFF:
            raise bad(f"registers.{name}.address", address, "an integer 0-65535")
        regs.append(Register(name, fc, address, typ, order, float(spec.get("scale", 1.0)), unit))
    phases = data.get("phases", 3)
    if phases not in (1, 3):
        raise bad("phases", phases, "1 or 3")
    max_block = data.get("max_block", 40)
    if not isinstance(max_block, int) or not 4 <= max_block <= 125:
        raise bad("max_block", max_block, "an integer 4-125")
    return MeterModel(str(data.get("name", path.stem)), phases, tuple(regs), max_block,
                      bool(data.get("invalid_all_ones", False)))


def available_models() -> list[str]:
    return sorted(p.stem for p in METERS_DIR.glob("*.toml"))


def decode(reg: Register, words: list[int], invalid_all_ones: bool = False) -> float | None:
    """Registers (16-bit words as read) -> scaled value in the register's unit; None if marked invalid."""
    if reg.word_order == "little":
        words = list(reversed(words))
    raw = struct.pack(f">{len(words)}H", *words)
    if invalid_all_ones and raw == b"\xff" * len(raw):
        return None
    (value,) = struct.unpack(TYPES[reg.type][1], raw)
    if value != value:  # NaN from a float register
        return None
    return float(value) * reg.scale


# ---------------------------------------------------------------- bus


class ModbusBus:
    """One physical line (serial port or TCP endpoint) shared by the meters on it."""

    def __init__(self, kind: str, settings: dict[str, Any], request_gap_s: float) -> None:
        self.kind = kind
        self.settings = settings
        self.request_gap_s = request_gap_s
        self.client: Any = None
        self._lock: asyncio.Lock | None = None
        self._last = 0.0
        self.requests = 0

    def describe(self) -> str:
        s = self.settings
        if self.kind == "rtu":
            return f"{s['port']} at {s['baudrate']} baud, parity {s['parity']}"
        return f"{s['host']}:{s['port']}"

    def _make_client(self) -> Any:
        from pymodbus import FramerType
        from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient

        s = self.settings
        if self.kind == "rtu":
            return AsyncModbusSerialClient(
                s["port"], framer=FramerType.RTU, baudrate=s["baudrate"], parity=s["parity"],
                stopbits=s["stopbits"], bytesize=8, timeout=s["timeout"], retries=s["retries"],
                reconnect_delay=0,
            )
        return AsyncModbusTcpClient(s["host"], port=s["port"], timeout=s["timeout"], retries=s["retries"],
                                    reconnect_delay=0)

    async def read(self, function: int, address: int, count: int, device_id: int) -> list[int]:
        from pymodbus.exceptions import ModbusException

        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self.client is None:
                self.client = self._make_client()
            if not self.client.connected:
                ok = await self.client.connect()
                if not ok:
                    raise MeterError(f"cannot open {self.describe()}")
            wait = self._last + self.request_gap_s - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            self.requests += 1
            try:
                if function == 4:
                    rr = await self.client.read_input_registers(address, count=count, device_id=device_id)
                else:
                    rr = await self.client.read_holding_registers(address, count=count, device_id=device_id)
            except (TimeoutError, ModbusException, OSError) as exc:
                if self.kind == "tcp":
                    self.client.close()
                raise MeterError(f"no answer from device {device_id} on {self.describe()}: {exc}") from exc
            finally:
                self._last = time.monotonic()
            if rr.isError():
                raise MeterError(
                    f"device {device_id} on {self.describe()} refused function {function} "
                    f"address {address:#06x} count {count}: {rr}"
                )
            regs = list(rr.registers)
            if len(regs) < count:
                raise MeterError(f"short answer from device {device_id}: {len(regs)} of {count} registers")
            return regs

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None


# ---------------------------------------------------------------- meter


class ModbusMeter:
    """One energy meter; ``read()`` raises MeterError and emits FaultRaised(METER) once per outage."""

    def __init__(self, connector_id: int, model: MeterModel, bus: ModbusBus, device_id: int,
                 phases: int | None = None) -> None:
        self.connector_id = connector_id
        self.model = model
        self.bus = bus
        self.device_id = device_id
        self.phases = phases or model.phases
        self._blocks = model.blocks()
        self._emit: Emit | None = None
        self._faulted = False
        self._users = 0

    async def start(self, emit: Emit) -> None:
        self._emit = emit

    async def stop(self) -> None:
        self.bus.close()

    def _emit_event(self, event: Any) -> None:
        if self._emit is not None:
            self._emit(event)

    async def read_values(self) -> dict[str, float | None]:
        values: dict[str, float | None] = {}
        for fc, start, count, regs in self._blocks:
            words = await self.bus.read(fc, start, count, self.device_id)
            for r in regs:
                off = r.address - start
                v = decode(r, words[off:off + r.count], self.model.invalid_all_ones)
                values[r.name] = None if v is None else v * UNITS.get(r.unit, 1)
        return values

    async def read(self) -> MeterReading:
        try:
            values = await self.read_values()
            energy = values.get("energy_import")
            if energy is None:
                raise MeterError(f"device {self.device_id}: energy register marked invalid")
        except MeterError as exc:
            if not self._faulted:
                self._faulted = True
                log.error("meter %s: %s", self.connector_id, exc)
                self._emit_event(FaultRaised(self.connector_id, FaultKind.METER, str(exc)))
            raise
        if self._faulted:
            self._faulted = False
            log.info("meter %s answers again", self.connector_id)
            self._emit_event(FaultCleared(self.connector_id, FaultKind.METER))
        extra = {k: v for k, v in values.items() if k not in KNOWN and v is not None}
        return MeterReading(
            energy_wh=energy,
            power_w=values.get("power"),
            current_a=(values.get("current_l1"), values.get("current_l2"), values.get("current_l3")),
            voltage_v=(values.get("voltage_l1"), values.get("voltage_l2"), values.get("voltage_l3")),
            frequency_hz=values.get("frequency"),
            temperature_c=values.get("temperature"),
            extra=extra,
        )


def build_meter(options: Mapping[str, Any], key: str, connector_id: int, ctx: Any) -> ModbusMeter:
    o = Options(options, key)
    if o.has("map_file"):
        path = Path(o.str("map_file", None))
        model = load_model(path, key + ".map_file")
        o.raw("model")
    else:
        name = o.str("model", None, choices=available_models())
        model = load_model(METERS_DIR / f"{name}.toml", key + ".model")
    device_id = o.int("device_id", 1, lo=1, hi=247)
    timeout = o.float("timeout", 1.0, lo=0.05, hi=10.0)
    retries = o.int("retries", 1, lo=0, hi=5)
    gap = o.float("request_gap_ms", 100.0, lo=0.0, hi=2000.0) / 1000.0
    phases = o.int("phases", model.phases, lo=1, hi=3)
    if phases == 2:
        raise HardwareConfigError(key + ".phases", 2, "1 or 3")
    if o.has("host"):
        kind = "tcp"
        settings: dict[str, Any] = {"host": o.str("host", None), "port": o.int("port", 502, lo=1, hi=65535),
                                    "timeout": timeout, "retries": retries}
        bus_key = f"modbus:tcp:{settings['host']}:{settings['port']}"
    else:
        kind = "rtu"
        port = o.raw("port", None)
        if not isinstance(port, str) or not port:
            raise HardwareConfigError(key + ".port", port,
                                      "a serial device such as /dev/ttyUSB0 (or set host for Modbus TCP)")
        settings = {"port": port, "baudrate": o.int("baudrate", 9600, lo=1200, hi=115200),
                    "parity": o.str("parity", "N", choices=("N", "E", "O")),
                    "stopbits": o.int("stopbits", 1, lo=1, hi=2), "timeout": timeout, "retries": retries}
        bus_key = f"modbus:rtu:{port}"
    o.finish()
    bus: ModbusBus = ctx.get_or_create(bus_key, lambda: ModbusBus(kind, settings, gap))
    for name in ("baudrate", "parity", "stopbits"):
        if name in settings and bus.settings.get(name) != settings[name]:
            raise HardwareConfigError(
                f"{key}.{name}", settings[name],
                f"the same value as the other meter on {bus_key} ({bus.settings.get(name)!r})",
            )
    used: dict[int, str] = ctx.get_or_create(bus_key + ":ids", dict)
    if device_id in used:
        raise HardwareConfigError(key + ".device_id", device_id, f"an address not used by {used[device_id]}")
    used[device_id] = key
    return ModbusMeter(connector_id, model, bus, device_id, phases)

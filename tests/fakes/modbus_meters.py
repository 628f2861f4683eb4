"""Real pymodbus servers that look like energy meters, on a socat pty pair (RTU) or 127.0.0.1 (TCP).

Register images are written here from the datasheet table in HARDWARE-FACTS.md, independently of
hal/meters/*.toml, so a wrong address or word order in a map file makes the tests fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from pymodbus import FramerType
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import SimAction, SimData, SimDevice
from pymodbus.simulator.simutils import DataType

# What every fake meter measures (3 phases, or L1 only for the SDM120).
VALUES = {
    "voltage": (230.1, 231.2, 229.3),
    "current": (16.04, 15.98, 16.1),
    "power": 11034.5,
    "frequency": 49.9,  # representable at every model's resolution
    "energy_kwh": 12345.6,
}


def f32(v: float, low_word_first: bool = False) -> list[int]:
    hi, lo = struct.unpack(">HH", struct.pack(">f", v))
    return [lo, hi] if low_word_first else [hi, lo]


def i32(v: int, low_word_first: bool = False, signed: bool = True) -> list[int]:
    hi, lo = struct.unpack(">HH", struct.pack(">i" if signed else ">I", v))
    return [lo, hi] if low_word_first else [hi, lo]


def u64(v: int) -> list[int]:
    return list(struct.unpack(">HHHH", struct.pack(">Q", v)))


def image(model: str) -> tuple[int, dict[int, int]]:
    """(function code, {address: register}) for ``model`` with VALUES."""
    v = VALUES
    regs: dict[int, int] = {}

    def put(addr: int, words: list[int]) -> None:
        for i, w in enumerate(words):
            regs[addr + i] = w

    if model in ("sdm630", "sdm72dm"):
        for i in range(3):
            put(0x00 + 2 * i, f32(v["voltage"][i]))
            put(0x06 + 2 * i, f32(v["current"][i]))
        put(0x34, f32(v["power"]))
        put(0x46, f32(v["frequency"]))
        put(0x48, f32(v["energy_kwh"]))
        return 4, regs
    if model == "sdm120":
        put(0x00, f32(v["voltage"][0]))
        put(0x06, f32(v["current"][0]))
        put(0x0C, f32(v["power"]))
        put(0x46, f32(v["frequency"]))
        put(0x48, f32(v["energy_kwh"]))
        return 4, regs
    if model == "abb_b23":
        put(0x5000, u64(round(v["energy_kwh"] * 100)))
        for i in range(3):
            put(0x5B00 + 2 * i, i32(round(v["voltage"][i] * 10), signed=False))
            put(0x5B0C + 2 * i, i32(round(v["current"][i] * 100), signed=False))
        put(0x5B14, i32(round(v["power"] * 100)))
        put(0x5B2C, [round(v["frequency"] * 100)])
        return 3, regs
    if model == "em340":
        for i in range(3):
            put(0x00 + 2 * i, i32(round(v["voltage"][i] * 10), low_word_first=True))
            put(0x0C + 2 * i, i32(round(v["current"][i] * 1000), low_word_first=True))
        put(0x28, i32(round(v["power"] * 10), low_word_first=True))
        put(0x33, [round(v["frequency"] * 10)])
        put(0x34, i32(round(v["energy_kwh"] * 10), low_word_first=True))
        return 4, regs
    raise ValueError(model)


def sim_device(device_id: int, function: int, regs: dict[int, int], action: SimAction | None = None) -> SimDevice:
    """A device whose register space from the lowest to the highest address answers (gaps read 0);
    ``action`` (pymodbus' per-request hook) may change the registers before each answer."""
    lo, hi = min(regs), max(regs)
    dense = [regs.get(a, 0) for a in range(lo, hi + 1)]
    block = [SimData(lo, values=dense, datatype=DataType.REGISTERS)]
    empty = [SimData(0, values=[0], datatype=DataType.REGISTERS)]
    bits = [SimData(0, values=[False], datatype=DataType.BITS)]
    hr, ir = (block, empty) if function == 3 else (empty, block)
    return SimDevice(id=device_id, simdata=(bits, bits, hr, ir), action=action)


class Silencer:
    """Drops every answer while ``silent`` is set: the meter 'stops answering'."""

    def __init__(self) -> None:
        self.silent = False
        self.answers = 0

    def __call__(self, sending: bool, data: bytes) -> bytes:
        if sending:
            if self.silent:
                return b""
            self.answers += 1
        return data


@contextlib.contextmanager
def pty_pair(tmp: Path) -> Iterator[tuple[str, str]]:
    """Two linked pseudo-terminals from socat; yields (client end, server end)."""
    if shutil.which("socat") is None:
        import pytest

        pytest.skip("socat is not installed (apt-get install socat)")
    a, b = str(tmp / "ttyA"), str(tmp / "ttyB")
    proc = subprocess.Popen(
        ["socat", "pty,raw,echo=0,link=" + a, "pty,raw,echo=0,link=" + b],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 5
        while not (os.path.exists(a) and os.path.exists(b)):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("socat did not create the pty pair")
            time.sleep(0.01)
        yield a, b
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.asynccontextmanager
async def serve_rtu(port: str, devices: list[SimDevice], baudrate: int = 9600,
                    silencer: Silencer | None = None) -> AsyncIterator[ModbusSerialServer]:
    server = ModbusSerialServer(devices, framer=FramerType.RTU, port=port, baudrate=baudrate,
                                trace_packet=silencer)
    task = asyncio.create_task(server.serve_forever())
    await asyncio.sleep(0.1)
    try:
        yield server
    finally:
        await server.shutdown()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def serve_tcp(port: int, devices: list[SimDevice],
                    silencer: Silencer | None = None) -> AsyncIterator[ModbusTcpServer]:
    server = ModbusTcpServer(devices, address=("127.0.0.1", port), trace_packet=silencer)
    task = asyncio.create_task(server.serve_forever())
    for _ in range(100):
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            break
        await asyncio.sleep(0.02)
    try:
        yield server
    finally:
        await server.shutdown()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task

"""RDM6300 driver on a socat pty pair: the test writes what the module would send."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import serial

from hal.interfaces import FaultCleared, FaultKind, FaultRaised, HalEvent, HardwareConfigError, TagPresented
from hal.rdm6300 import FrameScanner, make_frame, parse_frame
from hal.registry import BuildContext, build
from tests.fakes.modbus_meters import pty_pair

CARD = bytes.fromhex("0B00A1B2C3")  # version 0B, tag 00A1B2C3


def test_frame_format() -> None:
    frame = make_frame(CARD)
    assert len(frame) == 14 and frame[0] == 0x02 and frame[-1] == 0x03
    assert frame[1:13] == b"0B00A1B2C3" + b"%02X" % (0x0B ^ 0x00 ^ 0xA1 ^ 0xB2 ^ 0xC3)
    assert parse_frame(frame) == CARD
    assert parse_frame(frame[:11] + b"00" + frame[13:]) is None  # wrong checksum


def test_scanner_resyncs() -> None:
    s = FrameScanner()
    bad = make_frame(CARD)[:11] + b"FF\x03"
    out = s.feed(b"\x00noise\x02\x02" + bad + make_frame(CARD)[:5])
    assert out == [] and s.bad_frames >= 1
    assert s.feed(make_frame(CARD)[5:]) == [CARD]


async def until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


def tags(events: list[HalEvent]) -> list[str]:
    return [e.id_tag for e in events if isinstance(e, TagPresented)]


@pytest.mark.hardware_stack
async def test_taps_with_repeat_suppression(tmp_path: Path) -> None:
    with pty_pair(tmp_path) as (module_end, host_end):
        reader = build("reader", {"driver": "rdm6300", "port": host_end, "repeat_s": 0.4}, "readers.0", 0,
                       BuildContext())
        events: list[HalEvent] = []
        await reader.start(events.append)
        module = serial.Serial(module_end, 9600)
        try:
            await asyncio.sleep(0.2)
            for _ in range(5):  # card held on the reader: the module repeats the frame
                module.write(make_frame(CARD))
                await asyncio.sleep(0.05)
            await until(lambda: bool(tags(events)))
            await asyncio.sleep(0.2)
            assert tags(events) == ["00A1B2C3"]
            module.write(b"\x02garbage" + make_frame(CARD)[:12] + b"X\x03")  # noise and a broken frame
            await asyncio.sleep(0.6)  # card away longer than repeat_s
            module.write(make_frame(CARD))
            await until(lambda: len(tags(events)) == 2)
            module.write(make_frame(bytes.fromhex("0100000001")))
            await until(lambda: len(tags(events)) == 3)
            assert tags(events) == ["00A1B2C3", "00A1B2C3", "00000001"]
        finally:
            module.close()
            await reader.stop()


@pytest.mark.hardware_stack
async def test_decimal_format_and_version(tmp_path: Path) -> None:
    with pty_pair(tmp_path) as (module_end, host_end):
        reader = build("reader", {"driver": "rdm6300", "port": host_end, "tag_format": "decimal"}, "r", 0,
                       BuildContext())
        events: list[HalEvent] = []
        await reader.start(events.append)
        module = serial.Serial(module_end, 9600)
        try:
            await asyncio.sleep(0.2)
            module.write(make_frame(CARD))
            await until(lambda: bool(tags(events)))
            assert tags(events) == [str(0x00A1B2C3)]  # the number printed on the card: 0010597059
        finally:
            module.close()
            await reader.stop()


@pytest.mark.hardware_stack
async def test_port_gone_and_back(tmp_path: Path) -> None:
    events: list[HalEvent] = []
    with pty_pair(tmp_path) as (module_end, host_end):
        reader = build("reader", {"driver": "rdm6300", "port": host_end}, "r", 0, BuildContext())
        await reader.start(events.append)
        await asyncio.sleep(0.3)
        assert events == []
    # socat gone: the tty disappears like an unplugged USB adapter
    await until(lambda: any(isinstance(e, FaultRaised) for e in events))
    [fault] = [e for e in events if isinstance(e, FaultRaised)]
    assert fault.kind == FaultKind.READER
    with pty_pair(tmp_path) as (module_end, host_end):
        await until(lambda: FaultCleared(0, FaultKind.READER) in events, timeout=5)
        module = serial.Serial(module_end, 9600)
        module.write(make_frame(CARD))
        await until(lambda: tags(events) == ["00A1B2C3"])
        module.close()
        await reader.stop()


def test_options() -> None:
    with pytest.raises(HardwareConfigError) as exc:
        build("reader", {"driver": "rdm6300"}, "readers.0", 0, BuildContext())
    assert exc.value.key == "readers.0.port"
    with pytest.raises(HardwareConfigError) as exc:
        build("reader", {"driver": "rdm6300", "port": "/dev/serial0", "repeat_s": 0}, "readers.0", 0,
              BuildContext())
    assert exc.value.key == "readers.0.repeat_s"

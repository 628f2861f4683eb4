"""RDM6300 125 kHz (EM4100) reader on a UART, 9600 8N1.

Frame (14 bytes): 0x02, 10 ASCII-hex characters (1 version byte + 4 tag bytes), 2 ASCII-hex
characters checksum (XOR of the 5 data bytes), 0x03. The module repeats the frame continuously
while a card is in the field, so a tag is reported once and again only after it was away for
``repeat_s``. The tag is the 4 tag bytes (``include_version`` adds the version byte); with
``tag_format = "decimal"`` it is the 10-digit number printed on most EM4100 cards.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from hal.driver_options import TAG_FORMATS, Options, format_tag
from hal.interfaces import FaultKind, HardwareConfigError, TagPresented
from hal.threaded import ThreadedDevice

log = logging.getLogger(__name__)

STX, ETX = 0x02, 0x03
FRAME_LEN = 14


def parse_frame(frame: bytes) -> bytes | None:
    """14-byte frame -> 5 data bytes (version + tag), or None if malformed or the checksum is wrong."""
    if len(frame) != FRAME_LEN or frame[0] != STX or frame[-1] != ETX:
        return None
    try:
        data = bytes.fromhex(frame[1:11].decode("ascii"))
        check = int(frame[11:13].decode("ascii"), 16)
    except ValueError:
        return None
    x = 0
    for b in data:
        x ^= b
    return data if x == check else None


def make_frame(data: bytes) -> bytes:
    """The frame a reader sends for 5 data bytes (used by tests and the commissioning help)."""
    x = 0
    for b in data:
        x ^= b
    return bytes([STX]) + data.hex().upper().encode() + f"{x:02X}".encode() + bytes([ETX])


class FrameScanner:
    """Finds frames in a byte stream; resynchronizes on STX after noise."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self.bad_frames = 0

    def feed(self, data: bytes) -> list[bytes]:
        out: list[bytes] = []
        self._buf.extend(data)
        while True:
            start = self._buf.find(bytes([STX]))
            if start < 0:
                self._buf.clear()
                return out
            del self._buf[:start]
            if len(self._buf) < FRAME_LEN:
                return out
            frame = bytes(self._buf[:FRAME_LEN])
            parsed = parse_frame(frame)
            if parsed is None:
                self.bad_frames += 1
                del self._buf[:1]  # drop this STX and look for the next one
                continue
            del self._buf[:FRAME_LEN]
            out.append(parsed)


class Rdm6300Reader(ThreadedDevice):
    def __init__(self, port: str, *, baudrate: int = 9600, tag_format: str = "hex", include_version: bool = False,
                 repeat_s: float = 2.0, name: str = "reader", fault_connector: int = 0) -> None:
        super().__init__(fault_connector=fault_connector)
        self.port = port
        self.baudrate = baudrate
        self.tag_format = tag_format
        self.include_version = include_version
        self.repeat_s = repeat_s
        self.name = name
        self.scanner = FrameScanner()
        self._last: dict[bytes, float] = {}

    def _thread_name(self) -> str:
        return f"rdm6300-{self.port}"

    def _fault(self, why: str) -> None:
        if self._fault_once(FaultKind.READER, f"RDM6300 {self.port}: {why}"):
            log.error("RDM6300 %s: %s", self.port, why)

    def _ok(self) -> None:
        self._clear_once(FaultKind.READER)

    def on_data(self, data: bytes, now: float) -> None:
        for frame in self.scanner.feed(data):
            last = self._last.get(frame)
            self._last[frame] = now
            if last is not None and now - last < self.repeat_s:
                continue  # the same card still in the field
            uid = frame if self.include_version else frame[1:]
            self._hand_over(TagPresented(format_tag(uid, self.tag_format), self.name))
        if len(self._last) > 64:
            self._last = {k: t for k, t in self._last.items() if now - t < self.repeat_s}

    def _run(self) -> None:
        import serial

        ser = None
        while not self._stop.is_set():
            if ser is None:
                try:
                    ser = serial.Serial(self.port, self.baudrate, bytesize=8, parity="N", stopbits=1, timeout=0.2)
                    self._ok()
                except (OSError, serial.SerialException) as exc:
                    self._fault(f"cannot open: {exc}")
                    self._stop.wait(1.0)
                    continue
            try:
                data = ser.read(ser.in_waiting or 1)
            except (OSError, serial.SerialException) as exc:
                self._fault(f"read failed: {exc}")
                ser.close()
                ser = None
                continue
            if data:
                self.on_data(data, time.monotonic())
        if ser is not None:
            ser.close()


def build_reader(options: Mapping[str, Any], key: str, connector_id: int, ctx: Any) -> Rdm6300Reader:
    o = Options(options, key)
    port = o.raw("port", None)
    if not isinstance(port, str) or not port:
        raise HardwareConfigError(key + ".port", port, "the UART device, e.g. /dev/ttyAMA0 (GPIO14/15) or /dev/chargepoint-rfid")
    dev = Rdm6300Reader(
        port,
        baudrate=o.int("baudrate", 9600, lo=1200, hi=115200),
        tag_format=o.str("tag_format", "hex", choices=TAG_FORMATS),
        include_version=o.bool("include_version", False),
        repeat_s=o.float("repeat_s", 2.0, lo=0.2, hi=60.0),
        name=o.str("name", key.rsplit(".", 1)[-1] or "reader"),
        fault_connector=connector_id,
    )
    o.finish()
    return dev

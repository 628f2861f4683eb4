"""An OpenEVSE board emulator speaking RAPI on the far end of a socat pty, written from rapi_proc.h.

It keeps the board's own logic that the driver relies on: enable/sleep/disable, the relay closing by
itself when enabled and the car is in C, ``$AT`` notifications, sequence-id echo, XOR checksums
($NK for a bad one) and the SY host-heartbeat supervision. Test knobs: ``silent``, ``garbage``,
``stale_reply``, ``set_car()``, ``set_error()``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import serial

from hal.rapi import FrameSplitter, checksum

CAR = {"A": 0x01, "B": 0x02, "C": 0x03, "D": 0x04}


def frame(body: str) -> bytes:
    return (body + "^" + checksum(body) + "\r").encode()


class RapiBoardEmulator:
    def __init__(self, port: str, min_amps: int = 6, max_amps: int = 32) -> None:
        self.port = port
        self.ser = serial.Serial(port, 115200, timeout=0.02)
        self.min_amps, self.max_amps = min_amps, max_amps
        self.lock = threading.RLock()
        self.car = 0x01
        self.mode = "disabled"  # enabled | sleeping | disabled
        self.error: int | None = None
        self.amps = 16
        self.relay_closed = False
        self.received: list[str] = []
        self.silent = False
        self.garbage = False  # prefix every reply with line noise
        self.stale_reply = False  # answer first with a reply carrying an old sequence id
        self.bad_checksum_once = False  # send one reply with a wrong checksum before the good one
        self.hb_interval = 0
        self.hb_limit = 0
        self.hb_last = time.monotonic()
        self.hb_missed = False
        self.hb_limited = False
        self._split = FrameSplitter()
        self._run = True
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    # ------------------------------------------------ board logic

    def evse_state(self) -> int:
        if self.error is not None:
            return self.error
        if self.mode == "disabled":
            return 0xFF
        if self.mode == "sleeping":
            return 0xFE
        return self.car

    def effective_amps(self) -> int:
        return min(self.amps, self.hb_limit) if self.hb_limited else self.amps

    def _update(self) -> None:
        self.relay_closed = self.mode == "enabled" and self.error is None and self.car in (0x03, 0x04)
        self.send_at()

    def send_at(self) -> None:
        self._write(frame(f"$AT {self.evse_state():02X} {self.car:02X} {self.effective_amps()} 0000"))

    def set_car(self, state: str) -> None:
        with self.lock:
            self.car = CAR[state]
            self._update()

    def set_error(self, code: int | None) -> None:
        with self.lock:
            self.error = code
            self._update()

    def _write(self, data: bytes) -> None:
        if self.silent:
            return
        if self.garbage:
            data = b"\x00\xffxx$Q" + data
        self.ser.write(data)

    # ------------------------------------------------ protocol

    def _loop(self) -> None:
        while self._run:
            try:
                data = self.ser.read(self.ser.in_waiting or 1)
            except Exception:
                return
            for f in self._split.feed(data):
                with self.lock:
                    self._handle(f)
            with self.lock:
                if self.hb_interval and not self.hb_missed and \
                        time.monotonic() - self.hb_last > self.hb_interval:
                    self.hb_missed = self.hb_limited = True

    def _handle(self, raw: str) -> None:
        body, _, ck = raw.rpartition("^")
        if not body or checksum(body) != ck.upper():
            self._reply(False, [], None)
            return
        tokens = body[1:].split()
        seq = None
        if tokens and tokens[-1].startswith(":"):
            seq = tokens.pop()[1:]
        self.received.append(" ".join(tokens))
        ok, params = self._command(tokens[0], tokens[1:])
        if self.stale_reply and seq:
            self._write(frame(f"$OK 99 :{(int(seq, 16) - 1) % 255 or 255:02X}"))
        if self.bad_checksum_once:
            self.bad_checksum_once = False
            self._write(b"$OK 12^00\r")
        self._reply(ok, params, seq)

    def _reply(self, ok: bool, params: list[str], seq: str | None) -> None:
        body = "$" + ("OK" if ok else "NK") + "".join(" " + p for p in params) + (f" :{seq}" if seq else "")
        self._write(frame(body))

    def _command(self, cmd: str, args: list[str]) -> tuple[bool, list[str]]:
        if cmd == "GS":
            return True, [f"{self.evse_state():02X}", "0", f"{self.car:02X}", "0000"]
        if cmd == "GV":
            return True, ["8.2.3", "5.2.1"]
        if cmd == "GC":
            return True, [str(self.min_amps), "80", str(self.effective_amps()), str(self.max_amps)]
        if cmd == "G0":
            return True, ["1" if self.car != 0x01 else "0"]
        if cmd == "SC" and args:
            want = int(args[0])
            got = max(self.min_amps, min(self.max_amps, want))
            self.amps = got
            return got == want, [str(got)]
        if cmd in ("FE", "FS", "FD"):
            self.mode = {"FE": "enabled", "FS": "sleeping", "FD": "disabled"}[cmd]
            self._update()
            return True, []
        if cmd == "SY":
            if len(args) >= 2:
                self.hb_interval, self.hb_limit = int(args[0]), int(args[1])
                self.hb_last = time.monotonic()
                return True, [args[0], args[1], "0"]
            if args == ["165"]:
                if self.hb_missed:
                    self.hb_missed = self.hb_limited = False
                    self.hb_last = time.monotonic()
                    return True, []
                return False, []
            self.hb_last = time.monotonic()
            return (not self.hb_missed), []
        return False, []

    def reopen(self) -> None:
        """Open the (re-created) pty again after a link drop; the board keeps its state, like a board
        whose USB-serial adapter was unplugged and plugged back in."""
        self._run = False
        self._thread.join(2)
        self.ser.close()
        self.ser = serial.Serial(self.port, 115200, timeout=0.02)
        self._split = FrameSplitter()
        self._run = True
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._run = False
        self._thread.join(2)
        self.ser.close()


class SocatLink:
    """A socat pty pair that a test can drop (socat killed: both ends vanish, reads fail with EIO) and
    restore under the same paths, like a USB-serial adapter unplugged and plugged back in."""

    def __init__(self, tmp: Path) -> None:
        if shutil.which("socat") is None:
            import pytest

            pytest.skip("socat is not installed (apt-get install socat)")
        self.host, self.board = str(tmp / "ttyHost"), str(tmp / "ttyBoard")
        self.proc: subprocess.Popen[bytes] | None = None
        self.restore()

    def restore(self) -> None:
        self.proc = subprocess.Popen(
            ["socat", "pty,raw,echo=0,link=" + self.host, "pty,raw,echo=0,link=" + self.board],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 5
        while not (os.path.exists(self.host) and os.path.exists(self.board)):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("socat did not create the pty pair")
            time.sleep(0.01)

    def drop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(5)
            self.proc = None
        deadline = time.monotonic() + 5
        while os.path.lexists(self.host) or os.path.lexists(self.board):  # socat removes its links
            if time.monotonic() > deadline:
                break
            time.sleep(0.01)

    def close(self) -> None:
        self.drop()

"""RapiBoard.stop() returns within a bound, whatever the reader thread and the command tasks are doing.

No socat here: a scripted in-memory serial port (``ScriptedSerial``) stands in for the board, so the races
are set up step by step on the event loop instead of being hoped for under load. A stuck stop on a Pi
costs the unit's 20 s TimeoutStopSec and a SIGKILL (systemd/chargepoint.service).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable

import pytest
import serial

from hal.interfaces import HalEvent
from hal.rapi import RapiBoard, decode, encode

#: What stop() may take at most here: the FD command's own bound plus the reader thread's join.
STOP_BOUND_S = 4.0


class ScriptedSerial:
    """Answers every command with ``$OK`` (sequence id echoed) unless ``hold`` names it; ``block_reads``
    makes read() hang like a driver that ignores its timeout."""

    def __init__(self, *_: object, **__: object) -> None:
        self.hold: set[str] = set()
        self.written: list[str] = []
        self._rx = bytearray()
        self._cond = threading.Condition()
        self.block_reads = threading.Event()
        self.release_reads = threading.Event()
        self.closed = False

    @property
    def in_waiting(self) -> int:
        with self._cond:
            return len(self._rx)

    def write(self, data: bytes) -> int:
        parsed = decode(data.decode("ascii").rstrip("\r"))
        assert parsed is not None
        tokens, seq = parsed
        command = tokens[0]
        self.written.append(" ".join(tokens))
        if command not in self.hold:
            reply = "OK 01 0 01 0000" if command == "GS" else "OK"
            self.feed(encode(reply, seq))
        return len(data)

    def feed(self, data: bytes) -> None:
        with self._cond:
            self._rx += data
            self._cond.notify_all()

    def read(self, size: int = 1) -> bytes:
        if self.block_reads.is_set():
            self.release_reads.wait()  # a read that does not return until the test ends
        with self._cond:
            if not self._rx:
                self._cond.wait(0.05)
            out = bytes(self._rx[:size])
            del self._rx[:size]
            return out

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def port(monkeypatch: pytest.MonkeyPatch) -> ScriptedSerial:
    fake = ScriptedSerial()
    monkeypatch.setattr(serial, "Serial", lambda *a, **k: fake)
    return fake


@pytest.fixture
async def board(port: ScriptedSerial) -> AsyncIterator[RapiBoard]:
    b = RapiBoard("/dev/fake-rapi", connector_id=1, timeout_s=0.5, retries=0, poll_s=0.05, heartbeat_s=30)
    events: list[HalEvent] = []
    await b.start(events.append)
    try:
        yield b
    finally:
        # A test that failed leaves the board running: make sure no task or thread outlives it.
        b._running = False
        port.release_reads.set()
        for t in b._tasks:
            t.cancel()


async def until(cond: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


async def stop_within(board: RapiBoard, bound_s: float) -> float:
    t0 = time.monotonic()
    task = asyncio.ensure_future(board.stop())
    done, _ = await asyncio.wait({task}, timeout=bound_s)
    assert task in done, f"RapiBoard.stop() still running after {bound_s} s"
    task.result()
    return time.monotonic() - t0


async def test_stop_while_a_reply_and_the_cancel_arrive_together(board: RapiBoard, port: ScriptedSerial) -> None:
    """The poll task waits for the answer to GS; the answer lands in the same loop turn as stop()'s cancel.

    On Python 3.11 ``asyncio.wait_for`` returns the result in that case and drops the cancellation, so a
    ``while True`` poll loop kept polling and stop(), awaiting it, never returned (the 13-minute CI hang)."""
    port.hold.add("GS")
    await until(lambda: board._pending is not None and port.written[-1:] == ["GS"])
    seq, reply = board._pending  # type: ignore[misc]
    reply.set_result((True, ["01", "0", "01", "0000"]))  # the board's answer arrives ...
    took = await stop_within(board, STOP_BOUND_S)  # ... and stop() cancels in the same turn
    assert all(t.done() for t in board._tasks)
    assert not board._thread or not board._thread.is_alive()
    assert port.closed and port.written[-1] == "FD"  # still left the board disabled (state F)
    assert took < STOP_BOUND_S


async def test_stop_when_a_read_never_returns(board: RapiBoard, port: ScriptedSerial) -> None:
    """A USB-serial driver whose read ignores its timeout keeps the reader thread: stop() does not wait for
    it beyond its bound, and still closes the port."""
    port.block_reads.set()
    port.hold.add("FD")  # the reader cannot deliver answers any more: the FD at stop times out
    took = await stop_within(board, STOP_BOUND_S)
    assert port.closed
    assert took < STOP_BOUND_S


async def test_stop_cancels_work_started_while_stopping(board: RapiBoard, port: ScriptedSerial) -> None:
    """A board restart ($AB) reported while stop() runs must not leave a re-apply task behind."""
    port.hold.add("FD")
    task = asyncio.ensure_future(board.stop())
    await until(lambda: port.written[-1:] == ["FD"])
    port.feed(encode("AB 00 7.1.3"))  # the board restarted: normally the settings are re-applied
    done, _ = await asyncio.wait({task}, timeout=STOP_BOUND_S)
    assert task in done
    await asyncio.sleep(0.1)
    assert all(t.done() for t in board._tasks)
    assert port.written[-1] == "FD"  # nothing (SY, FE ...) was sent after the final disable

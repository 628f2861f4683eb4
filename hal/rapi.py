"""OpenEVSE pilot board over RAPI (serial line, 115200 8N1): one board is both Pilot and Contactor.

Protocol (OpenEVSE firmware ``rapi_proc.h``): ``$CC p1 p2 :SS^XK\\r`` where XK is the XOR of every
character before ``^`` and SS an optional sequence id (01-FF) that the board echoes in its
``$OK``/``$NK`` reply, so a late reply to an earlier (timed-out) command is never taken for the
answer to the current one. The board sends ``$AT evse pilot amps vflags`` on every state change.

Mapping (decided here, see hardware-docs/drivers.md):
- ``offer(amps)`` -> ``SC amps V`` (volatile: no EEPROM wear) then ``FE`` (enable: PWM on).
- ``offer(None)`` and ``Contactor.open()`` -> ``FS`` (sleep: constant +12 V, relay open).
- ``set_unavailable()`` -> ``FD`` (disable: constant -12 V, state F).
- ``Contactor.open()`` latches: later ``offer()`` calls only send ``SC`` (no ``FE``) until
  ``Contactor.close()``, so the board cannot close its relay again behind the controller's back.
- ``Contactor.close()`` -> ``FE`` if current is offered. The board closes its relay by itself when
  it is enabled and the EV asks (state C) -- the relay interlock lives in the board's firmware.
- ``SY interval amps`` arms the board's host-heartbeat supervision: if the Pi stops sending ``SY``
  pulses, the board limits the current to ``heartbeat_current_a`` by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Mapping
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

log = logging.getLogger(__name__)

MAX_FRAME = 80
#: stop(): how long the board's own tasks get to end, and the reader thread to notice the stop.
STOP_TASKS_S = 1.0
STOP_JOIN_S = 2.0

# EVSE state (hex) -> (fault kind, latched, text). Source: rapi_proc.h / J1772EvseController.h.
BOARD_FAULTS: dict[int, tuple[FaultKind, bool, str]] = {
    0x05: (FaultKind.DIODE, False, "diode check failed"),
    0x06: (FaultKind.RCD, True, "GFCI tripped"),
    # No OCPP code for a missing ground of its own: RCD maps to GroundFailure. Not latched: the board
    # retries the ground check itself.
    0x07: (FaultKind.RCD, False, "no ground"),
    0x08: (FaultKind.WELD, True, "stuck relay"),
    0x09: (FaultKind.RCD, True, "GFI self-test failed"),
    0x0A: (FaultKind.OVERTEMP, False, "over temperature"),
    0x0B: (FaultKind.OVERCURRENT, False, "over current"),
    0x0E: (FaultKind.WELD, False, "relay closure fault (relay did not close)"),
}
PILOT_STATES = {0x01: CpState.A, 0x02: CpState.B, 0x03: CpState.C, 0x04: CpState.D}
STATE_SLEEPING, STATE_DISABLED = 0xFE, 0xFF


class RapiError(Exception):
    """The board did not answer or refused a command."""


def checksum(body: str) -> str:
    x = 0
    for ch in body.encode("ascii"):
        x ^= ch
    return f"{x:02X}"


def encode(command: str, seq: int | None = None) -> bytes:
    """``encode("SC 16 V") == b"$SC 16 V^65\\r"``; with a sequence id ``$SC 16 V :05^XX\\r``."""
    body = "$" + command + (f" :{seq:02X}" if seq else "")
    return (body + "^" + checksum(body) + "\r").encode("ascii")


def decode(frame: str) -> tuple[list[str], int | None] | None:
    """``$OK 1 2 :05^XX`` -> (["OK", "1", "2"], 5); None for a bad checksum or a malformed frame."""
    if not frame.startswith("$") or "^" not in frame:
        return None
    body, _, ck = frame.rpartition("^")
    if len(ck) != 2 or checksum(body).upper() != ck.upper():
        return None
    tokens = body[1:].split()
    if not tokens:
        return None
    seq = None
    if tokens[-1].startswith(":"):
        try:
            seq = int(tokens[-1][1:], 16)
        except ValueError:
            return None
        tokens = tokens[:-1]
    return tokens, seq


class FrameSplitter:
    """Re-synchronizes on ``$`` and ``\\r``: garbage between frames and overlong frames are dropped."""

    def __init__(self) -> None:
        self._buf: list[str] | None = None
        self.dropped = 0

    def feed(self, data: bytes) -> list[str]:
        out: list[str] = []
        for b in data:
            ch = chr(b)
            if ch == "$":
                if self._buf:
                    self.dropped += 1
                self._buf = ["$"]
            elif ch == "\r":
                if self._buf:
                    out.append("".join(self._buf))
                self._buf = None
            elif self._buf is not None:
                if 0x20 <= b < 0x7F and len(self._buf) < MAX_FRAME:
                    self._buf.append(ch)
                else:
                    self._buf = None
                    self.dropped += 1
        return out


class RapiBoard:
    """The serial link to one OpenEVSE board; shared by its Pilot and Contactor faces."""

    def __init__(self, port: str, *, connector_id: int, baudrate: int = 115200, timeout_s: float = 1.0,
                 retries: int = 2, poll_s: float = 1.0, heartbeat_s: int = 10, heartbeat_current_a: int = 6,
                 sequence_ids: bool = True) -> None:
        self.port = port
        self.connector_id = connector_id
        self.baudrate = baudrate
        self.timeout_s = timeout_s
        self.retries = retries
        self.poll_s = poll_s
        self.heartbeat_s = heartbeat_s
        self.heartbeat_current_a = heartbeat_current_a
        self.sequence_ids = sequence_ids
        self.state = CpState.F
        self.evse_state: int | None = None
        self.offered: int | None = None
        self.enabled = False
        self.bad_frames = 0
        self.commands_sent = 0
        self._serial: Any = None
        self._thread: threading.Thread | None = None
        self._running = False
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._emit: Emit | None = None
        self._users = 0
        self._mutex: asyncio.Lock | None = None
        self._pending: tuple[int | None, asyncio.Future[tuple[bool, list[str]]]] | None = None
        self._seq = 0
        self._splitter = FrameSplitter()
        self._tasks: list[asyncio.Task[None]] = []
        self._board_fault = False
        self._active_fault: int | None = None
        self._want_enabled = False
        # Link supervision: after a read/write error the reader thread closes the port and reopens it
        # with back-off (reconnect_min_s doubling up to reconnect_max_s), then re-applies the state.
        self.reconnect_min_s = 1.0
        self.reconnect_max_s = 10.0
        self.reconnects = 0
        self._link_broken = False
        self._wake = threading.Event()
        # Contactor.open() (FS) latches the board asleep: offer() then only sets the current and does
        # not re-enable (FE) until Contactor.close(), so an "open" decision of the controller sticks.
        self.open_latched = False
        self._latched_amps: int | None = None

    # ------------------------------------------------ lifecycle

    async def start(self, emit: Emit) -> None:
        self._users += 1
        if self._users > 1:
            return
        import serial  # pyserial

        self._emit = emit
        self._loop = asyncio.get_running_loop()
        self._mutex = asyncio.Lock()
        try:
            self._serial = await asyncio.to_thread(
                serial.Serial, self.port, self.baudrate, timeout=0.05, write_timeout=self.timeout_s
            )
        except (OSError, serial.SerialException) as exc:
            self._report_board_fault(f"cannot open {self.port}: {exc}")
            self._users -= 1
            raise RapiError(f"cannot open {self.port}: {exc}") from exc
        self._running = True
        self._stopping = False
        self._link_broken = False
        self._wake.clear()
        self._thread = threading.Thread(target=self._reader, name=f"rapi-{self.port}", daemon=True)
        self._thread.start()
        # Safe state first: disabled (state F) until the controller offers current.
        with contextlib.suppress(RapiError):
            await self.command("FD")
            self.enabled = False
            await self.command(f"SY {self.heartbeat_s} {self.heartbeat_current_a}")
            await self.poll_once()
        # Poll and heartbeat first (tests and diagnostics find them at [0] and [1]); a re-apply task started
        # by a board restart ($AB) during start is kept, not dropped.
        self._tasks = [asyncio.create_task(self._poll_loop()), asyncio.create_task(self._heartbeat_loop()),
                       *self._tasks]

    async def stop(self) -> None:
        """Leave the board disabled (state F) and release the port, in a bounded time.

        Bounded because the unit gives the whole controller TimeoutStopSec=20 before SIGKILL: every step here
        has its own limit (tasks: ``STOP_TASKS_S``; the final FD: the command's timeout and retries; the
        reader thread: ``STOP_JOIN_S``), and none of them waits for a task to honour a single cancel.
        """
        self._users -= 1
        if self._users > 0:
            return
        self._stopping = True  # loops end and no new re-apply task starts, even if a cancel is lost
        await self._cancel_tasks(STOP_TASKS_S)
        if self._serial is not None and self._mutex is not None:
            try:
                async with asyncio.timeout(self.timeout_s * (self.retries + 1) + STOP_TASKS_S):
                    await self.command("FD")  # leave the board in state F
            except (RapiError, TimeoutError) as exc:
                log.warning("RAPI %s: could not disable the board at stop: %s", self.port, exc)
        await self._cancel_tasks(STOP_TASKS_S)  # whatever the FD's reply set off
        self._running = False
        self._wake.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            # A daemon thread: one stuck in a read that ignores its timeout is left behind, not waited for.
            await asyncio.to_thread(thread.join, STOP_JOIN_S)
            if thread.is_alive():
                log.warning("RAPI %s: reader thread did not end within %.0f s", self.port, STOP_JOIN_S)
        ser, self._serial = self._serial, None
        if ser is not None:
            # close() of a tty can wait for unsent output to drain (the kernel's closing_wait, 30 s for
            # serial ports): done in a worker thread that stop() waits for only so long.
            closing = asyncio.ensure_future(asyncio.to_thread(ser.close))
            done, _ = await asyncio.wait({closing}, timeout=STOP_JOIN_S)
            if closing not in done:
                log.warning("RAPI %s: closing the port did not finish within %.0f s", self.port, STOP_JOIN_S)
            elif closing.exception() is not None:
                log.warning("RAPI %s: closing the port failed: %s", self.port, closing.exception())

    async def _cancel_tasks(self, bound_s: float) -> None:
        """Cancel every task of this board and wait for them, at most ``bound_s``.

        Cancelled again on every round: on Python 3.11, ``asyncio.wait_for`` (used by libraries, and here
        before) returns the result and drops the cancellation when the awaited future completes in the same
        loop turn as the cancel (CPython gh-86296, fixed in 3.12), so a single cancel is not enough.
        """
        deadline = asyncio.get_running_loop().time() + bound_s
        while True:
            alive = [t for t in self._tasks if not t.done()]
            if not alive:
                break
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                log.error("RAPI %s: %d task(s) did not end at stop: %s", self.port, len(alive),
                          ", ".join(t.get_name() for t in alive))
                break
            for t in alive:
                t.cancel()
            await asyncio.wait(alive, timeout=min(remaining, 0.1))
        for t in self._tasks:
            if t.done() and not t.cancelled() and t.exception() is not None:
                log.debug("RAPI %s: task %s ended with %r", self.port, t.get_name(), t.exception())
        self._tasks = [t for t in self._tasks if not t.done()]

    # ------------------------------------------------ link

    def _open_port(self) -> Any:
        import serial  # pyserial

        return serial.Serial(self.port, self.baudrate, timeout=0.05, write_timeout=self.timeout_s)

    def _reader(self) -> None:
        """Serial reader thread: bytes -> frames -> event loop; reopens the port after a USB-serial drop."""
        assert self._loop is not None
        delay = self.reconnect_min_s
        while self._running:
            if self._link_broken:
                with contextlib.suppress(Exception):
                    self._serial.close()
                try:
                    ser = self._open_port()
                except Exception as exc:  # still unplugged: try again later, slower each time
                    log.debug("RAPI %s: reopen failed: %s", self.port, exc)
                    self._wake.wait(delay)
                    delay = min(delay * 2, self.reconnect_max_s)
                    continue
                log.warning("RAPI %s: port reopened; re-applying settings", self.port)
                self._serial = ser
                self._splitter = FrameSplitter()
                self._link_broken = False
                self.reconnects += 1
                delay = self.reconnect_min_s
                self._loop.call_soon_threadsafe(self._on_reconnected)
                continue
            try:
                data = self._serial.read(self._serial.in_waiting or 1)
            except Exception as exc:  # device unplugged: close, report, reopen with back-off
                self._link_lost(f"read failed: {exc}")
                continue
            if data:
                for frame in self._splitter.feed(data):
                    self._loop.call_soon_threadsafe(self._on_frame, frame)

    def _link_lost(self, info: str) -> None:
        """Called from any thread: mark the link broken (the reader reopens it) and raise PILOT_BOARD."""
        if self._link_broken:
            return
        log.error("RAPI %s: link lost (%s); reopening", self.port, info)
        self._link_broken = True
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._report_board_fault, f"link lost: {info}")

    def _on_reconnected(self) -> None:
        if self._running and not self._stopping:
            self._tasks.append(asyncio.get_running_loop().create_task(self._reapply()))

    def _on_frame(self, frame: str) -> None:
        parsed = decode(frame)
        if parsed is None:
            self.bad_frames += 1
            log.debug("RAPI %s: dropped bad frame %r", self.port, frame)
            return
        tokens, seq = parsed
        kind = tokens[0]
        if kind in ("OK", "NK"):
            if self._pending is None:
                return
            want, fut = self._pending
            if self.sequence_ids and seq != want:
                log.debug("RAPI %s: stale reply %r (want seq %s)", self.port, frame, want)
                return
            if not fut.done():
                fut.set_result((kind == "OK", tokens[1:]))
        elif kind == "AT" and len(tokens) >= 3:
            self._apply(_hex(tokens[1]), _hex(tokens[2]))
        elif kind == "ST" and len(tokens) >= 2:
            self._apply(_hex(tokens[1]), None)
        elif kind == "AB":
            log.warning("RAPI %s: board restarted (%s); re-applying settings", self.port, " ".join(tokens[1:]))
            if self._loop is not None and not self._stopping:
                self._tasks.append(self._loop.create_task(self._reapply()))

    def _next_seq(self) -> int | None:
        if not self.sequence_ids:
            return None
        self._seq = self._seq % 255 + 1  # 01..FF; 00 is reserved as invalid
        return self._seq

    async def command(self, cmd: str) -> list[str]:
        """Send one command; returns the reply's parameters. Raises RapiError on $NK or no answer."""
        ok, params = await self.request(cmd)
        if not ok:
            raise RapiError(f"board refused {cmd!r}: $NK {' '.join(params)}")
        return params

    async def request(self, cmd: str) -> tuple[bool, list[str]]:
        """Send one command; returns (ok, params) -- some commands answer $NK with useful params."""
        if self._serial is None or self._mutex is None:
            raise RapiError("RAPI board not started")
        async with self._mutex:
            for _attempt in range(self.retries + 1):
                if self._link_broken:
                    raise RapiError(f"serial link to {self.port} is down (reopening)")
                seq = self._next_seq()
                fut: asyncio.Future[tuple[bool, list[str]]] = asyncio.get_running_loop().create_future()
                self._pending = (seq, fut)
                try:
                    try:
                        await asyncio.to_thread(self._serial.write, encode(cmd, seq))
                    except OSError as exc:  # SerialException is an OSError
                        self._link_lost(f"write failed: {exc}")
                        raise
                    self.commands_sent += 1
                    # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel (see _cancel_tasks)
                    async with asyncio.timeout(self.timeout_s):
                        result = await fut
                except (TimeoutError, OSError) as exc:
                    log.warning("RAPI %s: no answer to %r (%s)", self.port, cmd, exc or "timeout")
                    continue
                finally:
                    self._pending = None
                self._board_ok()
                return result
            self._report_board_fault(f"no answer to {cmd!r} after {self.retries + 1} attempts")
            raise RapiError(f"board on {self.port} does not answer")

    # ------------------------------------------------ faults and state

    def _send(self, event: HalEvent) -> None:
        if self._emit is not None:
            self._emit(event)

    def _report_board_fault(self, info: str) -> None:
        if not self._board_fault:
            self._board_fault = True
            self._send(FaultRaised(self.connector_id, FaultKind.PILOT_BOARD, f"RAPI {self.port}: {info}"))

    def _board_ok(self) -> None:
        if self._board_fault:
            self._board_fault = False
            self._send(FaultCleared(self.connector_id, FaultKind.PILOT_BOARD))

    def _apply(self, evse: int | None, pilot: int | None) -> None:
        if evse is None:
            return
        self.evse_state = evse
        if evse in BOARD_FAULTS:
            if self._active_fault != evse:
                self._clear_board_state_fault()
                kind, latched, text = BOARD_FAULTS[evse]
                self._active_fault = evse
                self._send(FaultRaised(self.connector_id, kind, f"board state {evse:02X}: {text}", latched))
        else:
            self._clear_board_state_fault()
        if evse == STATE_DISABLED:
            new = CpState.F
        elif pilot in PILOT_STATES:
            new = PILOT_STATES[pilot]
        elif evse in PILOT_STATES:
            new = PILOT_STATES[evse]
        else:
            return
        if new != self.state:
            self.state = new
            self._send(PilotChanged(self.connector_id, new))

    def _clear_board_state_fault(self) -> None:
        if self._active_fault is None:
            return
        kind, latched, _ = BOARD_FAULTS[self._active_fault]
        self._active_fault = None
        if not latched:
            self._send(FaultCleared(self.connector_id, kind))

    async def poll_once(self) -> None:
        params = await self.command("GS")  # $OK evsestate elapsed pilotstate vflags
        if params:
            self._apply(_hex(params[0]), _hex(params[2]) if len(params) > 2 else None)

    async def _poll_loop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.poll_s)
            with contextlib.suppress(RapiError):
                await self.poll_once()

    async def _heartbeat_loop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(max(self.heartbeat_s / 3.0, 0.1))
            with contextlib.suppress(RapiError):
                ok, _ = await self.request("SY")
                if not ok:  # a pulse was missed earlier: acknowledge to restore the current
                    log.warning("RAPI %s: board reports a missed heartbeat; acknowledging", self.port)
                    await self.command("SY 165")

    async def _reapply(self) -> None:
        with contextlib.suppress(RapiError):
            await self.command(f"SY {self.heartbeat_s} {self.heartbeat_current_a}")
            if self.open_latched:
                if self._latched_amps is not None:
                    await self._set_current(self._latched_amps)
                await self.command("FS")
            elif self._want_enabled and self.offered is not None:
                await self._set_current(self.offered)
                await self.command("FE")
            else:
                await self.command("FD" if not self._want_enabled else "FS")

    # ------------------------------------------------ pilot and contactor commands

    async def _set_current(self, amps: int) -> int:
        ok, params = await self.request(f"SC {amps} V")
        actual = int(params[0]) if params and params[0].isdigit() else amps
        if not ok:
            log.warning("RAPI %s: board limited SC %d to %d A", self.port, amps, actual)
        return actual

    async def offer(self, amps: float | None) -> None:
        try:
            if amps is None or amps < 6.0:
                await self.command("FS")
                self.enabled, self.offered, self._want_enabled = False, None, True
                self._latched_amps = None
                return
            actual = await self._set_current(int(min(amps, 80.0)))  # never round up
            if self.open_latched:  # current stored for close(); the board stays asleep (+12 V, relay open)
                self._latched_amps = min(actual, int(amps))
                if not self._want_enabled:  # was disabled (FD, state F): asleep is +12 V, no PWM
                    await self.command("FS")
                    self._want_enabled = True
                return
            self.offered = min(actual, int(amps))
            self._want_enabled = True
            if not self.enabled:
                await self.command("FE")
                self.enabled = True
        except RapiError as exc:
            log.error("RAPI %s: offer(%s) failed: %s", self.port, amps, exc)

    async def set_unavailable(self) -> None:
        try:
            await self.command("FD")
        except RapiError as exc:
            log.error("RAPI %s: disable failed: %s", self.port, exc)
        self.enabled, self.offered, self._want_enabled = False, None, False

    async def enable_relay(self) -> None:
        if self.open_latched:
            self.open_latched = False
            if self.offered is None and self._latched_amps is not None:
                self.offered, self._want_enabled = self._latched_amps, True
            self._latched_amps = None
        if self.offered is None:
            log.warning("RAPI %s: close() without a current offer; the board cannot close its relay",
                        self.port)
            return
        if not self.enabled:
            try:
                await self.command("FE")
                self.enabled = True
            except RapiError as exc:
                log.error("RAPI %s: enable failed: %s", self.port, exc)

    async def open_relay(self) -> None:
        try:
            await self.command("FS")
        except RapiError as exc:
            log.error("RAPI %s: sleep (open relay) failed: %s", self.port, exc)
        self._latched_amps = self.offered
        self.enabled, self.offered, self.open_latched = False, None, True


def _hex(token: str) -> int | None:
    try:
        return int(token, 16)
    except ValueError:
        return None


class RapiPilot:
    """Pilot face of a RAPI board."""

    def __init__(self, board: RapiBoard) -> None:
        self.board = board

    @property
    def state(self) -> CpState:
        return self.board.state

    @property
    def offered_amps(self) -> float | None:
        return None if self.board.offered is None else float(self.board.offered)

    async def start(self, emit: Emit) -> None:
        await self.board.start(emit)

    async def stop(self) -> None:
        await self.board.stop()

    async def offer(self, amps: float | None) -> None:
        await self.board.offer(amps)

    async def set_unavailable(self) -> None:
        await self.board.set_unavailable()


class RapiContactor:
    """Contactor face of a RAPI board: close() enables the board, open() puts it to sleep."""

    def __init__(self, board: RapiBoard) -> None:
        self.board = board
        self._closed = False

    @property
    def is_closed(self) -> bool:
        return self._closed

    async def start(self, emit: Emit) -> None:
        await self.board.start(emit)

    async def stop(self) -> None:
        self._closed = False
        await self.board.stop()

    async def close(self) -> None:
        self._closed = True
        await self.board.enable_relay()

    async def open(self) -> None:
        self._closed = False
        await self.board.open_relay()


def _board(options: Mapping[str, Any], key: str, connector_id: int, ctx: Any) -> RapiBoard:
    o = Options(options, key)
    port = o.raw("port", None)
    if not isinstance(port, str) or not port:
        raise HardwareConfigError(key + ".port", port, "the board's serial device, e.g. /dev/ttyUSB0")
    params: dict[str, Any] = dict(
        baudrate=o.int("baudrate", 115200, lo=1200, hi=1_000_000),
        timeout_s=o.float("timeout_s", 1.0, lo=0.05, hi=10.0),
        retries=o.int("retries", 2, lo=0, hi=5),
        poll_s=o.float("poll_s", 1.0, lo=0.05, hi=10.0),
        heartbeat_s=o.int("heartbeat_s", 10, lo=1, hi=255),
        heartbeat_current_a=o.int("heartbeat_current_a", 6, lo=6, hi=80),
        sequence_ids=o.bool("sequence_ids", True),
    )
    given = [name for name in params if o.has(name)]
    o.finish()
    board: RapiBoard = ctx.get_or_create(f"rapi:{port}", lambda: RapiBoard(port, connector_id=connector_id,
                                                                         **params))
    if board.connector_id != connector_id:
        raise HardwareConfigError(key + ".port", port, f"a board not used by connector {board.connector_id}")
    explicit: set[str] = ctx.get_or_create(f"rapi:{port}:given", set)
    for name in given:  # an option may be set on either device, but not differently on both
        value = params[name]
        if name not in explicit:
            setattr(board, name, value)
            explicit.add(name)
        elif getattr(board, name) != value:
            raise HardwareConfigError(f"{key}.{name}", value,
                                      f"the same value as the other device on {port} ({getattr(board, name)!r})")
    return board


def build_pilot(options: Mapping[str, Any], key: str, connector_id: int, ctx: Any) -> RapiPilot:
    return RapiPilot(_board(options, key, connector_id, ctx))


def build_contactor(options: Mapping[str, Any], key: str, connector_id: int, ctx: Any) -> RapiContactor:
    return RapiContactor(_board(options, key, connector_id, ctx))

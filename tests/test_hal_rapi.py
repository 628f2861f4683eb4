"""RAPI driver against a board emulator on a socat pty pair."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from hal.interfaces import (
    CpState,
    FaultCleared,
    FaultKind,
    FaultRaised,
    HalEvent,
    HardwareConfigError,
    PilotChanged,
)
from hal.rapi import FrameSplitter, RapiBoard, RapiContactor, RapiPilot, checksum, decode, encode
from hal.registry import BuildContext, build
from tests.fakes.modbus_meters import pty_pair
from tests.fakes.rapi_board import RapiBoardEmulator, SocatLink

pytestmark = pytest.mark.hardware_stack


def test_checksum_worked_examples() -> None:
    # From HARDWARE-FACTS.md / rapi_proc.h
    assert encode("GS") == b"$GS^30\r"
    assert encode("G0") == b"$G0^53\r"
    assert encode("GC") == b"$GC^20\r"
    assert encode("SC 16 V") == b"$SC 16 V^65\r"
    assert checksum("$F0 1") == "43" and checksum("$SK 0") == "2C"


def test_decode_and_sequence_ids() -> None:
    f = encode("OK 01 0 01 0000", seq=0x2A).decode().rstrip("\r")
    assert f.startswith("$OK 01 0 01 0000 :2A^")
    assert decode(f) == (["OK", "01", "0", "01", "0000"], 0x2A)
    assert decode("$OK 01^00") is None  # bad checksum
    assert decode("OK^22") is None and decode("$OK") is None


def test_splitter_resyncs_after_garbage() -> None:
    s = FrameSplitter()
    frames = s.feed(b"\x00\xff noise $GARB\x01AGE$OK 1^30\r")
    assert frames == ["$OK 1^30"]
    frames = s.feed(b"$AT 02 02 16 0000" + b"X" * 100 + b"\r$ST 03^00\r")
    assert frames == ["$ST 03^00"] and s.dropped >= 2


class Rig:
    def __init__(self, emu: RapiBoardEmulator, pilot: RapiPilot, contactor: RapiContactor,
                 events: list[HalEvent]) -> None:
        self.emu, self.pilot, self.contactor, self.events = emu, pilot, contactor, events

    @property
    def board(self) -> RapiBoard:
        return self.pilot.board

    async def until(self, cond: Callable[[], bool], timeout: float = 3.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while not cond():
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"condition not reached; events: {self.events!r}")
            await asyncio.sleep(0.01)

    def faults(self, kind: FaultKind) -> list[FaultRaised]:
        return [e for e in self.events if isinstance(e, FaultRaised) and e.kind == kind]


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    with pty_pair(tmp_path) as (host_end, board_end):
        emu = RapiBoardEmulator(board_end)
        ctx = BuildContext()
        opts: dict[str, Any] = {"driver": "rapi", "port": host_end, "poll_s": 0.1, "timeout_s": 0.2,
                                "retries": 1, "heartbeat_s": 1}
        pilot = build("pilot", opts, "connectors.1.pilot", 1, ctx)
        contactor = build("contactor", {"driver": "rapi", "port": host_end}, "connectors.1.contactor", 1, ctx)
        assert pilot.board is contactor.board  # one board, two faces
        events: list[HalEvent] = []
        await pilot.start(events.append)
        await contactor.start(events.append)
        try:
            yield Rig(emu, pilot, contactor, events)
        finally:
            await contactor.stop()
            await pilot.stop()
            emu.close()


async def test_starts_disabled_with_heartbeat_armed(rig: Rig) -> None:
    assert rig.emu.received[:2] == ["FD", "SY 1 6"]
    assert rig.emu.mode == "disabled" and rig.pilot.state == CpState.F
    assert rig.pilot.offered_amps is None and not rig.contactor.is_closed


async def test_session_offer_close_open(rig: Rig) -> None:
    rig.emu.mode = "sleeping"
    await rig.pilot.offer(None)
    rig.emu.set_car("B")
    await rig.until(lambda: rig.pilot.state == CpState.B)
    await rig.pilot.offer(16.7)  # never rounded up
    assert rig.emu.amps == 16 and rig.emu.mode == "enabled" and rig.pilot.offered_amps == 16.0
    assert rig.emu.received[-2:] == ["SC 16 V", "FE"]
    rig.emu.set_car("C")
    await rig.until(lambda: rig.pilot.state == CpState.C)
    await rig.contactor.close()
    assert rig.contactor.is_closed and rig.emu.relay_closed
    await rig.contactor.open()
    assert not rig.emu.relay_closed and rig.emu.mode == "sleeping" and rig.pilot.offered_amps is None
    await rig.pilot.set_unavailable()
    await rig.until(lambda: rig.pilot.state == CpState.F)
    assert rig.emu.mode == "disabled"
    changes = [e.state for e in rig.events if isinstance(e, PilotChanged)]
    assert changes[-3:] == [CpState.B, CpState.C, CpState.F]


async def test_contactor_open_sticks_until_close(rig: Rig) -> None:
    """open() puts the board to sleep; a later offer() (e.g. a new charging limit) must not re-enable it,
    or the board would close its relay by itself in state C against the controller's decision."""
    await rig.pilot.offer(16)
    rig.emu.set_car("C")
    await rig.until(lambda: rig.pilot.state == CpState.C)
    await rig.contactor.close()
    assert rig.emu.relay_closed
    await rig.contactor.open()
    assert rig.emu.mode == "sleeping" and not rig.emu.relay_closed
    await rig.pilot.offer(20)
    assert rig.emu.amps == 20 and rig.emu.received[-1] == "SC 20 V"  # current set, no FE
    assert rig.emu.mode == "sleeping" and not rig.emu.relay_closed and rig.pilot.offered_amps is None
    await rig.board._reapply()  # a board restart while latched keeps it asleep
    assert rig.emu.mode == "sleeping" and not rig.emu.relay_closed
    await rig.contactor.close()
    assert rig.emu.mode == "enabled" and rig.emu.relay_closed and rig.pilot.offered_amps == 20.0
    await rig.pilot.offer(10)  # no latch any more: normal offers
    assert rig.emu.amps == 10 and rig.emu.mode == "enabled"


async def test_offer_after_unavailable_while_latched_gives_plus_12v(rig: Rig) -> None:
    await rig.pilot.offer(16)
    await rig.contactor.open()
    await rig.pilot.set_unavailable()
    assert rig.emu.mode == "disabled"
    await rig.pilot.offer(16)
    assert rig.emu.mode == "sleeping"  # +12 V without PWM, not state F; still no FE
    await rig.contactor.close()
    assert rig.emu.mode == "enabled"


async def test_offer_clamped_by_board_and_below_minimum_pauses(rig: Rig) -> None:
    await rig.pilot.offer(40)  # emulated board max 32 A answers $NK 32
    assert rig.pilot.offered_amps == 32.0 and rig.emu.amps == 32
    await rig.pilot.offer(5)  # below 6 A: pause (+12 V, no PWM)
    assert rig.pilot.offered_amps is None and rig.emu.mode == "sleeping"


async def test_garbage_and_bad_checksums_are_survived(rig: Rig) -> None:
    rig.emu.garbage = True
    rig.emu.bad_checksum_once = True
    await rig.pilot.offer(10)
    assert rig.emu.amps == 10 and rig.pilot.offered_amps == 10.0
    assert rig.board.bad_frames >= 1 and rig.board._splitter.dropped >= 1
    assert rig.faults(FaultKind.PILOT_BOARD) == []


async def test_stale_reply_with_old_sequence_id_is_ignored(rig: Rig) -> None:
    rig.emu.stale_reply = True  # every reply preceded by "$OK 99 :<previous seq>"
    params = await rig.board.command("GC")
    assert params == ["6", "80", "16", "32"]


@pytest.mark.parametrize(
    ("code", "kind", "latched"),
    [(0x05, FaultKind.DIODE, False), (0x06, FaultKind.RCD, True), (0x07, FaultKind.RCD, False),
     (0x08, FaultKind.WELD, True), (0x09, FaultKind.RCD, True), (0x0A, FaultKind.OVERTEMP, False),
     (0x0B, FaultKind.OVERCURRENT, False)],
)
async def test_board_error_states_become_faults(rig: Rig, code: int, kind: FaultKind, latched: bool) -> None:
    rig.emu.set_error(code)
    await rig.until(lambda: bool(rig.faults(kind)))
    await asyncio.sleep(0.3)  # polls keep reporting the same state: still one fault
    [fault] = rig.faults(kind)
    assert fault.latched is latched and fault.connector_id == 1
    rig.emu.set_error(None)
    await asyncio.sleep(0.3)
    cleared = [e for e in rig.events if isinstance(e, FaultCleared) and e.kind == kind]
    assert len(cleared) == (0 if latched else 1)


async def test_board_stops_answering_then_returns(rig: Rig) -> None:
    rig.emu.silent = True
    await rig.until(lambda: bool(rig.faults(FaultKind.PILOT_BOARD)), timeout=3)
    await asyncio.sleep(0.5)
    assert len(rig.faults(FaultKind.PILOT_BOARD)) == 1
    await rig.pilot.offer(16)  # no exception: logged, the fault is already reported
    rig.emu.silent = False
    await rig.until(lambda: FaultCleared(1, FaultKind.PILOT_BOARD) in rig.events, timeout=3)


async def test_heartbeat_supervision(rig: Rig) -> None:
    await rig.pilot.offer(20)
    await asyncio.sleep(1.3)  # the driver pulses every heartbeat_s / 3
    assert not rig.emu.hb_limited and rig.emu.received.count("SY") >= 2
    hb = rig.board._tasks[1]
    hb.cancel()  # the Pi "hangs": no more pulses
    await rig.until(lambda: rig.emu.hb_limited, timeout=3)
    assert rig.emu.effective_amps() == 6
    rig.board._tasks[1] = asyncio.create_task(rig.board._heartbeat_loop())
    await rig.until(lambda: "SY 165" in rig.emu.received, timeout=3)
    await rig.until(lambda: not rig.emu.hb_limited)
    assert rig.emu.effective_amps() == 20


def test_options(tmp_path: Path) -> None:
    ctx = BuildContext()
    with pytest.raises(HardwareConfigError) as exc:
        build("pilot", {"driver": "rapi"}, "connectors.1.pilot", 1, ctx)
    assert exc.value.key == "connectors.1.pilot.port"
    with pytest.raises(HardwareConfigError) as exc:
        build("pilot", {"driver": "rapi", "port": "/dev/x", "heartbeat_current_a": 3}, "p", 1, ctx)
    assert exc.value.key == "p.heartbeat_current_a"
    build("pilot", {"driver": "rapi", "port": "/dev/y", "poll_s": 0.5}, "p", 1, ctx)
    with pytest.raises(HardwareConfigError) as exc:
        build("contactor", {"driver": "rapi", "port": "/dev/y", "poll_s": 2.0}, "c", 1, ctx)
    assert exc.value.key == "c.poll_s"
    with pytest.raises(HardwareConfigError) as exc:
        build("contactor", {"driver": "rapi", "port": "/dev/y"}, "c2", 2, ctx)
    assert exc.value.key == "c2.port"


async def test_missing_port_reports_board_fault(tmp_path: Path) -> None:
    pilot = build("pilot", {"driver": "rapi", "port": str(tmp_path / "none")}, "p", 1, BuildContext())
    events: list[HalEvent] = []
    with pytest.raises(Exception, match="cannot open"):
        await pilot.start(events.append)
    assert [e.kind for e in events if isinstance(e, FaultRaised)] == [FaultKind.PILOT_BOARD]


async def test_usb_serial_drop_reopens_port_and_reapplies_state(tmp_path: Path) -> None:
    link = SocatLink(tmp_path)
    emu = RapiBoardEmulator(link.board)
    opts: dict[str, Any] = {"driver": "rapi", "port": link.host, "poll_s": 0.1, "timeout_s": 0.2, "retries": 1,
                            "heartbeat_s": 1}
    pilot = build("pilot", opts, "connectors.1.pilot", 1, BuildContext())
    board = pilot.board
    board.reconnect_min_s, board.reconnect_max_s = 0.05, 0.2
    events: list[HalEvent] = []
    rig = Rig(emu, pilot, RapiContactor(board), events)
    await pilot.start(events.append)
    try:
        await pilot.offer(16)
        assert emu.mode == "enabled"
        link.drop()  # adapter unplugged
        await rig.until(lambda: bool(rig.faults(FaultKind.PILOT_BOARD)))
        assert "link lost" in rig.faults(FaultKind.PILOT_BOARD)[0].info
        await asyncio.sleep(0.5)  # several failed reopen attempts: still one fault
        assert len(rig.faults(FaultKind.PILOT_BOARD)) == 1 and board.reconnects == 0
        emu.mode, emu.amps = "disabled", 6  # what a board that lost power meanwhile would be in
        link.restore()
        emu.reopen()
        await rig.until(lambda: FaultCleared(1, FaultKind.PILOT_BOARD) in events, timeout=5)
        await rig.until(lambda: emu.mode == "enabled" and emu.amps == 16)  # state re-applied
        assert board.reconnects == 1
        emu.set_car("C")
        await rig.until(lambda: pilot.state == CpState.C)  # notifications flow again
    finally:
        await pilot.stop()
        emu.close()
        link.close()

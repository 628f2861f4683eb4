"""PC/SC reader driver against a real stack: pcscd + vsmartcard's vpcd virtual reader + a fake card.

Needs (Debian): pcscd, vsmartcard-vpcd, util-linux's unshare, and pyscard (pip, builds against
libpcsclite-dev). The tests start their own pcscd in the foreground with a private reader.conf.d and stop
it afterwards; they skip with the reason when that is impossible (not installed, not root, no network
namespaces, or a system pcscd already running). vpcd listens on 0.0.0.0, so pcscd runs in a network
namespace of its own that has only loopback; the fake card joins that namespace to connect.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hal.interfaces import FaultCleared, FaultKind, FaultRaised, HalEvent, HardwareConfigError, TagPresented
from hal.registry import BuildContext, build
from tests.fakes.vpcd_card import (
    VPCD_DRIVER,
    VPCD_PORT,
    FakeCard,
    in_netns,
    loopback_up,
    netns_path,
    pcscd_command,
    tcp_listeners,
    vpcd_reader_conf,
    wait_own_netns,
)

pytestmark = pytest.mark.hardware_stack

PCSCD_SOCKET = Path("/run/pcscd/pcscd.comm")
UID = bytes.fromhex("04A2B3C4D5E680")


def _skip_reason() -> str | None:
    try:
        import smartcard.scard  # noqa: F401
    except ImportError:
        return "pyscard not installed (pip install pyscard; needs libpcsclite-dev swig)"
    if shutil.which("pcscd") is None:
        return "pcscd not installed (apt-get install pcscd)"
    if not VPCD_DRIVER.exists():
        return "vsmartcard-vpcd not installed (apt-get install vsmartcard-vpcd)"
    if os.geteuid() != 0:
        return "pcscd needs root to create /run/pcscd, and a network namespace of its own needs root"
    if shutil.which("unshare") is None:
        return "unshare not installed (util-linux): pcscd must run in its own network namespace"
    if subprocess.run(["unshare", "--net", "true"], capture_output=True).returncode != 0:
        return "cannot create a network namespace (unshare --net fails here)"
    if PCSCD_SOCKET.exists():
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as s:
            s.connect(str(PCSCD_SOCKET))
            return "a system pcscd is already running; stop it to run these tests"
    return None


class Pcscd:
    """pcscd in the foreground, in a network namespace of its own, with one vpcd reader on port `port`.

    vpcd listens on 0.0.0.0; inside the namespace (only `lo`) that is loopback only. `netns` names the
    namespace for `FakeCard`; it changes on every start.
    """

    def __init__(self, tmp: Path) -> None:
        self.port = VPCD_PORT
        self.conf = tmp / "reader.conf.d"
        self.conf.mkdir()
        (self.conf / "vpcd").write_text(vpcd_reader_conf(self.port))
        self.log = tmp / "pcscd.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.netns = ""

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(pcscd_command(self.conf), stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        if not wait_own_netns(self.proc.pid):
            self.stop()
            pytest.skip(f"pcscd did not start in its own network namespace: {self.log.read_text()[-500:]}")
        self.netns = netns_path(self.proc.pid)
        in_netns(self.netns, loopback_up)  # the card connects to 127.0.0.1 inside the namespace
        deadline = time.monotonic() + 10
        while not tcp_listeners(self.proc.pid, self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.skip(f"pcscd with vpcd did not start: {self.log.read_text()[-500:]}")
            time.sleep(0.05)

    def card(self, uid: bytes) -> FakeCard:
        return FakeCard(self.port, uid, netns=self.netns)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None


@pytest.fixture
def pcscd(tmp_path: Path) -> Iterator[Pcscd]:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    d = Pcscd(tmp_path)
    d.start()
    yield d
    d.stop()


def test_vpcd_listens_only_inside_its_own_network_namespace(pcscd: Pcscd) -> None:
    """vpcd binds 0.0.0.0; the namespace is what keeps that off every interface of the host."""
    assert pcscd.proc is not None
    for port in (pcscd.port, pcscd.port + 1):  # vpcd listens for two slots: port and port + 1
        assert tcp_listeners(pcscd.proc.pid, port) == ["0.0.0.0"]  # in pcscd's namespace ...
        assert tcp_listeners(os.getpid(), port) == []  # ... and not in ours
        with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            pass


async def until(cond: Callable[[], bool], timeout: float = 8.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


def tags(events: list[HalEvent]) -> list[str]:
    return [e.id_tag for e in events if isinstance(e, TagPresented)]


async def test_taps_are_reported_once_per_tap(pcscd: Pcscd) -> None:
    reader = build("reader", {"driver": "pcsc", "reader": "Virtual PCD 00 00", "poll_ms": 100},
                   "readers.0", 0, BuildContext())
    events: list[HalEvent] = []
    await reader.start(events.append)
    card = pcscd.card(UID)
    try:
        await asyncio.to_thread(card.place)
        await until(lambda: tags(events) == ["04A2B3C4D5E680"])
        await asyncio.sleep(0.5)  # card stays on the reader: no repeat
        assert tags(events) == ["04A2B3C4D5E680"]
        assert bytes([0xFF, 0xCA, 0, 0, 0]) in card.apdus
        await asyncio.to_thread(card.remove)
        await asyncio.sleep(0.5)
        other = pcscd.card(bytes.fromhex("DEADBEEF"))
        await asyncio.to_thread(other.place)
        await until(lambda: len(tags(events)) == 2)
        assert tags(events)[1] == "DEADBEEF"
        await asyncio.to_thread(other.remove)
        assert not any(isinstance(e, FaultRaised) for e in events)
    finally:
        card.remove()
        await reader.stop()


@pytest.mark.parametrize(("fmt", "expected"), [("hex_lower", "deadbeef"), ("hex_reversed", "EFBEADDE"),
                                               ("decimal", "3735928559")])
async def test_tag_formats(pcscd: Pcscd, fmt: str, expected: str) -> None:
    reader = build("reader", {"driver": "pcsc", "tag_format": fmt, "poll_ms": 100}, "readers.0", 0,
                   BuildContext())
    events: list[HalEvent] = []
    await reader.start(events.append)
    card = pcscd.card(bytes.fromhex("DEADBEEF"))
    try:
        await asyncio.to_thread(card.place)
        await until(lambda: tags(events) == [expected])
    finally:
        card.remove()
        await reader.stop()


async def test_reader_gone_and_back(pcscd: Pcscd) -> None:
    reader = build("reader", {"driver": "pcsc", "poll_ms": 100}, "readers.0", 0, BuildContext())
    events: list[HalEvent] = []
    await reader.start(events.append)
    try:
        await asyncio.sleep(0.5)
        assert events == []
        await asyncio.to_thread(pcscd.stop)  # the reader (and its service) disappears
        await until(lambda: any(isinstance(e, FaultRaised) for e in events))
        [fault] = [e for e in events if isinstance(e, FaultRaised)]
        assert fault.kind == FaultKind.READER and fault.connector_id == 0
        await asyncio.to_thread(pcscd.start)
        await until(lambda: FaultCleared(0, FaultKind.READER) in events, timeout=15)
        card = pcscd.card(UID)
        await asyncio.to_thread(card.place)
        await until(lambda: tags(events) == ["04A2B3C4D5E680"])
        card.remove()
        assert len([e for e in events if isinstance(e, FaultRaised)]) == 1
    finally:
        await reader.stop()


async def test_no_matching_reader_is_a_reader_fault(pcscd: Pcscd) -> None:
    reader = build("reader", {"driver": "pcsc", "reader": "ACR122U"}, "readers.0", 0, BuildContext())
    events: list[HalEvent] = []
    await reader.start(events.append)
    try:
        await until(lambda: bool(events))
        assert isinstance(events[0], FaultRaised) and "ACR122U" in events[0].info
    finally:
        await reader.stop()


def test_options() -> None:
    with pytest.raises(HardwareConfigError) as exc:
        build("reader", {"driver": "pcsc", "tag_format": "HEX"}, "readers.0", 0, BuildContext())
    assert exc.value.key == "readers.0.tag_format" and "'hex'" in exc.value.allowed

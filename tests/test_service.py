"""sd_notify, watchdog and status line against a real AF_UNIX datagram socket."""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator

import pytest

from chargepoint import service
from chargepoint.service import ServiceNotifier, Watchdog, summary_line, watchdog_interval

BACKENDS = ["socket"] + (["systemd-python"] if service._sd_daemon is not None else [])


class NotifyListener:
    """What systemd does: a bound datagram socket whose address goes into $NOTIFY_SOCKET."""

    def __init__(self, abstract: bool) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = f"chargepoint-test-{uuid.uuid4().hex}"
            self.sock.bind(b"\0" + name.encode())
            self.address = "@" + name
            self._dir = None
        else:
            # AF_UNIX paths are limited to 108 bytes: pytest's tmp_path can be longer.
            self._dir = tempfile.mkdtemp(prefix="cpn-")
            self.address = os.path.join(self._dir, "notify")
            self.sock.bind(self.address)
        self.sock.setblocking(False)

    def messages(self) -> list[str]:
        out = []
        while True:
            try:
                out.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return out

    def close(self) -> None:
        self.sock.close()
        if self._dir:
            os.unlink(self.address)
            os.rmdir(self._dir)


@pytest.fixture(params=[False, True], ids=["path", "abstract"])
def listener(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[NotifyListener]:
    lst = NotifyListener(abstract=request.param)
    monkeypatch.setenv("NOTIFY_SOCKET", lst.address)
    yield lst
    lst.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_notifications_reach_the_socket(listener: NotifyListener, backend: str) -> None:
    n = ServiceNotifier(use_systemd_python=backend == "systemd-python")
    assert n.backend == backend
    assert n.ready()
    assert n.watchdog()
    assert n.status("CSMS connected\n· 1 available")
    assert n.stopping()
    assert listener.messages() == ["READY=1", "WATCHDOG=1", "STATUS=CSMS connected · 1 available", "STOPPING=1"]


def test_repeated_status_is_sent_once(listener: NotifyListener) -> None:
    n = ServiceNotifier(use_systemd_python=False)
    n.status("a")
    n.status("a")
    n.status("b")
    assert listener.messages() == ["STATUS=a", "STATUS=b"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_without_notify_socket_calls_are_harmless(monkeypatch: pytest.MonkeyPatch, backend: str) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    n = ServiceNotifier(use_systemd_python=backend == "systemd-python")
    assert n.ready() is False
    assert n.watchdog() is False


def test_dead_notify_socket_returns_false(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "/nonexistent/notify")
    assert ServiceNotifier(use_systemd_python=False).ready() is False
    monkeypatch.setenv("NOTIFY_SOCKET", "relative/notify")
    assert ServiceNotifier(use_systemd_python=False).ready() is False


def test_watchdog_interval_is_half_of_watchdog_usec() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "10000000"}) == 5.0
    assert watchdog_interval({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": str(os.getpid())}) == 5.0
    assert watchdog_interval({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": str(os.getpid() + 1)}) is None
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "ten"}) is None


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class CountingNotifier(ServiceNotifier):
    def __init__(self) -> None:
        super().__init__(use_systemd_python=False)
        self.sent: list[str] = []

    def notify(self, state: str) -> bool:
        self.sent.append(state)
        return True


def test_watchdog_pings_only_while_ticking_and_healthy() -> None:
    clock = FakeClock()
    health = {"ok": True}
    n = CountingNotifier()
    wd = Watchdog(n, lambda: health["ok"], interval=5.0, clock=clock)
    assert wd.check_and_ping()  # startup grace: construction counts as a tick
    clock.now += 4.0
    wd.tick()
    clock.now += 4.9
    assert wd.check_and_ping()
    clock.now += 0.2  # 5.1 s since the last tick: the control loop is stuck
    assert not wd.check_and_ping()
    assert "ticked" in (wd.reason_to_withhold() or "")
    wd.tick()
    assert wd.check_and_ping()
    health["ok"] = False
    assert not wd.check_and_ping()
    health["ok"] = True
    assert wd.check_and_ping()
    assert n.sent == ["WATCHDOG=1"] * 4


def test_watchdog_treats_a_raising_health_check_as_unhealthy() -> None:
    def broken() -> bool:
        raise RuntimeError("meter thread died")

    n = CountingNotifier()
    wd = Watchdog(n, broken, interval=1.0, clock=FakeClock())
    assert not wd.check_and_ping()
    assert "meter thread died" in (wd.reason_to_withhold() or "")
    assert n.sent == []


def test_watchdog_disabled_without_watchdog_usec(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    wd = Watchdog(CountingNotifier())
    assert not wd.enabled
    with pytest.raises(ValueError, match="interval"):
        Watchdog(CountingNotifier(), interval=0)


async def test_watchdog_task_stops_pinging_when_the_loop_stalls(monkeypatch: pytest.MonkeyPatch) -> None:
    lst = NotifyListener(abstract=True)
    monkeypatch.setenv("NOTIFY_SOCKET", lst.address)
    monkeypatch.setenv("WATCHDOG_USEC", "40000")  # 40 ms -> ping check every 10 ms
    clock = FakeClock()
    wd = Watchdog(ServiceNotifier(), clock=clock)
    assert wd.interval == pytest.approx(0.02)
    try:
        assert wd.start() is not None
        for _ in range(200):  # until a few pings have arrived (real time, no timing assertion)
            wd.tick()
            await asyncio.sleep(0.005)
            if wd.pings >= 3:
                break
        assert wd.pings >= 3
        assert set(lst.messages()) == {"WATCHDOG=1"}
        clock.now += 1.0  # the control loop stops ticking
        await asyncio.sleep(0.03)  # let the task finish any ping that was already due
        pings_at_stall = wd.pings
        lst.messages()
        await asyncio.sleep(0.1)  # several check periods
        assert wd.pings == pings_at_stall
        assert lst.messages() == []
        wd.tick()  # recovers
        for _ in range(100):
            await asyncio.sleep(0.005)
            wd.tick()
            if wd.pings > pings_at_stall:
                break
        assert wd.pings > pings_at_stall
    finally:
        await wd.stop()
        lst.close()


def test_summary_line() -> None:
    snap = {
        "csms": "connected",
        "queued": 0,
        "connectors": [
            {"id": 1, "status": "Charging", "power_w": 7200.0},
            {"id": 2, "status": "Available", "power_w": 0.0},
        ],
    }
    assert summary_line(snap) == "CSMS connected · 1 charging 7.2 kW · 1 available"
    snap = {
        "csms": "offline",
        "queued": 3,
        "connectors": [
            {"id": 1, "status": "Charging", "power_w": 11000.0},
            {"id": 2, "status": "Charging", "power_w": 3680.0},
            {"id": 3, "status": "Faulted", "power_w": None},
            {"id": 4, "status": "SuspendedEV"},
        ],
    }
    assert summary_line(snap) == "CSMS offline · 1 faulted · 2 charging 14.7 kW · 1 suspended by EV · 3 queued"
    assert summary_line({"csms": "connecting", "connectors": [{"status": "Charging"}]}) == (
        "CSMS connecting · 1 charging"
    )
    assert summary_line({}) == "CSMS unknown"


def test_a_full_notify_queue_never_blocks_the_caller(listener: NotifyListener) -> None:
    """systemd busy (its notify socket not read): the kernel queues ~10 datagrams per socket, then a blocking
    send would freeze the control loop (watchdog pings every second). Sends past the queue fail, quickly."""
    n = ServiceNotifier()
    t0 = time.monotonic()
    results = [n.watchdog() for _ in range(200)]
    elapsed = time.monotonic() - t0
    assert elapsed < 2.0, f"200 notifications took {elapsed:.1f} s: a send blocked"
    assert results[0] is True and results[-1] is False  # the first got through, the queue then filled
    assert listener.messages()[0] == "WATCHDOG=1"

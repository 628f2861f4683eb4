"""systemd integration end to end: the whole controller (simulated hardware, loopback central system) sends
READY/WATCHDOG/STATUS/STOPPING datagrams to a NOTIFY_SOCKET bound here, withholds WATCHDOG=1 while its
dispatcher is stalled or its hardware stays silent, and serves its snapshot on a status socket that
``chargepoint status`` reads. The last tests run ``chargepoint run`` itself as a subprocess."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from chargepoint.config import simulated_config
from chargepoint.controller import Controller
from chargepoint.csms import CentralSystem
from chargepoint.services.systemd import SystemdService
from chargepoint.status_socket import check_snapshot, fetch_status

REPO = Path(__file__).resolve().parents[1]


class NotifySink:
    """A datagram socket standing in for systemd's notification socket; records (time, message)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.messages: list[tuple[float, str]] = []

    def drain(self) -> None:
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return
            self.messages.append((time.monotonic(), data.decode()))

    def all(self, prefix: str) -> list[tuple[float, str]]:
        self.drain()
        return [(t, m) for t, m in self.messages if m.startswith(prefix)]

    async def wait(self, prefix: str, count: int = 1, timeout: float = 10.0) -> list[tuple[float, str]]:
        deadline = time.monotonic() + timeout
        while len(self.all(prefix)) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{count} x {prefix!r} not received; got {[m for _, m in self.messages]}")
            await asyncio.sleep(0.01)
        return self.all(prefix)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def sink(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[NotifySink]:
    s = NotifySink(tmp_path / "notify.sock")
    monkeypatch.setenv("NOTIFY_SOCKET", str(s.path))
    monkeypatch.setenv("WATCHDOG_USEC", "400000")  # 0.4 s: ping every 0.1 s, stalled after 0.2 s
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    monkeypatch.setenv("CHARGEPOINT_RELEASE_ROOT", str(s.path.parent / "no-release-tree"))
    yield s
    s.close()


@contextlib.asynccontextmanager
async def controller_with(tmp_path: Path, status_socket: Path | None = None) -> AsyncIterator[
        tuple[Controller, CentralSystem]]:
    async with CentralSystem() as csms:
        config = simulated_config(charge_point_id="CP-SVC", csms_url=csms.url, state_dir=tmp_path / "state",
                                  ev_reaction_s=0.0)
        config = dataclasses.replace(config, status_socket=str(status_socket) if status_socket else None)
        controller = Controller(config, restart=lambda kind: None)
        await controller.start()
        try:
            await csms.wait_for(lambda: controller.boot_accepted, 10)
            yield controller, csms
        finally:
            await controller.stop()


async def test_ready_after_safe_outputs_then_watchdog_status_and_stopping(tmp_path: Path, sink: NotifySink) -> None:
    async with controller_with(tmp_path) as (controller, csms):
        ready = await sink.wait("READY=1")
        assert len(ready) == 1
        rt = controller.connectors[1]
        assert not rt.hw.contactor.is_closed and rt.hw.pilot.offered_amps is None
        pings = await sink.wait("WATCHDOG=1", count=5, timeout=5)
        assert pings[0][0] >= ready[0][0] - 0.5
        status = await sink.wait("STATUS=")
        assert status[0][1].startswith("STATUS=CSMS ")
        # A status change is published promptly (not only every status_interval_s).
        sink.messages.clear()
        controller.build_context.shared["sim_bench"].ev(1).plug()  # type: ignore[union-attr]
        await sink.wait("STATUS=CSMS connected · 1 preparing", timeout=3)
    stopping = sink.all("STOPPING=1")
    assert len(stopping) == 1


async def test_watchdog_pings_stop_while_the_dispatcher_is_stalled(tmp_path: Path, sink: NotifySink) -> None:
    async with controller_with(tmp_path) as (controller, _csms):
        await sink.wait("WATCHDOG=1", count=3, timeout=5)
        blocker = asyncio.Event()
        real_apply = controller._apply

        async def stuck(cid: int, event: object) -> None:  # a driver call that never returns
            await blocker.wait()
            await real_apply(cid, event)

        controller._apply = stuck  # type: ignore[method-assign]
        await asyncio.sleep(0.5)  # the probe reaches the dispatcher, which hangs; stall_after = 0.2 s
        sink.drain()
        sink.messages.clear()
        await asyncio.sleep(1.0)
        assert sink.all("WATCHDOG=1") == []  # systemd would kill and restart us now
        assert controller.systemd.watchdog is not None and controller.systemd.watchdog.reason_to_withhold() is not None
        blocker.set()
        controller._apply = real_apply  # type: ignore[method-assign]
        await sink.wait("WATCHDOG=1", count=2, timeout=3)  # pinging resumes once the loop runs again


async def test_watchdog_pings_stop_when_the_pilot_board_stays_silent(tmp_path: Path, sink: NotifySink,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from hal.interfaces import FaultKind

    monkeypatch.setattr(SystemdService, "hardware_grace_s", 0.3)
    async with controller_with(tmp_path) as (controller, _csms):
        await sink.wait("WATCHDOG=1", count=2, timeout=5)
        bench = controller.build_context.shared["sim_bench"]  # type: ignore[union-attr]
        # a silent meter is reported but is no reason for a restart: charging goes on without it
        controller.connectors[1].hw.meter.failing = True  # type: ignore[attr-defined]
        await controller.transactions.read_meter(controller.connectors[1])
        assert not controller.connectors[1].meter_ok
        await asyncio.sleep(0.5)
        assert controller.systemd.hardware_healthy()
        controller.connectors[1].hw.meter.failing = False  # type: ignore[attr-defined]
        bench.inject(1, FaultKind.PILOT_BOARD)
        await asyncio.sleep(0.2)
        assert controller.systemd.hardware_healthy()  # within the grace period: still pinging
        await asyncio.sleep(0.5)
        assert not controller.systemd.hardware_healthy()
        sink.drain()
        sink.messages.clear()
        await asyncio.sleep(0.5)
        assert sink.all("WATCHDOG=1") == []
        bench.clear(1, FaultKind.PILOT_BOARD)
        await sink.wait("WATCHDOG=1", count=2, timeout=3)


async def test_status_socket_serves_the_controller_snapshot(tmp_path: Path, sink: NotifySink) -> None:
    path = tmp_path / "run" / "status.sock"
    path.parent.mkdir()
    async with controller_with(tmp_path, status_socket=path) as (controller, _csms):
        snap = await fetch_status(path)
        assert check_snapshot(snap) == []
        assert snap["charge_point_id"] == "CP-SVC"
        assert snap["csms"] == "connected"
        assert [c["status"] for c in snap["connectors"]] == ["Available"]
        assert oct(path.stat().st_mode & 0o777) == oct(0o660)
        # The CLI, as a separate process, while the controller keeps running on this loop.
        env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "chargepoint", "status", "--json", "--socket", str(path),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=REPO, env=env)
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, err.decode()
        cli = json.loads(out)
        assert check_snapshot(cli) == []
        assert cli["charge_point_id"] == "CP-SVC" and cli["connectors"][0]["status"] == "Available"
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "chargepoint", "status", "--socket", str(path),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=REPO, env=env)
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, err.decode()
        assert "Available" in out.decode()
        assert controller.systemd.status_server is not None
    assert not path.exists()  # removed at stop
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "chargepoint", "status", "--socket", str(path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=REPO)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 1
    assert "no status socket" in err.decode() and "Traceback" not in err.decode()


# ------------------------------------------------------------------------------------ chargepoint run


def _write_config(tmp_path: Path, csms_url: str, sock: Path) -> Path:
    state = tmp_path / "state"
    cfg = tmp_path / "chargepoint.toml"
    cfg.write_text(f"""
[chargepoint]
id = "CP-RUN"
state_dir = "{state}"
status_socket = "{sock}"

[csms]
url = "{csms_url}"
reconnect_min_s = 0.2
reconnect_max_s = 1

[[connectors]]
id = 1
pilot = {{ driver = "sim", ev_reaction_s = 0 }}
contactor = {{ driver = "sim" }}
meter = {{ driver = "sim" }}

[[readers]]
driver = "sim"
""")
    return cfg


async def _run_cli(tmp_path: Path, sink: NotifySink, csms: CentralSystem, *, under_systemd: bool,
                   ) -> tuple[asyncio.subprocess.Process, Path]:
    sock = tmp_path / "status.sock"
    cfg = _write_config(tmp_path, csms.url, sock)
    env = dict(os.environ)
    env.pop("INVOCATION_ID", None)
    env.pop("JOURNAL_STREAM", None)
    if under_systemd:
        env["INVOCATION_ID"] = "0123456789abcdef0123456789abcdef"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "chargepoint", "run", "--config", str(cfg),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=REPO, env=env)
    return proc, sock


async def test_chargepoint_run_under_a_notify_socket(tmp_path: Path, sink: NotifySink) -> None:
    async with CentralSystem() as csms:
        proc, sock = await _run_cli(tmp_path, sink, csms, under_systemd=False)
        try:
            await sink.wait("READY=1", timeout=30)
            await csms.wait_for_message("BootNotification", timeout=10)
            await sink.wait("WATCHDOG=1", count=3, timeout=5)
            snap = await fetch_status(sock)
            assert check_snapshot(snap) == [] and snap["charge_point_id"] == "CP-RUN"
            proc.send_signal(signal.SIGTERM)
            out, err = await asyncio.wait_for(proc.communicate(), 30)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert proc.returncode == 0, err.decode()[-2000:]
        assert sink.all("STOPPING=1")
        assert "Traceback" not in err.decode()


async def test_reset_under_systemd_exits_75_for_a_restart(tmp_path: Path, sink: NotifySink) -> None:
    async with CentralSystem() as csms:
        proc, _sock = await _run_cli(tmp_path, sink, csms, under_systemd=True)
        try:
            await sink.wait("READY=1", timeout=30)
            await csms.wait_for(lambda: len(csms.received("StatusNotification")) >= 2, 10)
            conf = await csms.call("CP-RUN", "Reset", {"type": "Soft"})
            assert conf == {"status": "Accepted"}
            out, err = await asyncio.wait_for(proc.communicate(), 30)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert proc.returncode == 75, err.decode()[-2000:]  # the unit's RestartForceExitStatus=75
        assert sink.all("STOPPING=1")

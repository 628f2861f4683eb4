"""The supervisor keeps the essential tasks alive: a task that dies comes back (with a log line), one that
cannot be kept alive makes the controller unhealthy so the systemd watchdog stops being fed; the
dispatcher's death puts the outputs into their safe state first."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import running_station

from chargepoint.csms import poll_until
from chargepoint.supervisor import Supervisor

# ----------------------------------------------------------------------- the supervisor alone


async def _wait(predicate: Any, timeout: float = 5.0) -> Any:
    return await poll_until(predicate, timeout, interval=0.005)


async def test_a_task_that_fails_is_restarted_with_a_log_line(caplog: pytest.LogCaptureFixture) -> None:
    runs: list[int] = []

    async def worker() -> None:
        runs.append(1)
        if len(runs) == 1:
            raise RuntimeError("boom")
        await asyncio.Event().wait()

    crashes: list[tuple[str, str]] = []
    sup = Supervisor(on_crash=lambda n, e, c: crashes.append((n, repr(e))), backoff_min_s=0.01)
    first = sup.start("worker", worker)
    await _wait(lambda: len(runs) == 2)
    assert sup.task("worker") is not first and not sup.task("worker").done()  # type: ignore[union-attr]
    assert crashes == [("worker", "RuntimeError('boom')")] and sup.restarts() == {"worker": 1}
    assert any(
        r.levelno == logging.ERROR and "task worker failed: RuntimeError: boom; restarting" in r.getMessage()
        for r in caplog.records
    )
    assert sup.healthy
    for t in sup.stop():
        await asyncio.wait([t])


async def test_cancel_on_purpose_and_a_transient_task_ending_are_not_deaths() -> None:
    async def forever() -> None:
        await asyncio.Event().wait()

    async def short() -> None:
        await asyncio.sleep(0)

    sup = Supervisor(backoff_min_s=0.01)
    task = sup.start("forever", forever)
    sup.start("short", short, transient=True)
    await asyncio.sleep(0.01)
    cancelled = sup.cancel("forever")
    assert cancelled is task
    await asyncio.sleep(0.05)
    assert sup.names() == [] and sup.restarts() == {} and sup.healthy


async def test_a_loop_that_returns_or_is_cancelled_by_someone_else_comes_back() -> None:
    runs: list[int] = []

    async def returns() -> None:
        runs.append(1)

    async def forever() -> None:
        await asyncio.Event().wait()

    sup = Supervisor(backoff_min_s=0.01, max_restarts=100)
    sup.start("returns", returns)
    victim = sup.start("forever", forever)
    await asyncio.sleep(0)
    victim.cancel()  # not through the supervisor: a death
    await _wait(lambda: len(runs) >= 3 and sup.task("forever") not in (None, victim))
    for t in sup.stop():
        await asyncio.wait([t])


async def test_a_task_that_keeps_dying_is_given_up_and_reported() -> None:
    runs: list[int] = []

    async def broken() -> None:
        runs.append(1)
        raise OSError("device gone")

    given_up: list[tuple[str, str, bool]] = []
    sup = Supervisor(
        on_give_up=lambda n, r, c: given_up.append((n, r, c)), max_restarts=3, window_s=60, backoff_min_s=0.01
    )
    sup.start("broken", broken, critical=True)
    await _wait(lambda: given_up)
    await asyncio.sleep(0.1)
    assert len(runs) == 4  # the first run and three restarts, then no more
    assert not sup.healthy and "task broken failed: OSError: device gone" in (sup.problem or "")
    assert given_up[0][0] == "broken" and given_up[0][2] is True


async def test_deaths_spread_wider_than_the_window_never_give_up() -> None:
    now = [0.0]
    runs: list[int] = []

    async def flaky() -> None:
        runs.append(1)
        now[0] += 30.0  # each death 30 s after the previous one
        raise RuntimeError("transient")

    sup = Supervisor(max_restarts=2, window_s=60, backoff_min_s=0.001, clock=lambda: now[0])
    sup.start("flaky", flaky)
    await _wait(lambda: len(runs) >= 8)
    assert sup.healthy
    for t in sup.stop():
        await asyncio.wait([t])


# ----------------------------------------------------------------------- the controller's tasks


@pytest.fixture
def fast_supervisor(monkeypatch: pytest.MonkeyPatch) -> None:
    original = Supervisor.__init__

    def init(self: Supervisor, **kwargs: Any) -> None:
        original(self, **kwargs)
        self.backoff_min_s = 0.01
        self.backoff_max_s = 0.05

    monkeypatch.setattr(Supervisor, "__init__", init)


async def test_every_essential_task_killed_comes_back_and_the_charger_still_works(
    tmp_path: Path, fast_supervisor: None
) -> None:
    async with running_station(tmp_path) as st:
        c = st.controller
        sup = c.supervisor
        expected = {
            "dispatcher", "status", "outbox", "link", "clock-aligned", "heartbeat", "meter-1",
            "service-liveness", "service-status", "security-messages",
        }  # fmt: skip
        assert expected <= set(sup.names())
        await st.start_charging()
        names = sup.names()
        assert "sampler-1" in names  # the transaction's MeterValues sampler is supervised too
        for name in names:
            victim = sup.task(name)
            assert victim is not None and not victim.done()
            victim.cancel()
            await st.csms.wait_for(
                lambda v=victim, n=name: sup.task(n) not in (None, v) and not sup.task(n).done(),  # type: ignore[union-attr]
                5,
            )
        assert sup.healthy and set(sup.restarts()) == set(names)
        # Still a working charger: the link is back, events are applied, transactions are carried out.
        await st.csms.wait_for(lambda: c.link is not None and c.link.session is not None, 10)
        rt = c.connectors[1]
        await st.wait_status("Charging")
        assert rt.hw.contactor.is_closed
        st.bench.readers[0].present("TAG1")  # the same tag again stops the session
        stop = await st.csms.wait_for_message("StopTransaction", timeout=10)
        assert stop["reason"] == "Local" and stop["transactionId"] == 1001
        await st.wait_status("Finishing")


async def test_the_link_dying_of_an_exception_comes_back_and_resends_every_status(
    tmp_path: Path, fast_supervisor: None, caplog: pytest.LogCaptureFixture
) -> None:
    async with running_station(tmp_path) as st:
        c, cs = st.controller, st.csms
        assert c.link is not None
        await cs.wait_for(lambda: {p["connectorId"] for p in cs.received("StatusNotification")} >= {0, 1})
        real_factory = c.link._session_factory
        failures: list[int] = []

        def broken_factory(ws: Any) -> Any:
            if not failures:
                failures.append(1)
                raise RuntimeError("a bug in session set-up")
            return real_factory(ws)

        c.link._session_factory = broken_factory
        before = len(cs.received("StatusNotification"))
        await cs.drop_connections()
        await cs.wait_for(lambda: failures and c.link.session is not None, 10)  # type: ignore[union-attr]
        # The link recovers from it itself (protocol/link.py: logged, reconnect) or, failing that, the
        # supervisor restarts the task: either way the failure is logged with its cause.
        assert any(
            "a bug in session set-up" in (r.getMessage() + str(r.exc_info[1] if r.exc_info else ""))
            and ("task link failed" in r.getMessage() or "reconnecting" in r.getMessage())
            for r in caplog.records
        )
        await cs.wait_for(
            lambda: {p["connectorId"] for p in cs.received("StatusNotification")[before:]} >= {0, 1}, 10
        )
        assert len(cs.received("BootNotification")) == 1


async def test_the_dispatcher_dying_opens_the_contactor_at_once_then_charging_resumes(
    tmp_path: Path, fast_supervisor: None
) -> None:
    async with running_station(tmp_path) as st:
        c = st.controller
        await st.start_charging()
        rt = c.connectors[1]
        opened: list[float] = []
        real_open = rt.hw.contactor.open

        async def spy_open() -> None:
            opened.append(time.monotonic())
            await real_open()

        rt.hw.contactor.open = spy_open  # type: ignore[method-assign]
        dispatcher = c.supervisor.task("dispatcher")
        assert dispatcher is not None
        killed = time.monotonic()
        dispatcher.cancel()
        await st.csms.wait_for(lambda: opened, 2)
        assert opened[0] - killed < 0.05 and not rt.hw.contactor.is_closed
        assert st.bench.ev(1).cp_state.value == "F"
        # The restarted dispatcher learns it; after the 300 ms in state F the car is offered current again.
        await st.csms.wait_for(lambda: rt.state.status == "SuspendedEVSE", 2)
        await st.csms.wait_for(lambda: rt.hw.contactor.is_closed and rt.state.status == "Charging", 3)
        assert rt.tx is not None and rt.tx.transaction_id == 1001
        assert st.csms.received("StopTransaction") == []


# ----------------------------------------------------------------------- cannot be kept alive: watchdog


class NotifySink:
    """Stands in for systemd's notification socket."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.messages: list[str] = []

    def pings(self) -> int:
        while True:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return sum(1 for m in self.messages if m.startswith("WATCHDOG=1"))


@pytest.fixture
def sink(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[NotifySink]:
    s = NotifySink(tmp_path / "notify.sock")
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))
    monkeypatch.setenv("WATCHDOG_USEC", "400000")  # ping every 0.2 s
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    monkeypatch.setenv("CHARGEPOINT_RELEASE_ROOT", str(tmp_path / "no-release-tree"))
    yield s
    s.sock.close()


async def _kill_until_given_up(c: Any, name: str) -> None:
    for _ in range(50):
        if not c.supervisor.healthy:
            return
        task = c.supervisor.task(name)
        if task is not None and not task.done():
            task.cancel()
        await asyncio.sleep(0.02)
    raise AssertionError(f"{name} was never given up")


async def test_a_task_that_cannot_be_kept_alive_stops_the_watchdog(
    tmp_path: Path, sink: NotifySink, fast_supervisor: None
) -> None:
    from chargepoint.config import simulated_config
    from chargepoint.controller import Controller
    from chargepoint.csms import CentralSystem

    async with CentralSystem() as cs:
        config = simulated_config(charge_point_id="CP-SUP", csms_url=cs.url, state_dir=tmp_path / "s")
        c = Controller(config)  # no restart hook: the watchdog is the only way out
        await c.start()
        try:
            await cs.wait_for(lambda: c.boot_accepted, 10)
            await poll_until(lambda: sink.pings() >= 3, 5)
            events: list[dict[str, Any]] = []
            c.listeners.append(lambda kind, data: events.append(data) if kind == "security_event" else None)
            await _kill_until_given_up(c, "status")
            assert c.supervisor.task("status") is None  # not restarted any more
            assert c.systemd.watchdog is not None and "task status" in (c.systemd.watchdog.reason_to_withhold() or "")
            assert [e["type"] for e in events] == ["ResetOrReboot"]
            await asyncio.sleep(0.3)  # a ping already under way may still arrive
            seen = sink.pings()
            await asyncio.sleep(0.8)  # four ping periods
            assert sink.pings() == seen  # systemd restarts the service after WatchdogSec
            assert c.connectors[1].hw.contactor.is_closed is False
        finally:
            await c.stop()


async def test_a_dispatcher_that_cannot_be_restarted_leaves_the_outputs_safe(
    tmp_path: Path, fast_supervisor: None
) -> None:
    async with running_station(tmp_path) as st:
        c = st.controller
        await st.start_charging()
        await _kill_until_given_up(c, "dispatcher")
        rt = c.connectors[1]
        await st.csms.wait_for(lambda: not rt.hw.contactor.is_closed and rt.hw.pilot.offered_amps is None, 2)
        assert st.bench.ev(1).cp_state.value == "F"
        assert not c.healthy()
        await asyncio.sleep(0.5)  # nothing closes it again
        assert not rt.hw.contactor.is_closed


async def test_giving_up_with_a_restart_hook_stops_in_order_and_asks_for_a_restart(
    tmp_path: Path, fast_supervisor: None
) -> None:
    restarts: list[str] = []
    async with running_station(tmp_path, restart=restarts.append) as st:
        c = st.controller
        await st.start_charging()
        await _kill_until_given_up(c, "heartbeat")
        await st.csms.wait_for(lambda: restarts == ["Supervisor"], 5)
        assert c.stopped.is_set() and not c.connectors[1].hw.contactor.is_closed
        from chargepoint.store import Store

        store = Store.open(c.config.state_dir)
        try:
            assert store.get_meta("pending_reset") == "Shutdown"  # the next start says Reboot, not PowerLoss
        finally:
            store.close()


async def test_a_failing_session_start_reconnects_instead_of_staying_connected_unregistered(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with running_station(tmp_path) as st:
        c, cs = st.controller, st.csms
        await cs.wait_for(lambda: {p["connectorId"] for p in cs.received("StatusNotification")} >= {0, 1})
        real = c.station_link._send_all_statuses
        calls: list[int] = []

        def fails_once() -> None:
            calls.append(1)
            if len(calls) == 1:
                raise RuntimeError("a bug after the reconnect")
            real()

        c.station_link._send_all_statuses = fails_once  # type: ignore[method-assign]
        before = len(cs.received("StatusNotification"))
        await cs.drop_connections()
        await cs.wait_for(lambda: cs.connections >= 3, 10)  # closed and connected again
        await cs.wait_for(
            lambda: {p["connectorId"] for p in cs.received("StatusNotification")[before:]} >= {0, 1}, 10
        )
        assert any("starting the OCPP session failed" in r.getMessage() for r in caplog.records)

"""The systemd service: READY=1, a watchdog that watches the control loop, READY=1, a watchdog that watches the control loop,
STATUS= line and the local status socket (see :mod:`chargepoint.service`, :mod:`chargepoint.status_socket`).

* READY=1 is sent at the end of the controller's start-up: the store is open, every output was put into its
  safe state and every driver started, the dispatcher runs.
* Watchdog liveness: a periodic probe posts a ``Tick`` to the dispatcher (the task that applies every
  connector event and switches the hardware) and the watchdog is ticked only when ``loop_ticks`` advanced,
  i.e. when the dispatcher really processed events since the last probe. A dispatcher stuck on a dead driver
  therefore stops WATCHDOG=1 and systemd restarts the service; a blocked event loop stops everything anyway.
* healthy() = "the hardware answers": False once *every* connector has had a does-not-answer fault (meter or
  pilot board) for longer than :attr:`SystemdService.hardware_grace_s`. A restart re-opens serial ports and
  USB adapters, the usual cure; one silent meter among several connectors does not take the station down
  (that connector is Faulted with its contactor open). Restart loops are bounded by the unit's
  StartLimitBurst.
* The supervisor (chargepoint/supervisor.py) restarts an essential task that died; one it could not keep
  alive makes the controller unhealthy, and the watchdog names that task when it stops pinging.
* STATUS= is :func:`chargepoint.service.summary_line` of ``snapshot()``, every few seconds and on every
  connector status change (repeated text is not resent).
* Status socket: ``config.status_socket``, else /run/chargepoint/status.sock when started by systemd and
  /run/chargepoint exists (the unit's RuntimeDirectory); otherwise none. A socket that cannot be bound is
  logged, not fatal.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from chargepoint import connector as cm
from chargepoint.logsetup import under_systemd
from chargepoint.service import ServiceNotifier, Watchdog, summary_line
from chargepoint.services.station import Connectors, Post
from chargepoint.status_socket import DEFAULT_STATUS_SOCKET, StatusServer
from chargepoint.supervisor import TaskFactory
from hal.interfaces import FaultKind

log = logging.getLogger(__name__)

NO_ANSWER_FAULTS = frozenset({FaultKind.METER, FaultKind.PILOT_BOARD})


def status_socket_path(configured: str | None) -> Path | None:
    """The configured path; else the default one, but only for the service systemd started (a test run or a
    second controller on a charger must not rename its socket over the running service's)."""
    if configured:
        return Path(configured)
    default = Path(DEFAULT_STATUS_SOCKET)
    return default if under_systemd() and default.parent.is_dir() else None


class SystemdService:
    """READY/WATCHDOG/STATUS/STOPPING for systemd and the status socket for ``chargepoint status``."""

    status_interval_s: float = 5.0
    hardware_grace_s: float = 120.0
    #: Probe period when systemd set no watchdog (the liveness is still tracked for the status).
    liveness_period_s: float = 2.0

    def __init__(
        self,
        connectors: Connectors,
        *,
        status_socket: str | None,
        snapshot: Callable[[], dict[str, Any]],
        loop_ticks: Callable[[], int],
        post: Post,
        supervise: Callable[[str, TaskFactory], Any],
        problem: Callable[[], str | None],
        monotonic: Callable[[], float],
        store_copy: Callable[[], Path | None] | None,
        subscribe: Callable[[], Any] | None = None,
    ) -> None:
        """``loop_ticks()`` counts the dispatcher's events; ``problem()`` is the supervisor's reason to restart."""
        self._connectors = connectors
        self._status_socket = status_socket
        self._snapshot = snapshot
        self._loop_ticks = loop_ticks
        self._post = post
        self._supervise = supervise
        self._problem = problem
        self._monotonic = monotonic
        self._store_copy = store_copy
        self._subscribe = subscribe
        self._notifier = ServiceNotifier()
        self._watchdog: Watchdog | None = None
        self._status_server: StatusServer | None = None
        self._silent_since: dict[int, float] = {}
        self._status_dirty: asyncio.Event | None = None
        self._stopping = False

    @property
    def watchdog(self) -> Watchdog | None:
        return self._watchdog

    @property
    def status_server(self) -> StatusServer | None:
        return self._status_server

    async def start(self) -> None:
        self._watchdog = Watchdog(self._notifier, healthy=self.hardware_healthy, problem=self._problem)
        self._status_dirty = asyncio.Event()
        self._supervise("service-liveness", self._liveness_loop)
        self._watchdog.start()
        path = status_socket_path(self._status_socket)
        if path is not None:
            # store-copy: `chargepoint diagnostics` cannot read the exclusively locked store itself.
            server = StatusServer(path, self._snapshot, store_copy=self._store_copy, subscribe=self._subscribe)
            try:
                await server.start()
                self._status_server = server
                log.info("status socket at %s", path)
            except OSError as exc:
                log.error("status socket %s not available: %s", path, exc)
        self._notifier.status(summary_line(self._snapshot()))
        self._supervise("service-status", self._status_loop)
        if self._notifier.ready():
            log.info("told systemd we are ready (%s)", self._notifier.backend)

    async def stop(self) -> None:
        if not self._stopping:
            self._stopping = True
            self._notifier.stopping()
        if self._watchdog is not None:
            await self._watchdog.stop()
        if self._status_server is not None:
            with contextlib.suppress(Exception):
                await self._status_server.stop()
            self._status_server = None

    # ------------------------------------------------------------------ watchdog
    def _probe_period(self) -> float:
        interval = self._watchdog.interval if self._watchdog is not None else None
        return min(interval / 2, self.liveness_period_s) if interval else self.liveness_period_s

    async def _liveness_loop(self) -> None:
        """Tick the watchdog only when the dispatcher processed events since the previous probe."""
        assert self._watchdog is not None
        first = next(iter(self._connectors), None)
        while True:
            mark = self._loop_ticks()
            if first is not None:
                self._post(first, cm.Tick())
            await asyncio.sleep(self._probe_period())
            if self._loop_ticks() > mark:
                self._watchdog.tick()

    def hardware_healthy(self) -> bool:
        """False when every connector's pilot board has not answered for ``hardware_grace_s``.

        A silent meter does not count: charging goes on without it (PowerMeterFailure is reported), and a
        watchdog restart mid-session would only close the transaction with PowerLoss and, after five
        restarts, leave the service stopped."""
        now = self._monotonic()
        silent: list[bool] = []
        for rt in self._connectors.values():
            if (NO_ANSWER_FAULTS - {FaultKind.METER}) & rt.state.all_faults:
                since = self._silent_since.setdefault(rt.id, now)
                silent.append(now - since > self.hardware_grace_s)
            else:
                self._silent_since.pop(rt.id, None)
                silent.append(False)
        return not (silent and all(silent))

    # ------------------------------------------------------------------ status line
    def status_changed(self) -> None:
        if self._status_dirty is not None:
            self._status_dirty.set()

    async def _status_loop(self) -> None:
        assert self._status_dirty is not None
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._status_dirty.wait(), self.status_interval_s)
            self._status_dirty.clear()
            try:
                self._notifier.status(summary_line(self._snapshot()))
            except Exception:
                log.exception("status line failed")

"""systemd service integration in the controller: READY=1, a watchdog that watches the control loop,
STATUS= line and the local status socket (see :mod:`chargepoint.service`, :mod:`chargepoint.status_socket`).

* READY=1 is sent at the end of start-up of the core: the store is open, every output was put into its safe
  state and every driver started, the dispatcher runs. (This mixin is the innermost feature, so later
  feature start-up steps such as the firmware release check run right after it.)
* Watchdog liveness: a periodic probe posts a ``Tick`` to the dispatcher (the task that applies every
  connector event and switches the hardware) and the watchdog is ticked only when ``loop_ticks`` advanced,
  i.e. when the dispatcher really processed events since the last probe. A dispatcher stuck on a dead driver
  therefore stops WATCHDOG=1 and systemd restarts the service; a blocked event loop stops everything anyway.
* healthy() = "the hardware answers": False once *every* connector has had a does-not-answer fault (meter or
  pilot board) for longer than :attr:`ServiceFeature.hardware_grace_s`. A restart re-opens serial ports and
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
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chargepoint import connector as cm
from chargepoint.logsetup import under_systemd
from chargepoint.service import ServiceNotifier, Watchdog, summary_line
from chargepoint.status_socket import DEFAULT_STATUS_SOCKET, StatusServer
from hal.interfaces import FaultKind

if TYPE_CHECKING:
    from chargepoint.controller import ConnectorRuntime, ControllerCore

    _Base = ControllerCore
else:
    _Base = object

log = logging.getLogger(__name__)

NO_ANSWER_FAULTS = frozenset({FaultKind.METER, FaultKind.PILOT_BOARD})


def status_socket_path(configured: str | None) -> Path | None:
    """The configured path; else the default one, but only for the service systemd started (a test run or a
    second controller on a charger must not rename its socket over the running service's)."""
    if configured:
        return Path(configured)
    default = Path(DEFAULT_STATUS_SOCKET)
    return default if under_systemd() and default.parent.is_dir() else None


class ServiceFeature(_Base):
    """READY/WATCHDOG/STATUS/STOPPING for systemd and the status socket for ``chargepoint status``."""

    status_interval_s: float = 5.0
    hardware_grace_s: float = 120.0
    #: Probe period when systemd set no watchdog (the liveness is still tracked for the status).
    liveness_period_s: float = 2.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.notifier = ServiceNotifier()
        self.watchdog: Watchdog | None = None
        self.status_server: StatusServer | None = None
        self._silent_since: dict[int, float] = {}
        self._status_dirty: asyncio.Event | None = None

    async def start(self) -> None:
        await super().start()
        self.watchdog = Watchdog(self.notifier, healthy=self.hardware_healthy, problem=self._service_problem)
        self._status_dirty = asyncio.Event()
        self.supervise("service-liveness", self._liveness_loop)
        self.watchdog.start()
        path = status_socket_path(self.config.status_socket)
        if path is not None:
            # store-copy: `chargepoint diagnostics` cannot read the exclusively locked store itself.
            server = StatusServer(path, self.snapshot, store_copy=getattr(self, "_copy_store", None))
            try:
                await server.start()
                self.status_server = server
                log.info("status socket at %s", path)
            except OSError as exc:
                log.error("status socket %s not available: %s", path, exc)
        self.notifier.status(summary_line(self.snapshot()))
        self.supervise("service-status", self._status_loop)
        if self.notifier.ready():
            log.info("told systemd we are ready (%s)", self.notifier.backend)

    async def stop(self) -> None:
        if not self._stopping:
            self.notifier.stopping()
        if self.watchdog is not None:
            await self.watchdog.stop()
        if self.status_server is not None:
            with contextlib.suppress(Exception):
                await self.status_server.stop()
            self.status_server = None
        await super().stop()

    # ------------------------------------------------------------------ watchdog
    def _probe_period(self) -> float:
        interval = self.watchdog.interval if self.watchdog is not None else None
        return min(interval / 2, self.liveness_period_s) if interval else self.liveness_period_s

    async def _liveness_loop(self) -> None:
        """Tick the watchdog only when the dispatcher processed events since the previous probe."""
        assert self.watchdog is not None
        first = next(iter(self.connectors), None)
        while True:
            mark = self.loop_ticks
            if first is not None:
                self.post(first, cm.Tick())
            await asyncio.sleep(self._probe_period())
            if self.loop_ticks > mark:
                self.watchdog.tick()

    def _service_problem(self) -> str | None:
        """Why the service must be restarted although the control loop still ticks, or None."""
        return self.supervisor.problem

    def hardware_healthy(self) -> bool:
        """False when every connector's pilot board has not answered for ``hardware_grace_s``.

        A silent meter does not count: charging goes on without it (PowerMeterFailure is reported), and a
        watchdog restart mid-session would only close the transaction with PowerLoss and, after five
        restarts, leave the service stopped."""
        now = self.monotonic()
        silent: list[bool] = []
        for rt in self.connectors.values():
            if (NO_ANSWER_FAULTS - {FaultKind.METER}) & rt.state.all_faults:
                since = self._silent_since.setdefault(rt.id, now)
                silent.append(now - since > self.hardware_grace_s)
            else:
                self._silent_since.pop(rt.id, None)
                silent.append(False)
        return not (silent and all(silent))

    # ------------------------------------------------------------------ status line
    def on_status_changed(self, rt: ConnectorRuntime, status: str, error_code: str) -> None:
        super().on_status_changed(rt, status, error_code)
        if self._status_dirty is not None:
            self._status_dirty.set()

    async def _status_loop(self) -> None:
        assert self._status_dirty is not None
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._status_dirty.wait(), self.status_interval_s)
            self._status_dirty.clear()
            try:
                self.notifier.status(summary_line(self.snapshot()))
            except Exception:
                log.exception("status line failed")

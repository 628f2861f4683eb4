"""systemd integration: readiness, watchdog and status line.

The unit (systemd/chargepoint.service) is ``Type=notify`` with ``WatchdogSec=``:
the controller calls :meth:`ServiceNotifier.ready` once its hardware is in the
safe state and the control loop runs, pings through :class:`Watchdog` and
publishes :func:`summary_line` as ``STATUS=`` (shown by ``systemctl status``).

Every call is safe without systemd: with no ``$NOTIFY_SOCKET`` a notification
is a no-op returning False, so the controller calls them unconditionally.

Why a watchdog that watches the control loop: systemd's watchdog only proves
that *something* in the process still sends datagrams. A ping task alone would
keep pinging while the control coroutine hangs on a dead driver with the
contactor closed. So :class:`Watchdog` pings only while the controller keeps
calling :meth:`Watchdog.tick` from its control loop and ``healthy()`` is True;
otherwise systemd kills the process (SIGABRT), ``ExecStopPost`` disables the
pilot PWM, the relay pull-downs open the contactor, and ``Restart=on-failure``
starts a fresh controller.

Status snapshot
---------------
One dict describes the station: :meth:`chargepoint.api.StationView.as_dict` (the application API's
snapshot; the controller's own ``snapshot()`` is the part up to ``smart_charging``).
:func:`summary_line` turns it into the systemd status line and :mod:`chargepoint.status_socket` serves it
as JSON to ``chargepoint status``. Keys are only ever added. Shape (JSON types)::

    {
      "charge_point_id": "CP1",
      "csms": "connected" | "connecting" | "offline",   # OCPP link state
      "registration": "Accepted",   # BootNotification answer: Accepted, Pending, Rejected, Unknown
      "queued": 0,                  # transaction messages waiting in the persistent outbox
      "dropped": [],                # transaction messages the outbox gave up on
      "connectors": [
        {
          "id": 1,                   # OCPP connectorId (1-based)
          "status": "Charging",      # OCPP 1.6 ChargePointStatus (section 7.7)
          "error_code": "NoError",   # OCPP 1.6 ChargePointErrorCode
          "pilot": "C",              # IEC 61851 CP state A-F, or null if unknown
          "offered_a": 16.0,         # current offered on the pilot now (null = no PWM)
          "measured_a": 15.8,        # highest phase current from the meter (null = unknown)
          "power_w": 7200.0,         # active power from the meter (null = unknown)
          "energy_wh": 123456.0,     # meter import register
          "contactor": "closed",     # "open" | "closed" (the hardware's position)
          "transaction_id": 17,      # null when no transaction runs
          "id_tag": "tag:693e0291",  # the session's card, always masked (chargepoint.privacy)
          "limit_a": 16.0,           # the limit in force (what is offered at most; null = paused)
          "limit_source": "cable rating 16 A (PP)",  # the claim that decided it, in words
          "faults": ["rcd"],         # hal.interfaces.FaultKind values present (latched ones included)
          "limit_claims": [          # every claim of the last decision, in the arbiter's priority order;
            {"amps": 32.0, "source": "connector maximum (configuration)"},   # the lowest wins,
            {"amps": 16.0, "source": "cable rating 16 A (PP)"}               # null pauses
          ],
          "cable": {"socket": true, "state": "rated", "detail": "…"},  # the PP reading
          "cable_a": 16.0,           # the cable's rating (PP, or a tethered cable's configured one)
          "temperature": {"level": "normal", "sensors": {"socket": 25.0}},  # when sensors exist
          # added by the application API (chargepoint.api.ConnectorView):
          "available": true,         # not made Inoperative (by the central system or locally)
          "session_energy_wh": 812.4,  # since the transaction started (null without one)
          "session_started": "2026-01-02T10:00:00Z",
          "claims": [{"source": "…", "amps": 16.0, "priority": 1, "detail": ""}],  # limit_claims, typed
          "local_limit_a": null,     # the owner's limit on this connector (set_local_limit)
          "fault_details": [{"kind": "rcd", "latched": true, "action": "what a person should do"}]
        }
      ],
      "smart_charging": {"profiles": [], "station_fuse_a": 32.0, "charge_point_max_a": null, …},
      # added by the application API (chargepoint.api.StationView):
      "firmware_version": "0.1.0",
      "free_vend": false,            # [chargepoint] free_vend_id_tag is set
      "link": {"state": "connected", "registration": "Accepted", "connected_since": "…Z",
               "queued": 0, "last_error": null}
    }

An older release sent ``"limits": [{"source", "limit_a"}]`` instead of ``limit_claims``; the formatters
read either. Unknown extra keys are allowed and ignored by the formatters.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any

log = logging.getLogger(__name__)

try:  # systemd-python is an optional extra ([systemd])
    from systemd import daemon as _sd_daemon
except ImportError:  # pragma: no cover - depends on the environment
    _sd_daemon = None


def _pure_notify(state: str, env: Mapping[str, str] | None = None) -> bool:
    """Minimal sd_notify(3): one datagram to $NOTIFY_SOCKET, sent without blocking.

    ``@name`` is a Linux abstract socket (leading NUL byte). Returns False when
    there is no socket to notify or sending fails; never raises, because a
    status line must not take down the controller.

    Non-blocking on purpose: the kernel queues only a few datagrams for a socket
    nobody reads (net.unix.max_dgram_qlen, 10 by default), and a busy or stalled
    systemd would otherwise freeze the one event loop that also opens the
    contactor. A ping dropped because the queue is full costs nothing: the next
    one follows within a second, long before WatchdogSec.
    """
    env = os.environ if env is None else env
    addr = env.get("NOTIFY_SOCKET", "")
    if not addr:
        return False
    if addr[0] == "@":
        target: str | bytes = b"\0" + addr[1:].encode()
    elif addr[0] == "/":
        target = addr
    else:  # vsock: and relative paths are not supported here
        log.debug("unsupported NOTIFY_SOCKET address %r", addr)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.setblocking(False)
            sock.connect(target)
            sock.send(state.encode())
    except OSError as exc:
        log.debug("sd_notify to %r failed: %s", addr, exc)
        return False
    return True


class ServiceNotifier:
    """Sends sd_notify messages: READY=1, WATCHDOG=1, STATUS=…, STOPPING=1.

    The default is the non-blocking pure-socket sender; ``use_systemd_python=True``
    picks systemd-python's ``daemon.notify`` (blocking). Both read
    ``$NOTIFY_SOCKET`` at call time.
    """

    def __init__(self, *, use_systemd_python: bool | None = None) -> None:
        if use_systemd_python is None:
            # The own sender by default: it never blocks (see _pure_notify); libsystemd's sd_notify sends
            # with a blocking sendmsg, which stalls the control loop when systemd does not read its socket.
            use_systemd_python = False
        if use_systemd_python and _sd_daemon is None:
            raise RuntimeError("systemd-python is not installed (pip install 'pi-chargepoint[systemd]')")
        self._use_lib = use_systemd_python
        self._last_status: str | None = None

    @property
    def backend(self) -> str:
        return "systemd-python" if self._use_lib else "socket"

    def notify(self, state: str) -> bool:
        """Send a raw notification (newline-separated assignments)."""
        if self._use_lib:
            assert _sd_daemon is not None
            try:
                return bool(_sd_daemon.notify(state))
            except OSError as exc:
                log.debug("sd_notify failed: %s", exc)
                return False
        return _pure_notify(state)

    def ready(self) -> bool:
        """The hardware is safe and the control loop runs: systemd may consider us started."""
        return self.notify("READY=1")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def status(self, text: str) -> bool:
        """Set the one-line status shown by ``systemctl status``; repeated text is not resent."""
        line = " ".join(text.split())  # a newline would start a new assignment
        if line == self._last_status:
            return True
        sent = self.notify(f"STATUS={line}")
        if sent:
            self._last_status = line
        return sent

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings: half of $WATCHDOG_USEC, or None when not supervised.

    Like sd_watchdog_enabled(3), ``$WATCHDOG_PID`` naming another process means
    the watchdog is not ours (e.g. inherited by a child).
    """
    env = os.environ if env is None else env
    raw = env.get("WATCHDOG_USEC", "").strip()
    if not raw:
        return None
    try:
        usec = int(raw)
    except ValueError:
        log.warning("ignoring WATCHDOG_USEC=%r: not an integer", raw)
        return None
    if usec <= 0:
        return None
    pid = env.get("WATCHDOG_PID", "").strip()
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    return usec / 2 / 1_000_000


class Watchdog:
    """Pings systemd only while the control loop ticks and ``healthy()`` says so.

    The controller calls :meth:`tick` once per control-loop iteration. When the
    last tick is older than ``stall_after`` (default: the ping interval, i.e.
    half of WatchdogSec) or ``healthy()`` returns False or raises, or
    ``problem()`` names a reason (an essential task could not be kept alive),
    pings stop and systemd restarts the service after WatchdogSec.
    """

    def __init__(
        self,
        notifier: ServiceNotifier,
        healthy: Callable[[], bool] = lambda: True,
        interval: float | None = None,
        *,
        stall_after: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        problem: Callable[[], str | None] = lambda: None,
    ) -> None:
        if interval is None:
            interval = watchdog_interval()
        if interval is not None and interval <= 0:
            raise ValueError(f"watchdog interval must be > 0 seconds, got {interval!r}")
        self.notifier = notifier
        self.healthy = healthy
        self.problem = problem
        self.interval = interval
        self.stall_after = stall_after if stall_after is not None else interval
        self._clock = clock
        self._last_tick = clock()  # construction counts as a tick: grace for startup
        self._task: asyncio.Task[None] | None = None
        self._withholding: str | None = None
        self.pings = 0

    @property
    def enabled(self) -> bool:
        return self.interval is not None

    def tick(self) -> None:
        """Called by the control loop on every iteration."""
        self._last_tick = self._clock()

    def since_tick(self) -> float:
        return self._clock() - self._last_tick

    def reason_to_withhold(self) -> str | None:
        """Why no ping should be sent now, or None when a ping is due."""
        try:
            problem = self.problem()
        except Exception as exc:
            problem = f"problem check raised {type(exc).__name__}: {exc}"
        if problem:
            return problem
        if self.stall_after is not None:
            stalled = self.since_tick()
            if stalled > self.stall_after:
                return f"control loop has not ticked for {stalled:.1f} s"
        try:
            ok = bool(self.healthy())
        except Exception as exc:  # a broken health check is unhealthy, not a crash
            return f"health check raised {type(exc).__name__}: {exc}"
        if not ok:
            return "health check reports unhealthy"
        return None

    def check_and_ping(self) -> bool:
        """One watchdog decision; returns True when WATCHDOG=1 was sent."""
        reason = self.reason_to_withhold()
        if reason is not None:
            if reason != self._withholding:
                log.error("watchdog: %s; withholding WATCHDOG=1 so systemd restarts the service", reason)
            self._withholding = reason
            return False
        if self._withholding is not None:
            log.warning("watchdog: healthy again, pinging resumed")
            self._withholding = None
        sent = self.notifier.watchdog()
        if sent:
            self.pings += 1
        return sent

    async def run(self) -> None:
        """Check twice per interval so one late wake-up never misses systemd's deadline."""
        if self.interval is None:
            return
        period = self.interval / 2
        while True:
            self.check_and_ping()
            await asyncio.sleep(period)

    def start(self) -> asyncio.Task[None] | None:
        """Start the ping task on the running loop; None when systemd set no watchdog."""
        if self.interval is None:
            return None
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self.run(), name="systemd-watchdog")
        return self._task

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


# OCPP 1.6 ChargePointStatus (section 7.7) -> words for the status line, in display order.
_STATUS_WORDS: dict[str, str] = {
    "Faulted": "faulted",
    "Charging": "charging",
    "SuspendedEV": "suspended by EV",
    "SuspendedEVSE": "suspended by EVSE",
    "Preparing": "preparing",
    "Finishing": "finishing",
    "Reserved": "reserved",
    "Unavailable": "unavailable",
    "Available": "available",
}


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def summary_line(snapshot: Mapping[str, Any]) -> str:
    """One line for ``STATUS=``: "CSMS connected · 1 charging 7.2 kW · 1 available"."""
    parts = [f"CSMS {snapshot.get('csms') or 'unknown'}"]
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for conn in snapshot.get("connectors") or []:
        groups.setdefault(str(conn.get("status") or "Unknown"), []).append(conn)
    order = list(_STATUS_WORDS) + sorted(s for s in groups if s not in _STATUS_WORDS)
    for status in order:
        members = groups.get(status)
        if not members:
            continue
        text = f"{len(members)} {_STATUS_WORDS.get(status, status.lower())}"
        if status == "Charging":
            powers = [p for p in (_num(c.get("power_w")) for c in members) if p is not None]
            if powers:
                text += f" {sum(powers) / 1000:.1f} kW"
        parts.append(text)
    queued = snapshot.get("queued")
    if isinstance(queued, int) and not isinstance(queued, bool) and queued > 0:
        parts.append(f"{queued} queued")
    return " · ".join(parts)

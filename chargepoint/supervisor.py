"""Keeps the controller's essential long-lived tasks alive.

Why: the controller is a handful of coroutines that must run for ever: the OCPP link, the dispatcher that
applies every connector event (and so enforces the safety invariant), the status and outbox senders, meter
polling and sampling, heartbeat, the systemd liveness probe. Each is a loop; one uncaught exception ends it
for good. Before this module such a failure was logged once (``task link failed``) and the charger carried
on without its central system, without status messages or without MeterValues, until someone noticed. A
wallbox on a garage wall is not watched: it must heal itself or ask to be restarted.

Policy (what a commercial controller does; one place decides it):

* A supervised task that ends in any way nobody asked for (an exception, a cancellation not requested by
  :meth:`Supervisor.cancel`/:meth:`Supervisor.stop`, or a return from a loop that should never return) is
  restarted from its factory after a back-off (``backoff_min_s`` doubling up to ``backoff_max_s``) with an
  ERROR log line naming the task, the cause and the restart count. ``on_crash`` is told first (the
  controller puts the outputs into their safe state when the dispatcher dies, and raises a security event
  where one fits).
* A task that cannot be kept alive — more than ``max_restarts`` ends within ``window_s`` — has a fault that
  a restart of the task does not cure (a driver that keeps raising, a corrupt state). The supervisor gives
  up: the task stays down, :attr:`Supervisor.problem` names it, and ``on_give_up`` is called. The
  controller then reports itself unhealthy, so the systemd watchdog stops being fed and systemd restarts
  the whole service (a fresh process re-opens ports and drivers); the unit's StartLimitBurst bounds that.
* ``transient`` tasks (a transaction's MeterValues sampler) may also end normally; they are restarted only
  when they fail.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

TaskFactory = Callable[[], Coroutine[Any, Any, Any]]


@dataclass
class _Entry:
    name: str
    factory: TaskFactory
    critical: bool
    transient: bool
    task: asyncio.Task[Any] | None = None
    ends: deque[float] = field(default_factory=deque)  # times of unrequested ends within the window
    restarts: int = 0
    cancel_requested: bool = False
    timer: asyncio.TimerHandle | None = None


class Supervisor:
    """Owns the essential tasks: starts them, restarts a dead one, gives up on one that keeps dying."""

    def __init__(
        self,
        *,
        on_crash: Callable[[str, BaseException | None, bool], None] | None = None,
        on_give_up: Callable[[str, str, bool], None] | None = None,
        max_restarts: int = 5,
        window_s: float = 60.0,
        backoff_min_s: float = 0.1,
        backoff_max_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._on_crash = on_crash
        self._on_give_up = on_give_up
        self.max_restarts = max_restarts
        self.window_s = window_s
        self.backoff_min_s = backoff_min_s
        self.backoff_max_s = backoff_max_s
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self._stopping = False
        self.problem: str | None = None  # why the service cannot go on (a task given up), or None
        self.given_up: list[str] = []

    # ------------------------------------------------------------------ queries
    @property
    def healthy(self) -> bool:
        return self.problem is None

    def task(self, name: str) -> asyncio.Task[Any] | None:
        entry = self._entries.get(name)
        return entry.task if entry is not None else None

    def names(self) -> list[str]:
        return list(self._entries)

    def restarts(self) -> dict[str, int]:
        return {name: e.restarts for name, e in self._entries.items() if e.restarts}

    # ------------------------------------------------------------------ control
    def start(
        self, name: str, factory: TaskFactory, *, critical: bool = False, transient: bool = False
    ) -> asyncio.Task[Any]:
        """Run ``factory()`` as the task ``name`` (replacing a finished one of that name) and keep it alive."""
        old = self._entries.get(name)
        if old is not None and old.task is not None and not old.task.done():
            raise RuntimeError(f"task {name} is already running")
        if old is not None and old.timer is not None:
            old.timer.cancel()
        entry = _Entry(name, factory, critical, transient)
        self._entries[name] = entry
        return self._run(entry)

    def cancel(self, name: str) -> asyncio.Task[Any] | None:
        """Stop a task on purpose (not a death: it is not restarted). Returns it, to be awaited if needed."""
        entry = self._entries.pop(name, None)
        if entry is None:
            return None
        if entry.timer is not None:
            entry.timer.cancel()
        entry.cancel_requested = True
        if entry.task is not None and not entry.task.done():
            entry.task.cancel()
        return entry.task

    def stop(self) -> list[asyncio.Task[Any]]:
        """Cancel every task for good (controller stop). Returns the tasks to await."""
        self._stopping = True
        tasks = []
        for entry in self._entries.values():
            if entry.timer is not None:
                entry.timer.cancel()
            entry.cancel_requested = True
            if entry.task is not None and not entry.task.done():
                entry.task.cancel()
                tasks.append(entry.task)
        return tasks

    # ------------------------------------------------------------------ internals
    def _run(self, entry: _Entry) -> asyncio.Task[Any]:
        entry.timer = None
        task = asyncio.get_running_loop().create_task(entry.factory(), name=entry.name)
        entry.task = task
        task.add_done_callback(lambda t, e=entry: self._ended(e, t))
        return task

    def _ended(self, entry: _Entry, task: asyncio.Task[Any]) -> None:
        if self._stopping or entry.cancel_requested or self._entries.get(entry.name) is not entry:
            return
        if entry.task is not task:
            return
        exc: BaseException | None = None
        if task.cancelled():
            why = "was cancelled"
        else:
            exc = task.exception()
            if exc is None:
                if entry.transient:
                    del self._entries[entry.name]
                    return
                why = "returned"
            else:
                why = f"failed: {type(exc).__name__}: {exc}"
        if self._on_crash is not None:
            try:
                self._on_crash(entry.name, exc, entry.critical)
            except Exception:
                log.exception("crash handler for task %s failed", entry.name)
        now = self._clock()
        entry.ends.append(now)
        while entry.ends and entry.ends[0] <= now - self.window_s:
            entry.ends.popleft()
        if len(entry.ends) > self.max_restarts:
            self._give_up(entry, why, exc)
            return
        delay = min(self.backoff_max_s, self.backoff_min_s * 2 ** (len(entry.ends) - 1))
        entry.restarts += 1
        log.error(
            "task %s %s; restarting it in %.1f s (restart %d, %d in the last %.0f s)",
            entry.name,
            why,
            delay,
            entry.restarts,
            len(entry.ends),
            self.window_s,
            exc_info=exc,
        )
        entry.timer = asyncio.get_running_loop().call_later(delay, self._restart, entry)

    def _restart(self, entry: _Entry) -> None:
        if self._stopping or self._entries.get(entry.name) is not entry:
            return
        try:
            self._run(entry)
        except Exception as exc:  # the factory itself raised: count it as another death
            log.exception("task %s could not be restarted", entry.name)
            self._give_up(entry, f"could not be restarted: {exc}", exc)
            return
        log.warning("task %s restarted", entry.name)

    def _give_up(self, entry: _Entry, why: str, exc: BaseException | None) -> None:
        entry.task = None
        self.given_up.append(entry.name)
        reason = (
            f"task {entry.name} {why}; it ended {len(entry.ends)} times within {self.window_s:.0f} s "
            "and is not restarted again"
        )
        if self.problem is None:
            self.problem = reason
        log.critical("%s: the service must be restarted", reason, exc_info=exc)
        if self._on_give_up is not None:
            try:
                self._on_give_up(entry.name, reason, entry.critical)
            except Exception:
                log.exception("give-up handler for task %s failed", entry.name)

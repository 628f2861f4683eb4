"""Base for drivers whose blocking I/O runs in a thread of their own (PC/SC, RDM6300 UART).

The thread never touches the event loop directly: every event goes through ``_hand_over``, which
schedules ``emit`` on the loop with ``call_soon_threadsafe`` (emit is not thread-safe). A fault is
reported once per episode, and cleared once when the device is back, so a reader that stays unplugged
does not flood the controller with FaultRaised events.
"""

from __future__ import annotations

import asyncio
import threading
from abc import ABC, abstractmethod

from hal.interfaces import Emit, FaultCleared, FaultKind, FaultRaised, HalEvent


class ThreadedDevice(ABC):
    """``start`` runs ``_run`` in a daemon thread; ``_run`` must return soon after ``_stop`` is set."""

    #: How long ``stop`` waits for the thread (it is a daemon: a stuck read does not block shutdown).
    join_timeout_s: float = 3.0

    def __init__(self, *, fault_connector: int = 0) -> None:
        self.fault_connector = fault_connector
        self._emit: Emit | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._faulted = False

    @abstractmethod
    def _thread_name(self) -> str:
        """Name of the worker thread (shows up in logs and thread dumps)."""

    @abstractmethod
    def _run(self) -> None:
        """The blocking worker loop; runs until ``self._stop`` is set."""

    async def start(self, emit: Emit) -> None:
        self._emit = emit
        self._loop = asyncio.get_running_loop()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=self._thread_name(), daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, self.join_timeout_s)
        self._thread = None

    def _hand_over(self, event: HalEvent) -> None:
        """Pass ``event`` from the worker thread to ``emit`` on the loop (dropped before start / after close)."""
        if self._loop is not None and self._emit is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._emit, event)

    def _fault_once(self, kind: FaultKind, info: str) -> bool:
        """Report FaultRaised unless already faulted; True if this call reported it (so the caller logs)."""
        if self._faulted:
            return False
        self._faulted = True
        self._hand_over(FaultRaised(self.fault_connector, kind, info))
        return True

    def _clear_once(self, kind: FaultKind) -> bool:
        """Report FaultCleared if a fault was reported; True if this call cleared it."""
        if not self._faulted:
            return False
        self._faulted = False
        self._hand_over(FaultCleared(self.fault_connector, kind))
        return True

"""The per-connector runtime the dispatcher owns, as the services see it (read-only for them).

The connector state machine (:mod:`chargepoint.connector`) is pure; ``ConnectorRuntime`` holds its current
state next to the hardware and the open transaction. Only the dispatcher (chargepoint/controller.py)
replaces ``state``; only the transactions service (chargepoint/services/transactions.py) sets ``tx``.
Services receive the mapping to *read* connector states; they change a connector only by posting an event.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from chargepoint import connector as cm
from chargepoint.overcurrent import OvercurrentMonitor
from hal.interfaces import ConnectorHardware, IndicatorPattern, MeterReading

#: A limit claim: (amps, source). ``None`` amps = that source pauses the connector.
Claim = tuple[float | None, str]
#: Post a connector event to the dispatcher (the only way a service changes a connector).
Post = Callable[[int, cm.Event], None]
#: The timeline of the demo and the tests: ``emit(kind, **data)``.
Emit = Callable[..., None]


@dataclass
class ActiveTransaction:
    local_id: int
    id_tag: str
    start: datetime
    meter_start_wh: int
    reservation_id: int | None = None
    parent_id_tag: str | None = None
    transaction_id: int | None = None
    last_meter_wh: int = 0
    stop_data: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class ConnectorRuntime:
    id: int
    hw: ConnectorHardware
    state: cm.ConnectorState
    max_current_a: float
    phases: int
    tx: ActiveTransaction | None = None
    reading: MeterReading | None = None
    meter_ok: bool = True
    overcurrent: OvercurrentMonitor = field(default_factory=OvercurrentMonitor)
    tick_handle: asyncio.TimerHandle | None = None
    tx_chain: asyncio.Task[None] | None = None
    stop_tag: str | None = None
    indication: IndicatorPattern | None = None
    last_tx_seq: int = 0  # seq of the newest queued Start/StopTransaction of this connector
    tx_issued: int = 0  # Begin/EndTransaction actions decided so far
    tx_done: int = 0  # … and carried out (queued in the outbox)


Connectors = Mapping[int, ConnectorRuntime]


class KeyChanges:
    """Loops that sleep for an interval taken from a configuration key wait here instead of in
    ``asyncio.sleep``, so that a ChangeConfiguration applies at once, not after the old interval ran out."""

    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}

    async def wait(self, name: str, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` seconds (None: for ever) for configuration key ``name`` to change.

        True if it changed. Callers read the key and call this without an ``await`` in between, so no
        change is missed."""
        event = self._events.setdefault(name, asyncio.Event())
        event.clear()
        if timeout is not None and timeout <= 0:
            return False
        try:
            async with asyncio.timeout(timeout):
                await event.wait()
        except TimeoutError:
            return False
        return True

    def changed(self, name: str) -> None:
        """Wake the loops waiting in :meth:`wait` for ``name``."""
        event = self._events.get(name)
        if event is not None:
            event.set()

"""Reset (OCPP 1.6 §5.14): end the transactions, let the cars stop drawing, flush the queue, restart.

A reset is orderly: every open transaction is stopped with reason SoftReset/HardReset (§7.44), the contactors
open only after the car had up to 6 s to stop drawing (IEC 61851-1 sequence 10.2), queued transaction
messages get a moment to reach the central system while it is still connected, and ``pending_reset`` in the
store tells the next start why the process ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from chargepoint import connector as cm
from chargepoint.services.station import Connectors, Emit, Post
from chargepoint.store import Store, StoreError

log = logging.getLogger(__name__)


class ResetService:
    """Carries out an accepted Reset.req."""

    def __init__(
        self,
        connectors: Connectors,
        *,
        store: Store,
        before_reset: Callable[[str], Awaitable[None]],
        apply_now: Callable[[int, cm.Event], Awaitable[None]],
        post: Post,
        emit: Emit,
        queued: Callable[[], int],
        sender_online: Callable[[], bool],
        stop_controller: Callable[[], Awaitable[None]],
        restart: Callable[[str], None] | None,
    ) -> None:
        self._connectors = connectors
        self._store = store
        self._before_reset = before_reset
        self._apply_now = apply_now
        self._post = post
        self._emit = emit
        self._queued = queued
        self._sender_online = sender_online
        self._stop_controller = stop_controller
        self._restart = restart

    async def reset(self, kind: str) -> None:
        """Reset (OCPP 1.6 §5.14): stop transactions with SoftReset/HardReset, flush, then restart."""
        await self._before_reset(kind)  # the ResetOrReboot security event, given a moment to go out
        reason = "HardReset" if kind == "Hard" else "SoftReset"
        try:
            self._store.set_pending_reset(kind)
        except StoreError as exc:
            log.error("state store: %s", exc)
        for rt in self._connectors.values():
            if rt.state.in_transaction:
                await self._apply_now(rt.id, cm.Stop(reason))
        for rt in self._connectors.values():
            if rt.tx_chain is not None:
                with contextlib.suppress(BaseException):
                    await rt.tx_chain
        # IEC 61851-1 sequence 10.2: give the cars up to 6 s to stop drawing before the outputs go off.
        for _ in range(70):
            if not any(rt.state.contactor_closed for rt in self._connectors.values()):
                break
            await asyncio.sleep(0.1)
        # Give the queue a moment to deliver the stops while we are still connected.
        for _ in range(50):
            if self._queued() == 0 or not self._sender_online():
                break
            await asyncio.sleep(0.1)
        for rt in self._connectors.values():
            self._post(rt.id, cm.ResetFaults())
        self._emit("reset", reset_type=kind)
        log.warning("%s reset requested by the central system: restarting", kind)
        await self._stop_controller()
        if self._restart is not None:
            self._restart(kind)

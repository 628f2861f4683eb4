"""The availability service: ChangeAvailability (OCPP 1.6 §5.2) and the charge point's own status (connector 0).

It owns whether the station and each connector are operative: read from the store at start, persisted on every
change (an Inoperative connector stays so across restarts, §5.2), applied to the connector state machines with
``apply_now`` (the only way it changes a connector). While a transaction runs on a target connector the change
is Scheduled: the state machine keeps it and applies it in the same step that ends the transaction, so no new
session can slip in between.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from chargepoint import connector as cm
from chargepoint.services.station import Connectors
from chargepoint.store import Store, logged_on_failure

log = logging.getLogger(__name__)


class AvailabilityService:
    """Operative / Inoperative per connector and for the station (connector 0)."""

    def __init__(
        self,
        connectors: Connectors,
        *,
        store: Store,
        apply_now: Callable[[int, cm.Event], Awaitable[None]],
        registered: Callable[[], bool],
        queue_status: Callable[[int, str, str], None],
    ) -> None:
        self._connectors = connectors
        self._store = store
        self._apply_now = apply_now
        self._registered = registered
        self._queue_status = queue_status
        self._persisted: dict[int, str] = self._safe(store.get_availability, {})
        self._station_operative = self._persisted.get(0, "Operative") == "Operative"

    _safe = staticmethod(logged_on_failure)  # a store failure is logged; the charger keeps running

    def operative_at_start(self, connector_id: int) -> bool:
        """Whether a connector starts operative (its persisted state, and the station's)."""
        return self._persisted.get(connector_id, "Operative") == "Operative" and self._station_operative

    @property
    def station_operative(self) -> bool:
        return self._station_operative

    def station_status(self) -> tuple[str, str]:
        """Connector 0: the charge point as a whole (OCPP 1.6 §4.9)."""
        if not self._station_operative:
            return "Unavailable", "NoError"
        return "Available", "NoError"

    async def change_availability(self, connector_id: int, operative: bool) -> str:
        """ChangeAvailability (OCPP 1.6 §5.2): Scheduled while a transaction runs on a target connector."""
        targets = list(self._connectors.values()) if connector_id == 0 else [self._connectors[connector_id]]
        if connector_id == 0:
            self._station_operative = operative
        value = "Operative" if operative else "Inoperative"
        self._safe(self._store.set_availability, None, connector_id, value)
        scheduled = False
        for rt in targets:
            if connector_id == 0:
                self._safe(self._store.set_availability, None, rt.id, value)
            scheduled = scheduled or (rt.state.in_transaction and not operative)
            await self._apply_now(rt.id, cm.Availability(operative))
        if connector_id == 0 and self._registered():
            status, code = self.station_status()
            self._queue_status(0, status, code)
        return "Scheduled" if scheduled else "Accepted"

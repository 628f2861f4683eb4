"""Core profile handlers (OCPP 1.6 §5): each one small, calling one service of the controller.

ChangeAvailability → availability; ChangeConfiguration / GetConfiguration → the configuration keys; ClearCache →
authorization; RemoteStartTransaction → reservations / smart charging for the decision, then the session starter
(authorization → state machine); RemoteStopTransaction → transactions; Reset → the reset service;
UnlockConnector → the dispatcher (``apply_now``) and the lock driver. Whether the station is registered (§4.2)
the station link knows."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ocpp.routing import after, on
from ocpp.v16 import call_result

from chargepoint import connector as cm
from hal.interfaces import FaultKind

log = logging.getLogger(__name__)


class CoreHandlers:
    controller: Any

    def _connector(self, connector_id: int | None) -> Any:
        return self.controller.connectors.get(connector_id) if connector_id is not None else None

    # -------------------------------------------------------------- ChangeAvailability §5.2
    @on("ChangeAvailability")
    async def on_change_availability(self, connector_id: int, type: str, **_: Any) -> Any:
        if connector_id != 0 and connector_id not in self.controller.connectors:
            return call_result.ChangeAvailability(status="Rejected")
        status = await self.controller.availability.change_availability(connector_id, type == "Operative")
        return call_result.ChangeAvailability(status=status)

    # -------------------------------------------------------------- ChangeConfiguration §5.3
    @on("ChangeConfiguration")
    def on_change_configuration(self, key: str, value: str, **_: Any) -> Any:
        status = self.controller.keys.change(key, value)
        shown = (
            "***" if self.controller.keys.specs.get(key) and self.controller.keys.specs[key].secret else value
        )
        log.info(
            "ChangeConfiguration %s = %s: %s",
            key,
            shown,
            status,
            extra={"OCPP_ACTION": "ChangeConfiguration"},
        )
        return call_result.ChangeConfiguration(status=status)

    # -------------------------------------------------------------- ClearCache §5.4
    @on("ClearCache")
    def on_clear_cache(self, **_: Any) -> Any:
        return call_result.ClearCache(status=self.controller.authorization.clear_cache())

    # -------------------------------------------------------------- DataTransfer §5.6
    @on("DataTransfer")
    def on_data_transfer(
        self, vendor_id: str, message_id: str | None = None, data: str | None = None, **_: Any
    ) -> Any:
        """No vendor extensions are implemented: every vendorId is unknown (§5.6)."""
        return call_result.DataTransfer(status="UnknownVendorId")

    # -------------------------------------------------------------- GetConfiguration §5.8
    @on("GetConfiguration")
    def on_get_configuration(self, key: list[str] | None = None, **_: Any) -> Any:
        keys = self.controller.keys
        if key and len(key) > keys["GetConfigurationMaxKeys"]:
            key = key[: keys["GetConfigurationMaxKeys"]]
        known, unknown = keys.get_configuration(key)
        return call_result.GetConfiguration(configuration_key=known, unknown_key=unknown or None)

    # -------------------------------------------------------------- RemoteStartTransaction §5.11
    @on("RemoteStartTransaction")
    async def on_remote_start_transaction(
        self,
        id_tag: str,
        connector_id: int | None = None,
        charging_profile: dict[str, Any] | None = None,
        call_unique_id: str = "",
        **_: Any,
    ) -> Any:
        """RemoteStartTransaction (§5.11). The ``ocpp`` library runs ``@after`` handlers whatever the answer
        was, so only requests answered Accepted are remembered (by unique id) for the start that follows."""
        answer = self._remote_start_decision(id_tag, connector_id, charging_profile)
        if answer.status == "Accepted":
            self._accepted_remote_starts = getattr(self, "_accepted_remote_starts", set()) | {call_unique_id}
        return answer

    def _remote_start_decision(
        self, id_tag: str, connector_id: int | None, charging_profile: dict[str, Any] | None
    ) -> Any:
        c = self.controller
        if c.station_link.registration != "Accepted":
            return call_result.RemoteStartTransaction(status="Rejected")  # not allowed while Pending (§4.2)
        if connector_id is None:
            rt = c.reservations.connector_for_tag(id_tag)
        else:
            rt = self._connector(connector_id)
        if (
            rt is None
            or rt.state.in_transaction
            or rt.state.session_tag is not None
            or not rt.state.operative
            or rt.state.faults
        ):
            return call_result.RemoteStartTransaction(status="Rejected")
        if rt.state.reserved and not c.reservations.reservation_allows(rt.id, id_tag):
            return call_result.RemoteStartTransaction(status="Rejected")
        if charging_profile is not None and not c.smart.accept_remote_start_profile(rt.id, charging_profile):
            return call_result.RemoteStartTransaction(status="Rejected")
        return call_result.RemoteStartTransaction(status="Accepted")

    @after("RemoteStartTransaction")
    async def after_remote_start_transaction(
        self,
        id_tag: str,
        connector_id: int | None = None,
        charging_profile: dict[str, Any] | None = None,
        call_unique_id: str = "",
        **_: Any,
    ) -> None:
        accepted: set[str] = getattr(self, "_accepted_remote_starts", set())
        if call_unique_id not in accepted:
            return  # answered Rejected: nothing starts
        accepted.discard(call_unique_id)
        await self.controller.session_starter.remote_start(id_tag, connector_id, charging_profile)

    # -------------------------------------------------------------- RemoteStopTransaction §5.12
    @on("RemoteStopTransaction")
    def on_remote_stop_transaction(self, transaction_id: int, **_: Any) -> Any:
        c = self.controller
        if c.station_link.registration != "Accepted":
            return call_result.RemoteStopTransaction(status="Rejected")
        connector_id = c.transactions.transaction_on(transaction_id)
        if connector_id is None:
            return call_result.RemoteStopTransaction(status="Rejected")
        c.post(connector_id, cm.Stop("Remote"))
        return call_result.RemoteStopTransaction(status="Accepted")

    # -------------------------------------------------------------- Reset §5.14
    @on("Reset")
    def on_reset(self, type: str, **_: Any) -> Any:
        return call_result.Reset(status="Accepted")

    @after("Reset")
    async def after_reset(self, type: str, **_: Any) -> None:
        await self.controller.resets.reset(type)

    # -------------------------------------------------------------- UnlockConnector §5.18
    @on("UnlockConnector")
    async def on_unlock_connector(self, connector_id: int, **_: Any) -> Any:
        rt = self._connector(connector_id)
        if rt is None or rt.hw.lock is None:
            return call_result.UnlockConnector(status="NotSupported")
        if rt.state.in_transaction:
            await self.controller.apply_now(rt.id, cm.Stop("UnlockCommand"))
        # Never unlock under load: the car gets up to 6 s to stop drawing (IEC 61851-1 sequence 10.2).
        for _ in range(70):
            if not rt.state.contactor_closed:
                break
            await asyncio.sleep(0.1)
        if rt.state.contactor_closed:
            return call_result.UnlockConnector(status="UnlockFailed")
        return call_result.UnlockConnector(status=await self._unlock(rt))

    @staticmethod
    async def _unlock(rt: Any) -> str:
        """Unlocked only when the lock moved (OCPP 1.6 §5.18): a lock that reports a fault, refuses, raises
        or still reads locked afterwards is UnlockFailed. It is tried anyway, to free the cable if it can."""
        lock = rt.hw.lock
        try:
            moved = await lock.unlock()
        except Exception:
            log.exception("connector %d: the lock failed to unlock", rt.id, extra={"CONNECTOR_ID": rt.id})
            return "UnlockFailed"
        faulted = FaultKind.LOCK in rt.state.all_faults
        if not moved or faulted or lock.is_locked:
            log.warning(
                "connector %d: unlock failed (%s)",
                rt.id,
                "the lock reports a fault" if faulted else "the lock did not move",
                extra={"CONNECTOR_ID": rt.id},
            )
            return "UnlockFailed"
        return "Unlocked"

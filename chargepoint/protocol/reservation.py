"""Reservation profile handlers (OCPP 1.6 §5.13 ReserveNow, §5.1 CancelReservation).

The answer is sent first; the connector's status (Reserved / Available) follows in ``@after``, so the
central system never sees the StatusNotification before the ReserveNow.conf it belongs to.
"""

from __future__ import annotations

from typing import Any

from ocpp.routing import after, on
from ocpp.v16 import call_result


class ReservationHandlers:
    controller: Any

    # -------------------------------------------------------------- ReserveNow §5.13
    @on("ReserveNow")
    def on_reserve_now(
        self,
        connector_id: int,
        expiry_date: str,
        id_tag: str,
        reservation_id: int,
        parent_id_tag: str | None = None,
        **_: Any,
    ) -> Any:
        request: dict[str, Any] = {
            "reservationId": reservation_id,
            "connectorId": connector_id,
            "idTag": id_tag,
            "expiryDate": expiry_date,
        }
        if parent_id_tag is not None:
            request["parentIdTag"] = parent_id_tag
        return call_result.ReserveNow(status=self.controller.reservations.reserve_now(request))

    @after("ReserveNow")
    def after_reserve_now(self, **_: Any) -> None:
        self.controller.reservations.reservations_changed()

    # -------------------------------------------------------------- CancelReservation §5.1
    @on("CancelReservation")
    def on_cancel_reservation(self, reservation_id: int, **_: Any) -> Any:
        return call_result.CancelReservation(status=self.controller.reservations.cancel_reservation(reservation_id))

    @after("CancelReservation")
    def after_cancel_reservation(self, **_: Any) -> None:
        self.controller.reservations.reservations_changed()

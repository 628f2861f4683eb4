"""Firmware Management profile handlers: UpdateFirmware (OCPP 1.6 §5.19) and GetDiagnostics (§5.9).

Both call the firmware service (:class:`chargepoint.services.firmware.FirmwareService`, ``controller.firmware``).

Readings:

* UpdateFirmware.conf has no payload; the update starts only after the answer was sent (``@after``), so the
  first FirmwareStatusNotification (Downloading) never overtakes it. A retrieveDate in the past means now.
* GetDiagnostics.conf carries the fileName, which exists only once the request was taken on; the
  DiagnosticsStatusNotifications of that request are held until the answer is on the wire.
* retryInterval / retries absent: the library defaults (3 tries, 60 s apart). An unreadable date is a
  FormationViolation CALLERROR (the schema only says "date-time").
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from ocpp.exceptions import FormatViolationError
from ocpp.routing import after, on
from ocpp.v16 import call_result

log = logging.getLogger(__name__)


def _parse_time(value: str | None, field: str) -> datetime | None:
    if value is None:
        return None
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise FormatViolationError(description=f"{field} {value!r} is not an ISO 8601 date-time") from None
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


class FirmwareHandlers:
    controller: Any

    # -------------------------------------------------------------- UpdateFirmware §5.19
    @on("UpdateFirmware")
    def on_update_firmware(
        self, location: str, retrieve_date: str, retries: int | None = None, retry_interval: int | None = None,
        **_: Any,
    ) -> Any:
        _parse_time(retrieve_date, "retrieveDate")
        return call_result.UpdateFirmware()

    @after("UpdateFirmware")
    def after_update_firmware(
        self, location: str, retrieve_date: str, retries: int | None = None, retry_interval: int | None = None,
        **_: Any,
    ) -> None:
        when = _parse_time(retrieve_date, "retrieveDate")
        assert when is not None
        self.controller.firmware.update_firmware(location, when, retries,
                                        float(retry_interval) if retry_interval is not None else None)

    # -------------------------------------------------------------- GetDiagnostics §5.9
    @on("GetDiagnostics")
    def on_get_diagnostics(
        self, location: str, retries: int | None = None, retry_interval: int | None = None,
        start_time: str | None = None, stop_time: str | None = None, **_: Any,
    ) -> Any:
        since = _parse_time(start_time, "startTime")
        until = _parse_time(stop_time, "stopTime")
        c = self.controller.firmware
        c.hold_status_notifications()
        try:
            name = c.get_diagnostics(location, retries,
                                     float(retry_interval) if retry_interval is not None else None, since, until)
        except BaseException:
            c.release_status_notifications()
            raise
        return call_result.GetDiagnostics(file_name=name)

    @after("GetDiagnostics")
    def after_get_diagnostics(self, **_: Any) -> None:
        self.controller.firmware.release_status_notifications()

"""Security extension handlers ("Improved security for OCPP 1.6-J", edition 2): certificates, GetLog,
SignedUpdateFirmware, ExtendedTriggerMessage. Each calls the security service
(:class:`chargepoint.services.security.SecurityService`, ``controller.security``).

Readings:

* Work that reports statuses (GetLog, SignedUpdateFirmware, the CSR of SignChargePointCertificate) starts in
  ``@after`` or holds its status messages until the .conf is on the wire, as for TriggerMessage (§5.17).
* ExtendedTriggerMessage reuses the TriggerMessage logic (chargepoint/protocol/trigger.py) for BootNotification,
  Heartbeat, MeterValues and StatusNotification, connectorId rules included. FirmwareStatusNotification answers
  with SignedFirmwareStatusNotification when the last firmware request was a SignedUpdateFirmware, otherwise with
  the plain FirmwareStatusNotification; LogStatusNotification reports Uploading (with requestId) or Idle.
"""

from __future__ import annotations

import logging
from typing import Any

from ocpp.routing import after, on
from ocpp.v16 import call_result

from chargepoint.protocol.firmware import _parse_time
from chargepoint.services.security import parse_window

log = logging.getLogger(__name__)

EXTENDED = frozenset({"BootNotification", "LogStatusNotification", "FirmwareStatusNotification", "Heartbeat",
                      "MeterValues", "SignChargePointCertificate", "StatusNotification"})
_VIA_TRIGGER = frozenset({"BootNotification", "Heartbeat", "MeterValues", "StatusNotification"})


def _camel_hash(d: dict[str, Any]) -> dict[str, Any]:
    """The library hands nested objects over in snake_case; the store compares camelCase hash data."""
    names = {"hash_algorithm": "hashAlgorithm", "issuer_name_hash": "issuerNameHash",
             "issuer_key_hash": "issuerKeyHash", "serial_number": "serialNumber"}
    return {names.get(k, k): v for k, v in d.items()}


class SecurityHandlers:
    controller: Any

    # -------------------------------------------------------------- certificates
    @on("InstallCertificate")
    def on_install_certificate(self, certificate_type: str, certificate: str, **_: Any) -> Any:
        return call_result.InstallCertificate(
            status=self.controller.security.install_certificate(certificate_type, certificate))

    @on("DeleteCertificate")
    def on_delete_certificate(self, certificate_hash_data: dict[str, Any], **_: Any) -> Any:
        return call_result.DeleteCertificate(
            status=self.controller.security.delete_certificate(_camel_hash(certificate_hash_data)))

    @on("GetInstalledCertificateIds")
    def on_get_installed_certificate_ids(self, certificate_type: str, **_: Any) -> Any:
        ids = self.controller.security.installed_certificate_ids(certificate_type)
        if not ids:
            return call_result.GetInstalledCertificateIds(status="NotFound")
        return call_result.GetInstalledCertificateIds(status="Accepted", certificate_hash_data=ids)

    @on("CertificateSigned")
    def on_certificate_signed(self, certificate_chain: str, **_: Any) -> Any:
        return call_result.CertificateSigned(status=self.controller.security.certificate_signed(certificate_chain))

    # -------------------------------------------------------------- GetLog
    @on("GetLog")
    def on_get_log(self, log: dict[str, Any], log_type: str, request_id: int, retries: int | None = None,
                   retry_interval: int | None = None, **_: Any) -> Any:
        since = _parse_time(log.get("oldest_timestamp"), "oldestTimestamp")
        until = _parse_time(log.get("latest_timestamp"), "latestTimestamp")
        since, until = parse_window(since, until)
        c = self.controller.security
        c.hold_security_messages()
        try:
            status, name = c.get_log(log_type, request_id, log["remote_location"], retries,
                                     float(retry_interval) if retry_interval is not None else None, since, until)
        except BaseException:
            c.release_security_messages()
            raise
        if name is None:
            c.release_security_messages()
        return call_result.GetLog(status=status, filename=name)

    @after("GetLog")
    def after_get_log(self, **_: Any) -> None:
        self.controller.security.release_security_messages()

    # -------------------------------------------------------------- SignedUpdateFirmware
    @on("SignedUpdateFirmware")
    def on_signed_update_firmware(self, request_id: int, firmware: dict[str, Any], retries: int | None = None,
                                  retry_interval: int | None = None, **_: Any) -> Any:
        retrieve = _parse_time(firmware["retrieve_date_time"], "retrieveDateTime")
        install = _parse_time(firmware.get("install_date_time"), "installDateTime")
        assert retrieve is not None
        c = self.controller.security
        c.hold_security_messages()
        try:
            status = c.signed_update_firmware(
                request_id, firmware["location"], retrieve, install, firmware["signing_certificate"],
                firmware["signature"], retries, float(retry_interval) if retry_interval is not None else None)
        except BaseException:
            c.release_security_messages()
            raise
        return call_result.SignedUpdateFirmware(status=status)

    @after("SignedUpdateFirmware")
    def after_signed_update_firmware(self, **_: Any) -> None:
        self.controller.security.release_security_messages()

    # -------------------------------------------------------------- ExtendedTriggerMessage
    def _extended_status(self, requested_message: str, connector_id: int | None) -> str:
        if requested_message not in EXTENDED:
            return "NotImplemented"
        if requested_message in _VIA_TRIGGER:
            return str(self._trigger_status(requested_message, connector_id))  # type: ignore[attr-defined]
        return "Accepted"

    @on("ExtendedTriggerMessage")
    def on_extended_trigger_message(self, requested_message: str, connector_id: int | None = None,
                                    **_: Any) -> Any:
        status = self._extended_status(requested_message, connector_id)
        log.info("ExtendedTriggerMessage %s (connector %s): %s", requested_message, connector_id, status)
        return call_result.ExtendedTriggerMessage(status=status)

    @after("ExtendedTriggerMessage")
    async def after_extended_trigger_message(self, requested_message: str, connector_id: int | None = None,
                                             **_: Any) -> None:
        if self._extended_status(requested_message, connector_id) != "Accepted":
            return
        security = self.controller.security
        if requested_message in _VIA_TRIGGER:
            await self.after_trigger_message(requested_message=requested_message,  # type: ignore[attr-defined]
                                             connector_id=connector_id)
        elif requested_message == "LogStatusNotification":
            await self._send_triggered(  # type: ignore[attr-defined]
                "LogStatusNotification", security.log_status_now())
        elif requested_message == "FirmwareStatusNotification":
            if security.signed_firmware_requested():
                await self._send_triggered(  # type: ignore[attr-defined]
                    "SignedFirmwareStatusNotification", security.signed_firmware_status_now())
            else:
                await self._send_triggered(  # type: ignore[attr-defined]
                    "FirmwareStatusNotification", {"status": self.controller.firmware.status()})
        elif requested_message == "SignChargePointCertificate":
            await security.sign_charge_point_certificate()

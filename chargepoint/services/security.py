"""The security service: the security extension of OCPP 1.6 ("Improved security for OCPP 1.6-J", edition 2).

Built by the controller with what it needs (configuration, configuration keys, the clock, the link, the
registration state, the firmware service for SignedUpdateFirmware and the DiagnosticsLog) and called by the OCPP
handlers (chargepoint/protocol/security.py) and by the controller where a security event happens (start, reset,
a key change, a clock jump, a TLS failure, a task that ran out of memory). What it does:

* Certificate management: InstallCertificate / DeleteCertificate / GetInstalledCertificateIds over the store in
  ``state_dir/certs`` (:mod:`chargepoint.security.certs`). Installed CentralSystemRootCertificates (plus a
  configured ``[csms] ca_file``) form the bundle that verifies a wss:// central system (``csms_ca_file``).
* Client certificate (security profile 3): a P-256 key + CSR (O = CpoName, CN = charge point id) sent in
  SignCertificate.req, answered later by CertificateSigned (chain checked, then stored).
* SecurityProfile (whitepaper ed. 2 §1.3): the link picks its transport from the key at every connect
  (:attr:`chargepoint.protocol.link.OcppLink.url`: 1 = ws + Basic, 2 = wss + Basic, 3 = wss + client
  certificate; above 1 never without TLS). A raise that cannot be honoured is Rejected (see
  ``_refuse_profile_raise``); an accepted one is persisted and takes effect at once: the charge point
  disconnects after the answer and reconnects with the new profile, and never falls back to the old one
  (every later attempt reads the raised key).
* Security events (SecurityEventNotification): kept in order, in memory until delivered, written to the state
  directory at stop and sent again after the next start. They are sent only after BootNotification was accepted
  (OCPP 1.6 §4.2), in one background sender so that a request handler never waits for its own link.
  Events this code can detect:

  - StartupOfTheDevice (every start), ResetOrReboot (Reset.req), FirmwareUpdated (a newly installed release
    boots: the release manager reports it "pending"), SettingSystemTime (the central system's time moves our
    clock by more than ``CLOCK_JUMP_S``), ReconfigurationOfSecurityParameters (AuthorizationKey, SecurityProfile
    or CpoName changed), SecurityLogWasCleared (the bounded security log was full and started over),
    MemoryExhaustion (the pending-event buffer overflowed and dropped old events, or the disk is full when a
    certificate is stored), InvalidCentralSystemCertificate (the TLS handshake failed certificate verification;
    once per run of failures), InvalidFirmwareSigningCertificate / InvalidFirmwareSignature
    (SignedUpdateFirmware), InvalidChargePointCertificate (CertificateSigned rejected).
  - Not detectable here, so never sent: AttemptedReplayAttacks, TamperDetectionActivated (no tamper switch in
    hal/interfaces.py), FailedToAuthenticateAtCentralSystem / CentralSystemFailedToAuthenticate, InvalidMessages,
    InvalidTLSVersion, InvalidTLSCipherSuite.

* GetLog (DiagnosticsLog: the GetDiagnostics archive; SecurityLog: the security event log) uploaded with the
  diagnostics uploader, reported by LogStatusNotification with the requestId. A new GetLog while one is running
  cancels it: AcceptedCanceled.
* SignedUpdateFirmware: the signingCertificate must chain to an installed ManufacturerRootCertificate (else
  InvalidCertificate in the .conf); after the download the signature (base64, over the file's SHA256, ECDSA or
  RSA) must match (else InvalidSignature), then the release is installed through the firmware feature's release
  manager, reported by SignedFirmwareStatusNotification with the requestId.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import shutil
import ssl
from collections import deque
from collections.abc import Callable, Coroutine
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from chargepoint.firmware.diagnostics import DiagnosticsUploader
from chargepoint.firmware.download import SUPPORTED_SCHEMES, DownloadFailed, download
from chargepoint.firmware.update import InstallFailed, InvalidRelease, verify_artifact
from chargepoint.metering import iso
from chargepoint.pending import save_pending, take_pending
from chargepoint.protocol.outbox import CallErrorReceived
from chargepoint.security.certs import (
    CertificateError,
    CertificateStore,
    sha256_file,
    utc_now,
    verify_signature,
)
from chargepoint.security.seclog import SecurityLog
from chargepoint.services.firmware import FirmwareService
from chargepoint.services.station import Emit
from chargepoint.supervisor import TaskFactory

if TYPE_CHECKING:
    from chargepoint.config import Config
    from chargepoint.keys import ConfigurationKeys
    from chargepoint.protocol.link import OcppLink

log = logging.getLogger(__name__)

PENDING_FILE = "pending-security-messages.json"
MAX_PENDING = 1000
CLOCK_JUMP_S = 60.0
SECURITY_KEYS = ("AuthorizationKey", "SecurityProfile", "CpoName")
# Defaults for keys of the security extension that chargepoint/keys.py may not define (yet).
KEY_DEFAULTS = {"CertificateStoreMaxLength": 20, "CertificateSignedMaxChainSize": 10000}
_QUEUED_ACTIONS = ("SecurityEventNotification", "LogStatusNotification", "SignedFirmwareStatusNotification")
_BUSY_FIRMWARE = frozenset({"Downloading", "Downloaded", "SignatureVerified", "Installing", "DownloadScheduled",
                            "InstallScheduled"})
# Security events that are the expected outcome of a normal operation: logged at INFO (still recorded in the
# security log and sent). Every other event is something to look at: WARNING.
ROUTINE_EVENTS = frozenset({"StartupOfTheDevice", "ResetOrReboot", "FirmwareUpdated"})


class SecurityService:
    """Certificates, security events, GetLog, SignedUpdateFirmware, SignCertificate."""

    def __init__(
        self,
        config: Config,
        keys: ConfigurationKeys,
        *,
        firmware: FirmwareService,
        now: Callable[[], datetime],
        link: Callable[[], OcppLink | None],
        registered: Callable[[], bool],
        emit: Emit,
        supervise: Callable[[str, TaskFactory], Any],
        spawn: Callable[[Coroutine[Any, Any, Any], str], asyncio.Task[Any]],
    ) -> None:
        self._config = config
        self._keys = keys
        self._firmware = firmware
        self._now = now
        self._link = link
        self._registered = registered
        self._emit = emit
        self._supervise = supervise
        self._spawn = spawn
        self._certs: CertificateStore | None = None
        self._security_log = SecurityLog(config.state_dir / "security.log")
        self._queue: deque[tuple[str, dict[str, Any]]] = deque()
        self._wake = asyncio.Event()
        self._answer_sent = asyncio.Event()
        self._answer_sent.set()
        self._tls_failing = False
        self._firmware_reported = False
        self._log_uploaders: dict[str, DiagnosticsUploader] = {}
        self._log_request_id: int | None = None
        self._log_status = "Idle"
        self._log_copy: Path | None = None
        self._signed_task: asyncio.Task[None] | None = None
        self._signed_status = "Idle"
        self._signed_request: int | None = None
        self._signed_installing = False
        self._profile_in_use = int(keys["SecurityProfile"])
        self._load_pending()
        keys.add_veto(self._refuse_profile_raise)

    # ------------------------------------------------------------------ helpers
    def security_key(self, name: str) -> Any:
        """A security key's value; keys chargepoint/keys.py does not define fall back to KEY_DEFAULTS."""
        if name in self._keys.specs:
            return self._keys[name]
        return KEY_DEFAULTS.get(name)

    def certificate_store(self) -> CertificateStore:
        if self._certs is None:
            self._certs = CertificateStore(self._config.state_dir / "certs", self._config.csms.ca_file)
        return self._certs

    def pending_messages(self) -> list[tuple[str, dict[str, Any]]]:
        """The security messages not yet delivered, oldest first (a copy)."""
        return list(self._queue)

    # ------------------------------------------------------------------ what the link asks at every connect
    def csms_ca_file(self) -> str | None:
        """Installed CentralSystemRootCertificates (with the configured ca_file) verify a wss:// central system.

        Nothing is pushed to the link when the roots change: it asks this at every connect, so the next
        connection uses the new bundle."""
        try:
            bundle = self.certificate_store().write_bundle()
        except OSError as exc:
            log.error("certificate store: %s", exc)
            bundle = None
        return bundle or self._config.csms.ca_file

    def csms_client_cert(self) -> tuple[Any, Any] | None:
        """Security profile 3: the client certificate from CertificateSigned, once installed."""
        return self.certificate_store().client_cert_files()

    def _password_configured(self) -> bool:
        return bool(self._keys["AuthorizationKey"] or self._config.csms.password)

    def _refuse_profile_raise(self, name: str, value: Any) -> str | None:
        """Why a SecurityProfile raise cannot be honoured, or None (whitepaper ed. 2 §1.3).

        A profile the charge point cannot connect with would leave it offline for good, since it must not
        fall back: 2 and 3 verify the central system's certificate against an installed
        CentralSystemRootCertificate (or the ``[csms] ca_file`` the installer put in the configuration, which
        joins the same bundle); 3 authenticates with the client certificate from CertificateSigned; 1 and 2
        send the AuthorizationKey (or ``[csms] password``) as HTTP Basic password."""
        if name != "SecurityProfile" or int(value) <= int(self._keys["SecurityProfile"]):
            return None
        store = self.certificate_store()
        reason = None
        if value >= 2 and not (store.roots("CentralSystemRootCertificate") or self._config.csms.ca_file):
            reason = "no CentralSystemRootCertificate installed to verify the central system over TLS"
        elif value >= 3 and store.client_cert_files() is None:
            reason = "no client certificate installed (SignCertificate / CertificateSigned first)"
        elif value in (1, 2) and not self._password_configured():
            reason = "no AuthorizationKey for HTTP Basic authentication"
        if reason is not None:
            log.warning("ChangeConfiguration SecurityProfile %s rejected: %s", value, reason)
        return reason

    def _uses_tls(self) -> bool:
        """Whether the connection to the central system is (or will next be) wss://."""
        link = self._link()
        if link is not None:
            return link.url.lower().startswith("wss://")
        return self._config.csms.url.lower().startswith("wss://")

    # ------------------------------------------------------------------ what the controller tells it
    def link_error(self, exc: BaseException) -> None:
        """The link could not connect: a failed certificate verification is a security event."""
        cause: BaseException | None = exc
        while cause is not None:
            if isinstance(cause, ssl.SSLCertVerificationError):
                self._on_tls_failure(cause)
                return
            cause = cause.__cause__ or cause.__context__

    def start(self) -> None:
        """The station is up: the sender runs, StartupOfTheDevice is recorded, GetLog can upload."""
        self._supervise("security-messages", self._sender)
        from chargepoint import __version__

        self.security_event("StartupOfTheDevice", f"firmware {self._config.firmware_version or __version__}")
        work = self._config.state_dir / "logs"
        cp_id = self._config.charge_point_id
        self._log_uploaders = {
            "DiagnosticsLog": DiagnosticsUploader(notify=self._log_notify, build=self._build_diagnostics_log,
                                                  work_dir=work, charge_point_id=cp_id),
            "SecurityLog": DiagnosticsUploader(notify=self._log_notify, build=self._build_security_log,
                                               work_dir=work, charge_point_id=f"{cp_id}-securitylog"),
        }

    def cancel_tasks(self) -> None:
        """The controller stops: end the background work (not the task that is stopping us)."""
        me = asyncio.current_task()
        tasks = [u.task for u in self._log_uploaders.values()] + [self._signed_task]
        for task in tasks:
            if task is not None and task is not me and not task.done():
                task.cancel()

    def save_pending(self) -> None:
        """At stop: undelivered messages go to the state directory; the next start sends them."""
        save_pending(self._pending_path(), self._queue, "security messages")

    def after_boot(self) -> None:
        if not self._firmware_reported and self._firmware.boot_outcome == "pending":
            self._firmware_reported = True
            version = self._firmware.running_version()
            self.security_event("FirmwareUpdated", f"now running release {version}")

    def session_starting(self) -> None:
        """A websocket is up (TLS verified, if any)."""
        self._tls_failing = False

    def session_started(self) -> None:
        self._wake.set()

    def key_changed(self, name: str, value: Any) -> None:
        if name in SECURITY_KEYS:
            self.security_event("ReconfigurationOfSecurityParameters", f"{name} changed")
        if name == "SecurityProfile" and int(value) != self._profile_in_use:
            self._profile_in_use = int(value)
            link = self._link()
            if link is not None:
                # Whitepaper ed. 2 §1.3: after accepting a new profile the charge point disconnects and
                # reconnects with it. Closed shortly after the answer is on the wire, as for AuthorizationKey.
                log.warning("SecurityProfile raised to %s: reconnecting to %s with it", value, link.url)
                asyncio.get_running_loop().call_later(0.5, lambda: self._spawn(link.close(), "reconnect"))

    def clock_moved(self, jump_s: float) -> None:
        """The central system's time moved our clock by ``jump_s`` seconds."""
        if jump_s > CLOCK_JUMP_S and self._registered():
            self.security_event("SettingSystemTime", f"clock moved by {jump_s:.0f} s")

    async def before_reset(self, kind: str) -> None:
        """Reset.req: ResetOrReboot, given a moment to reach the central system before the restart."""
        self.security_event("ResetOrReboot", f"{kind} reset requested by the central system")
        await self.drain_security_messages(2.0)

    def _on_tls_failure(self, exc: ssl.SSLCertVerificationError) -> None:
        if self._tls_failing:
            return
        self._tls_failing = True
        self.security_event("InvalidCentralSystemCertificate", str(exc.verify_message or exc))

    # ------------------------------------------------------------------ security events
    def security_event(self, kind: str, tech_info: str | None = None) -> None:
        """Record a security event in the security log and queue its SecurityEventNotification."""
        timestamp = iso(self._now())
        log.log(logging.INFO if kind in ROUTINE_EVENTS else logging.WARNING,
                "security event %s%s", kind, f": {tech_info}" if tech_info else "",
                extra={"OCPP_ACTION": "SecurityEventNotification"})
        self._emit("security_event", type=kind, tech_info=tech_info)
        if self._security_log.append(kind, timestamp, tech_info):
            self._queue_message("SecurityEventNotification",
                                {"type": "SecurityLogWasCleared", "timestamp": timestamp})
        payload: dict[str, Any] = {"type": kind, "timestamp": timestamp}
        if tech_info:
            payload["techInfo"] = tech_info[:255]
        self._queue_message("SecurityEventNotification", payload)

    def _queue_message(self, action: str, payload: dict[str, Any]) -> None:
        if len(self._queue) >= MAX_PENDING:
            dropped = 0
            while len(self._queue) >= MAX_PENDING - 1:
                self._queue.popleft()
                dropped += 1
            log.error("%d undelivered security messages dropped: buffer full", dropped)
            self._queue.append(("SecurityEventNotification", {
                "type": "MemoryExhaustion", "timestamp": iso(self._now()),
                "techInfo": f"{dropped} undelivered security messages dropped"}))
        self._queue.append((action, payload))
        self._wake.set()

    async def drain_security_messages(self, timeout: float) -> bool:
        """Wait (up to ``timeout``) until every queued message was delivered; True if the queue is empty."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._queue and loop.time() < deadline and self._registered():
            await asyncio.sleep(0.02)
        return not self._queue

    def hold_security_messages(self) -> None:
        """A request whose answer is not yet sent started work that reports statuses: hold them."""
        self._answer_sent.clear()

    def release_security_messages(self) -> None:
        self._answer_sent.set()
        self._wake.set()

    async def _sender(self) -> None:
        """Send queued messages in order while registered and connected; retry every 30 s otherwise."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 30.0)
            self._wake.clear()
            while self._queue and self._registered():
                link = self._link()
                if link is None or not link.session:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._answer_sent.wait(), 5.0)
                action, payload = self._queue[0]
                try:
                    await link.call(action, payload)
                except CallErrorReceived as exc:
                    log.warning("%s refused by the central system: %s", action, exc)
                except (TimeoutError, ConnectionError) as exc:
                    log.warning("%s not delivered (%s); kept for later", action, exc or type(exc).__name__)
                    break
                if self._queue and self._queue[0] == (action, payload):
                    self._queue.popleft()

    def _pending_path(self) -> Path:
        return self._config.state_dir / PENDING_FILE

    def _load_pending(self) -> None:
        self._queue.extend(take_pending(self._pending_path(), _QUEUED_ACTIONS))

    # ------------------------------------------------------------------ certificates
    def install_certificate(self, kind: str, pem: str) -> str:
        store = self.certificate_store()
        try:
            status, why = store.install(kind, pem, max_entries=int(self.security_key("CertificateStoreMaxLength")),
                                        now=utc_now())
        except OSError as exc:
            log.error("InstallCertificate: the certificate could not be stored: %s", exc)
            if exc.errno == errno.ENOSPC:
                self.security_event("MemoryExhaustion", "disk full while storing a certificate")
            return "Failed"
        log.info("InstallCertificate %s: %s%s", kind, status, f" ({why})" if why else "")
        return status

    def delete_certificate(self, hash_data: dict[str, Any]) -> str:
        store = self.certificate_store()
        entry = store.find(hash_data)
        if entry is None:
            return "NotFound"
        if (entry.type == "CentralSystemRootCertificate" and self._uses_tls()
                and len(store.roots("CentralSystemRootCertificate")) <= 1):
            log.warning("DeleteCertificate refused: the last CentralSystemRootCertificate verifies the connection")
            return "Failed"
        try:
            store.delete(entry)
        except OSError as exc:
            log.error("DeleteCertificate: %s", exc)
            return "Failed"
        return "Accepted"

    def installed_certificate_ids(self, kind: str) -> list[dict[str, str]]:
        return [i.hash_data for i in self.certificate_store().installed([kind])]

    async def sign_charge_point_certificate(self) -> str | None:
        """Generate a key + CSR and send SignCertificate.req. Returns the central system's status (or None)."""
        store = self.certificate_store()
        cpo = str(self.security_key("CpoName") or "")
        try:
            csr = await asyncio.to_thread(store.new_csr, self._config.charge_point_id, cpo)
        except OSError as exc:
            log.error("SignCertificate: the key could not be stored: %s", exc)
            return None
        link = self._link()
        if link is None or not self._registered():
            return None
        try:
            conf = await link.call("SignCertificate", {"csr": csr})
        except (TimeoutError, CallErrorReceived, ConnectionError) as exc:
            log.warning("SignCertificate not delivered: %s", exc)
            return None
        log.info("SignCertificate: %s", conf.get("status"))
        return str(conf.get("status"))

    def certificate_signed(self, chain: str) -> str:
        if len(chain) > int(self.security_key("CertificateSignedMaxChainSize")):
            self.security_event("InvalidChargePointCertificate", "certificate chain too long")
            return "Rejected"
        try:
            self.certificate_store().accept_signed(chain, now=utc_now())
        except CertificateError as exc:
            log.warning("CertificateSigned rejected: %s", exc)
            self.security_event("InvalidChargePointCertificate", str(exc))
            return "Rejected"
        except OSError as exc:
            log.error("CertificateSigned: the certificate could not be stored: %s", exc)
            return "Rejected"
        log.info("CertificateSigned: client certificate stored (used with security profile 3)")
        return "Accepted"

    # ------------------------------------------------------------------ GetLog
    def get_log(self, log_type: str, request_id: int, location: str, retries: int | None,
                retry_interval: float | None, since: datetime | None, until: datetime | None
                ) -> tuple[str, str | None]:
        """GetLog.req: (status, filename). Building + uploading runs in the background."""
        if urlsplit(location).scheme.lower() not in SUPPORTED_SCHEMES or log_type not in self._log_uploaders:
            return "Rejected", None
        canceled = any(u.task is not None and not u.task.done() for u in self._log_uploaders.values())
        for u in self._log_uploaders.values():
            if u.task is not None and not u.task.done():
                u.task.cancel()
        self._log_request_id = request_id
        self._log_copy = None
        if log_type == "DiagnosticsLog":
            self._log_copy = self._firmware.copy_store()
        uploader = self._log_uploaders[log_type]
        name = uploader.get_diagnostics(location, retries, retry_interval, since, until)
        if log_type == "DiagnosticsLog" and self._log_copy is not None and uploader.task is not None:
            copy_dir = self._log_copy
            uploader.task.add_done_callback(lambda _t: shutil.rmtree(copy_dir, ignore_errors=True))
        return ("AcceptedCanceled" if canceled else "Accepted"), name

    async def _log_notify(self, status: str) -> None:
        mapped = {"UploadFailed": "UploadFailure"}.get(status, status)
        self._log_status = mapped
        payload: dict[str, Any] = {"status": mapped}
        if self._log_request_id is not None:
            payload["requestId"] = self._log_request_id
        self._queue_message("LogStatusNotification", payload)

    def log_status_now(self) -> dict[str, Any]:
        """For ExtendedTriggerMessage(LogStatusNotification): Uploading (with requestId) or Idle."""
        if self._log_status == "Uploading":
            return {"status": "Uploading", "requestId": self._log_request_id}
        return {"status": "Idle"}

    def _build_diagnostics_log(self, out: Path, since: datetime | None, until: datetime | None) -> Path:
        return self._firmware.archive_builder(self._log_copy)(out, since, until)

    def _build_security_log(self, out: Path, since: datetime | None, until: datetime | None) -> Path:
        return self._security_log.archive(out, since, until)

    # ------------------------------------------------------------------ SignedUpdateFirmware
    def signed_update_firmware(self, request_id: int, location: str, retrieve: datetime, install: datetime | None,
                               signing_certificate: str, signature: str, retries: int | None,
                               retry_interval: float | None) -> str:
        """SignedUpdateFirmware.req: the .conf status; the update runs in the background."""
        firmware = self._firmware
        if not firmware.ready():
            return "Rejected"
        try:
            cert = self.certificate_store().check_signing_certificate(signing_certificate, now=utc_now())
        except CertificateError as exc:
            log.warning("SignedUpdateFirmware: invalid signing certificate: %s", exc)
            self.security_event("InvalidFirmwareSigningCertificate", str(exc))
            return "InvalidCertificate"
        if self._signed_installing or firmware.installing():
            return "Rejected"
        canceled = False
        if self._signed_task is not None and not self._signed_task.done():
            self._signed_task.cancel()
            canceled = True
        self._signed_request = request_id
        max_bytes, default_retries, default_interval = firmware.download_settings()
        # not in the controller's task set: this task may itself stop the controller (restart into the release)
        self._signed_task = asyncio.create_task(
            self._signed_firmware_run(request_id, location, retrieve, install, cert, signature,
                                      default_retries if retries is None else retries,
                                      default_interval if retry_interval is None else retry_interval,
                                      max_bytes),
            name="signed-firmware")
        self._signed_task.add_done_callback(_log_failure)
        return "AcceptedCanceled" if canceled else "Accepted"

    def signed_firmware_requested(self) -> bool:
        """Whether the last firmware request of this run was a SignedUpdateFirmware."""
        return self._signed_request is not None

    def signed_firmware_status_now(self) -> dict[str, Any]:
        status = self._signed_status if self._signed_status in _BUSY_FIRMWARE else "Idle"
        payload: dict[str, Any] = {"status": status}
        if status != "Idle" and self._signed_request is not None:
            payload["requestId"] = self._signed_request
        return payload

    def _signed_report(self, request_id: int, status: str) -> None:
        self._signed_status = status
        self._emit("signed_firmware", status=status, request_id=request_id)
        self._queue_message("SignedFirmwareStatusNotification", {"status": status, "requestId": request_id})

    async def _signed_firmware_run(self, request_id: int, location: str, retrieve: datetime,
                                   install: datetime | None, cert: Any, signature: str, retries: int,
                                   retry_interval: float, max_bytes: int) -> None:
        firmware = self._firmware
        delay = (retrieve - utc_now()).total_seconds()
        if delay > 0:
            self._signed_report(request_id, "DownloadScheduled")
            await asyncio.sleep(delay)
        self._signed_report(request_id, "Downloading")
        # the release check reads the version from the file name: keep it
        name = "".join(ch if ch.isalnum() or ch in "._+-" else "_" for ch in Path(urlsplit(location).path).name)
        dest = self._config.state_dir / "firmware" / f"signed-{request_id}" / (name or "firmware.bin")
        try:
            try:
                result = await download(location, dest, retries=retries, retry_interval_s=retry_interval,
                                        max_bytes=max_bytes)
            except DownloadFailed as exc:
                log.error("signed firmware download failed: %s", exc)
                self._signed_report(request_id, "DownloadFailed")
                return
            self._signed_report(request_id, "Downloaded")
            digest = await asyncio.to_thread(sha256_file, result.path)
            try:
                verify_signature(cert, signature, digest)
            except CertificateError as exc:
                log.error("signed firmware: %s", exc)
                self._signed_report(request_id, "InvalidSignature")
                self.security_event("InvalidFirmwareSignature", str(exc))
                return
            self._signed_report(request_id, "SignatureVerified")
            try:
                artifact = await asyncio.to_thread(verify_artifact, result.path)
            except InvalidRelease as exc:
                log.error("signed firmware is not a release of this project: %s", exc)
                self._signed_report(request_id, "InstallVerificationFailed")
                return
            if install is not None and (install - utc_now()).total_seconds() > 0:
                self._signed_report(request_id, "InstallScheduled")
                await asyncio.sleep((install - utc_now()).total_seconds())
            await firmware.wait_idle()  # §5.19: may wait for transactions to end before installing
            self._signed_installing = True
            self._signed_report(request_id, "Installing")
            try:
                version = await firmware.install_release(artifact)
            except (InstallFailed, InvalidRelease, OSError) as exc:
                log.error("signed firmware installation failed: %s", exc)
                self._signed_report(request_id, "InstallationFailed")
                return
            self._signed_report(request_id, "Installed")
            if version is None:
                return
            await firmware.wait_idle()
            await self.drain_security_messages(5.0)
            await firmware.restart()
        finally:
            self._signed_installing = False
            shutil.rmtree(dest.parent, ignore_errors=True)


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("task %s failed", task.get_name(), exc_info=task.exception())


def parse_window(since: datetime | None, until: datetime | None) -> tuple[datetime | None, datetime | None]:
    """GetLog's oldest/latest timestamps; a reversed window is swapped rather than refused."""
    if since is not None and until is not None and since > until:
        return until, since
    return since, until


__all__ = ["SecurityService", "parse_window"]

"""Firmware Management profile in the controller: UpdateFirmware (§5.19) and GetDiagnostics (§5.9).

The work is done by :mod:`chargepoint.firmware` (download, verify, install beside the running release, switch,
confirm or roll back; diagnostics archive and upload). This mixin binds it to the controller:

* Release tree: ``$CHARGEPOINT_RELEASE_ROOT`` or /opt/chargepoint. When that directory does not exist this is a
  development run: UpdateFirmware is still answered and downloads/verifies the file, but installing reports
  InstallationFailed (nothing is created outside the state directory).
* FirmwareStatusNotification / DiagnosticsStatusNotification are not transaction messages (they are not in
  the persistent outbox), but a status must not be lost because the charge point is not yet registered or is
  offline: OCPP 1.6 §4.2 forbids sending anything before BootNotification is accepted, and the first boot of a
  rolled-back release reports InstallationFailed at start. So statuses wait in a small in-order queue that is
  flushed after BootNotification.conf Accepted and on every reconnect, and written to the state directory at
  stop (``Installed`` is followed by a restart) so the next start delivers what was left.
* "Idle connectors" (§5.19: the charge point may wait for transactions to end before installing) = no
  transaction, no authorized session waiting for a plug and every contactor open.
* Restart into the new release: stop the controller (outputs safe), then the controller's restart callback
  with kind "Firmware" (the CLI ends the process so that systemd starts the new ``current`` link), or
  ``systemctl restart`` when no callback was given.
* The health confirmation of a freshly installed release is "BootNotification accepted" (``_after_boot``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
from collections import deque
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chargepoint.firmware.diagnostics import DiagnosticsUploader, archive_builder
from chargepoint.firmware.update import (
    FirmwareUpdater,
    InstallFailed,
    ReleaseManager,
    VenvInstaller,
    systemd_restart,
)
from chargepoint.logsetup import under_systemd
from chargepoint.pending import save_pending, take_pending
from chargepoint.protocol.outbox import CallErrorReceived
from chargepoint.store import StoreError

if TYPE_CHECKING:
    from chargepoint.controller import ControllerCore
    from chargepoint.protocol.link import OcppSession

    _Base = ControllerCore
else:
    _Base = object

log = logging.getLogger(__name__)

DEFAULT_RELEASE_ROOT = "/opt/chargepoint"
PENDING_FILE = "pending-status-notifications.json"
MAX_PENDING = 32  # a handful of statuses per update; bounded so a long offline period cannot grow it


def release_root() -> Path:
    return Path(os.environ.get("CHARGEPOINT_RELEASE_ROOT") or DEFAULT_RELEASE_ROOT)


class _DevReleaseManager(ReleaseManager):
    """No release tree: nothing is installed here, and nothing may be created outside the state directory."""

    def current_version(self) -> str | None:
        return None

    def previous_version(self) -> str | None:
        return None

    def install(self, artifact_path: Path, *, now: datetime | None = None) -> str:
        raise InstallFailed(
            f"no release tree at {self.root} (development run); set CHARGEPOINT_RELEASE_ROOT to install"
        )


class FirmwareFeature(_Base):
    """UpdateFirmware / GetDiagnostics, release health confirmation and their status notifications."""

    #: How releases are installed (None: pip into a venv); a plain function. Tests set a fast one.
    firmware_installer: VenvInstaller | None = None
    #: Seconds a freshly installed release has to get BootNotification accepted.
    firmware_confirm_timeout_s: float = 600.0
    #: How often to look whether the connectors became idle while an update waits to install.
    firmware_idle_poll_s: float = 5.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.releases: ReleaseManager | None = None
        self.firmware: FirmwareUpdater | None = None
        self.diagnostics: DiagnosticsUploader | None = None
        self.firmware_boot_outcome: str | None = None
        self._diag_snapshot: dict[str, Any] | None = None
        self._diag_config: Path | None = None
        self._diag_state: Path | None = None
        self._notices: deque[tuple[str, dict[str, Any]]] = deque(maxlen=MAX_PENDING)
        self._notice_lock = asyncio.Lock()
        self._answer_sent = asyncio.Event()
        self._answer_sent.set()

    # ------------------------------------------------------------------ start / stop
    async def start(self) -> None:
        await super().start()
        cfg = self.config
        self._load_pending_notices()
        root = release_root()
        dev = not root.is_dir()
        if dev:
            log.info("no release tree at %s: firmware updates are answered but not installed", root)
            self.releases = _DevReleaseManager(root)
        else:
            self.releases = ReleaseManager(root, installer=type(self).firmware_installer)
        self.firmware = FirmwareUpdater(
            self.releases,
            notify=lambda status: self._queue_notice("FirmwareStatusNotification", status),
            connectors_idle=self.connectors_idle,
            restart=self._firmware_restart,
            download_dir=cfg.state_dir / "firmware",
            confirm_timeout_s=self.firmware_confirm_timeout_s,
            idle_poll_s=self.firmware_idle_poll_s,
            # Under systemd the previous release's ExecStartPre check-boot already counted this start.
            count_boots=not under_systemd(),
            # only a release that reached the central system and still was not accepted is judged unhealthy
            can_judge_health=lambda: self.link is not None and self.link.ever_connected,
        )
        config_path = Path(cfg.source)
        self._diag_config = config_path if config_path.is_file() else None
        self.diagnostics = DiagnosticsUploader(
            notify=lambda status: self._queue_notice("DiagnosticsStatusNotification", status),
            build=self._build_diagnostics,
            work_dir=cfg.state_dir / "diagnostics",
            charge_point_id=cfg.charge_point_id,
        )
        if not dev:
            self.firmware_boot_outcome = await self.firmware.boot()
            log.info("firmware release check at start: %s", self.firmware_boot_outcome)

    async def stop(self) -> None:
        me = asyncio.current_task()
        for task in (
            self.firmware.task if self.firmware else None,
            self.firmware.watchdog if self.firmware else None,
            self.diagnostics.task if self.diagnostics else None,
        ):
            if task is not None and task is not me and not task.done():
                task.cancel()
        await super().stop()
        self._save_pending_notices()

    # ------------------------------------------------------------------ OCPP entry points
    def update_firmware(
        self, location: str, retrieve_date: datetime, retries: int | None, retry_interval: float | None
    ) -> None:
        """UpdateFirmware.req accepted (its .conf has no status): run it in the background."""
        assert self.firmware is not None
        self.firmware.schedule(location, retrieve_date, retries, retry_interval)

    def get_diagnostics(
        self,
        location: str,
        retries: int | None,
        retry_interval: float | None,
        start_time: datetime | None,
        stop_time: datetime | None,
    ) -> str:
        """GetDiagnostics.req: returns the fileName for the .conf; building + uploading runs in the background."""
        assert self.diagnostics is not None
        # The archive is built in a worker thread; the snapshot and the store copy are taken here, on the loop
        # that owns the store's connection (the store holds an exclusive lock: nobody else can read the file).
        with contextlib.suppress(Exception):
            self._diag_snapshot = self.snapshot()
        self._diag_state = self._copy_store()
        name = self.diagnostics.get_diagnostics(location, retries, retry_interval, start_time, stop_time)
        copy = self._diag_state
        if copy is not None and self.diagnostics.task is not None:
            self.diagnostics.task.add_done_callback(lambda _t: shutil.rmtree(copy, ignore_errors=True))
        return name

    def hold_status_notifications(self) -> None:
        """A request whose answer is not yet sent started work that reports statuses: hold them."""
        self._answer_sent.clear()

    def release_status_notifications(self) -> None:
        self._answer_sent.set()

    def firmware_status(self) -> str:
        """For TriggerMessage(FirmwareStatusNotification) (§4.5)."""
        return self.firmware.last_status if self.firmware is not None else "Idle"

    def diagnostics_status(self) -> str:
        """For TriggerMessage(DiagnosticsStatusNotification) (§4.4)."""
        return self.diagnostics.last_status if self.diagnostics is not None else "Idle"

    def connectors_idle(self) -> bool:
        return all(
            not rt.state.in_transaction and rt.state.session_tag is None and not rt.hw.contactor.is_closed
            for rt in self.connectors.values()
        )

    # ------------------------------------------------------------------ boot / session hooks
    def _after_boot(self) -> None:
        super()._after_boot()
        if self.firmware is not None:
            self._spawn(self._confirm_release(), "firmware-confirm")

    async def _confirm_release(self) -> None:
        assert self.firmware is not None
        if isinstance(self.releases, _DevReleaseManager):
            return
        try:
            if await self.firmware.confirm_healthy():
                log.info("BootNotification accepted: this release is confirmed healthy")
        except (OSError, InstallFailed) as exc:
            log.error("could not confirm this release's health: %s", exc)

    async def _on_session(self, session: OcppSession) -> None:
        await super()._on_session(session)
        await self._flush_notices()

    async def _firmware_restart(self) -> None:
        log.warning("restarting into the newly installed firmware")
        await self.stop()
        if self._restart is not None:
            self._restart("Firmware")
        else:
            await systemd_restart()

    # ------------------------------------------------------------------ status notifications
    async def _queue_notice(self, action: str, status: str) -> None:
        log.info("%s: %s", action, status, extra={"OCPP_ACTION": action})
        self._emit_timeline("firmware" if action.startswith("Firmware") else "diagnostics", status=status)
        self._notices.append((action, {"status": status}))
        await self._flush_notices()

    async def _flush_notices(self) -> None:
        """Send queued statuses in order while registered and connected; keep the rest for the next session."""
        async with self._notice_lock:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._answer_sent.wait(), 5.0)
            while self._notices and self.boot_accepted and self.link is not None and self.link.session:
                action, payload = self._notices[0]
                try:
                    await self.link.call(action, payload)
                except CallErrorReceived as exc:
                    log.warning("%s %s refused by the central system: %s", action, payload["status"], exc)
                except (TimeoutError, ConnectionError) as exc:
                    log.warning("%s %s not delivered (%s); kept for the next session", action,
                                payload["status"], exc)
                    return
                self._notices.popleft()

    def _pending_path(self) -> Path:
        return self.config.state_dir / PENDING_FILE

    def _save_pending_notices(self) -> None:
        save_pending(self._pending_path(), self._notices, "status notifications")

    def _load_pending_notices(self) -> None:
        for action, payload in take_pending(
            self._pending_path(), ("FirmwareStatusNotification", "DiagnosticsStatusNotification")
        ):
            if isinstance(payload.get("status"), str):
                self._notices.append((action, {"status": payload["status"]}))

    # ------------------------------------------------------------------ diagnostics contents
    def _copy_store(self) -> Path | None:
        """A consistent copy of the state store, taken on the loop that owns its connection (Store.copy_to)."""
        if self.store is None:
            return None
        target = self.config.state_dir / "diagnostics" / f"store-{os.getpid()}-{id(object())}"
        try:
            target.mkdir(parents=True, exist_ok=True)
            self.store.copy_to(target / "state.db")
        except (OSError, StoreError) as exc:
            log.error("diagnostics: the state store could not be copied: %s", exc)
            shutil.rmtree(target, ignore_errors=True)
            return None
        return target

    def _build_diagnostics(self, out_path: Path, since: datetime | None, until: datetime | None) -> Path:
        build = archive_builder(state_dir=self._diag_state, config_path=self._diag_config,
                                versions=self._versions, hardware_summary=self._hardware_summary)
        return build(out_path, since, until)

    def _versions(self) -> dict[str, Any]:
        from chargepoint import __version__

        out: dict[str, Any] = {"chargepoint": __version__, "firmware_version": self.config.firmware_version}
        if self.releases is not None and not isinstance(self.releases, _DevReleaseManager):
            try:
                out["releases"] = self.releases.status()
            except OSError as exc:
                out["releases"] = f"unreadable: {exc}"
        return out

    def _hardware_summary(self) -> dict[str, Any]:
        summary: dict[str, Any] = {
            "connectors": {
                str(cc.id): {kind: opts.get("driver", "sim") for kind, opts in cc.devices.items()}
                for cc in self.config.connectors
            },
        }
        if self._diag_snapshot is not None:
            summary["snapshot_at_request"] = self._diag_snapshot
        return summary

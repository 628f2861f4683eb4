"""The firmware service: Firmware Management profile, UpdateFirmware (§5.19) and GetDiagnostics (§5.9).

The work is done by :mod:`chargepoint.firmware` (download, verify, install beside the running release, switch,
confirm or roll back; diagnostics archive and upload). This service binds it to the station; it is built by the
controller with what it needs (configuration, store, connectors, the link, the registration state, a way to
stop the controller) and called by the OCPP handlers (chargepoint/protocol/firmware.py, trigger.py) and by the
security service (SignedUpdateFirmware installs through it, GetLog's DiagnosticsLog reuses its archive):

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
* The health confirmation of a freshly installed release is "BootNotification accepted" (:meth:`after_boot`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
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
from chargepoint.services.station import Connectors, Emit
from chargepoint.store import Store, StoreError

if TYPE_CHECKING:
    from chargepoint.config import Config
    from chargepoint.firmware.update import Artifact
    from chargepoint.protocol.link import OcppLink

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


class FirmwareService:
    """UpdateFirmware / GetDiagnostics, release health confirmation and their status notifications."""

    #: How releases are installed (None: pip into a venv); a plain function. Tests set a fast one.
    firmware_installer: VenvInstaller | None = None
    #: Seconds a freshly installed release has to get BootNotification accepted.
    firmware_confirm_timeout_s: float = 600.0
    #: How often to look whether the connectors became idle while an update waits to install.
    firmware_idle_poll_s: float = 5.0

    def __init__(
        self,
        config: Config,
        connectors: Connectors,
        *,
        store: Store | None,
        link: Callable[[], OcppLink | None],
        registered: Callable[[], bool],
        emit: Emit,
        snapshot: Callable[[], dict[str, Any]],
        spawn: Callable[[Coroutine[Any, Any, Any], str], asyncio.Task[Any]],
        stop_controller: Callable[[], Awaitable[None]],
        restart: Callable[[str], None] | None,
    ) -> None:
        self._config = config
        self._connectors = connectors
        self._store = store
        self._link = link
        self._registered = registered
        self._emit = emit
        self._snapshot = snapshot
        self._spawn = spawn
        self._stop_controller = stop_controller
        self._restart_process = restart
        self._releases: ReleaseManager | None = None
        self._updater: FirmwareUpdater | None = None
        self._diagnostics: DiagnosticsUploader | None = None
        self._boot_outcome: str | None = None
        self._diag_snapshot: dict[str, Any] | None = None
        self._diag_config: Path | None = None
        self._diag_state: Path | None = None
        self._notices: deque[tuple[str, dict[str, Any]]] = deque(maxlen=MAX_PENDING)
        self._notice_lock = asyncio.Lock()
        self._answer_sent = asyncio.Event()
        self._answer_sent.set()

    # ------------------------------------------------------------------ start / stop
    async def start(self) -> None:
        """After the rest of the station started: the release tree, the updater, the boot check."""
        cfg = self._config
        self._load_pending_notices()
        root = release_root()
        dev = not root.is_dir()
        if dev:
            log.info("no release tree at %s: firmware updates are answered but not installed", root)
            self._releases = _DevReleaseManager(root)
        else:
            self._releases = ReleaseManager(root, installer=type(self).firmware_installer)
        self._updater = FirmwareUpdater(
            self._releases,
            notify=lambda status: self._queue_notice("FirmwareStatusNotification", status),
            connectors_idle=self.connectors_idle,
            restart=self.restart,
            download_dir=cfg.state_dir / "firmware",
            confirm_timeout_s=self.firmware_confirm_timeout_s,
            idle_poll_s=self.firmware_idle_poll_s,
            # Under systemd the previous release's ExecStartPre check-boot already counted this start.
            count_boots=not under_systemd(),
            # only a release that reached the central system and still was not accepted is judged unhealthy
            can_judge_health=self._link_ever_connected,
        )
        config_path = Path(cfg.source)
        self._diag_config = config_path if config_path.is_file() else None
        self._diagnostics = DiagnosticsUploader(
            notify=lambda status: self._queue_notice("DiagnosticsStatusNotification", status),
            build=self._build_diagnostics,
            work_dir=cfg.state_dir / "diagnostics",
            charge_point_id=cfg.charge_point_id,
        )
        if not dev:
            self._boot_outcome = await self._updater.boot()
            log.info("firmware release check at start: %s", self._boot_outcome)

    def _link_ever_connected(self) -> bool:
        link = self._link()
        return link is not None and link.ever_connected

    def cancel_tasks(self) -> None:
        """The controller stops: end the background work (not the task that is stopping us)."""
        me = asyncio.current_task()
        for task in (
            self._updater.task if self._updater else None,
            self._updater.watchdog if self._updater else None,
            self._diagnostics.task if self._diagnostics else None,
        ):
            if task is not None and task is not me and not task.done():
                task.cancel()

    def save_pending(self) -> None:
        """At stop: undelivered statuses go to the state directory; the next start delivers them."""
        self._save_pending_notices()

    # ------------------------------------------------------------------ OCPP entry points
    def update_firmware(
        self, location: str, retrieve_date: datetime, retries: int | None, retry_interval: float | None
    ) -> None:
        """UpdateFirmware.req accepted (its .conf has no status): run it in the background."""
        assert self._updater is not None
        self._updater.schedule(location, retrieve_date, retries, retry_interval)

    def get_diagnostics(
        self,
        location: str,
        retries: int | None,
        retry_interval: float | None,
        start_time: datetime | None,
        stop_time: datetime | None,
    ) -> str:
        """GetDiagnostics.req: returns the fileName for the .conf; building + uploading runs in the background."""
        assert self._diagnostics is not None
        # The archive is built in a worker thread; the snapshot and the store copy are taken here, on the loop
        # that owns the store's connection (the store holds an exclusive lock: nobody else can read the file).
        with contextlib.suppress(Exception):
            self._diag_snapshot = self._snapshot()
        self._diag_state = self.copy_store()
        name = self._diagnostics.get_diagnostics(location, retries, retry_interval, start_time, stop_time)
        copy = self._diag_state
        if copy is not None and self._diagnostics.task is not None:
            self._diagnostics.task.add_done_callback(lambda _t: shutil.rmtree(copy, ignore_errors=True))
        return name

    def hold_status_notifications(self) -> None:
        """A request whose answer is not yet sent started work that reports statuses: hold them."""
        self._answer_sent.clear()

    def release_status_notifications(self) -> None:
        self._answer_sent.set()

    def status(self) -> str:
        """For TriggerMessage(FirmwareStatusNotification) (§4.5)."""
        return self._updater.last_status if self._updater is not None else "Idle"

    def diagnostics_status(self) -> str:
        """For TriggerMessage(DiagnosticsStatusNotification) (§4.4)."""
        return self._diagnostics.last_status if self._diagnostics is not None else "Idle"

    def pending_notices(self) -> list[tuple[str, dict[str, Any]]]:
        """The status notifications not yet delivered, oldest first (a copy)."""
        return list(self._notices)

    def diagnostics_running(self) -> bool:
        """Whether a GetDiagnostics upload is still in progress."""
        task = self._diagnostics.task if self._diagnostics is not None else None
        return task is not None and not task.done()

    @property
    def boot_outcome(self) -> str | None:
        """The release check at start ("pending": this is the first boot of a newly installed release)."""
        return self._boot_outcome

    def connectors_idle(self) -> bool:
        return all(
            not rt.state.in_transaction and rt.state.session_tag is None and not rt.hw.contactor.is_closed
            for rt in self._connectors.values()
        )

    # ------------------------------------------------------------------ for SignedUpdateFirmware (security)
    def ready(self) -> bool:
        """Whether updates can be taken on (the service has started)."""
        return self._updater is not None

    def download_settings(self) -> tuple[int, int, float]:
        """(max_bytes, default retries, default retry interval in s) of a firmware download."""
        assert self._updater is not None
        return self._updater.max_bytes, self._updater.default_retries, self._updater.default_retry_interval_s

    def installing(self) -> bool:
        """An UpdateFirmware is installing right now (a second install must wait)."""
        return bool(self._updater is not None and self._updater._installing)

    async def wait_idle(self) -> None:
        """§5.19: the charge point may wait for transactions to end before installing."""
        assert self._updater is not None
        await self._updater._wait_idle()

    async def install_release(self, artifact: Artifact) -> str | None:
        """Install a verified release artifact beside the running one and switch to it at the next start.

        Returns the new version, or None when it is the running one (nothing to do). Raises InstallFailed,
        InvalidRelease or OSError."""
        assert self._updater is not None and self._releases is not None
        releases = self._releases
        current = await asyncio.to_thread(releases.current_version)
        if artifact.version == current:
            return None
        version = await asyncio.to_thread(releases.install, artifact.path)
        await asyncio.to_thread(self._updater._switch_and_mark, version, current)
        return version

    def running_version(self) -> str | None:
        return self._releases.current_version() if self._releases is not None else None

    # ------------------------------------------------------------------ boot / session
    def after_boot(self) -> None:
        """BootNotification accepted: that is the health confirmation of a freshly installed release."""
        if self._updater is not None:
            self._spawn(self._confirm_release(), "firmware-confirm")

    async def _confirm_release(self) -> None:
        assert self._updater is not None
        if isinstance(self._releases, _DevReleaseManager):
            return
        try:
            if await self._updater.confirm_healthy():
                log.info("BootNotification accepted: this release is confirmed healthy")
        except (OSError, InstallFailed) as exc:
            log.error("could not confirm this release's health: %s", exc)

    async def on_session(self) -> None:
        """A (re)connected, registered session: deliver what is queued."""
        await self._flush_notices()

    async def restart(self) -> None:
        """Restart into the newly installed release: stop the controller (outputs safe), then the process."""
        log.warning("restarting into the newly installed firmware")
        await self._stop_controller()
        if self._restart_process is not None:
            self._restart_process("Firmware")
        else:
            await systemd_restart()

    # ------------------------------------------------------------------ status notifications
    async def _queue_notice(self, action: str, status: str) -> None:
        log.info("%s: %s", action, status, extra={"OCPP_ACTION": action})
        self._emit("firmware" if action.startswith("Firmware") else "diagnostics", status=status)
        self._notices.append((action, {"status": status}))
        await self._flush_notices()

    async def _flush_notices(self) -> None:
        """Send queued statuses in order while registered and connected; keep the rest for the next session."""
        async with self._notice_lock:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._answer_sent.wait(), 5.0)
            while self._notices and self._registered():
                link = self._link()
                if link is None or not link.session:
                    break
                action, payload = self._notices[0]
                try:
                    await link.call(action, payload)
                except CallErrorReceived as exc:
                    log.warning("%s %s refused by the central system: %s", action, payload["status"], exc)
                except (TimeoutError, ConnectionError) as exc:
                    log.warning("%s %s not delivered (%s); kept for the next session", action,
                                payload["status"], exc)
                    return
                self._notices.popleft()

    def _pending_path(self) -> Path:
        return self._config.state_dir / PENDING_FILE

    def _save_pending_notices(self) -> None:
        save_pending(self._pending_path(), self._notices, "status notifications")

    def _load_pending_notices(self) -> None:
        for action, payload in take_pending(
            self._pending_path(), ("FirmwareStatusNotification", "DiagnosticsStatusNotification")
        ):
            if isinstance(payload.get("status"), str):
                self._notices.append((action, {"status": payload["status"]}))

    # ------------------------------------------------------------------ diagnostics contents
    def copy_store(self) -> Path | None:
        """A consistent copy of the state store, taken on the loop that owns its connection (Store.copy_to)."""
        if self._store is None:
            return None
        target = self._config.state_dir / "diagnostics" / f"store-{os.getpid()}-{id(object())}"
        try:
            target.mkdir(parents=True, exist_ok=True)
            self._store.copy_to(target / "state.db")
        except (OSError, StoreError) as exc:
            log.error("diagnostics: the state store could not be copied: %s", exc)
            shutil.rmtree(target, ignore_errors=True)
            return None
        return target

    def archive_builder(self, state_copy: Path | None) -> Callable[[Path, datetime | None, datetime | None], Path]:
        """The diagnostics archive (logs, configuration, versions, hardware, a copy of ``state_copy``)."""
        return archive_builder(state_dir=state_copy, config_path=self._diag_config,
                               versions=self._versions, hardware_summary=self._hardware_summary)

    def _build_diagnostics(self, out_path: Path, since: datetime | None, until: datetime | None) -> Path:
        return self.archive_builder(self._diag_state)(out_path, since, until)

    def _versions(self) -> dict[str, Any]:
        from chargepoint import __version__

        out: dict[str, Any] = {"chargepoint": __version__, "firmware_version": self._config.firmware_version}
        if self._releases is not None and not isinstance(self._releases, _DevReleaseManager):
            try:
                out["releases"] = self._releases.status()
            except OSError as exc:
                out["releases"] = f"unreadable: {exc}"
        return out

    def _hardware_summary(self) -> dict[str, Any]:
        summary: dict[str, Any] = {
            "connectors": {
                str(cc.id): {kind: opts.get("driver", "sim") for kind, opts in cc.devices.items()}
                for cc in self._config.connectors
            },
        }
        if self._diag_snapshot is not None:
            summary["snapshot_at_request"] = self._diag_snapshot
        return summary

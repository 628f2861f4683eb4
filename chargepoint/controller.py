"""The controller: the composition root that builds the hardware and the services, and the dispatcher.

One asyncio loop. Hardware events and OCPP requests become connector events, which one dispatcher task applies
to the pure connector state machines in order; the resulting actions switch the hardware (here, the action
executor) and reach the services (transactions queue Start/StopTransaction in the persistent outbox; the station
link sends StatusNotification). Every concern's state lives in its service (chargepoint/services/,
docs/architecture.md); this module builds them, runs the dispatcher, and starts, stops and supervises the tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from chargepoint import connector as cm
from chargepoint.config import Config
from chargepoint.keys import ConfigurationKeys
from chargepoint.privacy import use_installation_salt
from chargepoint.protocol.link import OcppLink, OcppSession
from chargepoint.protocol.outbox import Outbox, OutboxSender
from chargepoint.services.authorization import Authorization
from chargepoint.services.availability import AvailabilityService
from chargepoint.services.firmware import FirmwareService
from chargepoint.services.hardware_limits import HardwareLimits
from chargepoint.services.limits import (
    PRIORITY_AUTHORIZATION,
    PRIORITY_CABLE,
    PRIORITY_SMART_CHARGING,
    PRIORITY_TEMPERATURE,
    LimitArbiter,
)
from chargepoint.services.reservations import ReservationService
from chargepoint.services.reset import ResetService
from chargepoint.services.security import SecurityService
from chargepoint.services.sessions_start import SessionStarter
from chargepoint.services.smartcharging import SmartCharging
from chargepoint.services.snapshot import station_snapshot
from chargepoint.services.station import ConnectorRuntime, KeyChanges
from chargepoint.services.station_link import StationLink
from chargepoint.services.systemd import SystemdService
from chargepoint.services.transactions import TransactionService
from chargepoint.store import Store, StoreUnavailable, logged_on_failure
from chargepoint.supervisor import Supervisor, TaskFactory
from hal import registry
from hal.interfaces import (
    ConnectorHardware,
    CpState,
    FaultCleared,
    FaultKind,
    FaultRaised,
    HalEvent,
    IndicatorPattern,
    PilotChanged,
    StationHardware,
    TagPresented,
)

log = logging.getLogger(__name__)


def build_hardware(config: Config, ctx: registry.BuildContext | None = None) -> tuple[StationHardware, Any]:
    """Instantiate every configured driver. Raises HardwareConfigError naming the key."""
    ctx = ctx or registry.BuildContext()
    connectors = []
    for index, cc in enumerate(config.connectors):
        base = f"connectors[{index}]"
        devices = {
            kind: registry.build(kind, opts, f"{base}.{kind}", cc.id, ctx)
            for kind, opts in cc.devices.items()
        }
        connectors.append(
            ConnectorHardware(
                connector_id=cc.id,
                pilot=devices["pilot"],
                contactor=devices["contactor"],
                meter=devices["meter"],
                lock=devices.get("lock"),
                rcm=devices.get("rcm"),
                indicator=devices.get("indicator"),
                pp=devices.get("pp"),
                temperature=devices.get("temperature"),
            )
        )
    readers = [
        registry.build("reader", opts, f"readers[{i}]", 0, ctx) for i, opts in enumerate(config.readers)
    ]
    indicator = (
        registry.build("indicator", config.indicator, "indicator", 0, ctx) if config.indicator else None
    )
    if config.station.grid is not None:
        ctx.shared["grid_meter"] = registry.build(
            "meter", config.station.grid.meter, "station.grid.meter", 0, ctx
        )
    return StationHardware(connectors=connectors, readers=readers, indicator=indicator), ctx


class Controller:
    """The charge point: the composition root that builds the services, and the event dispatcher.

    No mixins and no hooks: every concern is a service (chargepoint/services/) built in :meth:`start` with
    what it needs, and the controller calls each by name where its concern begins (boot accepted, a session
    up, a key changed, a clock jump, a link error, stop)."""

    def __init__(
        self,
        config: Config,
        *,
        hardware: StationHardware | None = None,
        build_context: registry.BuildContext | None = None,
        store: Store | None = None,
        restart: Callable[[str], None] | None = None,
        session_class: type[OcppSession] | None = None,
    ) -> None:
        self.config = config
        self._hardware = hardware
        self.build_context = build_context
        self.store = store
        self._restart = restart
        self._session_class = session_class
        self.connectors: dict[int, ConnectorRuntime] = {}
        self.station: StationHardware | None = None
        self.keys: ConfigurationKeys | None = None
        self.link: OcppLink | None = None
        self.outbox: Outbox | None = None
        self.sender: OutboxSender | None = None
        self._queue: asyncio.Queue[tuple[int, cm.Event]] = asyncio.Queue()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.supervisor = Supervisor(on_crash=self._on_task_crash, on_give_up=self._on_task_given_up)
        self._safe_outputs_task: asyncio.Task[None] | None = None  # outputs forced safe: dispatcher died
        self._outputs_forced_safe = False  # … and the state machines do not know it yet
        self.key_changes = KeyChanges()
        self._stopping = False
        self.stopped = asyncio.Event()
        self.ready = asyncio.Event()
        self.listeners: list[Callable[[str, dict[str, Any]], None]] = []  # timeline for demo/tests
        self.loop_ticks = 0
        self._owns_store = False
        # Built in start() (they need the store and the configuration keys).
        self.station_link: StationLink | None = None
        self.firmware: FirmwareService | None = None
        self.security: SecurityService | None = None
        from chargepoint.api import ControllerApi

        self.api = ControllerApi(self)  # the one door for front ends (chargepoint/api.py)

    # ================================================================== time, registration, timeline
    def now(self) -> datetime:
        """Wall-clock time as the central system sees it (the station link keeps its clock offset)."""
        return self.station_link.now() if self.station_link is not None else datetime.now(UTC)

    @property
    def boot_accepted(self) -> bool:
        """The central system accepted a BootNotification (§4.2); the station link knows."""
        return self.station_link is not None and self.station_link.boot_accepted

    @staticmethod
    def monotonic() -> float:
        return time.monotonic()

    def _emit_timeline(self, kind: str, **data: Any) -> None:
        for listener in list(self.listeners):
            try:
                listener(kind, data)
            except Exception:
                log.exception("timeline listener failed")

    # ================================================================== start / stop
    async def start(self) -> None:
        cfg = self.config
        self._owns_store = self.store is None
        if self.store is None:
            try:
                self.store = Store.open(cfg.state_dir)
            except StoreUnavailable as exc:
                log.error("%s", exc)
                self.store = Store.memory(cfg.state_dir / "state.db")
        store = self.store
        persisted = self._safe(store.get_config, {})
        self.keys = ConfigurationKeys(
            number_of_connectors=len(cfg.connectors),
            initial=cfg.ocpp_keys,
            persisted=persisted,
            on_change=lambda k, v: self._safe(store.set_config, None, k, v),
        )
        self.keys.subscribe(self._on_key_changed)
        # Before any tag is logged: masks are keyed with this installation's secret (chargepoint.privacy).
        use_installation_salt(cfg.state_dir)
        registered = lambda: self.boot_accepted  # noqa: E731
        link = self.station_link = StationLink(
            cfg, self.connectors, keys=self.keys, key_changes=self.key_changes, link=lambda: self.link,
            outbox=lambda: self.outbox, set_online=self._set_online,
            station_status=lambda: self.availability.station_status(), emit=self._emit_timeline,
            spawn=self._spawn, on_key_changed=self._on_key_changed, session_starting=self._session_starting,
            session_started=self._session_started, registered=self._after_boot, clock_moved=self._clock_moved,
            link_error=self._link_error,
            status_info=lambda cid: self.energy.status_info(cid) if self.energy is not None else None,
        )
        self.firmware = FirmwareService(
            cfg, self.connectors, store=store, link=lambda: self.link, registered=registered,
            emit=self._emit_timeline, snapshot=self.snapshot, spawn=self._spawn, stop_controller=self.stop,
            restart=self._restart,
        )
        self.security = SecurityService(
            cfg, self.keys, firmware=self.firmware, now=self.now, link=lambda: self.link,
            registered=registered, emit=self._emit_timeline, supervise=self.supervise, spawn=self._spawn,
        )
        self.authorization = Authorization(
            self.connectors, keys=self.keys, store=store, now=self.now, online=link.online, call=link.call,
            response_timeout_s=cfg.csms.response_timeout_s, report_conflict=link.report_local_list_conflict,
        )
        self.availability = AvailabilityService(
            self.connectors, store=store, apply_now=self.apply_now, registered=registered,
            queue_status=link.queue_status,
        )
        self.reservations = ReservationService(
            self.connectors, keys=self.keys, store=store, now=self.now, post=self.post,
            emit=self._emit_timeline, station_status=lambda: self.availability.station_status()[0],
            parent_of=self.authorization.parent_of,
        )
        self.limits = LimitArbiter(self.connectors, apply=self.apply_limit, monotonic=self.monotonic)
        self.hardware_limits = HardwareLimits(
            self.connectors, cfg.connectors, post=self.post, emit=self._emit_timeline,
            limits_changed=self.limits.recompute_all,
        )
        self.smart = SmartCharging(
            self.connectors, station=cfg.station, keys=self.keys, store=store, arbiter=self.limits,
            now=self.now, monotonic=self.monotonic, emit=self._emit_timeline,
            read_meter=lambda rt: self.transactions.read_meter(rt), supervise=self.supervise,
        )
        self.limits.register("smart charging", PRIORITY_SMART_CHARGING, self.smart.claims)
        self.limits.register("authorization", PRIORITY_AUTHORIZATION, self.authorization.claims)
        self.limits.register("cable", PRIORITY_CABLE, self.hardware_limits.cable_claims)
        self.limits.register("temperature", PRIORITY_TEMPERATURE, self.hardware_limits.temperature_claims)
        if self._hardware is None:
            self._hardware, self.build_context = build_hardware(cfg, self.build_context)
        self.station = self._hardware
        self.energy = None  # [energy] (issue 16): built after the connectors, below
        for cc, hw in zip(cfg.connectors, self.station.connectors, strict=True):
            state = cm.ConnectorState(
                connector_id=cc.id,
                min_current_a=cc.min_current_a,
                connection_timeout_s=float(self.keys["ConnectionTimeOut"]),
                stop_on_ev_disconnect=bool(self.keys["StopTransactionOnEVSideDisconnect"]),
                operative=self.availability.operative_at_start(cc.id),
                ventilation=cc.ventilation,
                cable_required=cc.cable.socket,
            )
            self.connectors[cc.id] = ConnectorRuntime(
                id=cc.id, hw=hw, state=state, max_current_a=cc.max_current_a, phases=cc.phases
            )
        if cfg.energy is not None and cfg.energy.enabled:  # PV surplus, 1p/3p, schedule, §14a dimming
            from chargepoint.energy.service import PRIORITY_ENERGY, EnergyService
            self.energy = EnergyService(
                cfg.energy, self.connectors, voltage_v=cfg.station.nominal_voltage_v,
                recompute=self.limits.request_recompute, monotonic=self.monotonic, now=self.now,
                emit=self._emit_timeline, profile_phases=self._profile_phases, on_dimming=self._on_dimming,
                report_fault=lambda cid, detail: self.post(cid, cm.Fault(FaultKind.PHASE_SWITCH, False, detail[:50])))
            self.energy.build(self.build_context)
            self.limits.register("energy", PRIORITY_ENERGY, self.energy.claims)
            if cfg.energy.phase_switch is not None:  # OCPP 1.6 §9.4: numberPhases 1 is honoured then
                self.keys.set_internal("ConnectorSwitch3to1PhaseSupported", True)
        # Drivers come up de-energized (a pilot in state F, relays off); starting one opens its hardware
        # (e.g. exports the PWM channel). Then the safe state is commanded explicitly, before anything else.
        for rt in self.connectors.values():
            for device in rt.hw.devices():
                await device.start(self._on_hal_event)
        for rt in self.connectors.values():
            await rt.hw.contactor.open()
            await rt.hw.pilot.set_unavailable()
        for reader in self.station.readers:
            await reader.start(self._on_hal_event)
        if self.station.indicator:
            await self.station.indicator.start(self._on_hal_event)

        self.outbox = Outbox(store)
        self.transactions = TransactionService(
            self.connectors, keys=self.keys, store=store, outbox=self.outbox,
            wake_sender=lambda: self.sender.wake(),  # type: ignore[union-attr]
            now=self.now, monotonic=self.monotonic, emit=self._emit_timeline, post=self.post,
            supervise=self.supervise, cancel_task=self.supervisor.cancel, spawn=self._spawn,
            call_quietly=link.call_quietly, registered=registered, key_change=self.key_changes.wait,
            limits=self.limits, smart=self.smart, authorization=self.authorization,
            reservations=self.reservations, hardware_limits=self.hardware_limits,
        )
        self.session_starter = SessionStarter(
            self.connectors, keys=self.keys, post=self.post, flash=self.flash, emit=self._emit_timeline,
            authorization=self.authorization, reservations=self.reservations, transactions=self.transactions,
            smart=self.smart,
        )
        self.sender = OutboxSender(
            self.outbox,
            link.send_queued,
            self.transactions.on_queued_result,
            attempts=lambda: int(self.keys["TransactionMessageAttempts"]),  # type: ignore[index]
            retry_interval_s=lambda: float(self.keys["TransactionMessageRetryInterval"]),  # type: ignore[index]
            clock=self.now,
            reconnect_poll_s=5.0,
            on_drop=self.transactions.on_queued_drop,
        )
        self.resets = ResetService(
            self.connectors, store=store, before_reset=self.security.before_reset, apply_now=self.apply_now,
            post=self.post, emit=self._emit_timeline, queued=lambda: len(self.outbox),  # type: ignore[arg-type]
            sender_online=lambda: self.sender.online, stop_controller=self.stop,  # type: ignore[union-attr]
            restart=self._restart,
        )
        await self.transactions.recover()
        for rt in self.connectors.values():
            await self.transactions.read_meter(rt)
            self.limits.recompute(rt.id)
        self.limits.recompute_all()

        session_class = self._session_class or _default_session_class()
        self.link = OcppLink(
            url=cfg.csms.url,
            charge_point_id=cfg.charge_point_id,
            session_factory=lambda ws: session_class(
                cfg.charge_point_id, ws, cfg.csms.response_timeout_s, controller=self
            ),
            on_session=link.on_session,
            on_disconnect=link.on_disconnect,
            password=lambda: self.keys["AuthorizationKey"] or cfg.csms.password,  # type: ignore[index]
            ca_file=self.security.csms_ca_file,
            client_cert=self.security.csms_client_cert,
            on_connect_error=link.on_link_error,
            reconnect_min_s=cfg.csms.reconnect_min_s,
            reconnect_max_s=cfg.csms.reconnect_max_s,
            ping_interval=lambda: float(self.keys["WebSocketPingInterval"]),  # type: ignore[index]
            security_profile=lambda: int(self.keys["SecurityProfile"]),  # type: ignore[index]
        )
        # The long-lived tasks, kept alive by the supervisor (chargepoint/supervisor.py says why and how).
        self.supervise("dispatcher", self._dispatcher, critical=True)
        self.supervise("status", link.status_sender)
        self.supervise("outbox", self.sender.run)
        self.supervise("link", self.link.run)
        self.supervise("clock-aligned", self.transactions.clock_aligned_loop)
        self.supervise("heartbeat", link.heartbeat_loop)
        for rt in self.connectors.values():
            self.supervise(f"meter-{rt.id}", functools.partial(self.transactions.meter_poll_loop, rt))
            self.post(rt.id, cm.Tick())
        self.smart.start(self.build_context.shared.get("grid_meter") if self.build_context else None)
        if self.energy is not None:
            await self.energy.start(self.build_context.shared.get("grid_meter"), self._on_hal_event)
            self.supervise("energy", self.energy.run)
        self.systemd = SystemdService(
            self.connectors, status_socket=cfg.status_socket, snapshot=lambda: self.api.snapshot().as_dict(),
            subscribe=self.api.subscribe,  # the status socket is a client of the application API
            loop_ticks=lambda: self.loop_ticks, post=self.post, supervise=self.supervise,
            problem=lambda: self.supervisor.problem, monotonic=self.monotonic,
            store_copy=self.firmware.copy_store,  # a consistent store copy, as for GetDiagnostics
        )
        await self.systemd.start()
        self.ready.set()
        self.limits.recompute_all()
        self.reservations.start()
        self.security.start()
        await self.firmware.start()

    def supervise(
        self, name: str, factory: TaskFactory, *, critical: bool = False, transient: bool = False
    ) -> asyncio.Task[Any]:
        """A long-lived task that must not die: restarted by the supervisor if it does (see its docstring)."""
        return self.supervisor.start(name, factory, critical=critical, transient=transient)

    def _security_event(self, kind: str, tech_info: str | None = None) -> None:
        """A security event (security whitepaper edition 2): the security service records and sends it."""
        if self.security is not None:
            self.security.security_event(kind, tech_info)

    def _on_task_crash(self, name: str, exc: BaseException | None, critical: bool) -> None:
        """A supervised task ended unasked; the supervisor restarts it after this.

        The dispatcher is the only task that applies events to the state machines, so it is what opens the
        contactor on a fault: while it is down nothing would. Its death therefore puts every output into
        its safe state at once (contactor open, pilot in state F); the restarted dispatcher first tells the
        state machines (``cm.OutputsForcedSafe``), which then re-derive the outputs from their inputs after
        the 300 ms in state F of IEC 61851-1 Table A.5."""
        if isinstance(exc, MemoryError):
            self._security_event("MemoryExhaustion", f"task {name} ran out of memory")
        if critical:
            self._force_safe_outputs(f"task {name} died")

    def _on_task_given_up(self, name: str, reason: str, critical: bool) -> None:
        """A task could not be kept alive: only a fresh process helps.

        ``healthy()`` is False from now on, so the systemd watchdog is no longer fed and systemd restarts
        the service (the backstop that works whatever else is broken). Where the process has a restart
        hook (``chargepoint run``: exit 75, which the unit restarts at once) the controller also stops in
        order first, so an open transaction is closed with reason Reboot after the restart, not PowerLoss,
        and queued security messages are kept."""
        if critical:
            self._force_safe_outputs(f"task {name} cannot be restarted")
        self._security_event("ResetOrReboot", f"restarting the service: {reason}"[:255])
        if self._restart is not None and not self._stopping:
            self._spawn(self._restart_service(), "supervisor-restart")

    async def _restart_service(self) -> None:
        await asyncio.sleep(0.2)  # let the security event and the log line go out first
        await self.stop()
        if self._restart is not None:
            self._restart("Supervisor")

    def healthy(self) -> bool:
        """False once an essential task could not be kept alive (see :meth:`_on_task_given_up`)."""
        return self.supervisor.healthy

    def _force_safe_outputs(self, why: str) -> None:
        if self._stopping:
            return
        log.critical("%s: opening every contactor and putting every pilot in state F", why)
        self._outputs_forced_safe = True

        async def make_safe() -> None:
            for rt in self.connectors.values():
                try:
                    await rt.hw.contactor.open()
                except Exception:
                    log.exception("connector %d: contactor open failed", rt.id)
                try:
                    await rt.hw.pilot.set_unavailable()
                except Exception:
                    log.exception("connector %d: pilot state F failed", rt.id)
                self._emit_timeline("contactor", connector=rt.id, closed=False, reason=why)

        self._safe_outputs_task = self._spawn(make_safe(), "safe-outputs")

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        """A short-lived background task: kept until it ends (so stop() can cancel it), its failure logged."""
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("task %s failed", task.get_name(), exc_info=task.exception())

    async def stop(self) -> None:
        """Stop everything; outputs end de-energized. Open transactions stay open (a restart resumes).

        Firmware and security work ends first; what they could not deliver is written to the state
        directory last, so the next start sends it."""
        if self.firmware is not None:
            self.firmware.cancel_tasks()
        if self.security is not None:
            self.security.cancel_tasks()
        await self._stop_everything()
        if self.security is not None:
            self.security.save_pending()
        if self.firmware is not None:
            self.firmware.save_pending()

    async def _stop_everything(self) -> None:
        if self._stopping:
            return
        if hasattr(self, "systemd"):
            await self.systemd.stop()
        self._stopping = True
        self.limits.stop()
        if self.energy is not None:
            await self.energy.stop()
        self.smart.stop()
        self.reservations.stop()
        open_tx = [rt for rt in self.connectors.values() if rt.tx is not None]
        for rt in open_tx:
            assert rt.tx is not None
            log.warning(
                "stopping with transaction %s (local %d) open on connector %d: it stays persisted and is "
                "stopped with reason Reboot at the next start",
                rt.tx.transaction_id if rt.tx.transaction_id is not None else "(id not yet known)",
                rt.tx.local_id,
                rt.id,
                extra={"CONNECTOR_ID": rt.id, "TRANSACTION_ID": rt.tx.transaction_id},
            )
        if self.store is not None and open_tx:
            # an orderly stop: the next start closes open transactions with reason Reboot, not PowerLoss
            self._safe(self.store.set_pending_reset, None, "Shutdown")
        for rt in self.connectors.values():
            with contextlib.suppress(Exception):
                await rt.hw.contactor.open()
            with contextlib.suppress(Exception):
                await rt.hw.pilot.set_unavailable()
        tasks = self.supervisor.stop()
        me = asyncio.current_task()
        tasks += [t for t in self._tasks if t is not me]
        for rt in self.connectors.values():
            if rt.tx_chain is not None:
                tasks.append(rt.tx_chain)
            if rt.tick_handle:
                rt.tick_handle.cancel()
        for t in tasks:
            t.cancel()
        if tasks:
            # wait() never swallows our own cancellation, and a task that ignores cancel cannot hang us
            _, pending = await asyncio.wait(tasks, timeout=5.0)
            for t in pending:
                log.error("task %s did not stop within 5 s", t.get_name())
        if self.station:
            for device in self.station.devices():
                with contextlib.suppress(Exception):
                    await device.stop()
        if self.link:
            with contextlib.suppress(Exception):
                await self.link.close()
        if self.store is not None and self._owns_store:
            with contextlib.suppress(Exception):
                self.store.close()
        self.stopped.set()

    _safe = staticmethod(logged_on_failure)  # a store failure is logged; the charger keeps running

    # ================================================================== events in
    def _on_hal_event(self, event: HalEvent) -> None:
        if self.hardware_limits.on_hal_event(event):
            return
        if isinstance(event, PilotChanged):
            self.post(event.connector_id, cm.Pilot(event.state))
        elif isinstance(event, FaultRaised):
            log.error(
                "fault on connector %d: %s %s",
                event.connector_id,
                event.kind.value,
                event.info,
                extra={"CONNECTOR_ID": event.connector_id},
            )
            for cid in self._targets(event.connector_id):
                self.post(cid, cm.Fault(event.kind, event.latched, event.info))
        elif isinstance(event, FaultCleared):
            log.info(
                "fault cleared on connector %d: %s",
                event.connector_id,
                event.kind.value,
                extra={"CONNECTOR_ID": event.connector_id},
            )
            for cid in self._targets(event.connector_id):
                self.post(cid, cm.FaultClear(event.kind))
        elif isinstance(event, TagPresented):
            self._spawn(self.session_starter.on_tag(event.id_tag), "tag")

    def _targets(self, connector_id: int) -> list[int]:
        return list(self.connectors) if connector_id == 0 else [connector_id]

    def post(self, connector_id: int, event: cm.Event) -> None:
        self._queue.put_nowait((connector_id, event))

    async def _dispatcher(self) -> None:
        if self._outputs_forced_safe:
            # Restarted after a death that forced the outputs safe: the state machines learn it first.
            if self._safe_outputs_task is not None:
                with contextlib.suppress(Exception):
                    await self._safe_outputs_task
            self._outputs_forced_safe = False
            for rt in self.connectors.values():
                await self._apply(rt.id, cm.OutputsForcedSafe())
        while True:
            cid, event = await self._queue.get()
            self.loop_ticks += 1
            try:
                await self._apply(cid, event)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("connector %d: applying %s failed; opening the contactor", cid, event)
                rt = self.connectors.get(cid)
                if rt is not None:
                    with contextlib.suppress(Exception):
                        await rt.hw.contactor.open()

    async def apply_now(self, connector_id: int, event: cm.Event) -> None:
        """Apply an event and wait until it is done (for handlers that answer after the change)."""
        done = asyncio.get_running_loop().create_future()
        self.post(connector_id, _Barrier(event, done))  # type: ignore[arg-type]
        await done

    async def _apply(self, cid: int, event: Any) -> None:
        done = None
        if isinstance(event, _Barrier):
            event, done = event.event, event.done
        rt = self.connectors.get(cid)
        if rt is None:
            if done:
                done.set_result(None)
            return
        now = self.monotonic()
        if isinstance(event, cm.Pilot):
            log.info("connector %d: pilot %s", cid, event.state.value, extra={"CONNECTOR_ID": cid})
            self._emit_timeline("pilot", connector=cid, state=event.state.value)
        try:
            faults_before = rt.state.all_faults
            new, actions = cm.step(rt.state, event, now)
            rt.state = new
            if new.all_faults != faults_before:  # the application API's FAULT changes (never dropped first)
                self._emit_fault_change(cid, faults_before, new)
            failed = False
            for action in actions:
                try:
                    await self._execute(rt, action, now)
                except Exception:
                    # The hardware did not do what the state machine believes: treat it as a fault, which
                    # opens the contactor and puts the pilot in F (the next event applies it).
                    log.exception(
                        "connector %d: %s failed", cid, type(action).__name__, extra={"CONNECTOR_ID": cid}
                    )
                    failed = True
            if failed and not isinstance(event, cm.Fault):
                self.post(cid, cm.Fault(FaultKind.OTHER))
            self._schedule_tick(rt)
        finally:
            if done and not done.done():
                done.set_result(None)

    def _emit_fault_change(self, cid: int, before: frozenset[FaultKind], state: CpState) -> None:
        """Timeline "fault": which faults a step raised or cleared, and which remain (latched ones named)."""
        after = state.all_faults
        self._emit_timeline(
            "fault", connector=cid,
            raised=sorted(k.value for k in after - before), cleared=sorted(k.value for k in before - after),
            faults=sorted(k.value for k in after), latched=sorted(k.value for k in state.latched),
        )

    def _schedule_tick(self, rt: ConnectorRuntime) -> None:
        deadline = rt.state.next_deadline()
        if rt.tick_handle is not None:
            rt.tick_handle.cancel()
            rt.tick_handle = None
        if deadline is not None:
            loop = asyncio.get_running_loop()
            delay = max(0.0, deadline - self.monotonic()) + 0.001
            rt.tick_handle = loop.call_later(delay, self.post, rt.id, cm.Tick())

    # ================================================================== actions out
    async def _execute(self, rt: ConnectorRuntime, action: cm.Action, now: float) -> None:
        cid = rt.id
        extra = {"CONNECTOR_ID": cid}
        if isinstance(action, cm.OpenContactor):
            await rt.hw.contactor.open()
            log.info("connector %d: contactor open (%s)", cid, action.reason, extra=extra)
            self._emit_timeline("contactor", connector=cid, closed=False, reason=action.reason)
        elif isinstance(action, cm.CloseContactor):
            await rt.hw.contactor.close()
            log.info("connector %d: contactor closed", cid, extra=extra)
            self._emit_timeline("contactor", connector=cid, closed=True)
        elif isinstance(action, cm.OfferCurrent):
            before = rt.hw.pilot.offered_amps
            await rt.hw.pilot.offer(action.amps)
            rt.overcurrent.offer_changed(now, action.amps)
            log.info(
                "connector %d: pilot offers %s",
                cid,
                f"{action.amps:.1f} A" if action.amps else "no current",
                extra=extra,
            )
            self._emit_timeline("offer", connector=cid, amps=action.amps)
            self._offer_changed(rt, before, action.amps, now)
        elif isinstance(action, cm.PilotUnavailable):
            before = rt.hw.pilot.offered_amps
            await rt.hw.pilot.set_unavailable()
            rt.overcurrent.offer_changed(now, None)
            self._emit_timeline("offer", connector=cid, amps=None, state_f=True)
            self._offer_changed(rt, before, None, now)
        elif isinstance(action, cm.StatusChanged):
            log.info("connector %d: status %s (%s)", cid, action.status, action.error_code, extra=extra)
            self._emit_timeline("status", connector=cid, status=action.status, error_code=action.error_code)
            self._show_indicator(rt)
            self.smart.status_changed(rt, action.status)
            self.authorization.forget_ended()
            self.reservations.status_changed(rt, action.status)
            self.systemd.status_changed()
            self.station_link.status_changed(cid, action.status, action.error_code, rt.tx_issued)  # type: ignore[union-attr]
            if action.status in ("Available", "Finishing", "Unavailable", "Faulted"):
                self.limits.recompute_all()
        elif isinstance(action, cm.BeginTransaction):
            self.limits.recompute_all()  # the others' shares change now, before the next event is applied
            rt.tx_issued += 1
            self._chain(rt, self.transactions.begin(rt, action.id_tag))
        elif isinstance(action, cm.EndTransaction):
            rt.tx_issued += 1
            self._chain(rt, self.transactions.end(rt, action.reason))
        elif isinstance(action, cm.SessionTimedOut):
            log.info(
                "connector %d: no cable within ConnectionTimeOut; authorization dropped", cid, extra=extra
            )
            self._emit_timeline("timeout", connector=cid, id_tag=action.id_tag)

    def _show_indicator(self, rt: ConnectorRuntime) -> None:
        ind = rt.hw.indicator or (self.station.indicator if self.station else None)
        if ind is None:
            return
        pattern = {
            "Available": IndicatorPattern.IDLE,
            "Preparing": IndicatorPattern.WAITING_FOR_PLUG,
            "Charging": IndicatorPattern.CHARGING,
            "SuspendedEV": IndicatorPattern.SUSPENDED,
            "SuspendedEVSE": IndicatorPattern.SUSPENDED,
            "Finishing": IndicatorPattern.IDLE,
            "Reserved": IndicatorPattern.RESERVED,
            "Unavailable": IndicatorPattern.UNAVAILABLE,
            "Faulted": IndicatorPattern.FAULT,
        }.get(rt.state.status, IndicatorPattern.IDLE)
        ind.show(pattern)

    def flash(self, connector_id: int | None, pattern: IndicatorPattern) -> None:
        """Tell the driver something (accepted/refused); the status pattern returns after a moment."""
        rt = self.connectors.get(connector_id or 0) or next(iter(self.connectors.values()))
        ind = rt.hw.indicator or (self.station.indicator if self.station else None)
        if ind is None:
            return
        ind.show(pattern)
        asyncio.get_running_loop().call_later(2.0, self._show_indicator, rt)

    def _chain(self, rt: ConnectorRuntime, coro: Any) -> None:
        """Run transaction work in order per connector, without holding up the dispatcher."""
        previous = rt.tx_chain

        async def run() -> None:
            if previous is not None:
                with contextlib.suppress(BaseException):
                    await previous
            try:
                await coro
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("connector %d: transaction bookkeeping failed", rt.id)
            finally:
                rt.tx_done += 1

        rt.tx_chain = asyncio.create_task(run(), name=f"tx-{rt.id}")

    # ================================================================== limits
    def apply_limit(self, connector_id: int, amps: float | None) -> None:
        """Give a connector its new limit (the arbiter's decision). A connector without a transaction offers
        nothing, so its state takes the limit at once: a transaction that begins before the queued event is
        processed (two cars plugged in within the same instant) already starts with its share, not with the
        whole station."""
        rt = self.connectors[connector_id]
        if not rt.state.in_transaction:
            rt.state = replace(rt.state, limit_a=amps)
        self.post(rt.id, cm.Limit(amps))

    def _offer_changed(self, rt: ConnectorRuntime, before: float | None, after: float | None, now: float) -> None:
        self.limits.note_pilot_change(rt.id, now)
        self.smart.offer_changed(rt, before, after, now)

    # ================================================================== where a concern begins
    def _on_key_changed(self, name: str, value: Any) -> None:
        self._apply_key_change(name)
        if self.security is not None:
            self.security.key_changed(name, value)

    def _apply_key_change(self, name: str) -> None:
        if name == "AuthorizationKey" and self.link is not None:
            # Security whitepaper (1.6 edition 2), security profile 1/2: reconnect with the new key.
            log.warning("AuthorizationKey changed by the central system: reconnecting with the new key")
            asyncio.get_running_loop().call_later(0.5, lambda: self._spawn(self.link.close(), "reconnect"))  # type: ignore[union-attr]
            return
        self.key_changes.changed(name)
        if name in ("ConnectionTimeOut", "StopTransactionOnEVSideDisconnect"):
            for rt in self.connectors.values():
                rt.state = replace(
                    rt.state,
                    connection_timeout_s=float(self.keys["ConnectionTimeOut"]),  # type: ignore[index]
                    stop_on_ev_disconnect=bool(self.keys["StopTransactionOnEVSideDisconnect"]),  # type: ignore[index]
                )

    def _set_online(self, online: bool) -> None:
        """The outbox may send (registered and connected) or must wait for the reconnect."""
        if self.sender is not None:
            self.sender.set_online(online)

    def _session_starting(self) -> None:
        if self.security is not None:
            self.security.session_starting()

    async def _session_started(self) -> None:
        """The session is up (registered, or the boot is still being retried)."""
        assert self.security is not None and self.firmware is not None
        self.security.session_started()
        await self.firmware.on_session()

    def _after_boot(self) -> None:
        """Registered: what waited for the central system's clock and acceptance."""
        self.reservations.clock_set()
        if self.security is not None:
            self.security.after_boot()
        if self.firmware is not None:
            self.firmware.after_boot()  # a freshly installed release is confirmed healthy now

    def _clock_moved(self, jump_s: float) -> None:
        """The central system's time moved the clock; a jump is a security event (SettingSystemTime)."""
        if self.security is not None:
            self.security.clock_moved(jump_s)

    def _link_error(self, exc: BaseException) -> None:
        """The link could not connect (e.g. the central system's certificate did not verify)."""
        self._emit_timeline("link_error", error=f"{type(exc).__name__}: {exc}")  # the API's LinkView.last_error
        if self.security is not None:
            self.security.link_error(exc)

    def _profile_phases(self, connector_id: int) -> int | None:
        """numberPhases of the profile period in force on the connector (None: no profile says)."""
        sched = self.smart.composite_schedule(connector_id, 1, "A")
        return sched.periods[0].number_phases if sched is not None and sched.periods else None

    def _on_dimming(self, active: bool) -> None:
        """The §14a signal changed: every connector reports its status again, with or without the info."""
        for rt in self.connectors.values():
            self.station_link.queue_status(rt.id, rt.state.status, rt.state.error_code, rt.tx_issued)

    # ================================================================== snapshot
    def snapshot(self) -> dict[str, Any]:
        """A status snapshot (chargepoint status, simulate's `status`, the demo): chargepoint/services/snapshot.py."""
        assert self.station_link is not None
        return station_snapshot(
            self.config.charge_point_id, self.connectors, link=self.station_link,
            queued=len(self.outbox) if self.outbox is not None else 0, transactions=self.transactions,
            limits=self.limits, hardware_limits=self.hardware_limits, smart=self.smart,
        )


@dataclass
class _Barrier:
    event: cm.Event
    done: asyncio.Future[None]


def _default_session_class() -> type[OcppSession]:
    from chargepoint.protocol.handlers import ChargePointSession

    return ChargePointSession


__all__ = ["Controller", "build_hardware", "CpState"]

"""The controller: builds everything from the configuration and runs the loop.

One asyncio loop. Hardware events and OCPP requests become connector events, which
one dispatcher task applies to the pure connector state machines in order; the
resulting actions switch the hardware and produce OCPP messages. Transaction
messages go through the persistent outbox; status and heartbeat are sent only
while connected.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import websockets

from chargepoint import connector as cm
from chargepoint.config import Config
from chargepoint.keys import ConfigurationKeys
from chargepoint.logsetup import log_fields
from chargepoint.metering import iso, measured_current, next_clock_boundary, sampled_values
from chargepoint.privacy import mask_id_tag, use_installation_salt
from chargepoint.protocol.link import CallErrorReceived, OcppLink, OcppSession
from chargepoint.protocol.outbox import Outbox, OutboxSender, QueuedMessage
from chargepoint.services.authorization import Authorization, AuthorizeResult
from chargepoint.services.hardware_limits import HardwareLimits
from chargepoint.services.limits import (
    PRIORITY_AUTHORIZATION,
    PRIORITY_CABLE,
    PRIORITY_SMART_CHARGING,
    PRIORITY_TEMPERATURE,
    LimitArbiter,
)
from chargepoint.services.reservations import ReservationService
from chargepoint.services.smartcharging import SmartCharging
from chargepoint.services.station import ActiveTransaction, ConnectorRuntime
from chargepoint.services.systemd import SystemdService
from chargepoint.store import Store, StoreError, StoreUnavailable, StoreWriteError
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
    MeterError,
    MeterReading,
    PilotChanged,
    StationHardware,
    TagPresented,
)

log = logging.getLogger(__name__)

METER_POLL_CHARGING_S = 1.0
METER_POLL_IDLE_S = 10.0
STOP_DATA_LIMIT = 500  # sampled values kept for StopTransaction.transactionData


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


class ControllerCore:
    """Core profile behaviour. Feature mixins (chargepoint/features/) override its hooks."""

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
        self.boot_accepted = False
        self.registration = "Unknown"
        self.clock_offset = timedelta(0)
        self._queue: asyncio.Queue[tuple[int, cm.Event]] = asyncio.Queue()
        self._status_queue: asyncio.Queue[tuple[int, str, str, int]] = asyncio.Queue()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.supervisor = Supervisor(on_crash=self._on_task_crash, on_give_up=self._on_task_given_up)
        self._safe_outputs_task: asyncio.Task[None] | None = None  # outputs forced safe: dispatcher died
        self._outputs_forced_safe = False  # … and the state machines do not know it yet
        self._key_events: dict[str, asyncio.Event] = {}
        self._heartbeat_from = 0.0  # loop time the heartbeat interval counts from (boot, last heartbeat)
        self._stopping = False
        self.stopped = asyncio.Event()
        self.ready = asyncio.Event()
        self.station_operative = True
        self.listeners: list[Callable[[str, dict[str, Any]], None]] = []  # timeline for demo/tests
        self.loop_ticks = 0
        self.dropped_messages: list[dict[str, Any]] = []
        self._owns_store = False
        from chargepoint.api import ControllerApi

        self.api = ControllerApi(self)  # the one door for front ends (chargepoint/api.py)

    # ================================================================== time
    def now(self) -> datetime:
        """Wall-clock time as the central system sees it (its BootNotification/Heartbeat time)."""
        return datetime.now(UTC) + self.clock_offset

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
        self.authorization = Authorization(
            self.connectors, keys=self.keys, store=store, now=self.now, online=self._online,
            call=self._csms_call, response_timeout_s=cfg.csms.response_timeout_s,
            report_conflict=self._report_local_list_conflict,
        )
        self.reservations = ReservationService(
            self.connectors, keys=self.keys, store=store, now=self.now, post=self.post,
            emit=self._emit_timeline, station_status=lambda: self.station_status()[0],
            parent_of=self.authorization.parent_of,
        )
        self.load_persisted_state()
        self.limits = LimitArbiter(self.connectors, apply=self.apply_limit, monotonic=self.monotonic)
        self.hardware_limits = HardwareLimits(
            self.connectors, cfg.connectors, post=self.post, emit=self._emit_timeline,
            limits_changed=self._recompute_all_limits,
        )
        self.smart = SmartCharging(
            self.connectors, station=cfg.station, keys=self.keys, store=store, arbiter=self.limits,
            now=self.now, monotonic=self.monotonic, emit=self._emit_timeline, read_meter=self._read_meter,
            supervise=self.supervise,
        )
        self.limits.register("smart charging", PRIORITY_SMART_CHARGING, self.smart.claims)
        self.limits.register("authorization", PRIORITY_AUTHORIZATION, self.authorization.claims)
        self.limits.register("cable", PRIORITY_CABLE, self.hardware_limits.cable_claims)
        self.limits.register("temperature", PRIORITY_TEMPERATURE, self.hardware_limits.temperature_claims)
        if self._hardware is None:
            self._hardware, self.build_context = build_hardware(cfg, self.build_context)
        self.station = self._hardware
        availability = self._safe(store.get_availability, {})
        self.station_operative = availability.get(0, "Operative") == "Operative"
        for cc, hw in zip(cfg.connectors, self.station.connectors, strict=True):
            operative = availability.get(cc.id, "Operative") == "Operative" and self.station_operative
            state = cm.ConnectorState(
                connector_id=cc.id,
                min_current_a=cc.min_current_a,
                connection_timeout_s=float(self.keys["ConnectionTimeOut"]),
                stop_on_ev_disconnect=bool(self.keys["StopTransactionOnEVSideDisconnect"]),
                operative=operative,
                ventilation=cc.ventilation,
                cable_required=cc.cable.socket,
            )
            self.connectors[cc.id] = ConnectorRuntime(
                id=cc.id, hw=hw, state=state, max_current_a=cc.max_current_a, phases=cc.phases
            )
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
        self.sender = OutboxSender(
            self.outbox,
            self._send_queued,
            self._on_queued_result,
            attempts=lambda: int(self.keys["TransactionMessageAttempts"]),  # type: ignore[index]
            retry_interval_s=lambda: float(self.keys["TransactionMessageRetryInterval"]),  # type: ignore[index]
            clock=self.now,
            reconnect_poll_s=5.0,
            on_drop=self._on_queued_drop,
        )
        await self._recover_transactions()
        for rt in self.connectors.values():
            await self._read_meter(rt)
            self._recompute_limit(rt)
        self.limits.recompute_all()

        session_class = self._session_class or _default_session_class()
        self.link = OcppLink(
            url=cfg.csms.url,
            charge_point_id=cfg.charge_point_id,
            session_factory=lambda ws: session_class(
                cfg.charge_point_id, ws, cfg.csms.response_timeout_s, controller=self
            ),
            on_session=self._on_session,
            on_disconnect=self._on_disconnect,
            password=lambda: self.keys["AuthorizationKey"] or cfg.csms.password,  # type: ignore[index]
            ca_file=self.csms_ca_file,
            client_cert=self.csms_client_cert,
            on_connect_error=self.on_link_error,
            reconnect_min_s=cfg.csms.reconnect_min_s,
            reconnect_max_s=cfg.csms.reconnect_max_s,
            ping_interval=lambda: float(self.keys["WebSocketPingInterval"]),  # type: ignore[index]
            security_profile=lambda: int(self.keys["SecurityProfile"]),  # type: ignore[index]
        )
        # The long-lived tasks, kept alive by the supervisor (chargepoint/supervisor.py says why and how).
        self.supervise("dispatcher", self._dispatcher, critical=True)
        self.supervise("status", self._status_sender)
        self.supervise("outbox", self.sender.run)
        self.supervise("link", self.link.run)
        self.supervise("clock-aligned", self._clock_aligned_loop)
        self.supervise("heartbeat", self._heartbeat_loop)
        for rt in self.connectors.values():
            self.supervise(f"meter-{rt.id}", functools.partial(self._meter_poll_loop, rt))
            self.post(rt.id, cm.Tick())
        self.smart.start(self.build_context.shared.get("grid_meter") if self.build_context else None)
        self.systemd = SystemdService(
            self.connectors, status_socket=cfg.status_socket, snapshot=lambda: self.api.snapshot().as_dict(),
            subscribe=self.api.subscribe,  # the status socket is a client of the application API
            loop_ticks=lambda: self.loop_ticks, post=self.post, supervise=self.supervise,
            problem=lambda: self.supervisor.problem, monotonic=self.monotonic,
            store_copy=getattr(self, "_copy_store", None),  # the firmware profile's consistent store copy
        )
        await self.systemd.start()
        self.ready.set()
        self._recompute_all_limits()
        self.reservations.start()

    def supervise(
        self, name: str, factory: TaskFactory, *, critical: bool = False, transient: bool = False
    ) -> asyncio.Task[Any]:
        """A long-lived task that must not die: restarted by the supervisor if it does (see its docstring)."""
        return self.supervisor.start(name, factory, critical=critical, transient=transient)

    def security_event(self, kind: str, tech_info: str | None = None) -> None:
        """Hook: a security event (security whitepaper edition 2); the security feature records and sends it."""

    def _on_task_crash(self, name: str, exc: BaseException | None, critical: bool) -> None:
        """A supervised task ended unasked; the supervisor restarts it after this.

        The dispatcher is the only task that applies events to the state machines, so it is what opens the
        contactor on a fault: while it is down nothing would. Its death therefore puts every output into
        its safe state at once (contactor open, pilot in state F); the restarted dispatcher first tells the
        state machines (``cm.OutputsForcedSafe``), which then re-derive the outputs from their inputs after
        the 300 ms in state F of IEC 61851-1 Table A.5."""
        if isinstance(exc, MemoryError):
            self.security_event("MemoryExhaustion", f"task {name} ran out of memory")
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
        self.security_event("ResetOrReboot", f"restarting the service: {reason}"[:255])
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
        """Stop everything; outputs end de-energized. Open transactions stay open (a restart resumes)."""
        if self._stopping:
            return
        if hasattr(self, "systemd"):
            await self.systemd.stop()
        self._stopping = True
        self.limits.stop()
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

    def _safe(self, fn: Callable[..., Any], default: Any, *args: Any) -> Any:
        """Call a store function; a store failure is logged and the charger keeps running."""
        try:
            return fn(*args)
        except StoreError as exc:
            log.error("state store: %s", exc)
            return default

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
            self._spawn(self.on_tag(event.id_tag), "tag")

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
            self.on_status_changed(rt, action.status, action.error_code)
            self.smart.status_changed(rt, action.status)
            self.authorization.forget_ended()
            self.reservations.status_changed(rt, action.status)
            self.systemd.status_changed()
            if self.boot_accepted:
                self._status_queue.put_nowait((cid, action.status, action.error_code, rt.tx_issued))
            if action.status in ("Available", "Finishing", "Unavailable", "Faulted"):
                self._recompute_all_limits()
        elif isinstance(action, cm.BeginTransaction):
            self._recompute_all_limits()  # the others' shares change now, before the next event is applied
            rt.tx_issued += 1
            self._chain(rt, self._begin_transaction(rt, action.id_tag))
        elif isinstance(action, cm.EndTransaction):
            rt.tx_issued += 1
            self._chain(rt, self._end_transaction(rt, action.reason))
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
    def _recompute_all_limits(self) -> None:
        self.limits.recompute_all()

    def _recompute_limit(self, rt: ConnectorRuntime) -> None:
        self.limits.recompute(rt.id)

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

    # ================================================================== transactions
    async def _read_meter(self, rt: ConnectorRuntime, timeout: float = 3.0) -> MeterReading | None:
        try:
            reading = await asyncio.wait_for(rt.hw.meter.read(), timeout)
        except (TimeoutError, MeterError, OSError) as exc:
            if rt.meter_ok:
                rt.meter_ok = False
                log.error(
                    "connector %d: meter does not answer (%s)", rt.id, exc, extra={"CONNECTOR_ID": rt.id}
                )
                self.post(rt.id, cm.Fault(FaultKind.METER))
            return rt.reading
        if not rt.meter_ok:
            rt.meter_ok = True
            log.warning("connector %d: meter answers again", rt.id, extra={"CONNECTOR_ID": rt.id})
            self.post(rt.id, cm.FaultClear(FaultKind.METER))
        before = rt.reading
        rt.reading = reading
        if reading is not before:
            self.smart.meter_read(rt)
        if reading.temperature_c is not None:
            self.hardware_limits.meter_temperature(rt.id, reading.temperature_c)
        return reading

    def _register_wh(self, rt: ConnectorRuntime) -> int:
        wh = int(round(rt.reading.energy_wh)) if rt.reading else 0
        if rt.tx is not None:
            wh = max(wh, rt.tx.last_meter_wh)
        return wh

    async def _begin_transaction(self, rt: ConnectorRuntime, id_tag: str) -> None:
        self.smart.transaction_beginning(rt)
        start = self.now()  # the event's time, not after a slow meter read
        await self._read_meter(rt)
        if rt.reading is None:
            # No meter register since start: a meterStart of 0 would bill the meter's whole history.
            log.error(
                "connector %d: the meter has not answered since start; not starting a transaction "
                "(check the meter's wiring, address and baud rate)",
                rt.id,
                extra={"CONNECTOR_ID": rt.id},
            )
            self._emit_timeline("refused", id_tag=id_tag, reason="no meter reading")
            self.post(rt.id, cm.Stop("Other"))  # rt.tx stays None: nothing is queued
            return
        assert (
            self.store is not None
            and self.outbox is not None
            and self.sender is not None
            and self.keys is not None
        )
        meter_start = self._register_wh(rt)
        reservation_id = self.take_reservation_for(rt.id, id_tag)
        payload: dict[str, Any] = {
            "connectorId": rt.id,
            "idTag": id_tag,
            "meterStart": meter_start,
            "timestamp": iso(start),
        }
        if reservation_id is not None:
            payload["reservationId"] = reservation_id
        try:
            if self.outbox.degraded:
                # The outbox holds messages in memory: let it queue on its own (it writes its spill
                # back first, in order).  Two commits are safe: a row whose StartTransaction is not
                # queued gets one from _recover_transactions after a restart.
                local_id = self.store.begin_transaction(
                    rt.id, id_tag, iso(start), meter_start, reservation_id
                )
                rt.last_tx_seq = self.outbox.enqueue(
                    "StartTransaction", payload, local_tx_id=local_id, created_at=start
                )
            else:
                with self.store.batch("start of a transaction"):
                    local_id = self.store.begin_transaction(
                        rt.id, id_tag, iso(start), meter_start, reservation_id
                    )
                    rt.last_tx_seq = self.outbox.enqueue(
                        "StartTransaction", payload, local_tx_id=local_id, created_at=start
                    )
        except StoreWriteError as exc:
            log.error("connector %d: %s; the transaction runs without persistence", rt.id, exc)
            local_id = self.store.volatile_local_id()
            rt.last_tx_seq = self.outbox.enqueue(
                "StartTransaction", payload, local_tx_id=local_id, created_at=start
            )
        rt.tx = ActiveTransaction(
            local_id, id_tag, start, meter_start, reservation_id, last_meter_wh=meter_start
        )
        begin = self._stop_data_values(rt, "Transaction.Begin")
        if begin:
            rt.tx.stop_data.append({"timestamp": iso(start), "sampledValue": begin})
        log.info(
            "connector %d: transaction started for %s, meterStart %d Wh",
            rt.id,
            _mask(id_tag),
            meter_start,
            extra={"CONNECTOR_ID": rt.id, "OCPP_ACTION": "StartTransaction", "ID_TAG": _mask(id_tag)},
        )
        self._emit_timeline("transaction_started", connector=rt.id, id_tag=id_tag, meter_start=meter_start)
        self.sender.wake()
        self.supervisor.cancel(f"sampler-{rt.id}")  # a leftover of a transaction that ended oddly
        self.supervise(f"sampler-{rt.id}", functools.partial(self._sample_loop, rt), transient=True)
        self._recompute_all_limits()

    def measured_values(
        self, rt: ConnectorRuntime, reading: MeterReading | None, key: str, context: str
    ) -> list[dict[str, Any]]:
        """The sampledValues of ``reading`` for the measurands configuration key ``key`` lists."""
        assert self.keys is not None
        if reading is None:
            return []
        return sampled_values(
            reading, self.keys.csl(key), context=context, offered_a=rt.hw.pilot.offered_amps, phases=rt.phases
        )

    def _stop_data_values(self, rt: ConnectorRuntime, context: str) -> list[dict[str, Any]]:
        return self.measured_values(rt, rt.reading, "StopTxnSampledData", context)

    async def _end_transaction(self, rt: ConnectorRuntime, reason: str) -> None:
        tx = rt.tx
        if tx is None:
            return
        stop = self.now()  # the event's time, not after a slow meter read
        self.supervisor.cancel(f"sampler-{rt.id}")
        await self._read_meter(rt)
        assert self.store is not None and self.outbox is not None and self.sender is not None
        meter_stop = self._register_wh(rt)
        # No transactionId here: the outbox puts it in at send time (it may not be known yet).
        payload: dict[str, Any] = {"meterStop": meter_stop, "timestamp": iso(stop), "reason": reason}
        if rt.stop_tag:
            payload["idTag"] = rt.stop_tag
            rt.stop_tag = None
        end = self._stop_data_values(rt, "Transaction.End")
        if end:
            tx.stop_data.append({"timestamp": iso(stop), "sampledValue": end})
        if tx.stop_data:
            payload["transactionData"] = tx.stop_data
        rt.last_tx_seq = self._queue_stop(tx.local_id, payload, stop, reason, meter_stop)
        rt.tx = None
        log.info(
            "connector %d: transaction stopped (%s), meterStop %d Wh, %.3f kWh",
            rt.id,
            reason,
            meter_stop,
            (meter_stop - tx.meter_start_wh) / 1000,
            extra={
                "CONNECTOR_ID": rt.id,
                "OCPP_ACTION": "StopTransaction",
                "TRANSACTION_ID": tx.transaction_id,
            },
        )
        self._emit_timeline(
            "transaction_stopped",
            connector=rt.id,
            reason=reason,
            meter_stop=meter_stop,
            energy_wh=meter_stop - tx.meter_start_wh,
            transaction_id=tx.transaction_id,
        )
        self.sender.wake()
        self._recompute_all_limits()
        self.smart.transaction_ended(rt)
        self._recompute_all_limits()

    def _queue_stop(
        self, local_id: int, payload: dict[str, Any], stop: datetime, reason: str, meter_stop: int
    ) -> int:
        """Queue StopTransaction and close the persisted transaction in one commit; returns the seq.

        If that commit fails the outbox keeps the message (on disk or in memory) and runs the store
        part alone: the stop is first marked pending, so a transaction row that could not be deleted
        is stopped after a restart with the same reason, time and meterStop, never a second story.
        """
        assert self.store is not None and self.outbox is not None
        store = self.store

        def close_row() -> None:
            if local_id > 0:  # a volatile (negative) id has no row
                store.mark_stop_pending(local_id, reason, iso(stop), meter_stop, payload.get("idTag"))
                store.end_transaction(local_id)

        return self.outbox.enqueue(
            "StopTransaction", payload, local_tx_id=local_id, created_at=stop, with_store=close_row
        )

    async def _recover_transactions(self) -> None:
        """Close transactions left open by a crash or power loss (OCPP 1.6 §4.10: reason PowerLoss/Reboot)."""
        assert self.store is not None and self.outbox is not None
        # Read now, cleared only once every stop is queued: a crash in between still says Reboot.
        pending_reset = self._safe(self.store.get_meta, None, "pending_reset")
        rows = self._safe(self.store.open_transactions, [])
        queued_starts = {m.local_tx_id for m in self.outbox.pending() if m.action == "StartTransaction"}
        for row in rows:
            if row.stop_pending:
                reason = row.stop_reason or "Other"
                meter_stop = row.stop_meter_wh if row.stop_meter_wh is not None else row.last_meter_wh
                stop_time = row.stop_time or row.last_meter_time
            else:
                reason = "Reboot" if pending_reset else "PowerLoss"
                meter_stop, stop_time = row.last_meter_wh, row.last_meter_time
            if (
                row.transaction_id is None
                and row.local_id not in queued_starts
                and self.outbox.transaction_id_for(row.local_id) is None
            ):
                start_payload = {
                    "connectorId": row.connector_id,
                    "idTag": row.id_tag,
                    "meterStart": row.meter_start_wh,
                    "timestamp": row.start_time,
                }
                if row.reservation_id is not None:
                    start_payload["reservationId"] = row.reservation_id
                self.outbox.enqueue("StartTransaction", start_payload, local_tx_id=row.local_id)
            payload: dict[str, Any] = {"meterStop": meter_stop, "timestamp": stop_time, "reason": reason}
            if row.transaction_id is not None:
                payload["transactionId"] = row.transaction_id
            if row.stop_id_tag:
                payload["idTag"] = row.stop_id_tag
            log.warning(
                "connector %d: transaction (local %d) was open at start; stopping it with reason %s, "
                "meterStop %d Wh",
                row.connector_id,
                row.local_id,
                reason,
                meter_stop,
                extra={"CONNECTOR_ID": row.connector_id},
            )
            self._queue_stop(
                row.local_id,
                payload,
                datetime.fromisoformat(stop_time.replace("Z", "+00:00")),
                reason,
                meter_stop,
            )
        if pending_reset is not None:
            self._safe(self.store.set_pending_reset, None, None)

    async def _key_change(self, name: str, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` seconds (None: for ever) for configuration key ``name`` to change.

        True if it changed. Loops that sleep for an interval taken from a key wait here instead of in
        ``asyncio.sleep``, so a ChangeConfiguration applies at once, not after the old interval ran out.
        Callers read the key and call this without an ``await`` in between, so no change is missed."""
        event = self._key_events.setdefault(name, asyncio.Event())
        event.clear()
        if timeout is not None and timeout <= 0:
            return False
        try:
            async with asyncio.timeout(timeout):
                await event.wait()
        except TimeoutError:
            return False
        return True

    async def _sample_loop(self, rt: ConnectorRuntime) -> None:
        """Periodic MeterValues of a transaction (MeterValueSampleInterval, context Sample.Periodic).

        A sample is due one interval after the previous one (or the start). A changed interval applies at
        once: the next sample is due one *new* interval after the previous sample, at once if that moment
        has already passed; 0 stops sampling until the key changes again."""
        assert (
            self.keys is not None
            and self.outbox is not None
            and self.sender is not None
            and self.store is not None
        )
        loop = asyncio.get_running_loop()
        last = loop.time()
        while rt.tx is not None:
            interval = float(self.keys["MeterValueSampleInterval"])
            if interval <= 0:
                await self._key_change("MeterValueSampleInterval")
                continue
            if await self._key_change("MeterValueSampleInterval", last + interval - loop.time()):
                continue
            last = loop.time()
            tx = rt.tx
            if tx is None:
                return
            reading = await self._read_meter(rt)
            if reading is None or not rt.meter_ok:
                continue
            ts = self.now()
            values = self.measured_values(rt, reading, "MeterValuesSampledData", "Sample.Periodic")
            tx.last_meter_wh = max(tx.last_meter_wh, int(round(reading.energy_wh)))
            stop_values = self._stop_data_values(rt, "Sample.Periodic")
            if stop_values and len(tx.stop_data) < STOP_DATA_LIMIT:
                tx.stop_data.append({"timestamp": iso(ts), "sampledValue": stop_values})
            payload: dict[str, Any] = {
                "connectorId": rt.id,
                "meterValue": [{"timestamp": iso(ts), "sampledValue": values}],
            }
            # No transactionId in the payload: the outbox puts it in at send time (offline start).
            # The persisted register is meterStop if the power goes now (OCPP 1.6 §4.10 PowerLoss).
            # A volatile (negative) local id has no row to update.
            persist_register = (
                functools.partial(self.store.update_meter, tx.local_id, tx.last_meter_wh, iso(ts))
                if tx.local_id > 0
                else None
            )
            if values:
                # One commit: the message and the register, so neither survives a power cut alone.
                self.outbox.enqueue(
                    "MeterValues",
                    payload,
                    local_tx_id=tx.local_id,
                    created_at=ts,
                    with_store=persist_register,
                )
            elif persist_register is not None:
                try:
                    persist_register()
                except StoreWriteError as exc:
                    log.error("connector %d: %s", rt.id, exc)
            self._emit_timeline(
                "meter_values", connector=rt.id, energy_wh=reading.energy_wh, power_w=reading.power_w
            )
            self.sender.wake()

    async def _clock_aligned_loop(self) -> None:
        """Clock-aligned MeterValues (ClockAlignedDataInterval, context Sample.Clock, aligned to midnight).

        OCPP 1.6 §9.1 ClockAlignedDataInterval: evenly spaced intervals per day starting at 00:00:00. A
        changed interval applies at once: the next Sample.Clock is at the next boundary of the new interval
        (0 → 5 s samples at the next 5 s boundary, 3600 → 5 does not wait out the hour). Each sample is
        stamped with its boundary."""
        assert self.keys is not None and self.outbox is not None and self.sender is not None
        last_boundary: datetime | None = None
        while True:
            interval = int(self.keys["ClockAlignedDataInterval"])
            if interval <= 0:
                await self._key_change("ClockAlignedDataInterval")
                continue
            boundary = next_clock_boundary(self.now(), interval, after=last_boundary)
            wait_s = (boundary - self.now()).total_seconds()
            if await self._key_change("ClockAlignedDataInterval", wait_s):
                continue
            last_boundary = boundary
            await self._send_clock_aligned(boundary)

    async def _send_clock_aligned(self, ts: datetime) -> None:
        assert self.outbox is not None and self.sender is not None
        for rt in self.connectors.values():
            reading = await self._read_meter(rt)
            if reading is None or not rt.meter_ok:
                continue
            values = self.measured_values(rt, reading, "MeterValuesAlignedData", "Sample.Clock")
            if not values:
                continue
            payload: dict[str, Any] = {
                "connectorId": rt.id,
                "meterValue": [{"timestamp": iso(ts), "sampledValue": values}],
            }
            tx = rt.tx
            if tx is not None:
                aligned_stop = self.measured_values(rt, reading, "StopTxnAlignedData", "Sample.Clock")
                if aligned_stop and len(tx.stop_data) < STOP_DATA_LIMIT:
                    tx.stop_data.append({"timestamp": iso(ts), "sampledValue": aligned_stop})
                if tx.transaction_id is not None:
                    payload["transactionId"] = tx.transaction_id
                self.outbox.enqueue("MeterValues", payload, local_tx_id=tx.local_id, created_at=ts)
                self.sender.wake()
            elif self.boot_accepted:
                self._spawn(self._call_quietly("MeterValues", payload), "aligned")

    async def _meter_poll_loop(self, rt: ConnectorRuntime) -> None:
        """Keeps the reading fresh for status, the balancer and the over-current check."""
        while True:
            closed = rt.hw.contactor.is_closed
            waited = 0.0
            while waited < (METER_POLL_CHARGING_S if closed else METER_POLL_IDLE_S):
                await asyncio.sleep(METER_POLL_CHARGING_S)
                waited += METER_POLL_CHARGING_S
                if rt.hw.contactor.is_closed != closed:
                    break  # charging started or stopped: read now, not up to 10 s later
            reading = await self._read_meter(rt)
            if reading is None or not rt.meter_ok:  # a stale reading must not trip (or clear) anything
                continue
            if rt.overcurrent.sample(self.monotonic(), measured_current(reading)):
                if FaultKind.OVERCURRENT not in rt.state.faults:
                    log.error("connector %d: the car draws more than offered for 7 s", rt.id)
                    self.post(rt.id, cm.Fault(FaultKind.OVERCURRENT))

    # ================================================================== outbox hooks
    async def _send_queued(self, action: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Send one outbox message. A link that is down or drops mid-call is a ConnectionError (the
        outbox waits for the reconnect and does not count an attempt); CALLERROR/timeout pass through."""
        if not self.link or not self.boot_accepted:
            raise ConnectionError("not connected")
        try:
            return await self.link.call(action, payload)
        except websockets.ConnectionClosed as exc:
            raise ConnectionError(f"link closed while sending {action}") from exc

    async def _on_queued_result(self, msg: QueuedMessage, response: dict[str, Any]) -> None:
        if msg.action == "StartTransaction":
            tx_id = response.get("transactionId")
            info = response.get("idTagInfo", {})
            for rt in self.connectors.values():
                if rt.tx is not None and rt.tx.local_id == msg.local_tx_id:
                    rt.tx.transaction_id = tx_id
                    rt.tx.parent_id_tag = info.get("parentIdTag")
                    self._emit_timeline("transaction_id", connector=rt.id, transaction_id=tx_id)
                    await self.on_start_transaction_answer(rt, msg.payload.get("idTag", ""), info)
                    if (info.get("status", "Accepted") != "Accepted" and rt.tx is not None
                            and not self.keys["StopTransactionOnInvalidId"]):  # type: ignore[index]
                        self.authorization.deauthorize(rt.tx)
                        self._recompute_limit(rt)
                    self.smart.transaction_id_known(rt)
                    self._recompute_all_limits()
                    break
            else:
                self.remember_id_tag_info(msg.payload.get("idTag", ""), info)
        elif msg.action == "StopTransaction" and "idTagInfo" in response:
            self.remember_id_tag_info(msg.payload.get("idTag", ""), response["idTagInfo"])

    async def _on_queued_drop(self, msg: QueuedMessage, why: str) -> None:
        """A transaction message the central system never accepted was dropped (the outbox logged it)."""
        self.dropped_messages.append({"action": msg.action, "seq": msg.seq, "why": why})
        del self.dropped_messages[:-20]
        self._emit_timeline("dropped", action=msg.action, seq=msg.seq, why=why)

    async def on_start_transaction_answer(
        self, rt: ConnectorRuntime, id_tag: str, info: dict[str, Any]
    ) -> None:
        """StartTransaction.conf with a non-Accepted idTagInfo (OCPP 1.6 §5.11 / §9.1.28 StopTransactionOnInvalidId)."""
        self.remember_id_tag_info(id_tag, info)
        status = info.get("status", "Accepted")
        if status == "Accepted":
            return
        assert self.keys is not None
        if self.keys["StopTransactionOnInvalidId"]:
            log.warning(
                "connector %d: central system says %s is %s: stopping the transaction",
                rt.id,
                _mask(id_tag),
                status,
            )
            self.post(rt.id, cm.Stop("DeAuthorized"))
        else:
            log.warning(
                "connector %d: %s is %s: suspending energy (StopTransactionOnInvalidId=false)",
                rt.id,
                _mask(id_tag),
                status,
            )
            self.limits.withdraw(rt.id, "idTag not accepted")

    # ================================================================== OCPP session
    async def _on_session(self, session: OcppSession) -> None:
        """A websocket is up: boot once per process, then (on every reconnect) every status once.

        A failure here would leave the link connected but never registered: it is logged and the connection
        closed, so that the link connects and tries again (with its back-off)."""
        assert self.keys is not None and self.sender is not None
        try:
            if not self.boot_accepted:
                await self._boot(session)
            else:
                self.sender.set_online(True)
                self._send_all_statuses()
        except (asyncio.CancelledError, ConnectionError, websockets.ConnectionClosed):
            raise
        except Exception:
            log.exception("starting the OCPP session failed; reconnecting")
            with contextlib.suppress(Exception):
                await session._connection.close()

    def _boot_payload(self) -> dict[str, Any]:
        cfg = self.config
        from chargepoint import __version__

        payload: dict[str, Any] = {
            "chargePointVendor": cfg.vendor,
            "chargePointModel": cfg.model,
            "firmwareVersion": cfg.firmware_version or __version__,
        }
        if cfg.serial_number:
            payload["chargePointSerialNumber"] = cfg.serial_number
        return payload

    async def _boot(self, session: OcppSession) -> None:
        """BootNotification until Accepted (OCPP 1.6 §4.2): nothing else is sent before that."""
        assert self.keys is not None and self.sender is not None
        while True:
            try:
                conf = await session.call_raw("BootNotification", self._boot_payload())
            except (TimeoutError, CallErrorReceived) as exc:
                log.warning("BootNotification failed (%s); retrying in 30 s", exc)
                await asyncio.sleep(30)
                continue
            self._set_clock(conf.get("currentTime"))
            self.registration = conf["status"]
            interval = int(conf.get("interval", 0))
            self._emit_timeline("boot", status=self.registration, interval=interval)
            if conf["status"] == "Accepted":
                if interval > 0:
                    self.keys.set_internal("HeartbeatInterval", interval)
                self.boot_accepted = True
                log.info("BootNotification accepted; heartbeat every %d s", self.keys["HeartbeatInterval"])
                self._heartbeat_from = asyncio.get_running_loop().time()
                self._key_changed("HeartbeatInterval")  # the heartbeat loop counts from now
                self.sender.set_online(True)
                self._send_all_statuses()
                self._after_boot()
                return
            wait = interval if interval > 0 else int(self.keys["HeartbeatInterval"]) or 60
            log.warning("BootNotification %s; trying again in %d s", conf["status"], wait)
            await asyncio.sleep(wait)

    def csms_ca_file(self) -> str | None:
        """Hook: the CA bundle that verifies a wss:// central system (security extension: installed roots)."""
        return self.config.csms.ca_file

    def csms_client_cert(self) -> tuple[Any, Any] | None:
        """Hook: (certificate chain file, key file) presented to a wss:// central system (security profile 3)."""
        return None

    def on_link_error(self, exc: BaseException) -> None:
        """Hook: the link could not connect (e.g. the central system's certificate did not verify)."""
        self._emit_timeline("link_error", error=f"{type(exc).__name__}: {exc}")

    def _after_boot(self) -> None:
        """Hook for profiles that act once registered (e.g. a firmware update's health confirmation)."""
        self.reservations.clock_set()

    def _on_disconnect(self) -> None:
        if self.sender:
            self.sender.set_online(False)
        self._emit_timeline("disconnected")

    def _set_clock(self, current_time: str | None) -> None:
        if not current_time:
            return
        try:
            csms = datetime.fromisoformat(current_time.replace("Z", "+00:00"))
        except ValueError:
            log.warning("central system sent an unreadable currentTime %r", current_time)
            return
        if csms.tzinfo is None:
            csms = csms.replace(tzinfo=UTC)
        self.clock_offset = csms - datetime.now(UTC)

    async def _heartbeat_loop(self) -> None:
        """Heartbeat every HeartbeatInterval (OCPP 1.6 §4.6) once registered; 0 means once a day.

        A changed interval (ChangeConfiguration, or the BootNotification's interval) applies at once: the
        next heartbeat is due one new interval after the previous one (or the boot), at once if that moment
        has already passed."""
        assert self.keys is not None
        loop = asyncio.get_running_loop()
        self._heartbeat_from = loop.time()
        while True:
            interval = int(self.keys["HeartbeatInterval"]) or 86400
            if await self._key_change("HeartbeatInterval", self._heartbeat_from + interval - loop.time()):
                continue
            self._heartbeat_from = loop.time()
            if not self.boot_accepted or not self.link or self.link.session is None:
                continue
            try:
                conf = await self.link.call("Heartbeat", {})
                self._set_clock(conf.get("currentTime"))
            except (TimeoutError, CallErrorReceived, ConnectionError) as exc:
                log.warning("Heartbeat failed: %s", exc)

    async def _call_quietly(self, action: str, payload: dict[str, Any]) -> dict[str, Any] | None:
        """A message that is not queued: sent if connected, otherwise dropped (OCPP 1.6 §4.7)."""
        if not self.link or not self.boot_accepted:
            return None
        try:
            return await self.link.call(action, payload)
        except (TimeoutError, CallErrorReceived, ConnectionError) as exc:
            log.warning("%s not delivered: %s", action, exc)
            return None

    async def data_transfer(
        self, vendor_id: str, message_id: str | None = None, data: str | None = None
    ) -> dict[str, Any]:
        """DataTransfer from the charge point (OCPP 1.6 §4.3). Returns the central system's answer."""
        if not self.link or not self.boot_accepted:
            raise ConnectionError("not connected to the central system")
        payload: dict[str, Any] = {"vendorId": vendor_id}
        if message_id is not None:
            payload["messageId"] = message_id
        if data is not None:
            payload["data"] = data
        return await self.link.call("DataTransfer", payload)

    async def _status_sender(self) -> None:
        """StatusNotifications in order. A status waits (up to 10 s) until the Start/StopTransaction queued
        before it for the same connector was delivered, so the central system never sees "Charging" before
        the transaction it belongs to."""
        while True:
            cid, status, code, barrier = await self._status_queue.get()
            rt = self.connectors.get(cid)
            if rt is not None and self.outbox is not None and barrier > 0:
                for _ in range(200):
                    if not self.boot_accepted:
                        break
                    if rt.tx_done >= barrier:
                        head = self.outbox.head()
                        if head is None or head.seq > rt.last_tx_seq:
                            break
                    await asyncio.sleep(0.02)
            if self.boot_accepted:
                await self._send_status(cid, status, code)

    async def _send_status(self, connector_id: int, status: str, error_code: str) -> None:
        payload = {
            "connectorId": connector_id,
            "status": status,
            "errorCode": error_code,
            "timestamp": iso(self.now()),
        }
        rt = self.connectors.get(connector_id)
        if rt is not None and error_code != "NoError" and rt.state.error_code == error_code:
            payload.update(cm.vendor_error_fields(rt.state))  # e.g. OtherError + InvalidCable
        await self._call_quietly("StatusNotification", payload)

    def station_status(self) -> tuple[str, str]:
        """Connector 0: the charge point as a whole (OCPP 1.6 §4.9)."""
        if not self.station_operative:
            return "Unavailable", "NoError"
        return "Available", "NoError"

    def _send_all_statuses(self) -> None:
        """After BootNotification.conf Accepted and after every reconnect: connector 0 and every connector,
        each once, with the status it is in now.

        OCPP 1.6 §4.9 asks for a StatusNotification on every change; a status that changed while the link
        was down was dropped (statuses are not queued, §4.7 style), and a central system that restarted or
        lost state in between knows nothing. So every (re)connect sends the full picture, not only what
        changed. Statuses still queued from before are superseded by it and dropped."""
        while not self._status_queue.empty():
            self._status_queue.get_nowait()
        status, code = self.station_status()
        self._status_queue.put_nowait((0, status, code, 0))
        for rt in self.connectors.values():
            if rt.state.status:
                self._status_queue.put_nowait((rt.id, rt.state.status, rt.state.error_code, rt.tx_issued))

    def _key_changed(self, name: str) -> None:
        """Wake the loops waiting in :meth:`_key_change` for ``name``."""
        event = self._key_events.get(name)
        if event is not None:
            event.set()

    def _on_key_changed(self, name: str, value: Any) -> None:
        if name == "AuthorizationKey" and self.link is not None:
            # Security whitepaper (1.6 edition 2), security profile 1/2: reconnect with the new key.
            log.warning("AuthorizationKey changed by the central system: reconnecting with the new key")
            asyncio.get_running_loop().call_later(0.5, lambda: self._spawn(self.link.close(), "reconnect"))  # type: ignore[union-attr]
            return
        self._key_changed(name)
        if name in ("ConnectionTimeOut", "StopTransactionOnEVSideDisconnect"):
            for rt in self.connectors.values():
                rt.state = replace(
                    rt.state,
                    connection_timeout_s=float(self.keys["ConnectionTimeOut"]),  # type: ignore[index]
                    stop_on_ev_disconnect=bool(self.keys["StopTransactionOnEVSideDisconnect"]),  # type: ignore[index]
                )

    # ================================================================== authorization (tap flow)
    def load_persisted_state(self) -> None:
        """Hook: features load what they persisted (store and keys are ready; connectors not yet built)."""

    def on_status_changed(self, rt: ConnectorRuntime, status: str, error_code: str) -> None:
        """Hook: a connector's OCPP status changed (e.g. reservations end on Faulted/Unavailable, §5.13)."""

    def remember_id_tag_info(self, id_tag: str, info: dict[str, Any]) -> None:
        """The authorization cache learns from every idTagInfo (Local Auth List profile)."""
        self.authorization.remember_id_tag_info(id_tag, info)

    def take_reservation_for(self, connector_id: int, id_tag: str) -> int | None:
        """The reservation used by a starting transaction (Reservation profile)."""
        return self.reservations.take_reservation_for(connector_id, id_tag)

    async def authorize(self, id_tag: str) -> AuthorizeResult:
        """Is ``id_tag`` allowed to charge? (Accepted, idTagInfo): the authorization service decides."""
        return await self.authorization.authorize(id_tag)

    def _online(self) -> bool:
        return bool(self.link is not None and self.link.session is not None and self.boot_accepted)

    async def _csms_call(self, action: str, payload: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        if self.link is None:
            raise ConnectionError("not connected")
        return await self.link.call(action, payload, timeout)

    def _report_local_list_conflict(self) -> None:
        if self.boot_accepted:
            status, _code = self.station_status()
            self._spawn(self._send_status(0, status, "LocalListConflict"), "local-list-conflict")

    def connector_for_tag(self, id_tag: str) -> ConnectorRuntime | None:
        """Which connector a tap starts (a reserved one for this tag, a plugged one, a free one)."""
        return self.reservations.connector_for_tag(id_tag)

    async def on_tag(self, id_tag: str) -> None:
        """A tap: stop what it stops, otherwise ask the authorization service and start a session."""
        group_stop = self.authorization.group_stop_target(id_tag)
        if group_stop is not None:
            # A different identifier of the same group (parentIdTag) ends a running transaction (§4.10).
            log.info(
                "tag %s of the same group stops connector %d",
                _mask(id_tag),
                group_stop,
                extra=log_fields(connector_id=group_stop, id_tag=id_tag),
            )
            self._emit_timeline("tap", id_tag=id_tag)
            self.connectors[group_stop].stop_tag = id_tag
            self.flash(group_stop, IndicatorPattern.ACCEPTED)
            self.post(group_stop, cm.Stop("Local"))
            return
        log.info("tag presented: %s", _mask(id_tag), extra={"ID_TAG": _mask(id_tag)})
        self._emit_timeline("tap", id_tag=id_tag)
        # A tap on a running session stops it: same tag, or same parentIdTag (OCPP 1.6 §3.5 / §5.2).
        for rt in self.connectors.values():
            if rt.tx is not None and rt.tx.id_tag == id_tag:
                rt.stop_tag = id_tag
                self.flash(rt.id, IndicatorPattern.ACCEPTED)
                self.post(rt.id, cm.Stop("Local"))
                return
        for rt in self.connectors.values():
            if rt.state.session_tag == id_tag and not rt.state.in_transaction:
                self.post(rt.id, cm.Stop("Local"))  # second tap before plugging in: cancel
                return
        answer = await self.authorize(id_tag)
        accepted, info = answer
        parent = (info or {}).get("parentIdTag")
        if accepted and parent:
            for rt in self.connectors.values():
                if rt.tx is not None and rt.tx.parent_id_tag == parent:
                    rt.stop_tag = id_tag
                    self.post(rt.id, cm.Stop("Local"))
                    return
        target = self.reserved_connector_for(id_tag, parent) or self.connector_for_tag(id_tag)
        if not accepted or target is None:
            why = "no free connector" if accepted else getattr(answer, "reason", "") or "not authorized"
            log.info("tag %s refused (%s)", _mask(id_tag), why, extra={"ID_TAG": _mask(id_tag)})
            self._emit_timeline("refused", id_tag=id_tag)
            self.flash(target.id if target else None, IndicatorPattern.REFUSED)
            return
        self._emit_timeline("authorized", connector=target.id, id_tag=id_tag)
        self.flash(target.id, IndicatorPattern.ACCEPTED)
        self.post(target.id, cm.Authorize(id_tag))

    def reservation_allows(self, connector_id: int, id_tag: str) -> bool:
        """May ``id_tag`` use the (possibly reserved) connector?"""
        return self.reservations.reservation_allows(connector_id, id_tag)

    def accept_remote_start_profile(self, connector_id: int, profile: dict[str, Any]) -> bool:
        """Is the chargingProfile of a RemoteStartTransaction acceptable (Smart Charging)?"""
        return self.smart.accept_remote_start_profile(connector_id, profile)

    async def remote_start(
        self, id_tag: str, connector_id: int | None, profile: dict[str, Any] | None
    ) -> None:
        """After RemoteStartTransaction was accepted (§5.11): authorize if AuthorizeRemoteTxRequests, then start."""
        assert self.keys is not None
        if connector_id in self.connectors and not self.reservation_allows(connector_id, id_tag):  # type: ignore[operator]
            # Defence in depth: the ``@after`` of RemoteStartTransaction runs whatever the answer was.
            log.warning(
                "remote start for %s on reserved connector %d not done",
                _mask(id_tag),
                connector_id,
                extra=log_fields(connector_id=connector_id, id_tag=id_tag),
            )
            return
        rt = self.connectors.get(connector_id) if connector_id is not None else self.connector_for_tag(id_tag)
        if profile is not None and (rt is None or not self.smart.remote_profile_usable(rt.id, profile)):
            return
        if rt is None:
            return
        if self.keys["AuthorizeRemoteTxRequests"]:
            accepted, info = await self.authorize(id_tag)
            if not accepted:
                log.info("remote start for %s refused by authorization", _mask(id_tag))
                self._emit_timeline("refused", id_tag=id_tag)
                return
        self.remote_start_profile(rt.id, profile)
        self._emit_timeline("authorized", connector=rt.id, id_tag=id_tag, remote=True)
        self.post(rt.id, cm.Authorize(id_tag))

    def remote_start_profile(self, connector_id: int, profile: dict[str, Any] | None) -> None:
        """Remember the TxProfile of a remote start until the transaction begins."""
        self.smart.remote_start_profile(connector_id, profile)

    def reserved_connector_for(self, id_tag: str, parent_id_tag: str | None) -> ConnectorRuntime | None:
        """A free connector reserved for this tag (Reservation profile)."""
        return self.reservations.reserved_connector_for(id_tag, parent_id_tag)

    # ================================================================== availability
    async def change_availability(self, connector_id: int, operative: bool) -> str:
        """ChangeAvailability (OCPP 1.6 §5.2): Scheduled while a transaction runs on a target connector.

        The state machine keeps a scheduled change and applies it in the same step that ends the
        transaction, so no new session can slip in between."""
        assert self.store is not None
        targets = list(self.connectors.values()) if connector_id == 0 else [self.connectors[connector_id]]
        if connector_id == 0:
            self.station_operative = operative
        value = "Operative" if operative else "Inoperative"
        self._safe(self.store.set_availability, None, connector_id, value)
        scheduled = False
        for rt in targets:
            if connector_id == 0:
                self._safe(self.store.set_availability, None, rt.id, value)
            scheduled = scheduled or (rt.state.in_transaction and not operative)
            await self.apply_now(rt.id, cm.Availability(operative))
        if connector_id == 0 and self.boot_accepted:
            status, code = self.station_status()
            self._status_queue.put_nowait((0, status, code, 0))
        return "Scheduled" if scheduled else "Accepted"

    # ================================================================== reset
    async def reset(self, kind: str) -> None:
        """Reset (OCPP 1.6 §5.14): stop transactions with SoftReset/HardReset, flush, then restart."""
        assert self.store is not None and self.sender is not None and self.outbox is not None
        reason = "HardReset" if kind == "Hard" else "SoftReset"
        self._safe(self.store.set_pending_reset, None, kind)
        for rt in self.connectors.values():
            if rt.state.in_transaction:
                await self.apply_now(rt.id, cm.Stop(reason))
        for rt in self.connectors.values():
            if rt.tx_chain is not None:
                with contextlib.suppress(BaseException):
                    await rt.tx_chain
        # IEC 61851-1 sequence 10.2: give the cars up to 6 s to stop drawing before the outputs go off.
        for _ in range(70):
            if not any(rt.state.contactor_closed for rt in self.connectors.values()):
                break
            await asyncio.sleep(0.1)
        # Give the queue a moment to deliver the stops while we are still connected.
        for _ in range(50):
            if len(self.outbox) == 0 or not self.sender.online:
                break
            await asyncio.sleep(0.1)
        for rt in self.connectors.values():
            self.post(rt.id, cm.ResetFaults())
        self._emit_timeline("reset", reset_type=kind)
        log.warning("%s reset requested by the central system: restarting", kind)
        await self.stop()
        if self._restart is not None:
            self._restart(kind)

    # ================================================================== snapshot
    def snapshot(self) -> dict[str, Any]:
        """A status snapshot (chargepoint status, simulate's `status`, the demo)."""
        connectors = []
        for rt in self.connectors.values():
            reading = rt.reading
            connectors.append(
                {
                    "id": rt.id,
                    "status": rt.state.status,
                    "error_code": rt.state.error_code,
                    "pilot": rt.state.pilot.value,
                    "offered_a": rt.hw.pilot.offered_amps,
                    "measured_a": measured_current(reading) if reading else None,
                    "power_w": reading.power_w if reading else None,
                    "energy_wh": round(reading.energy_wh, 1) if reading else None,
                    "contactor": "closed" if rt.hw.contactor.is_closed else "open",
                    "transaction_id": rt.tx.transaction_id if rt.tx else None,
                    "id_tag": _mask(rt.tx.id_tag) if rt.tx else None,
                    "limit_a": self.limits.limit(rt.id),
                    "limit_source": self.limits.source(rt.id),
                    "faults": sorted(k.value for k in rt.state.all_faults),
                }
            )
        for c in connectors:
            c["limit_claims"] = [{"amps": a, "source": src} for a, src in self.limits.claims(c["id"])]
            self.hardware_limits.annotate(c)
        link_up = bool(self.link and self.link.session is not None)
        return {
            "charge_point_id": self.config.charge_point_id,
            "csms": "connected" if link_up and self.boot_accepted else "connecting" if link_up else "offline",
            "registration": self.registration,
            "queued": len(self.outbox) if self.outbox is not None else 0,
            "dropped": list(self.dropped_messages),
            "connectors": connectors,
            "smart_charging": self.smart.snapshot(),
        }


@dataclass
class _Barrier:
    event: cm.Event
    done: asyncio.Future[None]


def _mask(id_tag: str | None) -> str:
    """Id tags are personal data: logs and status show only their mask (chargepoint.privacy)."""
    return mask_id_tag(id_tag)


def _default_session_class() -> type[OcppSession]:
    from chargepoint.protocol.handlers import ChargePointSession

    return ChargePointSession


from chargepoint.features import FEATURES  # noqa: E402


class Controller(*FEATURES, ControllerCore):  # type: ignore[misc]
    """The charge point: the core plus every profile's feature mixin."""


__all__ = ["Controller", "ControllerCore", "build_hardware", "CpState"]

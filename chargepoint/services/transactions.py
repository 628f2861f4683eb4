"""The transactions service: transactions and metering (OCPP 1.6 §4.8 StartTransaction, §4.10 StopTransaction,
§4.7 MeterValues, §9.1 the sampling keys).

It owns the open transaction of every connector (``ConnectorRuntime.tx``: only this service sets it), the meter
readings (``read_meter``: everyone who needs a fresh reading asks here), the periodic, clock-aligned and
stop-data samples, recovery of transactions left open by a crash or power loss, and what the central system
answers to queued transaction messages. The dispatcher (chargepoint/controller.py) calls :meth:`begin` and
:meth:`end` for the state machine's BeginTransaction/EndTransaction actions, in order per connector.

Built with what it needs: the connectors (to read), the configuration keys, the store, the persistent outbox and
a way to wake its sender, the clock, ``post`` (the only way it changes a connector), and the interfaces of the
services it informs (limit arbiter, smart charging, authorization, reservations, hardware limits).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime
from typing import Any

from chargepoint import connector as cm
from chargepoint.keys import ConfigurationKeys
from chargepoint.metering import iso, measured_current, next_clock_boundary, sampled_values
from chargepoint.privacy import mask_id_tag
from chargepoint.protocol.outbox import Outbox, QueuedMessage
from chargepoint.services.authorization import Authorization
from chargepoint.services.hardware_limits import HardwareLimits
from chargepoint.services.limits import LimitArbiter
from chargepoint.services.reservations import ReservationService
from chargepoint.services.smartcharging import SmartCharging
from chargepoint.services.station import ActiveTransaction, ConnectorRuntime, Connectors, Emit, Post
from chargepoint.store import Store, StoreWriteError, logged_on_failure
from hal.interfaces import FaultKind, MeterError, MeterReading

log = logging.getLogger(__name__)

METER_POLL_CHARGING_S = 1.0
METER_POLL_IDLE_S = 10.0
STOP_DATA_LIMIT = 500  # sampled values kept for StopTransaction.transactionData


class TransactionService:
    """Transactions and metering of every connector."""

    def __init__(
        self,
        connectors: Connectors,
        *,
        keys: ConfigurationKeys,
        store: Store,
        outbox: Outbox,
        wake_sender: Callable[[], None],
        now: Callable[[], datetime],
        monotonic: Callable[[], float],
        emit: Emit,
        post: Post,
        supervise: Callable[..., Any],
        cancel_task: Callable[[str], None],
        spawn: Callable[[Coroutine[Any, Any, Any], str], asyncio.Task[Any]],
        call_quietly: Callable[[str, dict[str, Any]], Awaitable[Any]],
        registered: Callable[[], bool],
        key_change: Callable[..., Awaitable[bool]],
        limits: LimitArbiter,
        smart: SmartCharging,
        authorization: Authorization,
        reservations: ReservationService,
        hardware_limits: HardwareLimits,
    ) -> None:
        self._connectors = connectors
        self._keys = keys
        self._store = store
        self._outbox = outbox
        self._wake_sender = wake_sender
        self._now = now
        self._monotonic = monotonic
        self._emit = emit
        self._post = post
        self._supervise = supervise
        self._cancel_task = cancel_task
        self._spawn = spawn
        self._call_quietly = call_quietly
        self._registered = registered
        self._key_change = key_change
        self._limits = limits
        self._smart = smart
        self._authorization = authorization
        self._reservations = reservations
        self._hardware_limits = hardware_limits
        self._dropped: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ what others may read
    def dropped(self) -> list[dict[str, Any]]:
        """The last transaction messages the central system never accepted (a copy, newest last)."""
        return list(self._dropped)

    def session(self, connector_id: int) -> ActiveTransaction | None:
        """The open transaction of a connector, or None (read only: only this service changes it)."""
        rt = self._connectors.get(connector_id)
        return rt.tx if rt is not None else None

    def reading(self, connector_id: int) -> MeterReading | None:
        """The connector's last meter reading, or None (read only: only this service takes readings)."""
        rt = self._connectors.get(connector_id)
        return rt.reading if rt is not None else None

    def transaction_on(self, transaction_id: int) -> int | None:
        """The connector whose open transaction has this transactionId (RemoteStopTransaction, §5.12)."""
        for rt in self._connectors.values():
            if rt.tx is not None and rt.tx.transaction_id == transaction_id:
                return rt.id
        return None

    def connector_of_tag(self, id_tag: str) -> int | None:
        """The connector whose open transaction was started by ``id_tag`` (a tap on it stops it, §3.5)."""
        for rt in self._connectors.values():
            if rt.tx is not None and rt.tx.id_tag == id_tag:
                return rt.id
        return None

    def connector_of_parent(self, parent_id_tag: str) -> int | None:
        """The connector whose open transaction belongs to the group ``parent_id_tag`` (§3.5 / §5.2)."""
        for rt in self._connectors.values():
            if rt.tx is not None and rt.tx.parent_id_tag == parent_id_tag:
                return rt.id
        return None

    def stop_with_tag(self, connector_id: int, id_tag: str) -> None:
        """A local stop by ``id_tag``: StopTransaction.req carries it as ``idTag`` (OCPP 1.6 §6.49)."""
        self._connectors[connector_id].stop_tag = id_tag
        self._post(connector_id, cm.Stop("Local"))

    def session_facts(self, connector_id: int) -> tuple[str | None, float | None]:
        """(ISO start, Wh since start) of the open transaction, or (None, None)."""
        rt = self._connectors.get(connector_id)
        tx = rt.tx if rt is not None else None
        if rt is None or tx is None:
            return None, None
        reading = rt.reading
        energy = None if reading is None else max(0.0, round(reading.energy_wh - tx.meter_start_wh, 1))
        start = tx.start.astimezone(UTC).isoformat().replace("+00:00", "Z") if tx.start else None
        return start, energy

    def stop(self, connector_id: int, reason: str) -> bool:
        """Ask the connector to end its transaction (or a session waiting for a plug); False if it has none.

        The state machine ends it (EndTransaction) and this service then queues StopTransaction with
        ``reason`` (OCPP 1.6 §7.44)."""
        rt = self._connectors.get(connector_id)
        if rt is None or (rt.tx is None and not rt.state.in_transaction and rt.state.session_tag is None):
            return False
        self._post(connector_id, cm.Stop(reason))
        return True

    _safe = staticmethod(logged_on_failure)  # a store failure is logged; the charger keeps running

    # ------------------------------------------------------------------ metering and transactions
    async def read_meter(self, rt: ConnectorRuntime, timeout: float = 3.0) -> MeterReading | None:
        try:
            reading = await asyncio.wait_for(rt.hw.meter.read(), timeout)
        except (TimeoutError, MeterError, OSError) as exc:
            if rt.meter_ok:
                rt.meter_ok = False
                log.error(
                    "connector %d: meter does not answer (%s)", rt.id, exc, extra={"CONNECTOR_ID": rt.id}
                )
                self._post(rt.id, cm.Fault(FaultKind.METER))
            return rt.reading
        if not rt.meter_ok:
            rt.meter_ok = True
            log.warning("connector %d: meter answers again", rt.id, extra={"CONNECTOR_ID": rt.id})
            self._post(rt.id, cm.FaultClear(FaultKind.METER))
        before = rt.reading
        rt.reading = reading
        if reading is not before:
            self._smart.meter_read(rt)
        if reading.temperature_c is not None:
            self._hardware_limits.meter_temperature(rt.id, reading.temperature_c)
        return reading

    def _register_wh(self, rt: ConnectorRuntime) -> int:
        wh = int(round(rt.reading.energy_wh)) if rt.reading else 0
        if rt.tx is not None:
            wh = max(wh, rt.tx.last_meter_wh)
        return wh

    async def begin(self, rt: ConnectorRuntime, id_tag: str) -> None:
        self._smart.transaction_beginning(rt)
        start = self._now()  # the event's time, not after a slow meter read
        await self.read_meter(rt)
        if rt.reading is None:
            # No meter register since start: a meterStart of 0 would bill the meter's whole history.
            log.error(
                "connector %d: the meter has not answered since start; not starting a transaction "
                "(check the meter's wiring, address and baud rate)",
                rt.id,
                extra={"CONNECTOR_ID": rt.id},
            )
            self._emit("refused", id_tag=id_tag, reason="no meter reading")
            self._post(rt.id, cm.Stop("Other"))  # rt.tx stays None: nothing is queued
            return
        meter_start = self._register_wh(rt)
        reservation_id = self._reservations.take_reservation_for(rt.id, id_tag)
        payload: dict[str, Any] = {
            "connectorId": rt.id,
            "idTag": id_tag,
            "meterStart": meter_start,
            "timestamp": iso(start),
        }
        if reservation_id is not None:
            payload["reservationId"] = reservation_id
        try:
            if self._outbox.degraded:
                # The outbox holds messages in memory: let it queue on its own (it writes its spill
                # back first, in order).  Two commits are safe: a row whose StartTransaction is not
                # queued gets one from _recover_transactions after a restart.
                local_id = self._store.begin_transaction(
                    rt.id, id_tag, iso(start), meter_start, reservation_id
                )
                rt.last_tx_seq = self._outbox.enqueue(
                    "StartTransaction", payload, local_tx_id=local_id, created_at=start
                )
            else:
                with self._store.batch("start of a transaction"):
                    local_id = self._store.begin_transaction(
                        rt.id, id_tag, iso(start), meter_start, reservation_id
                    )
                    rt.last_tx_seq = self._outbox.enqueue(
                        "StartTransaction", payload, local_tx_id=local_id, created_at=start
                    )
        except StoreWriteError as exc:
            log.error("connector %d: %s; the transaction runs without persistence", rt.id, exc)
            local_id = self._store.volatile_local_id()
            rt.last_tx_seq = self._outbox.enqueue(
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
            mask_id_tag(id_tag),
            meter_start,
            extra={"CONNECTOR_ID": rt.id, "OCPP_ACTION": "StartTransaction", "ID_TAG": mask_id_tag(id_tag)},
        )
        self._emit("transaction_started", connector=rt.id, id_tag=id_tag, meter_start=meter_start)
        self._wake_sender()
        self._cancel_task(f"sampler-{rt.id}")  # a leftover of a transaction that ended oddly
        self._supervise(f"sampler-{rt.id}", functools.partial(self.sample_loop, rt), transient=True)
        self._limits.recompute_all()

    def measured_values(
        self, rt: ConnectorRuntime, reading: MeterReading | None, key: str, context: str
    ) -> list[dict[str, Any]]:
        """The sampledValues of ``reading`` for the measurands configuration key ``key`` lists."""
        if reading is None:
            return []
        return sampled_values(
            reading, self._keys.csl(key), context=context, offered_a=rt.hw.pilot.offered_amps, phases=rt.phases
        )

    def _stop_data_values(self, rt: ConnectorRuntime, context: str) -> list[dict[str, Any]]:
        return self.measured_values(rt, rt.reading, "StopTxnSampledData", context)

    async def end(self, rt: ConnectorRuntime, reason: str) -> None:
        tx = rt.tx
        if tx is None:
            return
        stop = self._now()  # the event's time, not after a slow meter read
        self._cancel_task(f"sampler-{rt.id}")
        await self.read_meter(rt)
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
        self._emit(
            "transaction_stopped",
            connector=rt.id,
            reason=reason,
            meter_stop=meter_stop,
            energy_wh=meter_stop - tx.meter_start_wh,
            transaction_id=tx.transaction_id,
        )
        self._wake_sender()
        self._limits.recompute_all()
        self._smart.transaction_ended(rt)
        self._limits.recompute_all()

    def _queue_stop(
        self, local_id: int, payload: dict[str, Any], stop: datetime, reason: str, meter_stop: int
    ) -> int:
        """Queue StopTransaction and close the persisted transaction in one commit; returns the seq.

        If that commit fails the outbox keeps the message (on disk or in memory) and runs the store
        part alone: the stop is first marked pending, so a transaction row that could not be deleted
        is stopped after a restart with the same reason, time and meterStop, never a second story.
        """
        store = self._store

        def close_row() -> None:
            if local_id > 0:  # a volatile (negative) id has no row
                store.mark_stop_pending(local_id, reason, iso(stop), meter_stop, payload.get("idTag"))
                store.end_transaction(local_id)

        return self._outbox.enqueue(
            "StopTransaction", payload, local_tx_id=local_id, created_at=stop, with_store=close_row
        )

    async def recover(self) -> None:
        """Close transactions left open by a crash or power loss (OCPP 1.6 §4.10: reason PowerLoss/Reboot)."""
        # Read now, cleared only once every stop is queued: a crash in between still says Reboot.
        pending_reset = self._safe(self._store.get_meta, None, "pending_reset")
        rows = self._safe(self._store.open_transactions, [])
        queued_starts = {m.local_tx_id for m in self._outbox.pending() if m.action == "StartTransaction"}
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
                and self._outbox.transaction_id_for(row.local_id) is None
            ):
                start_payload = {
                    "connectorId": row.connector_id,
                    "idTag": row.id_tag,
                    "meterStart": row.meter_start_wh,
                    "timestamp": row.start_time,
                }
                if row.reservation_id is not None:
                    start_payload["reservationId"] = row.reservation_id
                self._outbox.enqueue("StartTransaction", start_payload, local_tx_id=row.local_id)
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
            self._safe(self._store.set_pending_reset, None, None)

    async def sample_loop(self, rt: ConnectorRuntime) -> None:
        """Periodic MeterValues of a transaction (MeterValueSampleInterval, context Sample.Periodic).

        A sample is due one interval after the previous one (or the start). A changed interval applies at
        once: the next sample is due one *new* interval after the previous sample, at once if that moment
        has already passed; 0 stops sampling until the key changes again."""
        loop = asyncio.get_running_loop()
        last = loop.time()
        while rt.tx is not None:
            interval = float(self._keys["MeterValueSampleInterval"])
            if interval <= 0:
                await self._key_change("MeterValueSampleInterval")
                continue
            if await self._key_change("MeterValueSampleInterval", last + interval - loop.time()):
                continue
            last = loop.time()
            tx = rt.tx
            if tx is None:
                return
            reading = await self.read_meter(rt)
            if reading is None or not rt.meter_ok:
                continue
            ts = self._now()
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
                functools.partial(self._store.update_meter, tx.local_id, tx.last_meter_wh, iso(ts))
                if tx.local_id > 0
                else None
            )
            if values:
                # One commit: the message and the register, so neither survives a power cut alone.
                self._outbox.enqueue(
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
            self._emit(
                "meter_values", connector=rt.id, energy_wh=reading.energy_wh, power_w=reading.power_w
            )
            self._wake_sender()

    async def clock_aligned_loop(self) -> None:
        """Clock-aligned MeterValues (ClockAlignedDataInterval, context Sample.Clock, aligned to midnight).

        OCPP 1.6 §9.1 ClockAlignedDataInterval: evenly spaced intervals per day starting at 00:00:00. A
        changed interval applies at once: the next Sample.Clock is at the next boundary of the new interval
        (0 → 5 s samples at the next 5 s boundary, 3600 → 5 does not wait out the hour). Each sample is
        stamped with its boundary."""
        last_boundary: datetime | None = None
        while True:
            interval = int(self._keys["ClockAlignedDataInterval"])
            if interval <= 0:
                await self._key_change("ClockAlignedDataInterval")
                continue
            boundary = next_clock_boundary(self._now(), interval, after=last_boundary)
            wait_s = (boundary - self._now()).total_seconds()
            if await self._key_change("ClockAlignedDataInterval", wait_s):
                continue
            last_boundary = boundary
            await self._send_clock_aligned(boundary)

    async def _send_clock_aligned(self, ts: datetime) -> None:
        for rt in self._connectors.values():
            reading = await self.read_meter(rt)
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
                self._outbox.enqueue("MeterValues", payload, local_tx_id=tx.local_id, created_at=ts)
                self._wake_sender()
            elif self._registered():
                self._spawn(self._call_quietly("MeterValues", payload), "aligned")

    async def meter_poll_loop(self, rt: ConnectorRuntime) -> None:
        """Keeps the reading fresh for status, the balancer and the over-current check."""
        while True:
            closed = rt.hw.contactor.is_closed
            waited = 0.0
            while waited < (METER_POLL_CHARGING_S if closed else METER_POLL_IDLE_S):
                await asyncio.sleep(METER_POLL_CHARGING_S)
                waited += METER_POLL_CHARGING_S
                if rt.hw.contactor.is_closed != closed:
                    break  # charging started or stopped: read now, not up to 10 s later
            reading = await self.read_meter(rt)
            if reading is None or not rt.meter_ok:  # a stale reading must not trip (or clear) anything
                continue
            if rt.overcurrent.sample(self._monotonic(), measured_current(reading)):
                if FaultKind.OVERCURRENT not in rt.state.faults:
                    log.error("connector %d: the car draws more than offered for 7 s", rt.id)
                    self._post(rt.id, cm.Fault(FaultKind.OVERCURRENT))

    async def on_queued_result(self, msg: QueuedMessage, response: dict[str, Any]) -> None:
        if msg.action == "StartTransaction":
            tx_id = response.get("transactionId")
            info = response.get("idTagInfo", {})
            for rt in self._connectors.values():
                if rt.tx is not None and rt.tx.local_id == msg.local_tx_id:
                    rt.tx.transaction_id = tx_id
                    rt.tx.parent_id_tag = info.get("parentIdTag")
                    self._emit("transaction_id", connector=rt.id, transaction_id=tx_id)
                    await self._start_answer(rt, msg.payload.get("idTag", ""), info)
                    if (info.get("status", "Accepted") != "Accepted" and rt.tx is not None
                            and not self._keys["StopTransactionOnInvalidId"]):
                        self._authorization.deauthorize(rt.tx)
                        self._limits.recompute(rt.id)
                    self._smart.transaction_id_known(rt)
                    self._limits.recompute_all()
                    break
            else:
                self._authorization.remember_id_tag_info(msg.payload.get("idTag", ""), info)
        elif msg.action == "StopTransaction" and "idTagInfo" in response:
            self._authorization.remember_id_tag_info(msg.payload.get("idTag", ""), response["idTagInfo"])

    async def on_queued_drop(self, msg: QueuedMessage, why: str) -> None:
        """A transaction message the central system never accepted was dropped (the outbox logged it)."""
        self._dropped.append({"action": msg.action, "seq": msg.seq, "why": why})
        del self._dropped[:-20]
        self._emit("dropped", action=msg.action, seq=msg.seq, why=why)

    async def _start_answer(
        self, rt: ConnectorRuntime, id_tag: str, info: dict[str, Any]
    ) -> None:
        """StartTransaction.conf with a non-Accepted idTagInfo (OCPP 1.6 §5.11 / §9.1.28 StopTransactionOnInvalidId)."""
        self._authorization.remember_id_tag_info(id_tag, info)
        status = info.get("status", "Accepted")
        if status == "Accepted":
            return
        if self._keys["StopTransactionOnInvalidId"]:
            log.warning(
                "connector %d: central system says %s is %s: stopping the transaction",
                rt.id,
                mask_id_tag(id_tag),
                status,
            )
            self._post(rt.id, cm.Stop("DeAuthorized"))
        else:
            log.warning(
                "connector %d: %s is %s: suspending energy (StopTransactionOnInvalidId=false)",
                rt.id,
                mask_id_tag(id_tag),
                status,
            )
            self._limits.withdraw(rt.id, "idTag not accepted")

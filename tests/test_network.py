"""The central system goes away, never answers, always fails or drops the socket: charging goes on and
the transaction messages arrive once, in order (OCPP 1.6 §4.7/§4.8/§4.10, "transaction-related
messages").  Real websocket server on 127.0.0.1, real controller on simulated hardware."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from conftest import Station
from test_kill import ledger

from chargepoint.config import simulated_config
from chargepoint.controller import Controller
from chargepoint.csms import CentralSystem, Record
from chargepoint.store import StoreWriteError

KEYS = {"MeterValueSampleInterval": 1, "AllowOfflineTxForUnknownId": True, "TransactionMessageRetryInterval": 0}


@contextlib.asynccontextmanager
async def station(
    tmp_path: Path, keys: dict[str, Any] | None = None, response_timeout_s: float = 30.0
) -> AsyncIterator[Station]:
    async with CentralSystem() as csms:
        config = simulated_config(
            charge_point_id="CP-NET", csms_url=csms.url, state_dir=tmp_path / "state", ev_reaction_s=0.0,
            ocpp_keys={**KEYS, **(keys or {})},
        )  # fmt: skip
        config = replace(config, csms=replace(config.csms, response_timeout_s=response_timeout_s))
        controller = Controller(config, restart=lambda kind: None)
        await controller.start()
        try:
            await csms.wait_for(lambda: controller.boot_accepted, 10)
            yield Station(controller, csms, "CP-NET")
        finally:
            await controller.stop()


def charging(s: Station) -> bool:
    rt = s.controller.connectors[1]
    return rt.hw.contactor.is_closed and rt.state.status == "Charging"


async def drained(s: Station, timeout: float = 15.0) -> None:
    await s.csms.wait_for(lambda: s.controller.outbox is not None and len(s.controller.outbox) == 0, timeout)


def assert_ledger(records: list[Record], transactions: int, retransmissions_allowed: int = 0) -> Any:
    result = ledger(records)
    assert not result.problems, "\n".join(result.problems)
    assert len(result.transactions) == transactions
    assert result.retransmissions <= retransmissions_allowed
    return result


async def test_outage_queues_everything_and_delivers_it_once_in_order(tmp_path: Path) -> None:
    async with station(tmp_path) as s:
        await s.start_charging(tag="ONLINE")
        s.csms.behaviour.silent_actions.clear()
        await s.csms.close()  # the central system goes away mid-session
        await s.csms.wait_for(lambda: s.controller.snapshot()["csms"] == "offline", 5)
        await asyncio.sleep(2.3)
        assert charging(s)  # no central system: the car keeps charging
        s.bench.ev(1).unplug()
        await s.wait_status("Available")
        # A transaction that starts and stops while offline: no transactionId until its Start is answered.
        s.bench.ev(1).plug()
        s.bench.readers[0].present("OFFLINE")
        await s.wait_status("Charging")
        await asyncio.sleep(2.3)
        assert charging(s)
        s.bench.ev(1).unplug()
        await s.wait_status("Available")
        await asyncio.sleep(0.1)
        queued = len(s.controller.outbox)  # type: ignore[arg-type]
        assert queued >= 7  # 2+ MeterValues, Stop, Start, 2+ MeterValues, Stop
        before = len(s.csms.records)
        await s.csms.start()  # same port: the charger reconnects
        await drained(s)
    records = s.csms.records
    result = assert_ledger(records, transactions=2)
    online, offline = result.transactions
    assert online.start["idTag"] == "ONLINE" and offline.start["idTag"] == "OFFLINE"
    # The offline transaction got an id and every later message carried it (outbox substitution).
    assert len(offline.ids) == 1 and len(offline.meter_values) >= 2
    # Queued messages arrive in the order they happened, with the event's timestamps.
    replayed = [r for r in records[before:] if r.action in ("StartTransaction", "MeterValues", "StopTransaction")]
    stamps = [
        r.payload["meterValue"][0]["timestamp"] if r.action == "MeterValues" else r.payload["timestamp"]
        for r in replayed
    ]
    assert len(replayed) == queued
    assert stamps == sorted(stamps)
    assert records[-1].at > records[before].at
    assert [r.action for r in replayed][-1] == "StopTransaction"


async def test_silent_central_system_keeps_charging_and_retries(tmp_path: Path) -> None:
    async with station(tmp_path, keys={"TransactionMessageAttempts": 3}, response_timeout_s=1.0) as s:
        await s.start_charging(tag="SILENT")
        s.csms.behaviour.silent_actions.add("MeterValues")
        await s.csms.wait_for(lambda: len(s.csms.received("MeterValues")) >= 2, 6)
        assert charging(s)
        s.csms.behaviour.silent_actions.clear()
        await asyncio.sleep(1.5)
        assert charging(s)
        s.bench.ev(1).unplug()
        await s.wait_status("Available")
        await drained(s)
    result = ledger(s.csms.records)
    assert not result.problems, result.problems
    # A message nobody answered is sent again (same payload): the central system sees repeats only.
    assert result.retransmissions >= 1
    assert len(result.transactions) == 1


async def test_callerror_forever_drops_after_attempts_and_keeps_charging(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="chargepoint.protocol.outbox")
    async with station(tmp_path, keys={"TransactionMessageAttempts": 2}) as s:
        await s.start_charging(tag="FAILING")
        s.csms.behaviour.fail_actions.add("MeterValues")
        await s.csms.wait_for(lambda: "DROPPED MeterValues" in caplog.text, 8)
        assert charging(s)
        s.csms.behaviour.fail_actions.clear()
        s.bench.ev(1).unplug()
        await s.wait_status("Available")
        await drained(s)
    # Each failing MeterValues was tried exactly TransactionMessageAttempts times, then dropped; the
    # StopTransaction after them still arrived.
    result = ledger(s.csms.records)
    assert not result.problems, result.problems
    stop = result.transactions[0].stops[0][1]
    assert stop["reason"] == "EVDisconnected"
    assert "DROPPED MeterValues" in caplog.text and "2 failed attempt(s)" in caplog.text


async def test_socket_closed_mid_message_resends_it(tmp_path: Path) -> None:
    async with station(tmp_path) as s:
        dropped: list[str] = []
        actions = ("StartTransaction", "MeterValues", "StopTransaction")
        s.csms.behaviour.drop_once = set(actions)  # close the socket instead of answering, once each

        def note_first(record: Record) -> None:
            if record.direction == "in" and record.action in actions and record.action not in dropped:
                dropped.append(record.action)

        s.csms._on_record = note_first
        s.bench.ev(1).plug()
        s.bench.readers[0].present("DROPPY")
        await s.csms.wait_for(lambda: len(dropped) >= 2 and charging(s), 15)
        await asyncio.sleep(1.2)
        assert charging(s)
        s.bench.ev(1).unplug()
        await s.wait_status("Available")
        await s.csms.wait_for(lambda: len(dropped) == 3, 15)
        await drained(s)
    assert dropped == ["StartTransaction", "MeterValues", "StopTransaction"]
    result = assert_ledger(s.csms.records, transactions=1, retransmissions_allowed=3)
    assert result.retransmissions >= 2  # the dropped MeterValues/Stop came again, identical
    assert len(s.csms.received("StopTransaction")) == 2


async def test_store_write_failure_keeps_charging(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async with station(tmp_path) as s:
        await s.start_charging(tag="DISKFULL")
        store = s.controller.store
        assert store is not None

        def full(*args: Any, **kwargs: Any) -> Any:
            raise StoreWriteError("could not save state: database or disk is full", "full")

        monkeypatch.setattr(store, "write", full)
        monkeypatch.setattr(store, "update_meter", full)
        original_batch = store.batch

        @contextlib.contextmanager
        def failing_batch(*args: Any, **kwargs: Any) -> Any:
            with original_batch(*args, **kwargs):
                yield
                raise StoreWriteError("could not save state: database or disk is full", "full")

        monkeypatch.setattr(store, "batch", failing_batch)
        count = len(s.csms.received("MeterValues"))
        await s.csms.wait_for(lambda: len(s.csms.received("MeterValues")) >= count + 2, 5)
        assert charging(s)
        # The samples went out from memory (the store refused them), and the log says so.
        assert "Keeping MeterValues (and later messages) in memory" in caplog.text
        s.bench.ev(1).unplug()
        await s.wait_status("Available")
        await s.csms.wait_for(lambda: len(s.csms.received("StopTransaction")) == 1, 5)
    assert_ledger(s.csms.records, transactions=1)


async def test_store_failing_for_a_whole_session_still_delivers_it_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Disk full before the tap: the transaction runs on a volatile id, every message goes out from memory,
    and when the disk is writable again later messages are persisted again."""
    async with station(tmp_path) as s:
        store = s.controller.store
        assert store is not None
        original_batch = store.batch
        failing = {"on": True}

        @contextlib.contextmanager
        def batch(*args: Any, **kwargs: Any) -> Any:
            with original_batch(*args, **kwargs):
                yield
                if failing["on"]:
                    raise StoreWriteError("could not save state: database or disk is full", "full")

        monkeypatch.setattr(store, "batch", batch)
        await s.start_charging(tag="NODISK")
        tx = s.controller.connectors[1].tx
        assert tx is not None and tx.local_id < 0  # volatile: nothing could be stored
        await s.csms.wait_for(lambda: len(s.csms.received("MeterValues")) >= 2, 5)
        assert charging(s)
        failing["on"] = False  # space again
        s.bench.ev(1).unplug()
        await s.wait_status("Available")
        await s.csms.wait_for(lambda: len(s.csms.received("StopTransaction")) == 1, 5)
        await drained(s)
        assert store.open_transactions() == []
    assert_ledger(s.csms.records, transactions=1)

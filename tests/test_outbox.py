"""Outbox: durable order, retries (interval x attempt), drops, transactionId substitution, offline."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from chargepoint.protocol.outbox import CallErrorReceived, Outbox, OutboxSender, QueuedMessage
from chargepoint.store import Store, StoreWriteError

T0 = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)


class FakeClock:
    """Virtual time: the sender's sleeps advance it, so waits are exact and instant."""

    def __init__(self) -> None:
        self.now = T0
        self.mono = 1000.0  # advances only with sleeps, unlike `now`, which a test may step
        self.slept: list[float] = []
        self.requested: list[float] = []
        #: Sleeps at least this long never end (time stands still): shows what wakes the sender.
        self.block_from = float("inf")

    def __call__(self) -> datetime:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.requested.append(seconds)
        if seconds >= self.block_from:
            await asyncio.Event().wait()
        await asyncio.sleep(0)
        self.slept.append(seconds)
        self.now += timedelta(seconds=seconds)
        self.mono += seconds

    def monotonic(self) -> float:
        return self.mono


Reply = dict[str, Any] | BaseException | Callable[[str, dict[str, Any]], dict[str, Any]]


class FakeCsms:
    """An async send(): records (virtual time, action, payload) and answers from a script."""

    def __init__(self, clock: FakeClock, default: Reply | None = None) -> None:
        self.clock = clock
        self.calls: list[tuple[datetime, str, dict[str, Any]]] = []
        self.script: list[Reply] = []
        self.default: Reply = default if default is not None else {}
        self.changed = asyncio.Event()

    async def send(self, action: str, payload: dict[str, Any]) -> dict[str, Any]:
        self.calls.append((self.clock(), action, payload))
        self.changed.set()
        reply = self.script.pop(0) if self.script else self.default
        if isinstance(reply, BaseException):
            raise reply
        if callable(reply):
            return reply(action, payload)
        return reply

    async def until(self, cond: Callable[[], bool]) -> None:
        async def loop() -> None:
            while not cond():
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(loop(), 10)  # safety net only: virtual time makes this instant


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(tmp_path / "state")
    yield s
    s.close()


class Harness:
    def __init__(self, store: Store, attempts: int = 3, interval: float = 10.0) -> None:
        self.store = store
        self.outbox = Outbox(store)
        self.clock = FakeClock()
        self.csms = FakeCsms(self.clock)
        self.attempts = attempts
        self.interval = interval
        self.results: list[tuple[QueuedMessage, dict[str, Any]]] = []
        self.sender = OutboxSender(
            self.outbox,
            self.csms.send,
            self.on_result,
            attempts=lambda: self.attempts,
            retry_interval_s=lambda: self.interval,
            clock=self.clock,
            sleep=self.clock.sleep,
            monotonic=self.clock.monotonic,
            reconnect_poll_s=5.0,
        )
        self.task: asyncio.Task[None] | None = None

    async def on_result(self, msg: QueuedMessage, response: dict[str, Any]) -> None:
        self.results.append((msg, response))
        self.csms.changed.set()

    def enqueue(self, action: str, payload: dict[str, Any], local: int | None = None) -> int:
        seq = self.outbox.enqueue(action, payload, local, self.clock())
        self.sender.wake()
        return seq

    def start(self) -> None:
        self.task = asyncio.create_task(self.sender.run())

    async def stop(self) -> None:
        assert self.task is not None
        self.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self.task


@pytest.fixture
async def h(store: Store) -> Any:
    harness = Harness(store)
    harness.start()
    yield harness
    await harness.stop()


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def mv(i: int) -> dict[str, Any]:
    return {"connectorId": 1, "meterValue": [{"timestamp": f"2026-11-24T10:00:{i:02d}Z", "sampledValue": []}]}


# ------------------------------------------------------------------ the queue itself


def test_enqueue_is_durable_and_ordered(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "state")
    ob = Outbox(store)
    seqs = [ob.enqueue("MeterValues", mv(i), None, T0 + timedelta(seconds=i)) for i in range(5)]
    assert seqs == sorted(seqs) and len(set(seqs)) == 5
    assert store.path is not None
    store.close()
    again = Store.open(store.path.parent)
    try:
        ob2 = Outbox(again)
        assert len(ob2) == 5
        head = ob2.head()
        assert head is not None and head.seq == seqs[0] and head.payload == mv(0)
        assert head.created_at == T0 and head.attempts == 0
        assert [m.payload for m in ob2.pending()] == [mv(i) for i in range(5)]
        ob2.remove(seqs[0])
        assert ob2.head() is not None and ob2.head().seq == seqs[1]  # type: ignore[union-attr]
        assert ob2.enqueue("MeterValues", mv(9), None, T0) > seqs[-1]
    finally:
        again.close()


def test_large_payloads_are_stored_compressed_small_ones_readable(store: Store) -> None:
    ob = Outbox(store)
    big = {
        "connectorId": 1,
        "meterValue": [
            {
                "timestamp": "2026-11-24T10:00:00Z",
                "sampledValue": [
                    {
                        "value": str(1000 + i),
                        "context": "Sample.Periodic",
                        "measurand": "Voltage",
                        "unit": "V",
                    }
                    for i in range(10)
                ],
            }
        ],
    }
    ob.enqueue("MeterValues", big, None, T0)
    ob.enqueue("StopTransaction", {"meterStop": 5}, None, T0)
    stored = store.query("SELECT payload FROM outbox ORDER BY seq")
    assert isinstance(stored[0][0], bytes) and len(stored[0][0]) < len(json.dumps(big)) / 2
    assert stored[1][0] == '{"meterStop":5}'
    assert [m.payload for m in ob.pending()] == [big, {"meterStop": 5}]


def test_attempts_and_next_attempt_time(store: Store) -> None:
    ob = Outbox(store)
    seq = ob.enqueue("StopTransaction", {"meterStop": 5}, None, T0)
    msg = ob.head()
    assert msg is not None and ob.next_attempt_at(msg, 60) == T0  # never tried: due now
    assert ob.mark_attempt(seq, T0 + timedelta(seconds=1)) == 1
    msg = ob.head()
    assert msg is not None and ob.next_attempt_at(msg, 60) == T0 + timedelta(seconds=61)
    assert ob.mark_attempt(seq, T0 + timedelta(seconds=70)) == 2
    msg = ob.head()
    assert msg is not None and ob.next_attempt_at(msg, 60) == T0 + timedelta(seconds=70 + 120)


def test_transaction_id_substitution_and_cleanup(store: Store) -> None:
    ob = Outbox(store)
    local = store.begin_transaction(1, "TAG", T0.isoformat(), 0)
    start = ob.enqueue("StartTransaction", {"connectorId": 1, "idTag": "TAG"}, local, T0)
    ob.enqueue("MeterValues", mv(1), local, T0)
    ob.enqueue("StopTransaction", {"meterStop": 10, "timestamp": "2026-11-24T10:01:00Z"}, local, T0)
    msgs = ob.pending()
    assert "transactionId" not in msgs[1].payload  # placeholder: the id is not known yet
    head = ob.head()
    assert head is not None and head.seq == start
    ob.complete(head, {"transactionId": 4242, "idTagInfo": {"status": "Accepted"}})
    assert store.open_transactions()[0].transaction_id == 4242
    sent = [ob.payload_for_send(m) for m in ob.pending()]
    assert sent[0] == {**mv(1), "transactionId": 4242}
    assert sent[1] == {"meterStop": 10, "timestamp": "2026-11-24T10:01:00Z", "transactionId": 4242}
    for m in ob.pending():
        ob.complete(m, {})
    assert ob.transaction_id_for(local) is None  # mapping dropped with the StopTransaction


# ------------------------------------------------------------------ the sender


async def test_sends_in_order_one_at_a_time(h: Harness) -> None:
    in_flight = 0
    max_in_flight = 0

    async def slow_send(action: str, payload: dict[str, Any]) -> dict[str, Any]:
        nonlocal in_flight, max_in_flight
        in_flight += 1
        max_in_flight = max(max_in_flight, in_flight)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        in_flight -= 1
        return await h.csms.send(action, payload)

    h.sender._send = slow_send
    for i in range(6):
        h.enqueue("MeterValues", mv(i))
    h.sender.set_online(True)
    await h.csms.until(lambda: len(h.outbox) == 0)
    assert [c[2] for c in h.csms.calls] == [mv(i) for i in range(6)]
    assert max_in_flight == 1
    assert [m.payload for m, _ in h.results] == [mv(i) for i in range(6)]


async def test_offline_queues_and_reconnect_sends_in_original_order(h: Harness) -> None:
    local = h.store.begin_transaction(1, "TAG", T0.isoformat(), 100)
    h.enqueue("StartTransaction", {"connectorId": 1, "idTag": "TAG", "meterStart": 100}, local)
    for i in range(3):
        h.enqueue("MeterValues", mv(i), local)
    h.enqueue("StopTransaction", {"meterStop": 160, "reason": "EVDisconnected"}, local)
    await settle()
    assert h.csms.calls == []  # offline: nothing goes out
    assert len(h.outbox) == 5

    h.csms.default = lambda action, payload: (
        {"transactionId": 77, "idTagInfo": {"status": "Accepted"}} if action == "StartTransaction" else {}
    )
    h.sender.set_online(True)
    await h.csms.until(lambda: len(h.outbox) == 0)
    assert [c[1] for c in h.csms.calls] == ["StartTransaction"] + ["MeterValues"] * 3 + ["StopTransaction"]
    assert "transactionId" not in h.csms.calls[0][2]
    assert all(c[2]["transactionId"] == 77 for c in h.csms.calls[1:])
    assert [c[2]["meterValue"][0]["timestamp"] for c in h.csms.calls[1:4]] == [
        mv(i)["meterValue"][0]["timestamp"] for i in range(3)
    ]  # timestamps are those of the events, not of sending
    assert h.results[0][1]["transactionId"] == 77


async def test_callerror_retried_with_interval_times_attempt_then_succeeds(h: Harness) -> None:
    h.csms.script = [CallErrorReceived("InternalError", "db down"), TimeoutError(), {}]
    h.enqueue("MeterValues", mv(1))
    h.enqueue("MeterValues", mv(2))
    h.sender.set_online(True)
    await h.csms.until(lambda: len(h.outbox) == 0)
    times = [c[0] for c in h.csms.calls]
    assert [c[2] for c in h.csms.calls] == [mv(1), mv(1), mv(1), mv(2)]
    assert times[1] - times[0] == timedelta(seconds=10)  # 10 s x attempt 1
    assert times[2] - times[1] == timedelta(seconds=20)  # 10 s x attempt 2
    assert times[3] == times[2]  # the next message goes right away


async def test_dropped_after_max_attempts_with_log_line(h: Harness, caplog: pytest.LogCaptureFixture) -> None:
    h.csms.script = [CallErrorReceived("FormationViolation", "bad")] * 3
    seq = h.enqueue("MeterValues", {"connectorId": 1, "meterValue": [{"timestamp": "X", "tag": "needle"}]})
    h.enqueue("MeterValues", mv(2))
    with caplog.at_level(logging.INFO, logger="chargepoint.protocol.outbox"):
        h.sender.set_online(True)
        await h.csms.until(lambda: len(h.outbox) == 0)
    assert len(h.csms.calls) == 4 and h.csms.calls[3][2] == mv(2)
    assert h.sender.dropped == 1
    [drop] = [r for r in caplog.records if "DROPPED" in r.getMessage()]
    line = drop.getMessage()
    assert drop.levelno == logging.ERROR
    assert "MeterValues" in line and f"seq {seq}" in line and "needle" in line and "3 failed attempt" in line
    assert "FormationViolation" in line


async def test_attempts_setting_is_read_live(h: Harness) -> None:
    h.attempts = 1
    h.csms.script = [TimeoutError()]
    h.enqueue("StopTransaction", {"meterStop": 1})
    h.sender.set_online(True)
    await h.csms.until(lambda: len(h.outbox) == 0)
    assert len(h.csms.calls) == 1 and h.sender.dropped == 1


async def test_connection_error_is_not_an_attempt(h: Harness) -> None:
    h.attempts = 1  # a single counted failure would drop it
    h.csms.script = [ConnectionError("link down")] * 4 + [{}]
    h.enqueue("StopTransaction", {"meterStop": 1})
    h.sender.set_online(True)
    await h.csms.until(lambda: len(h.outbox) == 0)
    assert len(h.csms.calls) == 5 and h.sender.dropped == 0
    assert [r for r in h.results if r[0].action == "StopTransaction"]


async def test_connection_error_waits_for_reconnect(h: Harness) -> None:
    h.clock.block_from = 5.0  # the reconnect poll interval of the harness
    h.csms.script = [ConnectionError("link down")]
    h.enqueue("MeterValues", mv(1))
    h.sender.set_online(True)
    await h.csms.until(lambda: len(h.csms.calls) == 1)
    await settle()
    assert len(h.csms.calls) == 1  # not hammering a dead link
    assert h.clock.requested == [5.0]  # it only waits for the link (or the slow poll)
    head = h.outbox.head()
    assert head is not None and head.attempts == 0
    h.sender.set_online(False)
    h.sender.set_online(True)  # the link reports it is back
    await h.csms.until(lambda: len(h.outbox) == 0)
    assert len(h.csms.calls) == 2


async def test_going_offline_pauses_retries(h: Harness) -> None:
    h.csms.script = [CallErrorReceived("InternalError")]
    h.enqueue("MeterValues", mv(1))
    h.sender.set_online(True)
    await h.csms.until(lambda: len(h.csms.calls) == 1)
    h.sender.set_online(False)
    await settle()
    assert len(h.csms.calls) == 1 and len(h.outbox) == 1
    h.sender.set_online(True)
    await h.csms.until(lambda: len(h.outbox) == 0)
    assert h.csms.calls[1][0] - h.csms.calls[0][0] >= timedelta(seconds=10)


async def test_idle_sender_wakes_on_new_message(h: Harness) -> None:
    h.sender.set_online(True)
    await settle()
    assert h.csms.calls == []
    h.enqueue("MeterValues", mv(3))
    await h.csms.until(lambda: len(h.outbox) == 0)
    assert h.csms.calls[0][2] == mv(3)


async def test_dropped_start_drops_its_dependents(h: Harness, caplog: pytest.LogCaptureFixture) -> None:
    h.attempts = 2
    h.csms.script = [CallErrorReceived("InternalError")] * 2
    local = h.store.begin_transaction(1, "TAG", T0.isoformat(), 0)
    h.enqueue("StartTransaction", {"connectorId": 1, "idTag": "TAG"}, local)
    h.enqueue("MeterValues", mv(1), local)
    h.enqueue("StopTransaction", {"meterStop": 3}, local)
    h.enqueue("MeterValues", mv(9))  # unrelated: still delivered
    told: list[tuple[str, str]] = []

    async def on_drop(msg: QueuedMessage, why: str) -> None:
        told.append((msg.action, why))

    h.sender._on_drop = on_drop
    with caplog.at_level(logging.ERROR, logger="chargepoint.protocol.outbox"):
        h.sender.set_online(True)
        await h.csms.until(lambda: len(h.outbox) == 0)
    assert [c[1] for c in h.csms.calls] == ["StartTransaction", "StartTransaction", "MeterValues"]
    assert h.csms.calls[-1][2] == mv(9)
    assert h.sender.dropped == 3
    assert "never answered with a transactionId" in caplog.text
    assert [a for a, _ in told] == ["StartTransaction", "MeterValues", "StopTransaction"]
    assert "2 failed attempt" in told[0][1]


async def test_restart_resumes_with_persisted_attempts(tmp_path: Path) -> None:
    s1 = Store.open(tmp_path / "st")
    h1 = Harness(s1)
    h1.csms.script = [CallErrorReceived("InternalError")]
    h1.clock.block_from = 1.0  # the process "dies" during the retry wait
    h1.enqueue("MeterValues", mv(1))
    h1.start()
    h1.sender.set_online(True)
    await h1.csms.until(lambda: len(h1.csms.calls) == 1)
    await settle()
    await h1.stop()
    s1.close()

    s2 = Store.open(tmp_path / "st")
    try:
        h2 = Harness(s2)
        head = h2.outbox.head()
        assert head is not None and head.attempts == 1 and head.last_attempt_at == T0
        h2.clock.now = T0 + timedelta(seconds=4)
        h2.start()
        h2.sender.set_online(True)
        await h2.csms.until(lambda: len(h2.outbox) == 0)
        assert h2.csms.calls[0][0] == T0 + timedelta(seconds=10)  # waited out the remaining 6 s
        await h2.stop()
    finally:
        s2.close()


async def test_on_result_failure_does_not_resend(h: Harness) -> None:
    async def broken(msg: QueuedMessage, response: dict[str, Any]) -> None:
        raise RuntimeError("controller bug")

    h.sender._on_result = broken
    h.enqueue("MeterValues", mv(1))
    h.enqueue("MeterValues", mv(2))
    h.sender.set_online(True)
    await h.csms.until(lambda: len(h.outbox) == 0)
    assert [c[2] for c in h.csms.calls] == [mv(1), mv(2)]


# ------------------------------------------------------------------ degraded storage


async def test_disk_full_keeps_messages_in_memory_in_order(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    h.enqueue("MeterValues", mv(0))
    pages = h.store.query("PRAGMA page_count")[0][0]
    h.store._conn.execute(f"PRAGMA max_page_count={pages}")
    big = {"connectorId": 1, "pad": os.urandom(3000).hex()}  # incompressible, needs new pages: fails
    with caplog.at_level(logging.ERROR, logger="chargepoint.protocol.outbox"):
        s1 = h.enqueue("MeterValues", big)
    s2 = h.enqueue("MeterValues", mv(2))  # would fit, but must stay behind `big`
    assert "LOST if the controller restarts" in caplog.text
    assert h.outbox.degraded
    assert [m.seq for m in h.outbox.pending()][1:] == [s1, s2]
    assert h.store.query("SELECT count(*) FROM outbox")[0][0] == 1
    h.sender.set_online(True)
    await h.csms.until(lambda: len(h.outbox) == 0)
    assert [c[2] for c in h.csms.calls] == [mv(0), big, mv(2)]


async def test_spill_is_written_back_when_space_returns(store: Store) -> None:
    ob = Outbox(store)
    pages = store.query("PRAGMA page_count")[0][0]
    store._conn.execute(f"PRAGMA max_page_count={pages}")
    s1 = ob.enqueue("MeterValues", {"pad": os.urandom(3000).hex()}, None, T0)
    assert ob.degraded
    store._conn.execute("PRAGMA max_page_count=1000000")
    s2 = ob.enqueue("MeterValues", mv(1), None, T0)
    assert not ob.degraded
    assert [r[0] for r in store.query("SELECT seq FROM outbox ORDER BY seq")] == [s1, s2]


async def test_answered_message_whose_delete_fails_is_not_resent(h: Harness, tmp_path: Path) -> None:
    """The store turns unwritable between send and delete (immutable flag: fails even for root)."""
    h.enqueue("MeterValues", mv(1))
    h.enqueue("MeterValues", mv(2))
    assert h.store.path is not None
    files = sorted(h.store.path.parent.glob("state.db*"))
    chattr_ok: list[bool] = []

    def freeze_store(action: str, payload: dict[str, Any]) -> dict[str, Any]:
        r = subprocess.run(["chattr", "+i", *map(str, files)], capture_output=True)
        chattr_ok.append(r.returncode == 0)
        return {}

    h.csms.script = [freeze_store]
    try:
        h.sender.set_online(True)
        await h.csms.until(lambda: len(h.csms.calls) >= 2 and len(h.results) >= 2)
        if not chattr_ok[0]:
            pytest.skip("chattr +i not supported on this file system (needs ext2/3/4, xfs, btrfs)")
        assert [c[2] for c in h.csms.calls] == [mv(1), mv(2)]  # mv(1) was not sent twice
        assert h.outbox.degraded and len(h.outbox) == 0
    finally:
        subprocess.run(["chattr", "-i", *map(str, files)], capture_output=True)
    h.enqueue("MeterValues", mv(3))  # writable again: the remembered deletes are done now
    await h.csms.until(lambda: len(h.outbox) == 0)
    assert [r[0] for r in h.store.query("SELECT count(*) FROM outbox")] == [0]
    assert not h.outbox.degraded


def test_enqueue_with_store_write_is_one_commit(store: Store) -> None:
    ob = Outbox(store)
    local = store.begin_transaction(1, "TAG", T0.isoformat(), 0)
    ob.enqueue("MeterValues", mv(1), local, T0, with_store=lambda: store.update_meter(local, 50, "t1"))
    assert store.open_transactions()[0].last_meter_wh == 50 and len(ob) == 1

    def meter_then_fail() -> None:
        store.update_meter(local, 60, "t2")
        raise RuntimeError("controller bug")

    with pytest.raises(RuntimeError):
        ob.enqueue("MeterValues", mv(2), local, T0, with_store=meter_then_fail)
    assert store.open_transactions()[0].last_meter_wh == 50 and len(ob) == 1  # all or nothing
    ob.enqueue(
        "StopTransaction", {"meterStop": 50}, local, T0, with_store=lambda: store.end_transaction(local)
    )
    assert store.open_transactions() == [] and len(ob) == 2


def test_disk_full_sample_keeps_meter_register_and_message(store: Store) -> None:
    ob = Outbox(store)
    local = store.begin_transaction(1, "TAG", T0.isoformat(), 0)
    store._conn.execute(f"PRAGMA max_page_count={store.query('PRAGMA page_count')[0][0]}")
    big = {"connectorId": 1, "pad": os.urandom(3000).hex()}
    seq = ob.enqueue("MeterValues", big, local, T0, with_store=lambda: store.update_meter(local, 70, "t"))
    assert store.open_transactions()[0].last_meter_wh == 70  # in-place update still fit
    assert ob.degraded and [m.seq for m in ob.pending()] == [seq]
    with pytest.raises(StoreWriteError):
        store.begin_transaction(2, os.urandom(2000).hex(), T0.isoformat(), 0)  # needs new pages
    v1, v2 = store.volatile_local_id(), store.volatile_local_id()
    assert v2 < v1 < 0  # usable with the outbox, never equal to a stored id
    ob.enqueue("StartTransaction", {"connectorId": 2, "idTag": "OTHER"}, v1, T0)
    ob.complete(ob.pending()[0], {})
    start = ob.head()
    assert start is not None and start.local_tx_id == v1
    ob.complete(start, {"transactionId": 9})
    assert ob.transaction_id_for(v1) == 9


async def test_clock_stepped_backwards_does_not_hold_the_queue(h: Harness) -> None:
    h.csms.script = [CallErrorReceived("InternalError")]
    h.clock.block_from = 10.0  # hold the sender in its retry wait
    h.enqueue("MeterValues", mv(1))  # created at T0
    h.sender.set_online(True)
    await h.csms.until(lambda: len(h.csms.calls) == 1)
    await settle()
    assert h.clock.requested == [10.0]
    h.clock.now = T0 - timedelta(days=1)  # NTP steps the clock back a day during the wait
    h.clock.block_from = float("inf")
    h.sender.wake()
    await h.csms.until(lambda: len(h.outbox) == 0)
    assert h.clock.slept == [10.0]  # not a day and 10 s

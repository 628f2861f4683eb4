"""Persistent queue of transaction-related messages (OCPP 1.6 "transaction-related messages").

OCPP 1.6 (§4.7 MeterValues, §4.8 StartTransaction, §4.10 StopTransaction and the section
"Error responses to transaction-related messages") asks that StartTransaction, StopTransaction
and transaction-related MeterValues reach the central system even across connection loss, in
their original order, and that a message the central system fails to process (CALLERROR, no
answer) is retried ``TransactionMessageAttempts`` times, waiting ``TransactionMessageRetryInterval
x attempt number`` between tries, and then discarded.  The operator bills from these messages,
so they are written to the store *before* they are sent and removed only once answered.

Offline transactions: a transaction started offline has no transactionId until its queued
StartTransaction is answered.  Queued MeterValues/StopTransaction for it are stored with the
*local* transaction id; :meth:`Outbox.payload_for_send` puts the real ``transactionId`` in at
send time.  Payloads are OCPP JSON objects exactly as on the wire (camelCase keys), serialized
compactly; timestamps inside them are those of the event, never the send time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from chargepoint.store import Store, StoreWriteError

log = logging.getLogger(__name__)

#: Actions whose payload carries the CSMS transactionId, substituted at send time.
TRANSACTION_ID_ACTIONS = frozenset({"MeterValues", "StopTransaction"})
START = "StartTransaction"
STOP = "StopTransaction"


class CallErrorReceived(Exception):
    """The central system answered a CALL with a CALLERROR (OCPP-J §4.2.3)."""

    def __init__(self, code: str, description: str = "", details: dict[str, Any] | None = None) -> None:
        super().__init__(f"CALLERROR {code}: {description}" if description else f"CALLERROR {code}")
        self.code = code
        self.description = description
        self.details = details or {}


class UnresolvedTransactionId(Exception):
    """A MeterValues/StopTransaction for a transaction whose StartTransaction never got an id."""


@dataclass(frozen=True)
class QueuedMessage:
    seq: int
    action: str
    payload: dict[str, Any]
    local_tx_id: int | None
    created_at: datetime
    attempts: int
    last_attempt_at: datetime | None


def _iso(ts: datetime) -> str:
    if ts.tzinfo is None:
        raise ValueError(f"timestamp must be timezone-aware (UTC), got naive {ts!r}")
    return ts.astimezone(UTC).isoformat()


#: Payloads longer than this are stored zlib-compressed (a BLOB; shorter ones stay readable TEXT).
#: A 3-phase MeterValues (~1.1 kB of JSON) shrinks to ~0.3 kB and fits one 1 KiB page without an
#: overflow page: that halves the bytes written per sample (SD-card wear, see bench_store.py).
COMPRESS_ABOVE = 256


def encode_payload(payload: dict[str, Any]) -> str | bytes:
    text = json.dumps(payload, separators=(",", ":"))
    return zlib.compress(text.encode(), 6) if len(text) > COMPRESS_ABOVE else text


def decode_payload(stored: str | bytes) -> dict[str, Any]:
    if isinstance(stored, bytes):
        stored = zlib.decompress(stored).decode()
    value = json.loads(stored)
    if not isinstance(value, dict):
        raise ValueError(f"queued payload is not a JSON object: {stored[:80]!r}")
    return value


def summarize(payload: dict[str, Any], limit: int = 300) -> str:
    text = json.dumps(payload, separators=(",", ":"), sort_keys=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."


_COLUMNS = "seq, action, payload, local_tx_id, created_at, attempts, last_attempt_at"


def _row(r: tuple[Any, ...]) -> QueuedMessage:
    return QueuedMessage(
        seq=int(r[0]),
        action=r[1],
        payload=decode_payload(r[2]),
        local_tx_id=r[3],
        created_at=datetime.fromisoformat(r[4]),
        attempts=int(r[5]),
        last_attempt_at=datetime.fromisoformat(r[6]) if r[6] else None,
    )


class Outbox:
    """The queue itself: durable, ordered, one table (``outbox``) in the :class:`Store`.

    Degraded mode (disk full, read-only remount, I/O errors): a message that cannot be written
    is kept in memory instead (``spilled``), and so is every later one until the spill could be
    written back or was sent, so order holds; an answered message whose delete fails is
    remembered as gone.  Charging and sending go on; what is only in memory is lost if the
    process dies, and the log says so once per episode.
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._spill: list[QueuedMessage] = []
        self._gone: set[int] = set()
        self._mem_attempts: dict[int, tuple[int, datetime]] = {}
        self._mem_txid: dict[int, int] = {}
        rows = store.query("SELECT max(seq) FROM outbox")
        self._last_seq = int(rows[0][0] or 0)

    @property
    def degraded(self) -> bool:
        """True while some queue state exists only in memory."""
        return bool(self._spill or self._gone or self._mem_attempts or self._mem_txid)

    # ----------------------------------------------------------------- queue

    def enqueue(
        self,
        action: str,
        payload: dict[str, Any],
        local_tx_id: int | None = None,
        created_at: datetime | None = None,
        with_store: Callable[[], object] | None = None,
    ) -> int:
        """Append a message; it is on disk (synchronous=FULL) when this returns.  Returns its seq.

        ``with_store`` runs store writes in the same commit (one fsync, all or nothing), e.g.
        ``lambda: store.update_meter(local, wh, ts)`` with a MeterValues or
        ``lambda: store.end_transaction(local)`` with a StopTransaction.  If that commit fails the
        message is still queued (on disk or in memory) and ``with_store`` is retried on its own;
        its StoreWriteError is then logged, not raised.

        For MeterValues/StopTransaction of a transaction pass ``local_tx_id``; the payload's
        ``transactionId`` is then filled in at send time.  For StartTransaction pass it too, so
        that the answer's transactionId is recorded for the later messages.  If the store cannot
        be written the message is kept in memory (see class doc) and an error is logged.
        """
        stored = encode_payload(payload)
        when = created_at or datetime.now(UTC)
        stamp = _iso(when)
        if self._spill:
            self._flush_spill()
        if with_store is not None and not self._spill:
            try:
                with self._store.batch(f"queued {action}"):
                    with_store()
                    seq = self._store.write(
                        "INSERT INTO outbox (action, payload, local_tx_id, created_at) VALUES (?, ?, ?, ?)",
                        (action, stored, local_tx_id, stamp),
                    )
                self._last_seq = max(self._last_seq, seq)
                return seq
            except StoreWriteError as exc:
                log.error("outbox: %s; queueing the message on its own", exc)
        if with_store is not None:
            try:
                with_store()
            except StoreWriteError as exc:
                log.error("outbox: %s", exc)
        if not self._spill:
            try:
                seq = self._store.write(
                    "INSERT INTO outbox (action, payload, local_tx_id, created_at) VALUES (?, ?, ?, ?)",
                    (action, stored, local_tx_id, stamp),
                    what=f"queued {action}",
                )
                self._last_seq = max(self._last_seq, seq)
                return seq
            except StoreWriteError as exc:
                log.error(
                    "outbox: %s. Keeping %s (and later messages) in memory: they are sent when the link is "
                    "up but LOST if the controller restarts before that.",
                    exc,
                    action,
                )
        self._last_seq += 1
        msg = QueuedMessage(
            self._last_seq, action, decode_payload(stored), local_tx_id, when.astimezone(UTC), 0, None
        )
        self._spill.append(msg)
        return msg.seq

    def _flush_spill(self) -> None:
        """Try to write the in-memory messages back to disk (same seqs, so in-flight ones match)."""
        try:
            with self._store.batch("in-memory outbox messages"):
                for m in self._spill:
                    self._store.execute_in_batch(
                        "INSERT INTO outbox (seq, action, payload, local_tx_id, created_at, attempts, "
                        "last_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (
                            m.seq,
                            m.action,
                            encode_payload(m.payload),
                            m.local_tx_id,
                            _iso(m.created_at),
                            m.attempts,
                            _iso(m.last_attempt_at) if m.last_attempt_at else None,
                        ),
                    )
        except StoreWriteError:
            return
        log.warning("outbox: store writable again; %d in-memory message(s) saved", len(self._spill))
        self._spill.clear()

    def _disk_rows(self, limit: int | None) -> list[QueuedMessage]:
        gone = sorted(self._gone)
        where = f"WHERE seq NOT IN ({','.join('?' * len(gone))})" if gone else ""
        lim = f"LIMIT {int(limit)}" if limit is not None else ""
        rows = self._store.query(f"SELECT {_COLUMNS} FROM outbox {where} ORDER BY seq {lim}", gone)
        out = []
        for r in rows:
            m = _row(r)
            if m.seq in self._mem_attempts:
                n, last = self._mem_attempts[m.seq]
                m = replace(m, attempts=n, last_attempt_at=last)
            out.append(m)
        return out

    def head(self) -> QueuedMessage | None:
        """The oldest queued message (the only one that may be sent: strict order)."""
        rows = self._disk_rows(1)
        if rows:
            return rows[0]
        return self._spill[0] if self._spill else None

    def pending(self) -> list[QueuedMessage]:
        return self._disk_rows(None) + list(self._spill)

    def __len__(self) -> int:
        on_disk = int(self._store.query("SELECT count(*) FROM outbox")[0][0])
        return on_disk - len(self._gone) + len(self._spill)

    def mark_attempt(self, seq: int, now: datetime) -> int:
        """Count a failed attempt (CALLERROR or timeout); returns the number of attempts so far.

        Written with synchronous=NORMAL: losing a count to a power cut costs one extra retry.
        """
        for i, m in enumerate(self._spill):
            if m.seq == seq:
                self._spill[i] = replace(m, attempts=m.attempts + 1, last_attempt_at=now)
                return m.attempts + 1
        if seq not in self._mem_attempts:
            try:
                with self._store.batch(f"attempt count of queued message {seq}", durable=False):
                    self._store.execute_in_batch(
                        "UPDATE outbox SET attempts = attempts + 1, last_attempt_at = ? WHERE seq = ?",
                        (_iso(now), seq),
                    )
                    rows = self._store.execute_in_batch(
                        "SELECT attempts FROM outbox WHERE seq = ?", (seq,)
                    ).fetchall()
                return int(rows[0][0]) if rows else 0
            except StoreWriteError as exc:
                log.error("outbox: %s; counting attempts in memory", exc)
                rows = self._store.query("SELECT attempts FROM outbox WHERE seq = ?", (seq,))
                self._mem_attempts[seq] = (int(rows[0][0]) if rows else 0, now)
        n = self._mem_attempts[seq][0] + 1
        self._mem_attempts[seq] = (n, now)
        return n

    @staticmethod
    def next_attempt_at(msg: QueuedMessage, retry_interval_s: float) -> datetime:
        """When ``msg`` may be (re)sent: last attempt + interval x attempts (OCPP 1.6: "wait
        TransactionMessageRetryInterval x number of previous attempts").  Never tried: its
        ``created_at`` (i.e. now)."""
        if msg.attempts == 0 or msg.last_attempt_at is None:
            return msg.created_at
        return msg.last_attempt_at + timedelta(seconds=max(0.0, retry_interval_s) * msg.attempts)

    def remove(self, seq: int) -> None:
        """Delete a message (answered or dropped).  Durable: a lost delete would resend it."""
        self._finish(seq, None, None)

    def complete(self, msg: QueuedMessage, response: dict[str, Any]) -> None:
        """The central system answered ``msg``: remove it and, for StartTransaction, record the
        transactionId — in one commit, so a crash cannot leave a removed Start without its id."""
        tx_id = response.get("transactionId") if msg.action == START else None
        if msg.action == START and (not isinstance(tx_id, int) or isinstance(tx_id, bool)):
            log.warning(
                "outbox: StartTransaction seq %d answered without a valid transactionId (%r); its "
                "MeterValues/StopTransaction cannot be sent",
                msg.seq,
                tx_id,
            )
            tx_id = None
        if msg.local_tx_id is not None and tx_id is not None:
            self._finish(msg.seq, msg.local_tx_id, tx_id)
        else:
            self._finish(msg.seq, None, None)

    def _finish(self, seq: int, local_tx_id: int | None, tx_id: int | None) -> None:
        for i, m in enumerate(self._spill):
            if m.seq == seq:
                del self._spill[i]
                if local_tx_id is not None and tx_id is not None:
                    self.resolve_transaction_id(local_tx_id, tx_id)
                return
        try:
            with self._store.batch(f"removal of queued message {seq}"):
                if local_tx_id is not None and tx_id is not None:
                    self._resolve_in_batch(local_tx_id, tx_id)
                found = self._store.execute_in_batch(
                    "SELECT action, local_tx_id FROM outbox WHERE seq = ?", (seq,)
                ).fetchall()
                for s in (seq, *self._gone):
                    self._store.execute_in_batch("DELETE FROM outbox WHERE seq = ?", (s,))
                if found and found[0][0] == STOP and found[0][1] is not None:
                    # StopTransaction is a transaction's last message: forget its id mapping
                    # unless something for it is still queued.
                    local = found[0][1]
                    self._store.execute_in_batch(
                        "DELETE FROM outbox_txid WHERE local_tx_id = ? "
                        "AND NOT EXISTS (SELECT 1 FROM outbox WHERE local_tx_id = ?)",
                        (local, local),
                    )
            self._gone.clear()
            self._mem_attempts.pop(seq, None)
        except StoreWriteError as exc:
            log.error(
                "outbox: %s. Message %d is answered; remembering that in memory (it would be sent again "
                "after a restart).",
                exc,
                seq,
            )
            self._gone.add(seq)
            self._mem_attempts.pop(seq, None)
            if local_tx_id is not None and tx_id is not None:
                self._mem_txid[local_tx_id] = tx_id

    # ----------------------------------------------------------------- transaction ids

    def resolve_transaction_id(self, local_tx_id: int, transaction_id: int) -> None:
        """Record the CSMS id for a local transaction (also in the store's transactions row)."""
        try:
            with self._store.batch(f"transactionId {transaction_id} of local transaction {local_tx_id}"):
                self._resolve_in_batch(local_tx_id, transaction_id)
        except StoreWriteError as exc:
            log.error("outbox: %s; keeping the transactionId in memory", exc)
            self._mem_txid[local_tx_id] = int(transaction_id)

    def _resolve_in_batch(self, local_tx_id: int, transaction_id: int) -> None:
        self._store.execute_in_batch(
            "INSERT INTO outbox_txid (local_tx_id, transaction_id) VALUES (?, ?) "
            "ON CONFLICT(local_tx_id) DO UPDATE SET transaction_id = excluded.transaction_id",
            (local_tx_id, int(transaction_id)),
        )
        self._store.execute_in_batch(
            "UPDATE transactions SET transaction_id = ? WHERE local_id = ?",
            (int(transaction_id), local_tx_id),
        )
        self._store.execute_in_batch(  # a session that ended offline learns its id here (history)
            "UPDATE sessions SET transaction_id = ? WHERE local_id = ?",
            (int(transaction_id), local_tx_id),
        )

    def transaction_id_for(self, local_tx_id: int) -> int | None:
        if local_tx_id in self._mem_txid:
            return self._mem_txid[local_tx_id]
        rows = self._store.query(
            "SELECT transaction_id FROM outbox_txid WHERE local_tx_id = ?", (local_tx_id,)
        )
        return int(rows[0][0]) if rows else None

    def payload_for_send(self, msg: QueuedMessage) -> dict[str, Any]:
        """The payload as it goes on the wire: ``transactionId`` substituted for MeterValues and
        StopTransaction of a local transaction.  Raises :class:`UnresolvedTransactionId` when the
        id is unknown and the payload has none (its StartTransaction was dropped)."""
        payload = dict(msg.payload)
        if msg.action in TRANSACTION_ID_ACTIONS and msg.local_tx_id is not None:
            tx_id = self.transaction_id_for(msg.local_tx_id)
            if tx_id is not None:
                payload["transactionId"] = tx_id
            elif "transactionId" not in payload:
                raise UnresolvedTransactionId(
                    f"{msg.action} seq {msg.seq} belongs to local transaction {msg.local_tx_id}, whose "
                    f"StartTransaction was never answered with a transactionId"
                )
        return payload


OnResult = Callable[[QueuedMessage, dict[str, Any]], Awaitable[None]]
OnDrop = Callable[[QueuedMessage, str], Awaitable[None]]
Send = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]


def _utcnow() -> datetime:
    return datetime.now(UTC)


class OutboxSender:
    """Sends the outbox head, one message at a time, strictly in order.

    ``send(action, payload)`` returns the CALLRESULT payload or raises :class:`CallErrorReceived`,
    ``TimeoutError`` (both count as an attempt) or ``ConnectionError`` (link down: not an
    attempt; the sender pauses until :meth:`set_online` (True) / :meth:`wake`, or retries after
    ``reconnect_poll_s``).  Any other exception from ``send`` (e.g. a payload the OCPP library
    refuses) also counts as an attempt, so one poisoned message cannot block the queue forever.
    ``on_result(msg, response)`` runs after the message was removed (the transactionId of a
    StartTransaction is already recorded by then).  ``attempts``/``retry_interval_s`` are read
    on every use, so ChangeConfiguration applies from the next failure on.  ``on_drop(msg, why)``
    is told about every discarded message (e.g. a dropped StartTransaction: the CSMS never saw
    it).  ``clock`` (aware UTC datetimes), ``sleep`` and ``monotonic`` are injectable for exact
    tests.
    """

    def __init__(
        self,
        outbox: Outbox,
        send: Send,
        on_result: OnResult | None = None,
        *,
        attempts: Callable[[], int],
        retry_interval_s: Callable[[], float],
        clock: Callable[[], datetime] = _utcnow,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        reconnect_poll_s: float = 30.0,
        online: bool = False,
        on_drop: OnDrop | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._outbox = outbox
        self._send = send
        self._on_result = on_result
        self._on_drop = on_drop
        self._monotonic = monotonic
        self._deadline: tuple[tuple[int, int], float] | None = None
        self._attempts = attempts
        self._interval = retry_interval_s
        self._clock = clock
        self._sleep = sleep
        self._reconnect_poll_s = reconnect_poll_s
        self._online = online
        self._kick = asyncio.Event()
        #: Number of messages dropped since start (for status/diagnostics).
        self.dropped = 0

    @property
    def online(self) -> bool:
        return self._online

    def set_online(self, online: bool) -> None:
        """Called by the link: True after BootNotification was accepted, False when it drops."""
        self._online = online
        self._kick.set()

    def wake(self) -> None:
        """A message was queued (or something else changed): look at the queue again."""
        self._kick.set()

    async def _wait(self, timeout: float | None) -> None:
        """Wait for :meth:`wake`/:meth:`set_online` or ``timeout`` seconds, whichever is first."""
        if timeout is None:
            await self._kick.wait()
            return
        if self._kick.is_set():
            return
        kick = asyncio.ensure_future(self._kick.wait())
        nap = asyncio.ensure_future(self._sleep(max(0.0, timeout)))
        try:
            await asyncio.wait({kick, nap}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (kick, nap):
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task

    async def run(self) -> None:
        """Run forever (cancel the task to stop).  Store errors are logged and retried later."""
        while True:
            self._kick.clear()
            try:
                await self._step()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("outbox sender: unexpected error; retrying in %.0f s", self._reconnect_poll_s)
                await self._wait(self._reconnect_poll_s)

    async def _step(self) -> None:
        if not self._online:
            await self._wait(None)
            return
        msg = self._outbox.head()
        if msg is None:
            await self._wait(None)
            return
        delay = self._retry_delay(msg)
        if delay > 0:
            await self._wait(delay)
            return
        try:
            payload = self._outbox.payload_for_send(msg)
        except UnresolvedTransactionId as exc:
            await self._drop(msg, str(exc))
            return
        try:
            response = await self._send(msg.action, payload)
        except ConnectionError as exc:
            # Link down: not the central system's failure, so not an attempt.  Wait for reconnect.
            log.info(
                "outbox: %s seq %d not sent, link down (%s); waiting for reconnect", msg.action, msg.seq, exc
            )
            await self._wait(self._reconnect_poll_s)
            return
        except (CallErrorReceived, TimeoutError) as exc:
            reason = str(exc) if isinstance(exc, CallErrorReceived) else "no answer (timeout)"
            await self._failed(msg, reason)
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("outbox: sending %s seq %d raised", msg.action, msg.seq)
            await self._failed(msg, f"{type(exc).__name__}: {exc}")
            return
        self._outbox.complete(msg, response if isinstance(response, dict) else {})
        if self._on_result is not None:
            try:
                await self._on_result(msg, response)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("outbox: on_result for %s seq %d failed", msg.action, msg.seq)

    def _retry_delay(self, msg: QueuedMessage) -> float:
        """Seconds until ``msg`` may be sent.  The wall-clock due time (which survives a restart)
        is turned once into a monotonic deadline, capped at interval x attempts: a wall clock
        stepped backwards (Pi without RTC, NTP correction) cannot hold the queue for hours."""
        if msg.attempts == 0:
            return 0.0
        key = (msg.seq, msg.attempts)
        if self._deadline is None or self._deadline[0] != key:
            interval = max(0.0, float(self._interval()))
            wall = (self._outbox.next_attempt_at(msg, interval) - self._clock()).total_seconds()
            self._deadline = (key, self._monotonic() + max(0.0, min(wall, interval * msg.attempts)))
        return self._deadline[1] - self._monotonic()

    async def _failed(self, msg: QueuedMessage, reason: str) -> None:
        limit = max(1, int(self._attempts()))
        attempts = self._outbox.mark_attempt(msg.seq, self._clock())
        if attempts >= limit:
            await self._drop(msg, f"{attempts} failed attempt(s), last: {reason}")
            return
        wait = max(0.0, float(self._interval())) * attempts
        log.warning(
            "outbox: %s seq %d attempt %d/%d failed (%s); retrying in %.0f s",
            msg.action,
            msg.seq,
            attempts,
            limit,
            reason,
            wait,
        )

    async def _drop(self, msg: QueuedMessage, why: str) -> None:
        self.dropped += 1
        log.error(
            "outbox: DROPPED %s seq %d (local transaction %s, queued %s) after %s; payload: %s",
            msg.action,
            msg.seq,
            msg.local_tx_id,
            msg.created_at.isoformat(),
            why,
            summarize(msg.payload),
        )
        self._outbox.remove(msg.seq)
        if self._on_drop is not None:
            try:
                await self._on_drop(msg, why)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("outbox: on_drop for %s seq %d failed", msg.action, msg.seq)

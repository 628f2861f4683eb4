"""Session history: what was charged, when, on which connector, with which card — for the owner's records
(company-car reimbursement is the common ask) and the web UI's Sessions page.

The store writes a session into its ``sessions`` table in the same commit that ends the transaction
(:meth:`chargepoint.store.Store.end_transaction`), so a finished session is never missing from the history
nor counted twice, power cuts included (a transaction recovered at start is ended there too, with reason
PowerLoss or Reboot). The card is kept only as its mask (:func:`chargepoint.privacy.mask_id_tag`): filtering
by a card number masks the number and compares masks, so the history never holds a card number. A session
still running is read from the open transaction and shown without a stop time.

Retention: ``[chargepoint] session_history_days`` (default 730: two years covers a tax year and the claim
after it; the table holds about 100 bytes a session). Older sessions are pruned when a session ends and
when the history is first read.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from chargepoint.privacy import mask_id_tag

DEFAULT_RETENTION_DAYS = 730
MAX_ROWS = 10_000


@dataclass(frozen=True)
class SessionRecord:
    transaction_id: int | None  # None: the central system has not answered its StartTransaction yet
    connector_id: int
    id_tag: str  # masked
    start: str  # ISO 8601 UTC
    stop: str | None  # None: still charging
    duration_s: float | None
    energy_wh: float | None
    stop_reason: str | None


class HistoryQueryError(ValueError):
    """A filter that cannot be used (the message says why)."""


def _parse_iso(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def _day_start(d: date) -> str:
    return datetime(d.year, d.month, d.day, tzinfo=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class SessionHistory:
    """Queries over the store's session history (and the running sessions)."""

    def __init__(self, store: Any, *, retention_days: int = DEFAULT_RETENTION_DAYS,
                 now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._store = store
        self._retention_days = int(retention_days)
        self._now = now
        self._pruned_on: date | None = None

    def prune(self) -> int:
        """Delete sessions that started before the retention window; returns how many."""
        cutoff = (self._now() - timedelta(days=self._retention_days)).strftime("%Y-%m-%dT%H:%M:%SZ")
        before = self._count()
        self._store.write("DELETE FROM sessions WHERE start_time < ?", (cutoff,), what="session history pruning",
                          durable=False)
        self._pruned_on = self._now().date()
        return before - self._count()

    def prune_if_due(self) -> None:
        """Prune once a day (called when a session ends)."""
        if self._pruned_on != self._now().date():
            self.prune()

    def _count(self) -> int:
        return int(self._store.query("SELECT count(*) FROM sessions")[0][0])

    def query(self, *, connector_id: int | None = None, id_tag: str | None = None, since: date | None = None,
              until: date | None = None, limit: int = MAX_ROWS) -> Sequence[SessionRecord]:
        """Sessions, newest first. ``id_tag`` is a card's number (or its mask); ``since``/``until`` are
        inclusive UTC dates."""
        if connector_id is not None and (isinstance(connector_id, bool) or not isinstance(connector_id, int)):
            raise HistoryQueryError("connector must be a whole number")
        if id_tag is not None and (not isinstance(id_tag, str) or not 0 < len(id_tag) <= 20):
            raise HistoryQueryError("a card is 1–20 characters")
        for name, d in (("since", since), ("until", until)):
            if d is not None and not isinstance(d, date):
                raise HistoryQueryError(f"{name} must be a date")
        if since and until and since > until:
            raise HistoryQueryError("the first day is after the last")
        if isinstance(limit, bool) or not isinstance(limit, int) or not 0 < limit <= MAX_ROWS:
            raise HistoryQueryError(f"limit must be 1–{MAX_ROWS}")
        self.prune_if_due()
        where, params = [], []  # type: ignore[var-annotated]
        if connector_id is not None:
            where.append("connector_id = ?")
            params.append(connector_id)
        if since is not None:
            where.append("start_time >= ?")
            params.append(_day_start(since))
        if until is not None:
            where.append("start_time < ?")
            params.append(_day_start(until + timedelta(days=1)))
        mask = id_tag if id_tag is None or id_tag.startswith("tag:") else mask_id_tag(id_tag)
        f_where, f_params = list(where), list(params)
        if mask is not None:
            f_where.append("id_tag_mask = ?")
            f_params.append(mask)
        finished = self._store.query(
            "SELECT s.local_id, s.connector_id, s.id_tag_mask, s.start_time, s.stop_time, s.meter_start_wh, "
            "s.meter_stop_wh, s.stop_reason, COALESCE(s.transaction_id, x.transaction_id) FROM sessions s "
            "LEFT JOIN outbox_txid x ON x.local_tx_id = s.local_id"
            + (" WHERE " + " AND ".join("s." + w for w in f_where) if f_where else "")
            + " ORDER BY s.start_time DESC, s.local_id DESC LIMIT ?", (*f_params, limit))
        running = self._store.query(
            "SELECT t.local_id, t.connector_id, t.id_tag, t.start_time, NULL, t.meter_start_wh, t.last_meter_wh, "
            "NULL, COALESCE(t.transaction_id, x.transaction_id) FROM transactions t "
            "LEFT JOIN outbox_txid x ON x.local_tx_id = t.local_id"
            + (" WHERE " + " AND ".join("t." + w for w in where) if where else ""), tuple(params))
        out: list[SessionRecord] = []
        for _local_id, cid, tag, start, stop, m0, m1, reason, tx_id in running:
            record = self._record(cid, mask_id_tag(tag), start, stop, m0, m1, reason, tx_id)
            if mask is None or record.id_tag == mask:
                out.append(record)
        for _local_id, cid, tag, start, stop, m0, m1, reason, tx_id in finished:
            out.append(self._record(cid, tag, start, stop, m0, m1, reason, tx_id))
        out.sort(key=lambda r: r.start, reverse=True)
        return out[:limit]

    def _record(self, cid: int, tag: str, start: str, stop: str | None, m0: int, m1: int | None,
                reason: str | None, tx_id: int | None) -> SessionRecord:
        t0, t1 = _parse_iso(start), _parse_iso(stop) if stop else self._now()
        duration = (t1 - t0).total_seconds() if t0 and t1 else None
        energy = float(m1 - m0) if m1 is not None and m0 is not None else None
        if energy is not None and (not math.isfinite(energy) or energy < 0):
            energy = None  # a meter swapped mid-session: no honest number
        return SessionRecord(transaction_id=tx_id, connector_id=cid, id_tag=tag, start=start, stop=stop,
                             duration_s=None if duration is None else max(0.0, duration), energy_wh=energy,
                             stop_reason=reason)

    def totals(self, records: Sequence[SessionRecord]) -> tuple[int, float]:
        """(sessions, Wh) of a query's result."""
        return len(records), sum(r.energy_wh or 0.0 for r in records)

"""Session history: what was charged, when, on which connector, with which card — for the owner's records
(company-car reimbursement is the common ask) and the web UI's Sessions page (issue 14).

**Where the rows come from.** The store writes a session into its ``sessions`` table in the same commit that
ends the transaction (:meth:`chargepoint.store.Store.end_transaction`, schema v2), so a finished session is
never missing from the history nor counted twice — power cuts included. A session that is still running is
read from the store's open-transaction row (written in the commit that queues its StartTransaction), so a
session open across a power cut stays visible, and the recovered StopTransaction (reason PowerLoss or
Reboot, OCPP 1.6 §7.46 / §4.10) closes it through the same ``end_transaction``. This is deliberately *not*
fed from the API's change stream: a subscriber's queue may drop changes when it is slow (it is bounded) and
a power cut between the change and a second write would lose the session; the store's commit cannot.

**Cards.** The history keeps a card only as :func:`chargepoint.privacy.mask_id_tag` of it. That mask already
is a keyed hash: HMAC-SHA256 under the installation's 32-byte secret (``<state_dir>/id-tag-salt``, 0600, kept
out of the SQLite file on purpose so a diagnostics archive or a copied ``state.db`` cannot reverse a 4–7
byte card UID by trying them all). Filtering by a card number masks the number and compares masks, so the
card filter works without the number ever being stored; a mask (``tag:…``, as the journal shows it) is
accepted too. 32 bits of mask: two cards of one charger collide with odds of about n²/2³³ (10⁻⁶ for 100
cards). If the secret is lost and recreated, older rows no longer match a card (their masks still group).

**Days.** ``since``/``until`` given as dates are whole *local* days of the station (the zone of the Pi, or
the one given): a reimbursement month starts at local midnight, not UTC's. Aware datetimes are exact
instants. Stored times are ISO 8601 UTC (``2026-12-02T10:00:00.000Z``, as the messages carry them).

**Retention** (``[sessions] retention_days``, default 730): two years keep the sessions of a tax year and of
the claim filed in the year after it (an employer reimburses the previous year's charging), while records of
where a person's car was do not pile up for ever (GDPR art. 5(1)(e)). Longer needs: export the CSV. Sessions
that started before the window are deleted by :meth:`SessionHistory.prune_if_due`: once a day, at the first
read or session end of that day (and at start, when the API builds the history).
"""

from __future__ import annotations

import csv
import io
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Any, NamedTuple

from chargepoint.privacy import is_mask, mask_id_tag

log = logging.getLogger(__name__)

DEFAULT_RETENTION_DAYS = 730
MAX_RETENTION_DAYS = 3650
MAX_ROWS = 10_000
MAX_CONNECTOR_ID = 1000  # far above any wallbox; keeps an SQLite INTEGER from overflowing on junk input
SESSIONS_KEYS = ("retention_days",)

#: CSV columns (a superset of the web page's first CSV: start/stop stay ISO 8601 UTC).
CSV_COLUMNS = ("transaction_id", "connector_id", "id_tag", "start", "stop", "start_local", "stop_local",
               "duration_min", "energy_kwh", "stop_reason")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # what a spreadsheet may run as a formula (OWASP CSV injection)


@dataclass(frozen=True)
class SessionRecord:
    transaction_id: int | None  # None: the central system has not answered its StartTransaction yet
    connector_id: int
    id_tag: str  # masked (chargepoint.privacy.mask_id_tag), "" for none
    start: str  # ISO 8601 UTC
    stop: str | None  # None: still charging
    duration_s: float | None
    energy_wh: float | None  # None: no honest number (meter swapped or reset mid-session)
    stop_reason: str | None  # OCPP 1.6 Reason; None while running ("Local" is the default of an ended one)


class SessionTotals(NamedTuple):
    count: int
    energy_wh: float


@dataclass(frozen=True)
class SessionsConfig:
    """``[sessions]`` of the configuration."""

    retention_days: int = DEFAULT_RETENTION_DAYS


class HistoryQueryError(ValueError):
    """A filter that cannot be used (the message says why; front ends show it as a 400)."""


def parse_sessions_config(r: Any, table: dict[str, Any]) -> SessionsConfig:
    """Read ``[sessions]`` with the configuration's reader (chargepoint.config._Reader): problems are
    collected there, so check-config reports them with the others."""
    r.unknown_keys(table, SESSIONS_KEYS, "sessions")
    days = r.get(table, "retention_days", "sessions.retention_days", int, DEFAULT_RETENTION_DAYS,
                 minimum=1, maximum=MAX_RETENTION_DAYS)
    return SessionsConfig(retention_days=days)


def _iso(ts: datetime) -> str:
    """The stored form (chargepoint.metering.iso): compared as text, so bounds must be written alike."""
    ts = ts.astimezone(UTC)
    return ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"


def _parse_iso(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        ts = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)


def safe_cell(value: object) -> str:
    """A CSV cell a spreadsheet shows as text: one starting with = + - @ (or tab / CR) gets a leading ``'``.
    Only text is touched; numbers are formatted by :func:`to_csv` itself and stay numbers."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


def _local(text: str | None, tz: tzinfo | None) -> str:
    ts = _parse_iso(text)
    return ts.astimezone(tz).strftime("%Y-%m-%d %H:%M:%S") if ts else ""


def to_csv(records: Sequence[SessionRecord], tz: tzinfo | None = None) -> str:
    """RFC 4180 CSV (CRLF, quoted where needed; UTF-8 when encoded): a header row, one row per session.

    ``start``/``stop`` are ISO 8601 UTC, ``start_local``/``stop_local`` the same instants in ``tz`` (None:
    the system's zone) as ``YYYY-MM-DD HH:MM:SS``, which spreadsheets read as a date; energy in kWh with 3
    decimals (what reimbursement forms ask), duration in minutes with 1. Text cells are formula-safe.
    """
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for r in records:
        writer.writerow([
            r.transaction_id if r.transaction_id is not None else "",
            r.connector_id,
            safe_cell(r.id_tag),
            safe_cell(r.start),
            safe_cell(r.stop),
            _local(r.start, tz),
            _local(r.stop, tz),
            f"{r.duration_s / 60:.1f}" if r.duration_s is not None else "",
            f"{r.energy_wh / 1000:.3f}" if r.energy_wh is not None else "",
            safe_cell(r.stop_reason),
        ])
    return out.getvalue()


class SessionHistory:
    """Queries over the store's session history and the running sessions; retention.

    Constructed with the store (:class:`chargepoint.store.Store`), the retention, a clock (``now``: aware UTC
    datetime) and the zone of "a day" and of the CSV's local columns (None: the system's).
    """

    def __init__(self, store: Any, *, retention_days: int = DEFAULT_RETENTION_DAYS,
                 now: Callable[[], datetime] = lambda: datetime.now(UTC), tz: tzinfo | None = None) -> None:
        self._store = store
        self._retention_days = int(retention_days)
        self._now = now
        self._tz = tz
        self._pruned_on: date | None = None

    # ------------------------------------------------------------------ retention
    def prune(self) -> int:
        """Delete sessions that started before the retention window; returns how many."""
        cutoff = _iso(self._now() - timedelta(days=self._retention_days))
        before = self._count()
        self._store.write("DELETE FROM sessions WHERE start_time < ?", (cutoff,), what="session history pruning",
                          durable=False)
        self._pruned_on = self._now().date()
        return before - self._count()

    def prune_if_due(self) -> int:
        """Prune once a (UTC) day; cheap otherwise, so call it from anything that happens regularly. A store
        that cannot be written (full card, read-only) is logged and retried the next day: the history is
        still readable."""
        today = self._now().date()
        if self._pruned_on == today:
            return 0
        try:
            return self.prune()
        except Exception as exc:  # StoreError: the store reports its own trouble; pruning can wait
            self._pruned_on = today
            log.warning("session history not pruned: %s", exc)
            return 0

    def _count(self) -> int:
        return int(self._store.query("SELECT count(*) FROM sessions")[0][0])

    # ------------------------------------------------------------------ queries
    def _bound(self, name: str, value: object, end: bool) -> str | None:
        """A filter bound as a stored-form UTC string (``end``: exclusive upper bound of ``until``)."""
        if value is None:
            return None
        if isinstance(value, str):  # a front end's text, e.g. "2026-12-01"
            if len(value) > 40:
                raise HistoryQueryError(f"{name}: a date as YYYY-MM-DD")
            try:
                value = datetime.fromisoformat(value) if "T" in value else date.fromisoformat(value)
            except ValueError:
                raise HistoryQueryError(f"{name}: {value!r} is not a date (YYYY-MM-DD)") from None
        if isinstance(value, datetime):
            if value.tzinfo is None:
                raise HistoryQueryError(f"{name}: a time needs its zone (e.g. 2026-12-01T00:00:00+01:00)")
            return _iso(value)
        if not isinstance(value, date):
            raise HistoryQueryError(f"{name} must be a date")
        if end:
            if value == date.max:
                return None
            value += timedelta(days=1)
        try:  # the system's zone: a naive local time's astimezone() knows that day's DST offset
            midnight = datetime.combine(value, time(0))
            return _iso(midnight.replace(tzinfo=self._tz) if self._tz else midnight.astimezone())
        except (OverflowError, ValueError):  # date.min in a zone east of UTC
            return None

    def sessions(self, connector_id: int | None = None, id_tag: str | None = None, since: object = None,
                 until: object = None, limit: int = MAX_ROWS) -> list[SessionRecord]:
        """Sessions (running ones included), newest first.

        ``id_tag``: a card's number (masked here) or a mask; ``since``/``until``: inclusive local dates, or
        aware datetimes, or such as ISO text; a session belongs to the day it started. Raises
        :class:`HistoryQueryError` for a filter that cannot be used.
        """
        if connector_id is not None and (isinstance(connector_id, bool) or not isinstance(connector_id, int)
                                         or not 0 <= connector_id <= MAX_CONNECTOR_ID):
            raise HistoryQueryError(f"connector must be a whole number from 0 to {MAX_CONNECTOR_ID}")
        if id_tag is not None and (not isinstance(id_tag, str) or not 0 < len(id_tag) <= 20
                                   or not id_tag.isprintable()):
            raise HistoryQueryError("a card is 1–20 printable characters (OCPP 1.6 IdToken)")
        if isinstance(limit, bool) or not isinstance(limit, int) or not 0 < limit <= MAX_ROWS:
            raise HistoryQueryError(f"limit must be 1–{MAX_ROWS}")
        lo, hi = self._bound("since", since, False), self._bound("until", until, True)
        if lo is not None and hi is not None and lo >= hi:
            raise HistoryQueryError("the first day is after the last")
        self.prune_if_due()
        where: list[str] = []
        params: list[Any] = []
        for clause, value in (("connector_id = ?", connector_id), ("start_time >= ?", lo), ("start_time < ?", hi)):
            if value is not None:
                where.append(clause)
                params.append(value)
        mask = None if id_tag is None else id_tag.lower() if is_mask(id_tag.lower()) else mask_id_tag(id_tag)
        f_where, f_params = list(where), list(params)
        if mask is not None:
            f_where.append("id_tag_mask = ?")
            f_params.append(mask)
        finished = self._store.query(
            "SELECT s.connector_id, s.id_tag_mask, s.start_time, s.stop_time, s.meter_start_wh, "
            "s.meter_stop_wh, s.stop_reason, COALESCE(s.transaction_id, x.transaction_id) FROM sessions s "
            "LEFT JOIN outbox_txid x ON x.local_tx_id = s.local_id"
            + (" WHERE " + " AND ".join("s." + w for w in f_where) if f_where else "")
            + " ORDER BY s.start_time DESC, s.local_id DESC LIMIT ?", (*f_params, limit))
        running = self._store.query(
            "SELECT t.connector_id, t.id_tag, t.start_time, NULL, t.meter_start_wh, t.last_meter_wh, "
            "NULL, COALESCE(t.transaction_id, x.transaction_id) FROM transactions t "
            "LEFT JOIN outbox_txid x ON x.local_tx_id = t.local_id"
            + (" WHERE " + " AND ".join("t." + w for w in where) if where else ""), tuple(params))
        out: list[SessionRecord] = []
        for cid, tag, start, stop, m0, m1, reason, tx_id in running:
            record = self._record(cid, mask_id_tag(tag), start, stop, m0, m1, reason, tx_id)
            if mask is None or record.id_tag == mask:
                out.append(record)
        out += [self._record(*row) for row in finished]
        out.sort(key=lambda r: r.start, reverse=True)
        return out[:limit]

    query = sessions  # the name the web UI's Sessions page first coded against

    def _record(self, cid: int, tag: str, start: str, stop: str | None, m0: int | None, m1: int | None,
                reason: str | None, tx_id: int | None) -> SessionRecord:
        t0, t1 = _parse_iso(start), _parse_iso(stop) if stop else self._now()
        duration = (t1 - t0).total_seconds() if t0 and t1 else None
        energy = float(m1 - m0) if m1 is not None and m0 is not None else None
        if energy is not None and (not math.isfinite(energy) or energy < 0):
            energy = None  # a meter swapped or reset mid-session: no honest number
        return SessionRecord(transaction_id=tx_id, connector_id=cid, id_tag=tag or "", start=start, stop=stop,
                             duration_s=None if duration is None else max(0.0, duration), energy_wh=energy,
                             stop_reason=reason)

    def totals(self, records: Sequence[SessionRecord] | None = None, **filters: Any) -> SessionTotals:
        """(count, Wh) of ``records``, or of :meth:`sessions` with ``filters``; sessions without an honest
        energy count as sessions with 0 Wh."""
        records = self.sessions(**filters) if records is None else records
        return SessionTotals(len(records), sum(r.energy_wh or 0.0 for r in records))

    def to_csv(self, records: Sequence[SessionRecord]) -> str:
        """:func:`to_csv` in this history's zone (front ends call it through the API's ``history``)."""
        return to_csv(records, self._tz)

    def export_csv(self, **filters: Any) -> str:
        """The CSV of :meth:`sessions` with ``filters`` (same arguments, same errors)."""
        return self.to_csv(self.sessions(**filters))

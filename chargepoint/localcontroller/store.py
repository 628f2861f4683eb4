"""The local controller's persistent state, in its own tables of a :class:`chargepoint.store.Store`.

The store gives the engine (SQLite, WAL, one fsync per batch, corruption handling, exclusive lock); this
module owns the local controller's tables, as :mod:`chargepoint.protocol.outbox` owns the outbox's:

* ``lc_queue``: CALLs from a downstream charge point that were answered locally (the central system was
  unreachable) and still have to reach it, in order, per charge point. Written *before* the local answer
  is sent, removed when the central system answered (OCPP 1.6 §4.7/§4.8/§4.10: transaction-related
  messages must reach the central system, in order, without loss).
* ``lc_done``: a digest of every transaction-related CALL the central system has answered, with that
  answer, for a day. A charge point that did not see the answer (the local controller died in between)
  sends the same message again; it gets the recorded answer instead of a second copy upstream.
* ``lc_txmap``: local transaction ids handed out while offline → the central system's ids.
* ``lc_installed``: the last allocation (amps, validTo) and safe default installed on each charge point,
  so a restarted local controller knows what the boxes may still draw.
* ``lc_auth``: idTagInfo the central system gave (Authorize / StartTransaction), for offline answers.
* ``lc_profiles``: the charging profiles the central system installed, per identity: on each downstream box
  (as forwarded and accepted: what the box holds, so the group balancing knows the box's own caps after a
  restart of the local controller) and on the local controller's own identity (the group limit, which
  must hold across a restart as a charge point's profiles do, OCPP 1.6 §3.13.2).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from chargepoint.smart.profiles import ChargingProfile, ProfileRejected, profile_from_ocpp, profile_to_ocpp
from chargepoint.store import Store

_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS lc_queue (seq INTEGER PRIMARY KEY AUTOINCREMENT, cp TEXT NOT NULL,
       action TEXT NOT NULL, payload TEXT NOT NULL, digest TEXT NOT NULL, local_tx INTEGER)""",
    """CREATE TABLE IF NOT EXISTS lc_done (digest TEXT PRIMARY KEY, answer TEXT NOT NULL, at TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS lc_txmap (cp TEXT NOT NULL, local_tx INTEGER NOT NULL, tx INTEGER,
       PRIMARY KEY (cp, local_tx))""",
    """CREATE TABLE IF NOT EXISTS lc_installed (cp TEXT PRIMARY KEY, amps REAL, valid_to TEXT,
       safe_default REAL)""",
    """CREATE TABLE IF NOT EXISTS lc_auth (id_tag TEXT PRIMARY KEY, info TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS lc_boot (cp TEXT PRIMARY KEY, payload TEXT NOT NULL, sent INTEGER NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS lc_open_tx (cp TEXT NOT NULL, tx INTEGER NOT NULL, connector INTEGER NOT NULL,
       start TEXT, PRIMARY KEY (cp, tx))""",
    """CREATE TABLE IF NOT EXISTS lc_profiles (owner TEXT NOT NULL, id INTEGER NOT NULL, connector INTEGER NOT NULL,
       profile TEXT NOT NULL, PRIMARY KEY (owner, id))""",
]


def digest(cp: str, action: str, payload: dict[str, Any]) -> str:
    """The identity of a message for de-duplication: charge point, action and the canonical payload
    (a StartTransaction carries its timestamp and meterStart, a StopTransaction its transactionId and
    timestamp, a MeterValues its sample timestamps: a repeat is byte-for-byte the same event)."""
    text = json.dumps([cp, action, payload], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class Queued:
    seq: int
    cp: str
    action: str
    payload: dict[str, Any]
    digest: str
    local_tx: int | None


class LcStore:
    def __init__(self, store: Store) -> None:
        self.store = store
        with store.batch("local controller tables"):
            for sql in _SCHEMA:
                store.execute_in_batch(sql)
        # Asked on every forwarded message: kept in memory (only this class writes these tables).
        self._queue_counts: dict[str, int] = {
            cp: int(n) for cp, n in store.query("SELECT cp, COUNT(*) FROM lc_queue GROUP BY cp")}
        self._unsent_boots: set[str] = {cp for (cp,) in store.query("SELECT cp FROM lc_boot WHERE sent = 0")}

    @classmethod
    def open(cls, state_dir: Path | None) -> LcStore:
        return cls(Store.open(state_dir) if state_dir is not None else Store.memory())

    def close(self) -> None:
        self.store.close()

    # ------------------------------------------------------------------ queue
    def enqueue(self, cp: str, action: str, payload: dict[str, Any], local_tx: int | None = None) -> int:
        seq = self.store.write(
            "INSERT INTO lc_queue (cp, action, payload, digest, local_tx) VALUES (?, ?, ?, ?, ?)",
            (cp, action, json.dumps(payload, separators=(",", ":")), digest(cp, action, payload), local_tx),
            what="queued message",
        )
        self._queue_counts[cp] = self._queue_counts.get(cp, 0) + 1
        return seq

    def queued(self, cp: str | None = None) -> list[Queued]:
        sql = "SELECT seq, cp, action, payload, digest, local_tx FROM lc_queue"
        rows = self.store.query(sql + (" WHERE cp = ? ORDER BY seq" if cp else " ORDER BY seq"),
                                (cp,) if cp else ())
        return [Queued(r[0], r[1], r[2], json.loads(r[3]), r[4], r[5]) for r in rows]

    def queue_length(self, cp: str | None = None) -> int:
        if cp is None:
            return sum(self._queue_counts.values())
        return self._queue_counts.get(cp, 0)

    def is_queued(self, dig: str) -> bool:
        return bool(self.store.query("SELECT 1 FROM lc_queue WHERE digest = ?", (dig,)))

    def delivered(self, q: Queued, answer: dict[str, Any], now: datetime) -> None:
        """Queue row answered by the central system: removed and recorded as done, in one commit."""
        with self.store.batch("delivered message"):
            gone = self.store.execute_in_batch("DELETE FROM lc_queue WHERE seq = ?", (q.seq,)).rowcount
            self._done(q.digest, answer, now)
        if gone:
            self._queue_counts[q.cp] = max(0, self._queue_counts.get(q.cp, 0) - 1)

    def _done(self, dig: str, answer: dict[str, Any], now: datetime) -> None:
        self.store.execute_in_batch(
            "INSERT OR REPLACE INTO lc_done (digest, answer, at) VALUES (?, ?, ?)",
            (dig, json.dumps(answer), now.isoformat()))

    def record_done(self, dig: str, answer: dict[str, Any], now: datetime, *, durable: bool = True) -> None:
        """The central system answered a box's message sent straight through. ``durable=False`` (NORMAL:
        survives a crash of the process, not a power cut of the local controller's own computer within the
        OS's write-back time) is for MeterValues: the record only keeps a repeat from reaching the central
        system twice, and a repeated sample carries its own timestamps; the box keeps every message until
        answered, so nothing is lost either way."""
        with self.store.batch("answered message", durable=durable):
            self._done(dig, answer, now)

    def done_answer(self, dig: str) -> dict[str, Any] | None:
        rows = self.store.query("SELECT answer FROM lc_done WHERE digest = ?", (dig,))
        return json.loads(rows[0][0]) if rows else None

    def prune(self, now: datetime, keep: timedelta = timedelta(days=1)) -> None:
        self.store.write("DELETE FROM lc_done WHERE at < ?", ((now - keep).isoformat(),), durable=False)

    # ------------------------------------------------------------------ transaction ids
    def new_local_tx(self, cp: str) -> int:
        """A local transaction id: negative, so it never collides with the central system's (which
        are positive in practice); unique per charge point."""
        rows = self.store.query("SELECT MIN(local_tx) FROM lc_txmap WHERE cp = ?", (cp,))
        low = rows[0][0] if rows and rows[0][0] is not None else 0
        local = min(low, 0) - 1
        self.store.write("INSERT INTO lc_txmap (cp, local_tx, tx) VALUES (?, ?, NULL)", (cp, local),
                         what="local transaction id")
        return local

    def map_tx(self, cp: str, local_tx: int, tx: int) -> None:
        self.store.write("UPDATE lc_txmap SET tx = ? WHERE cp = ? AND local_tx = ?", (tx, cp, local_tx))

    def tx_for(self, cp: str, local_tx: int) -> int | None:
        rows = self.store.query("SELECT tx FROM lc_txmap WHERE cp = ? AND local_tx = ?", (cp, local_tx))
        return rows[0][0] if rows else None

    def local_for(self, cp: str, tx: int) -> int | None:
        rows = self.store.query("SELECT local_tx FROM lc_txmap WHERE cp = ? AND tx = ?", (cp, tx))
        return rows[0][0] if rows else None

    # ------------------------------------------------------------------ open transactions
    def open_transaction(self, cp: str, tx: int, connector: int, start: datetime | None) -> None:
        """A box's transaction as the box knows it (its transactionId): the connector its TxProfiles apply to
        (OCPP 1.6 §3.13.1), across a reconnect and a restart of ours. Not fsynced: losing it costs the cap of
        a TxProfile until the transaction ends, never a message."""
        self.store.write("INSERT OR REPLACE INTO lc_open_tx (cp, tx, connector, start) VALUES (?, ?, ?, ?)",
                         (cp, tx, connector, start.isoformat() if start else None), what="open transaction",
                         durable=False)

    def close_transaction(self, cp: str, tx: int) -> None:
        self.store.write("DELETE FROM lc_open_tx WHERE cp = ? AND tx = ?", (cp, tx), what="open transaction",
                         durable=False)

    def open_transactions(self) -> dict[str, dict[int, tuple[int, datetime | None]]]:
        out: dict[str, dict[int, tuple[int, datetime | None]]] = {}
        for cp, tx, connector, start in self.store.query("SELECT cp, tx, connector, start FROM lc_open_tx"):
            out.setdefault(cp, {})[int(tx)] = (int(connector), datetime.fromisoformat(start) if start else None)
        return out

    # ------------------------------------------------------------------ installed limits
    def save_installed(self, cp: str, amps: float | None, valid_to: datetime | None,
                       safe_default: float | None) -> None:
        self.store.write(
            "INSERT OR REPLACE INTO lc_installed (cp, amps, valid_to, safe_default) VALUES (?, ?, ?, ?)",
            (cp, amps, valid_to.isoformat() if valid_to else None, safe_default),
            what="installed limit", durable=False)

    def installed(self) -> dict[str, tuple[float | None, datetime | None, float | None]]:
        out = {}
        for cp, amps, vt, safe in self.store.query("SELECT cp, amps, valid_to, safe_default FROM lc_installed"):
            out[cp] = (amps, datetime.fromisoformat(vt) if vt else None, safe)
        return out

    # ------------------------------------------------------------------ authorization and boot
    def put_auth(self, id_tag: str, info: dict[str, Any]) -> None:
        self.store.write("INSERT OR REPLACE INTO lc_auth (id_tag, info) VALUES (?, ?)",
                         (id_tag, json.dumps(info)), durable=False)

    def auth(self, id_tag: str) -> dict[str, Any] | None:
        rows = self.store.query("SELECT info FROM lc_auth WHERE id_tag = ?", (id_tag,))
        return json.loads(rows[0][0]) if rows else None

    def save_boot(self, cp: str, payload: dict[str, Any], sent: bool) -> None:
        self.store.write("INSERT OR REPLACE INTO lc_boot (cp, payload, sent) VALUES (?, ?, ?)",
                         (cp, json.dumps(payload), int(sent)))
        if sent:
            self._unsent_boots.discard(cp)
        else:
            self._unsent_boots.add(cp)

    def has_unsent_boot(self, cp: str) -> bool:
        return cp in self._unsent_boots

    def unsent_boot(self, cp: str) -> dict[str, Any] | None:
        rows = self.store.query("SELECT payload FROM lc_boot WHERE cp = ? AND sent = 0", (cp,))
        return json.loads(rows[0][0]) if rows else None


class ProfileMirror:
    """:class:`chargepoint.smart.profiles.ProfileStore` for one identity's profiles in ``lc_profiles``."""

    def __init__(self, store: LcStore, owner: str) -> None:
        self._store, self._owner = store.store, owner

    def save(self, connector_id: int, profile: ChargingProfile) -> None:
        self._store.write("INSERT OR REPLACE INTO lc_profiles (owner, id, connector, profile) VALUES (?, ?, ?, ?)",
                          (self._owner, profile.charging_profile_id, connector_id,
                           json.dumps(profile_to_ocpp(profile))), what="charging profile")

    def delete(self, profile_id: int) -> None:
        self._store.write("DELETE FROM lc_profiles WHERE owner = ? AND id = ?", (self._owner, profile_id),
                          what="charging profile")

    def load_all(self) -> list[tuple[int, ChargingProfile]]:
        out = []
        for connector, text in self._store.query("SELECT connector, profile FROM lc_profiles WHERE owner = ?",
                                                  (self._owner,)):
            try:
                out.append((int(connector), profile_from_ocpp(json.loads(text))))
            except (ProfileRejected, ValueError, TypeError, KeyError):
                continue  # written by us from an accepted profile: only a newer, stricter parser refuses it
        return out


def utcnow() -> datetime:
    return datetime.now(UTC)

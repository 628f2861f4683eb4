"""Persistent state store (SQLite, standard library).

Why this exists: a wallbox loses power, network and its process. What the central system
changed (configuration, availability, profiles, local list), what is in progress (open
transactions with their last meter register, reservations) and what still has to be told
(the outbox, see :mod:`chargepoint.protocol.outbox`) must survive that.

Design decisions:

* One connection, used from the asyncio loop thread only; every call is one short
  transaction (a row or a handful of rows), so it does not stall the loop noticeably.
* WAL journal.  ``synchronous`` is FULL for money-relevant writes (transactions, outbox,
  meter register, reset marker) and NORMAL for cheap-to-lose ones (authorization cache):
  SQLite's ``synchronous`` is per connection, so it is switched per write.  In WAL mode a
  later FULL commit also makes every earlier NORMAL commit durable (the WAL is append-only),
  so order is never violated.
* Small pages (default 1 KiB): every commit appends each changed page to the WAL, so the
  bytes written per meter sample are roughly ``changed pages x page size``.  This is the knob
  for SD-card wear (see tests/bench/bench_store.py).
* Schema versioned in ``schema_version``; :data:`MIGRATIONS` is an ordered list, each entry
  runs in one transaction together with its version bump.
* A corrupt file is moved aside (``state.db.corrupt-<UTC timestamp>``) and the store starts
  empty: a charger that refuses to run forever because of a bad SD-card sector is worse than
  one that lost its queue.  A directory that cannot be created or written raises
  :class:`StoreUnavailable`; the controller then runs on :meth:`Store.memory` (seeded with what
  could still be read) and says so.
* Write failures (disk full, read-only remount, I/O error) raise :class:`StoreWriteError`
  with a message that says what was not saved and what to check.  Callers decide; the
  controller logs it and keeps charging.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

log = logging.getLogger(__name__)

DB_NAME = "state.db"
DEFAULT_PAGE_SIZE = 1024
#: WAL frames before an automatic checkpoint.  With 1 KiB pages 1000 frames is ~1 MiB of WAL;
#: the WAL file is reused from its start after a checkpoint, so it does not keep growing.
WAL_AUTOCHECKPOINT = 1000
JOURNAL_SIZE_LIMIT = 2 * 1024 * 1024

Availability = Literal["Operative", "Inoperative"]
_AVAILABILITY_VALUES = ("Operative", "Inoperative")


class StoreError(Exception):
    """Base class of every store failure."""


class StoreUnavailable(StoreError):
    """The state directory or database cannot be used at all (not creatable, read-only, too new)."""


class StoreWriteError(StoreError):
    """A write did not happen.  ``kind`` is one of 'disk_full', 'read_only', 'io_error', 'other'."""

    def __init__(self, message: str, kind: str = "other") -> None:
        super().__init__(message)
        self.kind = kind


# --------------------------------------------------------------------------- rows


@dataclass(frozen=True)
class TransactionRow:
    """An open (not yet ended) transaction as persisted.

    ``local_id`` is assigned by the store, strictly increasing and never reused (AUTOINCREMENT),
    so queued outbox messages can refer to it even after the row is gone.  ``transaction_id`` is
    the CSMS id once StartTransaction.conf arrived (None while it is queued, e.g. offline).
    ``stop_pending`` is set when the charge point decided to stop (reason, time, meter) but the
    transaction is not ended yet; after a restart the controller finishes the stop with these.
    """

    local_id: int
    connector_id: int
    id_tag: str
    start_time: str
    meter_start_wh: int
    reservation_id: int | None
    transaction_id: int | None
    last_meter_wh: int
    last_meter_time: str
    stop_pending: bool
    stop_reason: str | None
    stop_time: str | None
    stop_meter_wh: int | None
    stop_id_tag: str | None


@dataclass(frozen=True)
class AuthRow:
    """One local authorization list or cache entry (OCPP 1.6 IdTagInfo flattened)."""

    id_tag: str
    status: str
    expiry_date: str | None = None
    parent_id_tag: str | None = None


@dataclass(frozen=True)
class ReservationRow:
    reservation_id: int
    connector_id: int
    id_tag: str
    expiry_date: str
    parent_id_tag: str | None = None


# --------------------------------------------------------------------------- schema

Migration = Callable[[sqlite3.Connection], None]


def run_script(conn: sqlite3.Connection, script: str) -> None:
    """Run several statements inside the current transaction (``executescript`` would COMMIT first)."""
    buf = ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            conn.execute(buf)
            buf = ""
    if buf.strip() and not all(ln.strip().startswith("--") for ln in buf.strip().splitlines()):
        raise ValueError(f"incomplete SQL statement in migration: {buf.strip()[:80]}")


def _v1(conn: sqlite3.Connection) -> None:
    run_script(
        conn,
        """
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
        CREATE TABLE config (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
        CREATE TABLE availability (
            connector_id INTEGER PRIMARY KEY,
            status TEXT NOT NULL CHECK (status IN ('Operative', 'Inoperative'))
        );
        CREATE TABLE transactions (
            local_id INTEGER PRIMARY KEY AUTOINCREMENT,
            connector_id INTEGER NOT NULL,
            id_tag TEXT NOT NULL,
            start_time TEXT NOT NULL,
            meter_start_wh INTEGER NOT NULL,
            reservation_id INTEGER,
            transaction_id INTEGER,
            last_meter_wh INTEGER NOT NULL,
            last_meter_time TEXT NOT NULL,
            stop_pending INTEGER NOT NULL DEFAULT 0,
            stop_reason TEXT,
            stop_time TEXT,
            stop_meter_wh INTEGER,
            stop_id_tag TEXT
        );
        CREATE TABLE charging_profiles (
            profile_id INTEGER PRIMARY KEY,
            connector_id INTEGER NOT NULL,
            json TEXT NOT NULL
        );
        CREATE TABLE local_list (
            id_tag TEXT PRIMARY KEY, status TEXT NOT NULL, expiry_date TEXT, parent_id_tag TEXT
        ) WITHOUT ROWID;
        CREATE TABLE auth_cache (
            id_tag TEXT PRIMARY KEY, status TEXT NOT NULL, expiry_date TEXT, parent_id_tag TEXT,
            updated_at TEXT NOT NULL
        ) WITHOUT ROWID;
        CREATE TABLE reservations (
            reservation_id INTEGER PRIMARY KEY,
            connector_id INTEGER NOT NULL,
            id_tag TEXT NOT NULL,
            parent_id_tag TEXT,
            expiry_date TEXT NOT NULL
        );
        -- Owned by chargepoint.protocol.outbox.  seq is the rowid: max+1 on insert, so strictly
        -- increasing among queued rows (no AUTOINCREMENT: that would write one more page per
        -- enqueue on the hot path).
        CREATE TABLE outbox (
            seq INTEGER PRIMARY KEY,
            action TEXT NOT NULL,
            payload TEXT NOT NULL,
            local_tx_id INTEGER,
            created_at TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            last_attempt_at TEXT
        );
        -- local transaction id -> CSMS transactionId, filled from StartTransaction.conf.
        CREATE TABLE outbox_txid (local_tx_id INTEGER PRIMARY KEY, transaction_id INTEGER NOT NULL);
        """,
    )


# To add v2: write ``def _v2(conn): conn.execute("ALTER TABLE transactions ADD COLUMN ...")``
# (or CREATE TABLE ..., or a data fix-up with UPDATE) and append it below.  Never edit or
# reorder an entry that has shipped: installed stores have already run it.  Each entry runs in
# one transaction with its version bump, so a power cut mid-migration leaves the old version.
def _v2(conn: sqlite3.Connection) -> None:
    """Session history (chargepoint.sessions): one row per finished transaction, the id tag masked."""
    run_script(
        conn,
        """
        CREATE TABLE sessions (
            local_id INTEGER PRIMARY KEY,
            connector_id INTEGER NOT NULL,
            id_tag_mask TEXT NOT NULL,
            start_time TEXT NOT NULL,
            stop_time TEXT NOT NULL,
            meter_start_wh INTEGER NOT NULL,
            meter_stop_wh INTEGER NOT NULL,
            stop_reason TEXT,
            transaction_id INTEGER
        );
        CREATE INDEX sessions_by_start ON sessions (start_time);
        """,
    )


MIGRATIONS: list[Migration] = [_v1, _v2]


def logged_on_failure(fn: Callable[..., Any], default: Any, *args: Any) -> Any:
    """Call a store function; a store failure is logged and ``default`` returned, so the charger keeps
    running on what it has in memory (the store's own messages say what to do)."""
    try:
        return fn(*args)
    except StoreError as exc:
        log.error("state store: %s", exc)
        return default


def _now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _error_kind(exc: sqlite3.Error) -> str:
    name = getattr(exc, "sqlite_errorname", "") or ""
    text = str(exc).lower()
    if name.startswith("SQLITE_FULL") or "disk is full" in text:
        return "disk_full"
    if name.startswith("SQLITE_READONLY") or "readonly" in text or "read-only" in text:
        return "read_only"
    if name.startswith("SQLITE_IOERR") or "disk i/o error" in text:
        return "io_error"
    if name.startswith(("SQLITE_CANTOPEN", "SQLITE_PERM")) or "unable to open" in text:
        return "read_only"
    return "other"


_HINTS = {
    "disk_full": "the file system holding the state directory is full; free space "
    "(e.g. `journalctl --vacuum-size=50M`, old firmware images) — charging continues, but this "
    "state is only kept in memory until then",
    "read_only": "the state directory is read-only (SD card remounted read-only after I/O errors? "
    "check `dmesg` and `mount`) — charging continues, but this state is only kept in memory",
    "io_error": "I/O error from the storage (failing SD card? check `dmesg`) — charging continues, "
    "but this state is only kept in memory",
    "other": "charging continues, but this state is only kept in memory",
}


def _is_corruption(exc: sqlite3.Error) -> bool:
    name = getattr(exc, "sqlite_errorname", "") or ""
    text = str(exc).lower()
    return (
        name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB"))
        or "not a database" in text
        or "malformed" in text
        or "corrupt" in text
    )


class _Corrupt(Exception):
    """Internal: the file is corrupt; ``conn`` is still open (see :meth:`Store.open`)."""

    def __init__(self, error: sqlite3.DatabaseError, conn: sqlite3.Connection) -> None:
        super().__init__(str(error))
        self.error = error
        self.conn = conn


class Store:
    """The persistent state of the charge point.  Create with :meth:`open` or :meth:`memory`."""

    def __init__(self, conn: sqlite3.Connection, path: Path | None) -> None:
        self._conn = conn
        self.path = path
        #: Set by :meth:`open` when a corrupt database was moved aside (the new name).
        self.moved_aside: Path | None = None
        self._depth = 0
        self._sync: str | None = None
        self._last_volatile = 0

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(cls, state_dir: Path, *, page_size: int = DEFAULT_PAGE_SIZE, exclusive: bool = True) -> Store:
        """Open (creating if needed) ``state_dir/state.db``.

        Raises :class:`StoreUnavailable` when the directory cannot be created or written or the
        database was written by a newer release; the message says what to do.  A corrupt
        database is moved aside and an empty store is returned (``moved_aside`` names the file).

        ``exclusive`` (default) holds the file lock for the life of the connection, which keeps
        the WAL index out of shared memory (see ``_open_file``); other processes cannot read the
        store meanwhile, so a status command must ask the running controller instead.
        """
        state_dir = Path(state_dir)
        try:
            state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreUnavailable(
                f"state directory {state_dir} cannot be created ({exc.strerror or exc}); create it and "
                f"make it writable for the charge point service, or set another state directory. "
                f"Running without persistence: transactions and queued messages are lost on restart."
            ) from exc
        path = state_dir / DB_NAME
        moved: Path | None = None
        for _ in range(2):
            try:
                store = cls._open_file(path, page_size, exclusive)
            except _Corrupt as bad:
                try:
                    if moved is None:
                        moved = cls._move_aside(path, bad.error)
                        continue
                finally:
                    # Closed only after the move: closing first lets SQLite delete the -wal file,
                    # which may hold the most recent committed rows.
                    bad.conn.close()
                raise StoreUnavailable(cls._unavailable_message(path, bad.error)) from bad.error
            except sqlite3.DatabaseError as exc:
                raise StoreUnavailable(cls._unavailable_message(path, exc)) from exc
            store.moved_aside = moved
            return store
        raise StoreUnavailable(f"state store {path} is still unusable after moving the corrupt file aside")

    @classmethod
    def memory(cls, seed: Path | None = None) -> Store:
        """A store that lives in RAM only (fallback when the state directory is unusable).

        ``seed`` (a state.db path) is copied in if it can still be read — e.g. from a read-only
        file system — so open transactions and queued messages survive into this run at least.
        """
        conn = sqlite3.connect(":memory:", isolation_level=None)
        if seed is not None and Path(seed).exists():
            if cls._seed_from(Path(seed), conn):
                log.warning("state store: running in memory, seeded from %s (not writable)", seed)
            else:
                log.warning("state store: %s could not be read; running in memory with an empty store", seed)
        store = cls(conn, None)
        try:
            store._migrate()
        except (sqlite3.Error, StoreUnavailable) as exc:
            # A seed from a newer release or a broken seed: start the memory store empty.
            log.warning(
                "state store: seed %s not usable (%s); running in memory with an empty store", seed, exc
            )
            conn.close()
            store = cls(sqlite3.connect(":memory:", isolation_level=None), None)
            store._migrate()
        return store

    @staticmethod
    def _seed_from(seed: Path, dest: sqlite3.Connection) -> bool:
        """Copy a database that cannot be opened for writing into ``dest``.

        The -wal file holds the latest commits (our WAL is checkpointed only every ~1000 frames),
        and SQLite cannot replay it from a read-only directory, so the pair is first copied to a
        RAM-backed directory and opened there.  Last resort: ``immutable=1``, which ignores the WAL.
        """
        wal = seed.with_name(seed.name + "-wal")
        for base in ("/dev/shm", "/run", tempfile.gettempdir()):
            if not os.path.isdir(base):
                continue
            try:
                with tempfile.TemporaryDirectory(dir=base, prefix="chargepoint-seed-") as tmp:
                    copy = Path(tmp) / seed.name
                    shutil.copyfile(seed, copy)
                    if wal.exists():
                        shutil.copyfile(wal, copy.with_name(copy.name + "-wal"))
                    src = sqlite3.connect(str(copy), isolation_level=None)
                    try:
                        src.execute("SELECT count(*) FROM sqlite_master").fetchone()
                        src.backup(dest)
                    finally:
                        src.close()
                    return True
            except (OSError, sqlite3.Error) as exc:
                log.debug("could not seed memory store via %s: %s", base, exc)
        try:
            src = sqlite3.connect(f"file:{seed}?immutable=1", uri=True, isolation_level=None)
            try:
                src.execute("SELECT count(*) FROM sqlite_master").fetchone()
                src.backup(dest)
            finally:
                src.close()
        except sqlite3.Error as exc:
            log.debug("could not seed memory store from %s: %s", seed, exc)
            return False
        if wal.exists():
            log.warning(
                "state store: seeded from %s without its -wal file: the latest changes are missing", seed
            )
        return True

    @classmethod
    def _open_file(cls, path: Path, page_size: int, exclusive: bool) -> Store:
        conn = sqlite3.connect(str(path), isolation_level=None, timeout=1.0)
        try:
            if exclusive:
                # WAL index in process memory instead of an mmap'ed -shm file: a write to an
                # mmap'ed page of a file system the kernel remounted read-only (SD card errors)
                # raises SIGBUS and would kill the controller; a failing write() is just an error.
                # Set before anything reads the file: SQLite decides at the first access of a WAL
                # database whether the index is shared memory, and an existing store (every restart)
                # is WAL already ("no shared-memory wal-index is ever created" only if EXCLUSIVE comes
                # first, https://www.sqlite.org/wal.html#noshm).
                conn.execute("PRAGMA locking_mode=EXCLUSIVE")
            # Reading the header first surfaces "file is not a database" before anything else.
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            if not cls._has_tables(conn):
                conn.execute(f"PRAGMA page_size={int(page_size)}")
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                log.warning("state store %s: WAL journal not available (got %s)", path, mode)
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT}")
            conn.execute(f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT}")
            check = conn.execute("PRAGMA quick_check").fetchall()
            if check != [("ok",)]:
                raise sqlite3.DatabaseError(
                    "database disk image is malformed: " + "; ".join(str(r[0]) for r in check[:3])
                )
            store = cls(conn, path)
            store._sync = "FULL"
            store._migrate()
            # Prove we can write (a read-only file system opens fine and fails only here).
            store.set_meta("opened_at", _now_iso())
            if exclusive:
                cls._remove_stale_shm(path)
        except StoreWriteError as exc:
            cause = exc.__cause__
            if isinstance(cause, sqlite3.DatabaseError) and _is_corruption(cause):
                raise _Corrupt(cause, conn) from exc
            conn.close()
            if isinstance(cause, sqlite3.Error):
                raise cause from exc
            raise sqlite3.OperationalError(str(exc)) from exc
        except sqlite3.DatabaseError as exc:
            if _is_corruption(exc):
                raise _Corrupt(exc, conn) from exc
            conn.close()
            raise
        except BaseException:
            conn.close()
            raise
        return store

    @staticmethod
    def _remove_stale_shm(path: Path) -> None:
        """A -shm file left by a run that used shared memory (a release before this fix, a power cut):
        this connection holds the exclusive lock and never uses it, so no one else can. Removed so that
        nothing on the card looks like a mapped index."""
        shm = path.with_name(path.name + "-shm")
        try:
            shm.unlink()
        except FileNotFoundError:
            return
        except OSError as exc:
            log.debug("state store: stale %s not removed: %s", shm, exc)
            return
        log.info("state store: removed the stale %s (the WAL index is kept in memory)", shm.name)

    @staticmethod
    def _has_tables(conn: sqlite3.Connection) -> bool:
        return conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] > 0

    @staticmethod
    def _unavailable_message(path: Path, exc: sqlite3.Error) -> str:
        kind = _error_kind(exc)
        if kind == "read_only":
            what = (
                f"state store {path} cannot be written ({exc}): the state directory is read-only or not "
                f"writable for this user; check `mount` / `dmesg` (an SD card with I/O errors is remounted "
                f"read-only) and the directory's owner"
            )
        elif kind == "disk_full":
            what = f"state store {path} cannot be opened because the disk is full ({exc}); free space"
        else:
            what = f"state store {path} cannot be opened ({exc})"
        return what + ". Running without persistence: transactions and queued messages are lost on restart."

    @staticmethod
    def _move_aside(path: Path, exc: sqlite3.Error) -> Path:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        target = path.with_name(f"{path.name}.corrupt-{stamp}")
        n = 1
        while target.exists():
            target = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
            n += 1
        try:
            os.replace(path, target)
            for suffix in ("-wal", "-shm"):
                side = path.with_name(path.name + suffix)
                if side.exists():
                    # Keep the pair together so `sqlite3 <target> .recover` sees the WAL too.
                    os.replace(side, target.with_name(target.name + suffix))
        except OSError as move_exc:
            raise StoreUnavailable(
                f"state store {path} is corrupt ({exc}) and could not be moved aside ({move_exc}); "
                f"remove or rename it by hand. Running without persistence."
            ) from move_exc
        log.error(
            "state store %s is corrupt (%s). Moved it aside to %s and starting with an EMPTY store: "
            "open transactions, queued transaction messages, configuration changes, charging profiles "
            "and the local list in it are not restored. Keep the file for analysis "
            "(`sqlite3 %s .recover` may rescue rows) and check the SD card (`dmesg` for I/O errors).",
            path,
            exc,
            target,
            target,
        )
        return target

    def _migrate(self) -> None:
        self._conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = self._conn.execute("SELECT max(version) FROM schema_version").fetchone()
        current = int(row[0] or 0)
        latest = len(MIGRATIONS)
        if current > latest:
            raise StoreUnavailable(
                f"state store {self.path or ':memory:'} has schema version {current} but this release knows "
                f"only up to {latest} (was it written by a newer release before a rollback?). The file is "
                f"left untouched; upgrade again, or move it aside to start with an empty store."
            )
        for version in range(current + 1, latest + 1):
            with self.batch(f"schema migration to v{version}"):
                MIGRATIONS[version - 1](self._conn)
                self._conn.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
            log.info("state store %s migrated to schema v%d", self.path or ":memory:", version)

    @property
    def schema_version(self) -> int:
        return int(self._conn.execute("SELECT max(version) FROM schema_version").fetchone()[0] or 0)

    @property
    def persistent(self) -> bool:
        """False for the in-memory fallback."""
        return self.path is not None

    def close(self) -> None:
        try:
            if self.path is not None:
                self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error:
            pass
        self._conn.close()

    # ------------------------------------------------------------------ low level

    def _set_sync(self, durable: bool) -> None:
        level = "FULL" if durable else "NORMAL"
        if self._sync != level:
            self._conn.execute(f"PRAGMA synchronous={level}")
            self._sync = level

    @contextmanager
    def batch(self, what: str = "state", *, durable: bool = True) -> Iterator[None]:
        """Group writes into one atomic commit (one fsync).  Nested batches join the outer one.

        Use it to write a meter sample and its MeterValues message together.  Raises
        :class:`StoreWriteError` when the commit fails; nothing of the batch is then saved.
        """
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        try:
            self._set_sync(durable)
            self._conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise self._write_error(exc, what) from exc
        self._depth = 1
        try:
            yield
        except sqlite3.Error as exc:
            self._depth = 0
            self._rollback()
            raise self._write_error(exc, what) from exc
        except BaseException:
            self._depth = 0
            self._rollback()
            raise
        self._depth = 0
        try:
            self._conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            raise self._write_error(exc, what) from exc

    def _rollback(self) -> None:
        try:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass

    def _write_error(self, exc: sqlite3.Error, what: str) -> StoreWriteError:
        kind = _error_kind(exc)
        where = self.path or "memory store"
        return StoreWriteError(f"could not save {what} to {where}: {exc}; {_HINTS[kind]}", kind)

    def write(
        self, sql: str, params: Sequence[Any] = (), *, what: str = "state", durable: bool = True
    ) -> int:
        """Execute one write statement in its own (or the enclosing) batch; returns lastrowid.

        Public for modules that own a table in this store (the outbox).
        """
        with self.batch(what, durable=durable):
            return int(self._conn.execute(sql, params).lastrowid or 0)

    def execute_in_batch(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        """Execute inside an open :meth:`batch` (raises if none is open)."""
        if not self._depth:
            raise RuntimeError("execute_in_batch() needs an open batch()")
        return self._conn.execute(sql, params)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        try:
            return self._conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"could not read from state store {self.path or ':memory:'}: {exc}") from exc

    def copy_to(self, target: Path) -> None:
        """Write a consistent copy of the database to ``target`` (a new file) without giving up the lock.

        ``sqlite3_serialize`` reads every page through this connection's pager (WAL content included) in
        one pass, faster than ``VACUUM INTO`` (6.5 MB on the CI machine: serialize ~10 ms + write ~10 ms,
        against ~50-60 ms): it runs on the loop that owns the connection, and a diagnostics request holds
        up everything else on that loop, the contactor's reaction included, for that long. The copy is written in rollback-journal mode so that it opens
        read-only without a -wal file."""
        try:
            image = bytearray(self._conn.serialize())
        except sqlite3.Error as exc:
            raise StoreError(f"could not copy state store {self.path or ':memory:'}: {exc}") from exc
        if len(image) >= 20 and image[18] == 2 and image[19] == 2:  # header: file format 2 = WAL
            image[18] = image[19] = 1
        with open(target, "xb") as f:
            f.write(image)

    # ------------------------------------------------------------------ meta

    def set_meta(self, key: str, value: str | None) -> None:
        """Generic key/value; ``None`` deletes the key."""
        if value is None:
            self.write("DELETE FROM meta WHERE key = ?", (key,), what=f"meta {key!r}")
        else:
            self.write(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, value),
                what=f"meta {key!r}",
            )

    def get_meta(self, key: str) -> str | None:
        rows = self.query("SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0][0] if rows else None

    def set_pending_reset(self, kind: str | None) -> None:
        """Record that a Reset (``'Hard'``/``'Soft'``) is under way, so that after the restart open
        transactions are reported as stopped for reason Reboot rather than PowerLoss
        (OCPP 1.6 §5.14 Reset / StopTransaction reason).  ``None`` clears it."""
        self.set_meta("pending_reset", kind)

    def take_pending_reset(self) -> str | None:
        """Return and clear the pending-reset marker (call once at start-up)."""
        kind = self.get_meta("pending_reset")
        if kind is not None:
            self.set_meta("pending_reset", None)
        return kind

    # ------------------------------------------------------------------ configuration

    def get_config(self) -> dict[str, str]:
        """Configuration keys changed by the central system (ChangeConfiguration), as strings."""
        return dict(self.query("SELECT key, value FROM config ORDER BY key"))

    def set_config(self, key: str, value: str) -> None:
        self.write(
            "INSERT INTO config (key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, str(value)),
            what=f"configuration key {key}",
        )

    def delete_config(self, key: str) -> None:
        self.write("DELETE FROM config WHERE key = ?", (key,), what=f"configuration key {key}")

    # ------------------------------------------------------------------ availability

    def get_availability(self) -> dict[int, str]:
        """Persisted ChangeAvailability results: connector id (0 = whole charge point) -> status."""
        return {int(c): s for c, s in self.query("SELECT connector_id, status FROM availability")}

    def set_availability(self, connector_id: int, status: Availability) -> None:
        if status not in _AVAILABILITY_VALUES:
            raise ValueError(
                f"availability for connector {connector_id} must be one of "
                f"{', '.join(_AVAILABILITY_VALUES)}, got {status!r}"
            )
        if connector_id < 0:
            raise ValueError(f"connector id must be >= 0, got {connector_id}")
        self.write(
            "INSERT INTO availability (connector_id, status) VALUES (?, ?) "
            "ON CONFLICT(connector_id) DO UPDATE SET status = excluded.status",
            (connector_id, status),
            what=f"availability of connector {connector_id}",
        )

    # ------------------------------------------------------------------ transactions

    def begin_transaction(
        self,
        connector_id: int,
        id_tag: str,
        start_time: str,
        meter_start_wh: int,
        reservation_id: int | None = None,
    ) -> int:
        """Persist a new open transaction; returns its local id (increasing, never reused)."""
        return self.write(
            "INSERT INTO transactions (connector_id, id_tag, start_time, meter_start_wh, reservation_id, "
            "last_meter_wh, last_meter_time) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                connector_id,
                id_tag,
                start_time,
                int(meter_start_wh),
                reservation_id,
                int(meter_start_wh),
                start_time,
            ),
            what=f"start of transaction on connector {connector_id}",
        )

    def volatile_local_id(self) -> int:
        """A local id for a transaction that :meth:`begin_transaction` could not persist (disk
        full, read-only): negative, so it never collides with a stored id, and time-based, so it
        does not collide with one handed out before a restart either (spilled outbox messages
        may have been written back with it).  Use it like a stored id with the outbox."""
        candidate = -(time.time_ns() // 1000)
        self._last_volatile = min(candidate, self._last_volatile - 1)
        return self._last_volatile

    def set_transaction_id(self, local_id: int, transaction_id: int) -> None:
        """Record the CSMS transactionId (from StartTransaction.conf).  No-op if the row is gone."""
        with self.batch(f"transactionId of local transaction {local_id}"):
            self._conn.execute("UPDATE transactions SET transaction_id = ? WHERE local_id = ?",
                               (int(transaction_id), local_id))
            # a session that ended offline learns its id when the queued StartTransaction is answered
            self._conn.execute("UPDATE sessions SET transaction_id = ? WHERE local_id = ?",
                               (int(transaction_id), local_id))

    def update_meter(self, local_id: int, wh: int, ts: str) -> None:
        """Hot path: one row update of the last meter register (used as meterStop after a power loss).

        Keep ``ts`` a fixed-width ISO string so the row does not change size.
        """
        self.write(
            "UPDATE transactions SET last_meter_wh = ?, last_meter_time = ? WHERE local_id = ?",
            (int(wh), ts, local_id),
            what=f"meter register of local transaction {local_id}",
        )

    def mark_stop_pending(
        self, local_id: int, reason: str, stop_time: str, meter_stop_wh: int, stop_id_tag: str | None = None
    ) -> None:
        """The charge point decided to stop; the transaction is ended once its StopTransaction is queued."""
        self.write(
            "UPDATE transactions SET stop_pending = 1, stop_reason = ?, stop_time = ?, stop_meter_wh = ?, "
            "stop_id_tag = ?, last_meter_wh = ?, last_meter_time = ? WHERE local_id = ?",
            (reason, stop_time, int(meter_stop_wh), stop_id_tag, int(meter_stop_wh), stop_time, local_id),
            what=f"stop of local transaction {local_id}",
        )

    def end_transaction(self, local_id: int) -> None:
        """Remove the open-transaction row (after its StopTransaction was queued in the outbox —
        do both in one :meth:`batch` so a crash cannot lose or duplicate the stop). In the same commit the
        session goes into the history (``sessions``, id tag masked), so a finished session is never missing
        from it nor counted twice."""
        from chargepoint.privacy import mask_id_tag

        with self.batch(f"end of local transaction {local_id}"):
            row = self._conn.execute("SELECT id_tag FROM transactions WHERE local_id = ?", (local_id,)).fetchone()
            if row is not None:
                self._conn.execute(
                    "INSERT OR REPLACE INTO sessions (local_id, connector_id, id_tag_mask, start_time, stop_time, "
                    "meter_start_wh, meter_stop_wh, stop_reason, transaction_id) "
                    "SELECT local_id, connector_id, ?, start_time, COALESCE(stop_time, last_meter_time), "
                    "meter_start_wh, COALESCE(stop_meter_wh, last_meter_wh), stop_reason, transaction_id "
                    "FROM transactions WHERE local_id = ?",
                    (mask_id_tag(row[0]), local_id),
                )
            self._conn.execute("DELETE FROM transactions WHERE local_id = ?", (local_id,))

    def open_transactions(self) -> list[TransactionRow]:
        rows = self.query(
            "SELECT local_id, connector_id, id_tag, start_time, meter_start_wh, reservation_id, "
            "transaction_id, last_meter_wh, last_meter_time, stop_pending, stop_reason, stop_time, "
            "stop_meter_wh, stop_id_tag "
            "FROM transactions ORDER BY local_id"
        )
        return [
            TransactionRow(
                local_id=r[0],
                connector_id=r[1],
                id_tag=r[2],
                start_time=r[3],
                meter_start_wh=r[4],
                reservation_id=r[5],
                transaction_id=r[6],
                last_meter_wh=r[7],
                last_meter_time=r[8],
                stop_pending=bool(r[9]),
                stop_reason=r[10],
                stop_time=r[11],
                stop_meter_wh=r[12],
                stop_id_tag=r[13],
            )
            for r in rows
        ]

    # ------------------------------------------------------------------ charging profiles

    def save_profile(self, connector_id: int, profile_id: int, json_text: str) -> None:
        """Insert or replace by chargingProfileId (replacement by stackLevel/purpose is the caller's
        rule, OCPP 1.6 §5.16.2: it deletes the replaced id)."""
        json.loads(json_text)  # refuse to persist something that cannot be loaded back
        self.write(
            "INSERT INTO charging_profiles (profile_id, connector_id, json) VALUES (?, ?, ?) "
            "ON CONFLICT(profile_id) DO UPDATE SET connector_id = excluded.connector_id, "
            "json = excluded.json",
            (profile_id, connector_id, json_text),
            what=f"charging profile {profile_id}",
        )

    def delete_profile(self, profile_id: int) -> None:
        self.write(
            "DELETE FROM charging_profiles WHERE profile_id = ?",
            (profile_id,),
            what=f"charging profile {profile_id}",
        )

    def load_profiles(self) -> list[tuple[int, str]]:
        """(connector_id, json_text) in order of profile id."""
        return [
            (int(c), j)
            for c, j in self.query("SELECT connector_id, json FROM charging_profiles ORDER BY profile_id")
        ]

    # ------------------------------------------------------------------ local list and cache

    def replace_local_list(self, version: int, rows: Sequence[AuthRow]) -> None:
        """SendLocalList updateType Full: replace list and version atomically."""
        with self.batch("local authorization list"):
            self._conn.execute("DELETE FROM local_list")
            self._insert_auth("local_list", rows)
            self._set_list_version(version)

    def update_local_list(
        self, version: int, upserts: Sequence[AuthRow], deletes: Sequence[str] = ()
    ) -> None:
        """SendLocalList updateType Differential: entries without idTagInfo are ``deletes``."""
        with self.batch("local authorization list"):
            self._conn.executemany("DELETE FROM local_list WHERE id_tag = ?", [(t,) for t in deletes])
            self._insert_auth("local_list", upserts)
            self._set_list_version(version)

    def _set_list_version(self, version: int) -> None:
        self._conn.execute(
            "INSERT INTO meta (key, value) VALUES ('local_list_version', ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (str(int(version)),),
        )

    def _insert_auth(self, table: str, rows: Sequence[AuthRow], extra: tuple[Any, ...] = ()) -> None:
        cols = "id_tag, status, expiry_date, parent_id_tag" + (", updated_at" if extra else "")
        marks = ", ".join("?" * (4 + len(extra)))
        self._conn.executemany(
            f"INSERT OR REPLACE INTO {table} ({cols}) VALUES ({marks})",
            [(r.id_tag, r.status, r.expiry_date, r.parent_id_tag, *extra) for r in rows],
        )

    def local_list(self) -> tuple[int, list[AuthRow]]:
        """(version, rows); version 0 when no list was ever sent (GetLocalListVersion answers 0)."""
        version = int(self.get_meta("local_list_version") or 0)
        rows = self.query("SELECT id_tag, status, expiry_date, parent_id_tag FROM local_list ORDER BY id_tag")
        return version, [AuthRow(*r) for r in rows]

    def cache_put(self, row: AuthRow, updated_at: str | None = None) -> None:
        """Authorization cache entry (cheap to lose: written with synchronous=NORMAL)."""
        with self.batch(f"authorization cache entry {row.id_tag}", durable=False):
            self._insert_auth("auth_cache", [row], (updated_at or _now_iso(),))

    def cache_delete(self, id_tag: str) -> None:
        self.write(
            "DELETE FROM auth_cache WHERE id_tag = ?", (id_tag,), what="authorization cache", durable=False
        )

    def cache_clear(self) -> None:
        self.write("DELETE FROM auth_cache", what="authorization cache (ClearCache)")

    def cache_rows(self) -> list[tuple[AuthRow, str]]:
        """(entry, updated_at ISO) oldest first — the auth module decides eviction."""
        rows = self.query(
            "SELECT id_tag, status, expiry_date, parent_id_tag, updated_at FROM auth_cache "
            "ORDER BY updated_at"
        )
        return [(AuthRow(*r[:4]), r[4]) for r in rows]

    # ------------------------------------------------------------------ reservations

    def put_reservation(self, row: ReservationRow) -> None:
        """Insert or replace by reservationId (OCPP 1.6 §5.13: same id replaces)."""
        self.write(
            "INSERT OR REPLACE INTO reservations "
            "(reservation_id, connector_id, id_tag, parent_id_tag, expiry_date) "
            "VALUES (?, ?, ?, ?, ?)",
            (row.reservation_id, row.connector_id, row.id_tag, row.parent_id_tag, row.expiry_date),
            what=f"reservation {row.reservation_id}",
        )

    def delete_reservation(self, reservation_id: int) -> None:
        self.write(
            "DELETE FROM reservations WHERE reservation_id = ?",
            (reservation_id,),
            what=f"reservation {reservation_id}",
        )

    def reservations(self) -> list[ReservationRow]:
        rows = self.query(
            "SELECT reservation_id, connector_id, id_tag, expiry_date, parent_id_tag FROM reservations "
            "ORDER BY reservation_id"
        )
        return [ReservationRow(*r) for r in rows]

"""State store: real SQLite files in tmp_path, corrupt files, migrations, read-only and full disks."""

from __future__ import annotations

import json
import logging
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from chargepoint import store as store_mod
from chargepoint.store import (
    AuthRow,
    ReservationRow,
    Store,
    StoreUnavailable,
    StoreWriteError,
)

TS = "2026-11-24T10:00:00Z"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(tmp_path / "state")
    yield s
    s.close()


def reopen(s: Store) -> Store:
    assert s.path is not None
    s.close()
    return Store.open(s.path.parent)


def test_open_creates_missing_directory_and_uses_wal(tmp_path: Path) -> None:
    d = tmp_path / "a" / "b" / "state"
    s = Store.open(d)
    try:
        assert (d / "state.db").is_file()
        assert s.persistent and s.schema_version == len(store_mod.MIGRATIONS) == 2
        assert s.query("PRAGMA journal_mode")[0][0] == "wal"
        assert s.query("PRAGMA page_size")[0][0] == store_mod.DEFAULT_PAGE_SIZE
        assert s.moved_aside is None
    finally:
        s.close()


def test_everything_survives_reopen(store: Store) -> None:
    store.set_config("HeartbeatInterval", "300")
    store.set_config("HeartbeatInterval", "600")
    store.set_config("MeterValueSampleInterval", "10")
    store.set_availability(0, "Operative")
    store.set_availability(2, "Inoperative")
    local = store.begin_transaction(1, "TAG1", TS, 1000, reservation_id=7)
    store.update_meter(local, 1500, "2026-11-24T10:05:00Z")
    store.save_profile(1, 11, json.dumps({"chargingProfileId": 11, "stackLevel": 0}))
    store.save_profile(0, 3, json.dumps({"chargingProfileId": 3}))
    store.replace_local_list(5, [AuthRow("A", "Accepted"), AuthRow("B", "Blocked", TS, "P")])
    store.cache_put(AuthRow("C", "Accepted", None, None), "2026-11-24T09:00:00Z")
    store.put_reservation(ReservationRow(7, 1, "TAG1", "2026-11-24T11:00:00Z", None))
    store.set_pending_reset("Hard")

    s = reopen(store)
    try:
        assert s.get_config() == {"HeartbeatInterval": "600", "MeterValueSampleInterval": "10"}
        assert s.get_availability() == {0: "Operative", 2: "Inoperative"}
        [tx] = s.open_transactions()
        assert (tx.local_id, tx.connector_id, tx.id_tag, tx.meter_start_wh, tx.reservation_id) == (
            local,
            1,
            "TAG1",
            1000,
            7,
        )
        assert (tx.last_meter_wh, tx.last_meter_time, tx.transaction_id, tx.stop_pending) == (
            1500,
            "2026-11-24T10:05:00Z",
            None,
            False,
        )
        assert s.load_profiles() == [
            (0, '{"chargingProfileId": 3}'),
            (1, json.dumps({"chargingProfileId": 11, "stackLevel": 0})),
        ]
        assert s.local_list() == (5, [AuthRow("A", "Accepted"), AuthRow("B", "Blocked", TS, "P")])
        assert s.cache_rows() == [(AuthRow("C", "Accepted"), "2026-11-24T09:00:00Z")]
        assert s.reservations() == [ReservationRow(7, 1, "TAG1", "2026-11-24T11:00:00Z", None)]
        assert s.take_pending_reset() == "Hard"
        assert s.take_pending_reset() is None  # taken once
    finally:
        s.close()


def test_transaction_lifecycle_and_ids_never_reused(store: Store) -> None:
    a = store.begin_transaction(1, "T", TS, 0)
    store.set_transaction_id(a, 4711)
    store.mark_stop_pending(a, "EVDisconnected", "2026-11-24T11:00:00Z", 9000, "T")
    [tx] = store.open_transactions()
    assert (tx.transaction_id, tx.stop_pending, tx.stop_reason, tx.stop_meter_wh, tx.last_meter_wh) == (
        4711,
        True,
        "EVDisconnected",
        9000,
        9000,
    )
    store.end_transaction(a)
    assert store.open_transactions() == []
    b = store.begin_transaction(2, "U", TS, 5)
    assert b > a  # AUTOINCREMENT: a queued message for `a` can never be confused with `b`
    s = reopen(store)
    try:
        c = s.begin_transaction(1, "V", TS, 5)
        assert c > b
        assert [t.local_id for t in s.open_transactions()] == [b, c]
    finally:
        s.close()


def test_local_list_full_then_differential_and_cache(store: Store) -> None:
    assert store.local_list() == (0, [])
    store.replace_local_list(1, [AuthRow("A", "Accepted"), AuthRow("B", "Accepted")])
    store.update_local_list(2, [AuthRow("C", "Expired", TS)], deletes=["A"])
    assert store.local_list() == (2, [AuthRow("B", "Accepted"), AuthRow("C", "Expired", TS)])
    store.replace_local_list(3, [])
    assert store.local_list() == (3, [])
    store.cache_put(AuthRow("X", "Accepted"), "2026-01-02T00:00:00Z")
    store.cache_put(AuthRow("Y", "Blocked"), "2026-01-01T00:00:00Z")
    store.cache_put(AuthRow("X", "Invalid"), "2026-01-03T00:00:00Z")
    assert [(r.id_tag, r.status) for r, _ in store.cache_rows()] == [("Y", "Blocked"), ("X", "Invalid")]
    store.cache_delete("Y")
    assert [r.id_tag for r, _ in store.cache_rows()] == ["X"]
    store.cache_clear()
    assert store.cache_rows() == []


def test_failed_batch_leaves_nothing(store: Store) -> None:
    with pytest.raises(RuntimeError):
        with store.batch("test"):
            store.set_config("A", "1")
            store.begin_transaction(1, "T", TS, 0)
            raise RuntimeError("boom")
    assert store.get_config() == {} and store.open_transactions() == []


def test_bad_arguments_are_refused_clearly(store: Store) -> None:
    with pytest.raises(ValueError, match="Operative, Inoperative"):
        store.set_availability(1, "Broken")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        store.save_profile(1, 1, "{not json")
    assert store.get_availability() == {} and store.load_profiles() == []


def test_profiles_replace_and_delete(store: Store) -> None:
    store.save_profile(1, 5, '{"v":1}')
    store.save_profile(2, 5, '{"v":2}')
    assert store.load_profiles() == [(2, '{"v":2}')]
    store.delete_profile(5)
    store.delete_profile(99)  # unknown id: no error
    assert store.load_profiles() == []
    store.put_reservation(ReservationRow(1, 1, "A", TS))
    store.put_reservation(ReservationRow(1, 2, "B", TS))
    assert store.reservations() == [ReservationRow(1, 2, "B", TS)]
    store.delete_reservation(1)
    assert store.reservations() == []


# ------------------------------------------------------------------ corrupt / unusable files


def test_corrupt_file_is_moved_aside_and_store_starts_empty(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    d = tmp_path / "state"
    d.mkdir()
    garbage = b"this is not sqlite at all " * 200
    (d / "state.db").write_bytes(garbage)
    (d / "state.db-wal").write_bytes(b"junk")
    with caplog.at_level(logging.ERROR, logger="chargepoint.store"):
        s = Store.open(d)
    try:
        assert s.moved_aside is not None and s.moved_aside.name.startswith("state.db.corrupt-")
        assert s.moved_aside.read_bytes() == garbage  # kept for analysis, untouched
        assert (d / (s.moved_aside.name + "-wal")).read_bytes() == b"junk"
        assert s.open_transactions() == [] and s.get_config() == {}
        s.set_config("A", "1")  # and it works
        msg = caplog.text
        assert "corrupt" in msg and str(s.moved_aside) in msg and "EMPTY" in msg and "dmesg" in msg
    finally:
        s.close()
    s2 = Store.open(d)
    try:
        assert s2.get_config() == {"A": "1"} and s2.moved_aside is None
    finally:
        s2.close()


def test_damaged_pages_inside_a_real_database_are_detected(tmp_path: Path) -> None:
    d = tmp_path / "state"
    s = Store.open(d)
    for i in range(300):
        s.set_config(f"key{i}", "x" * 50)
    s.close()
    path = d / "state.db"
    data = bytearray(path.read_bytes())
    assert data[:16] == b"SQLite format 3\x00"
    page = store_mod.DEFAULT_PAGE_SIZE
    for off in range(2 * page, len(data), page):  # smash every page but the header and schema page
        data[off : off + 64] = b"\xa5" * 64
    path.write_bytes(bytes(data))
    s2 = Store.open(d)
    try:
        assert s2.moved_aside is not None
        assert s2.get_config() == {}
    finally:
        s2.close()


def test_schema_from_a_newer_release_is_left_untouched(tmp_path: Path) -> None:
    d = tmp_path / "state"
    s = Store.open(d)
    s.write("INSERT INTO schema_version (version) VALUES (99)")
    s.close()
    before = (d / "state.db").read_bytes()
    with pytest.raises(StoreUnavailable, match="schema version 99.*newer release"):
        Store.open(d)
    assert (d / "state.db").read_bytes() == before
    assert not list(d.glob("*.corrupt-*"))


def test_directory_that_cannot_be_created(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("I am a file, not a directory")
    with pytest.raises(StoreUnavailable, match="cannot be created.*without persistence"):
        Store.open(blocker / "state")


# ------------------------------------------------------------------ migrations


def test_migration_from_a_v1_file_to_v2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A store written by a release with schema v1 opens with today's v2 (the session history); its data is
    kept, and the next migration is added the same way: append a function to MIGRATIONS."""
    d = tmp_path / "state"
    current = list(store_mod.MIGRATIONS)
    monkeypatch.setattr(store_mod, "MIGRATIONS", current[:1])  # the previous release
    s = Store.open(d)
    local = s.begin_transaction(1, "T", TS, 100)
    s.set_config("K", "V")
    s.close()
    monkeypatch.setattr(store_mod, "MIGRATIONS", current)
    s1 = Store.open(d)
    try:
        assert s1.schema_version == 2
        assert s1.query("SELECT count(*) FROM sessions") == [(0,)]
        assert [t.local_id for t in s1.open_transactions()] == [local]
    finally:
        s1.close()

    def v3(conn: sqlite3.Connection) -> None:
        conn.execute("ALTER TABLE transactions ADD COLUMN soc_percent INTEGER")
        conn.execute("UPDATE transactions SET soc_percent = -1")

    monkeypatch.setattr(store_mod, "MIGRATIONS", [*current, v3])
    s2 = Store.open(d)
    try:
        assert s2.schema_version == 3
        assert s2.query("SELECT local_id, soc_percent FROM transactions") == [(local, -1)]
        assert s2.get_config() == {"K": "V"}
        assert [t.local_id for t in s2.open_transactions()] == [local]
    finally:
        s2.close()
    s3 = Store.open(d)  # running again does not re-run v3
    try:
        assert s3.query("SELECT version FROM schema_version ORDER BY version") == [(1,), (2,), (3,)]
    finally:
        s3.close()


def test_failing_migration_leaves_previous_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = tmp_path / "state"
    Store.open(d).close()

    def bad_v2(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE half_done (x INTEGER)")
        raise sqlite3.OperationalError("migration bug")

    monkeypatch.setattr(store_mod, "MIGRATIONS", [*store_mod.MIGRATIONS, bad_v2])
    with pytest.raises(StoreUnavailable, match="migration bug"):
        Store.open(d)
    monkeypatch.setattr(store_mod, "MIGRATIONS", store_mod.MIGRATIONS[:-1])
    s = Store.open(d)
    try:
        assert s.schema_version == len(store_mod.MIGRATIONS)
        assert s.query("SELECT name FROM sqlite_master WHERE name = 'half_done'") == []
    finally:
        s.close()


# ------------------------------------------------------------------ full and read-only disks


def test_disk_full_raises_store_write_error_and_keeps_what_was_committed(store: Store) -> None:
    local = store.begin_transaction(1, "T", TS, 0)
    pages = store.query("PRAGMA page_count")[0][0]
    store._conn.execute(f"PRAGMA max_page_count={pages}")  # simulated full disk
    with pytest.raises(StoreWriteError) as err:
        store.replace_local_list(1, [AuthRow(f"TAG{i:05d}", "Accepted") for i in range(2000)])
    assert err.value.kind == "disk_full"
    assert "local authorization list" in str(err.value) and "full" in str(err.value)
    assert store.local_list() == (0, [])  # all or nothing
    store.update_meter(local, 42, TS)  # in-place update needs no new page: still works
    store._conn.execute("PRAGMA max_page_count=1000000")
    store.replace_local_list(1, [AuthRow("A", "Accepted")])
    s = reopen(store)
    try:
        assert s.open_transactions()[0].last_meter_wh == 42
        assert s.local_list() == (1, [AuthRow("A", "Accepted")])
    finally:
        s.close()


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A real 256 KiB tmpfs (we are root in CI/dev containers); skipped where mounting is not allowed."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True, text=True
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN): {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _remount(mnt: Path, opts: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{opts}", str(mnt)], check=True, capture_output=True)


def test_real_full_file_system(small_fs: Path) -> None:
    s = Store.open(small_fs / "state")
    local = s.begin_transaction(1, "T", TS, 0)
    filler = small_fs / "filler"
    with open(filler, "wb", buffering=0) as f:  # fill the file system to the last block
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass
    with pytest.raises(StoreWriteError) as err:
        for i in range(50):
            s.save_profile(1, i, json.dumps({"pad": "x" * 8000}))
    assert err.value.kind in ("disk_full", "io_error")
    filler.unlink()
    s.update_meter(local, 77, TS)
    s2 = reopen(s)
    try:
        assert s2.open_transactions()[0].last_meter_wh == 77
    finally:
        s2.close()


def test_read_only_file_system_at_start_and_memory_fallback(small_fs: Path) -> None:
    d = small_fs / "state"
    s = Store.open(d)
    local = s.begin_transaction(1, "T", TS, 123)
    s.set_config("K", "V")
    s.close()
    _remount(small_fs, "ro")
    with pytest.raises(StoreUnavailable, match="read-only|cannot be written|cannot be opened") as err:
        Store.open(d)
    assert "without persistence" in str(err.value)
    mem = Store.memory(seed=d / "state.db")  # what the controller does next
    try:
        assert not mem.persistent
        assert [t.local_id for t in mem.open_transactions()] == [local]
        assert mem.get_config() == {"K": "V"}
        mem.set_config("K", "W")  # writes go to memory
        assert mem.get_config() == {"K": "W"}
    finally:
        mem.close()
    with pytest.raises(StoreUnavailable, match="cannot be created"):
        Store.open(small_fs / "new-dir")


def _chattr(flag: str, *paths: Path) -> bool:
    r = subprocess.run(["chattr", flag, *map(str, paths)], capture_output=True, text=True)
    return r.returncode == 0


def test_files_become_unwritable_while_running(tmp_path: Path) -> None:
    """Stands in for the kernel remounting the SD card read-only under a running controller
    (a remount from user space is refused while files are open for writing).  The immutable
    flag makes every write(2) fail with EPERM even for root; it also proves no -shm is mmap'ed
    (writing to an mmap'ed immutable file would kill the process with SIGBUS)."""
    d = tmp_path / "state"
    s = Store.open(d)
    local = s.begin_transaction(1, "T", TS, 0)
    s.update_meter(local, 10, TS)
    assert not (d / "state.db-shm").exists()
    files = sorted(d.glob("state.db*"))
    if not _chattr("+i", *files):
        s.close()
        pytest.skip("chattr +i not supported on this file system (needs ext2/3/4, xfs, btrfs)")
    try:
        with pytest.raises(StoreWriteError) as err:
            s.update_meter(local, 20, TS)
        assert err.value.kind in ("read_only", "io_error")
        assert "meter register" in str(err.value) and "charging continues" in str(err.value)
        assert s.open_transactions()[0].last_meter_wh == 10  # reads still work
    finally:
        _chattr("-i", *files)
    s.update_meter(local, 30, TS)  # and it recovers once writable again
    s2 = reopen(s)
    try:
        assert s2.open_transactions()[0].last_meter_wh == 30
    finally:
        s2.close()


def _mapped(path: Path) -> bool:
    """Whether this process has ``path`` memory-mapped (Linux)."""
    maps = Path("/proc/self/maps").read_text()
    return any(line.endswith(" " + str(path)) or line.endswith(" " + str(path) + " (deleted)")
               for line in maps.splitlines())


def test_reopening_an_existing_store_never_maps_the_shm_file(tmp_path: Path) -> None:
    """Every restart opens an existing WAL database: its index must stay in process memory, as on the
    first start (a mapped -shm page on a card remounted read-only is a SIGBUS, see the test above)."""
    d = tmp_path / "state"
    s = Store.open(d)
    local = s.begin_transaction(1, "T", TS, 0)
    s.update_meter(local, 10, TS)

    def reopened_without_shm() -> None:
        s = Store.open(d)
        try:
            assert not _mapped(d / "state.db-shm") and not (d / "state.db-shm").exists()
            assert s.open_transactions()[0].last_meter_wh == 10
        finally:
            s.close()

    s.close()
    reopened_without_shm()  # a clean restart
    crash = "import os, sys; from chargepoint.store import Store; Store.open(sys.argv[1]); os._exit(0)"
    subprocess.run([sys.executable, "-c", crash, str(d)], check=True, cwd=Path(__file__).resolve().parents[1])
    reopened_without_shm()  # a restart after a power cut


def test_a_stale_shm_file_from_a_shared_run_is_removed_and_never_mapped(tmp_path: Path) -> None:
    """A release that used the shared index (or a tool opening the store non-exclusively) left a -shm
    after a power cut: the exclusive store neither maps nor keeps it, and still sees the WAL's commits."""
    d = tmp_path / "state"
    code = (
        "import os, sys; from pathlib import Path; from chargepoint.store import Store\n"
        "s = Store.open(Path(sys.argv[1]), exclusive=False); s.set_meta('last', 'kept')\n"
        "assert (Path(sys.argv[1]) / 'state.db-shm').exists(); os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", code, str(d)], check=True, cwd=Path(__file__).resolve().parents[1])
    assert (d / "state.db-shm").exists()
    s = Store.open(d)
    try:
        assert s.get_meta("last") == "kept"
        assert not _mapped(d / "state.db-shm") and not (d / "state.db-shm").exists()
    finally:
        s.close()


def test_read_only_after_a_crash_still_sees_the_wal(small_fs: Path) -> None:
    """Power cut (no checkpoint, commits only in -wal), then the card comes back read-only."""
    d = small_fs / "state"
    code = (
        "import os, sys; from pathlib import Path; from chargepoint.store import Store\n"
        "s = Store.open(Path(sys.argv[1])); a = s.begin_transaction(1, 'T', 'ts', 5)\n"
        "s.update_meter(a, 99, 'ts2'); os._exit(0)\n"
    )
    repo = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", code, str(d)], check=True, cwd=repo)
    assert (d / "state.db-wal").stat().st_size > 0
    _remount(small_fs, "ro")
    with pytest.raises(StoreUnavailable):
        Store.open(d)
    mem = Store.memory(seed=d / "state.db")
    try:
        [tx] = mem.open_transactions()
        assert (tx.meter_start_wh, tx.last_meter_wh, tx.last_meter_time) == (5, 99, "ts2")
    finally:
        mem.close()


def test_memory_store_without_seed() -> None:
    s = Store.memory()
    try:
        assert s.schema_version == len(store_mod.MIGRATIONS) and not s.persistent
        a = s.begin_transaction(1, "T", TS, 0)
        assert s.open_transactions()[0].local_id == a
    finally:
        s.close()


def test_memory_seed_that_is_garbage_starts_empty(tmp_path: Path) -> None:
    bad = tmp_path / "state.db"
    bad.write_bytes(b"garbage" * 100)
    s = Store.memory(seed=bad)
    try:
        assert s.open_transactions() == [] and s.schema_version == len(store_mod.MIGRATIONS)
    finally:
        s.close()


def test_copy_to_is_a_consistent_standalone_copy_while_the_store_stays_locked(store: Store, tmp_path: Path) -> None:
    """The diagnostics copy: what was committed (still in the -wal file, not checkpointed) is in it, it opens
    read-only without a -wal file of its own, and the live store keeps working."""
    for i in range(50):
        store.set_meta(f"k{i}", "v" * 100)
    target = tmp_path / "copy.db"
    store.copy_to(target)
    assert not (tmp_path / "copy.db-wal").exists()
    copy = sqlite3.connect(f"file:{target}?mode=ro", uri=True)
    try:
        assert copy.execute("PRAGMA journal_mode").fetchone() == ("delete",)
        assert copy.execute("SELECT count(*) FROM meta WHERE key LIKE 'k%'").fetchone() == (50,)
        assert copy.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        copy.close()
    store.set_meta("after", "1")
    assert store.get_meta("after") == "1"
    with pytest.raises(FileExistsError):  # never overwrites
        store.copy_to(target)

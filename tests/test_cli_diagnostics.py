"""`chargepoint diagnostics` while the controller runs (the normal case on a Pi) and when nothing answers.

The store holds an exclusive SQLite lock for the controller's lifetime, so the command asks the running
controller over its status socket for a copy; without a controller it reads the state directory itself,
and a store locked by a controller that does not answer fails within seconds with a clear message.
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from chargepoint.csms import CentralSystem
from chargepoint.status_socket import StatusServer, StatusUnavailable, fetch_status, fetch_store_copy

ROOT = Path(__file__).resolve().parents[1]

CONFIG = """
[chargepoint]
id = "DIAG-1"
state_dir = "{state}"
status_socket = "{sock}"
[csms]
url = "{url}"
reconnect_min_s = 0.2
[[connectors]]
pilot = {{ driver = "sim" }}
contactor = {{ driver = "sim" }}
meter = {{ driver = "sim" }}
"""


@pytest.fixture
def sockdir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="cpd-", dir="/tmp"))  # AF_UNIX paths are at most 108 bytes
    yield d
    shutil.rmtree(d, ignore_errors=True)


async def _diagnostics(*args: str, timeout: float = 60) -> tuple[int, str, str, float]:
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "chargepoint", "diagnostics", *args, "--root", "/nonexistent-release-root",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return proc.returncode or 0, out.decode(), err.decode(), time.monotonic() - started


async def test_diagnostics_while_the_controller_runs(tmp_path: Path, sockdir: Path) -> None:
    async with CentralSystem() as cs:
        cfg = tmp_path / "cp.toml"
        sock = sockdir / "status.sock"
        cfg.write_text(CONFIG.format(state=tmp_path / "state", sock=sock, url=cs.url))
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "chargepoint", "run", "--config", str(cfg),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, cwd=ROOT,
        )
        try:
            await cs.wait_for_message("StatusNotification", where=lambda p: p["connectorId"] == 1, timeout=15)
            await fetch_status(sock)  # the socket is up
            out = tmp_path / "out" / "diag.tar.gz"
            out.parent.mkdir()
            code, stdout, stderr, took = await _diagnostics(
                str(out), "--config", str(cfg), "--state-dir", str(tmp_path / "state"), timeout=30)
            assert code == 0, stderr
            assert "copied by the running controller" in stdout
            with tarfile.open(out) as tf:
                db = tf.extractfile("diagnostics/state/state.db")
                assert db is not None
                copy = tmp_path / "copy.db"
                copy.write_bytes(db.read())
            rows = sqlite3.connect(copy).execute("SELECT value FROM meta WHERE key = 'opened_at'").fetchall()
            assert rows, "the copy lacks what the running controller wrote"
            assert [p.name for p in out.parent.iterdir()] == ["diag.tar.gz"]  # no .tmp left
            assert not list((tmp_path / "state" / "diagnostics").glob("store-*"))  # the service cleaned up
        finally:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 15)


HOLD = """
import sys, time
from pathlib import Path
from chargepoint.store import Store
store = Store.open(Path(sys.argv[1]))
print("open", flush=True)
time.sleep(60)
"""


async def test_a_locked_store_nobody_answers_for_fails_within_seconds(tmp_path: Path, sockdir: Path) -> None:
    state = tmp_path / "state"
    holder = await asyncio.create_subprocess_exec(
        sys.executable, "-c", HOLD, str(state), stdout=asyncio.subprocess.PIPE, cwd=ROOT)
    try:
        assert holder.stdout is not None
        assert await asyncio.wait_for(holder.stdout.readline(), 15) == b"open\n"
        out = tmp_path / "out"
        out.mkdir()
        code, _, stderr, took = await _diagnostics(
            str(out / "d.tar.gz"), "--config", "", "--state-dir", str(state), "--socket",
            str(sockdir / "none.sock"), timeout=30)
        assert code == 1
        assert "is locked by a running controller" in stderr and "none.sock" in stderr, stderr
        assert "Traceback" not in stderr
        assert took < 10, took
        assert list(out.iterdir()) == []  # neither the archive nor a .tmp
    finally:
        holder.kill()
        await holder.wait()


async def test_without_a_controller_the_state_directory_is_read(tmp_path: Path, sockdir: Path) -> None:
    from chargepoint.store import Store

    state = tmp_path / "state"
    store = Store.open(state)
    store.set_meta("probe", "42")
    store.close()
    out = tmp_path / "d.tar.gz"
    code, stdout, stderr, _ = await _diagnostics(
        str(out), "--config", "", "--state-dir", str(state), "--socket", str(sockdir / "none.sock"))
    assert code == 0, stderr
    with tarfile.open(out) as tf:
        assert "diagnostics/state/state.db" in tf.getnames()


async def test_store_copy_request_over_the_socket(tmp_path: Path, sockdir: Path) -> None:
    made = tmp_path / "made"

    def copier() -> Path:
        made.mkdir()
        (made / "state.db").write_bytes(b"x" * 200_000)
        return made

    async with StatusServer(sockdir / "s.sock", lambda: {"connectors": []}, store_copy=copier, request_wait_s=5):
        dest = tmp_path / "dest"
        dest.mkdir()
        files = await fetch_store_copy(sockdir / "s.sock", dest, timeout=10)
        assert [f.name for f in files] == ["state.db"] and (dest / "state.db").read_bytes() == b"x" * 200_000
        assert not made.exists()  # the server removes its copy once sent
        started = time.monotonic()
        assert "connectors" in await fetch_status(sockdir / "s.sock")
        assert time.monotonic() - started < 2.5  # a client that names its request is not kept waiting 5 s
    async with StatusServer(sockdir / "t.sock", lambda: {"connectors": []}, store_copy=lambda: None):
        with pytest.raises(StatusUnavailable, match="could not be copied"):
            await fetch_store_copy(sockdir / "t.sock", tmp_path, timeout=10)


async def test_a_missing_state_directory_is_noted(tmp_path: Path, sockdir: Path) -> None:
    code, _, stderr, _ = await _diagnostics(
        str(tmp_path / "d.tar.gz"), "--config", "", "--state-dir", str(tmp_path / "nowhere"), "--socket",
        str(sockdir / "none.sock"))
    assert code == 0, stderr
    assert f"state directory {tmp_path / 'nowhere'} does not exist" in stderr

"""Status socket: real Unix socket, real permissions (mode bits, group, a non-member user refused)."""

from __future__ import annotations

import asyncio
import grp
import json
import os
import shutil
import socket
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chargepoint.service import summary_line
from chargepoint.status_socket import (
    StatusServer,
    StatusUnavailable,
    check_snapshot,
    fetch_status,
    format_status,
)

SNAPSHOT: dict[str, Any] = {
    "csms": "connected",
    "csms_url": "wss://csms.example/ocpp/CP1",
    "queued": 2,
    "connectors": [
        {
            "id": 1, "status": "Charging", "pilot": "C", "offered_a": 16.0, "measured_a": 15.8,
            "power_w": 7200.0, "energy_wh": 12345.0, "contactor": "closed", "transaction_id": 17,
            "limit_a": 16.0, "limit_source": "csms_profile", "error_code": "NoError",
            "limits": [{"source": "cable", "limit_a": 32.0}, {"source": "csms_profile", "limit_a": 16.0}],
        },
        {
            "id": 2, "status": "Faulted", "pilot": "F", "offered_a": None, "measured_a": 0.0,
            "power_w": 0.0, "energy_wh": 500.0, "contactor": "open", "transaction_id": None,
            "limit_a": 0.0, "limit_source": "safety", "error_code": "GroundFailure",
        },
    ],
}

TEST_GROUP = "dialout"
SYSTEM_PYTHON = "/usr/bin/python3"

CLIENT = r"""
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    s.connect(sys.argv[1])
except PermissionError:
    print("EACCES"); sys.exit(0)
data = b""
while chunk := s.recv(65536):
    data += chunk
sys.stdout.write(data.decode())
"""


@pytest.fixture
def sockdir() -> Iterator[Path]:
    """A short, world-traversable directory (pytest's tmp_path is 0700 and may exceed 108 bytes)."""
    d = Path(tempfile.mkdtemp(prefix="cps-", dir="/tmp"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


async def test_serves_one_snapshot_per_connection(sockdir: Path) -> None:
    calls = []

    def snap() -> dict[str, Any]:
        calls.append(1)
        return {**SNAPSHOT, "queued": len(calls)}

    path = sockdir / "status.sock"
    async with StatusServer(path, snap):
        first = await fetch_status(path)
        second = await fetch_status(path)
    assert first["connectors"] == SNAPSHOT["connectors"]
    assert (first["queued"], second["queued"]) == (1, 2)
    assert not path.exists()  # removed on stop


async def test_async_snapshot_source(sockdir: Path) -> None:
    async def snap() -> dict[str, Any]:
        return SNAPSHOT

    async with StatusServer(sockdir / "s.sock", snap):
        assert await fetch_status(sockdir / "s.sock") == SNAPSHOT


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another group and running a client as 'nobody' need root")
@pytest.mark.skipif(not os.path.exists(SYSTEM_PYTHON), reason=f"{SYSTEM_PYTHON} missing for the unprivileged client")
async def test_permissions_for_real(sockdir: Path) -> None:
    gid = grp.getgrnam(TEST_GROUP).gr_gid
    path = sockdir / "status.sock"
    async with StatusServer(path, lambda: SNAPSHOT, group=TEST_GROUP):
        st = path.stat()
        assert stat.S_ISSOCK(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o660
        assert st.st_gid == gid
        assert not list(sockdir.glob(".*tmp"))  # the temporary name is gone

        def run_as_nobody(extra_groups: list[int]) -> str:
            return subprocess.run(
                [SYSTEM_PYTHON, "-c", CLIENT, str(path)], user="nobody", group="nogroup",
                extra_groups=extra_groups, capture_output=True, text=True, timeout=20, check=True,
            ).stdout

        # run in a thread: the server answering lives on this loop
        outsider = await asyncio.to_thread(run_as_nobody, [])
        member = await asyncio.to_thread(run_as_nobody, [gid])
    assert outsider.strip() == "EACCES"
    assert json.loads(member) == SNAPSHOT


async def test_unknown_group_is_a_clear_error(sockdir: Path) -> None:
    with pytest.raises(ValueError, match="group 'no-such-group-x' does not exist"):
        await StatusServer(sockdir / "s.sock", lambda: SNAPSHOT, group="no-such-group-x").start()


async def test_stale_socket_is_replaced_but_files_are_not(sockdir: Path) -> None:
    stale = sockdir / "status.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(stale))
    s.close()  # a socket file nobody listens on: what a crash leaves behind
    async with StatusServer(stale, lambda: SNAPSHOT):
        assert (await fetch_status(stale))["csms"] == "connected"
        with pytest.raises(RuntimeError, match="already serves"):
            await StatusServer(stale, lambda: SNAPSHOT).start()
    regular = sockdir / "notasocket"
    regular.write_text("keep me")
    with pytest.raises(RuntimeError, match="not a socket"):
        await StatusServer(regular, lambda: SNAPSHOT).start()
    assert regular.read_text() == "keep me"


async def test_fetch_errors_are_explained(sockdir: Path) -> None:
    with pytest.raises(StatusUnavailable, match="is the service running"):
        await fetch_status(sockdir / "missing.sock")
    dead = sockdir / "dead.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(dead))
    s.close()
    with pytest.raises(StatusUnavailable, match="nothing answers"):
        await fetch_status(dead)

    def broken() -> dict[str, Any]:
        raise KeyError("connector 3")

    async with StatusServer(sockdir / "b.sock", broken):
        with pytest.raises(StatusUnavailable, match="could not build its status: .*KeyError"):
            await fetch_status(sockdir / "b.sock")


def test_format_status_table() -> None:
    text = format_status(SNAPSHOT)
    lines = text.splitlines()
    assert lines[0] == summary_line(SNAPSHOT)
    assert "CSMS: connected (wss://csms.example/ocpp/CP1)" in lines[1] and "queued messages: 2" in lines[1]
    header = next(line for line in lines if line.startswith("ID"))
    for column in ("STATUS", "PILOT", "OFFERED", "MEASURED", "POWER", "CONTACTOR", "TX", "LIMIT", "ERROR"):
        assert column in header
    row1 = next(line for line in lines if line.startswith("1 "))
    for cell in ("Charging", " C ", "16.0 A", "15.8 A", "7.20 kW", "12.345 kWh", "closed", "17",
                 "16.0 A (csms_profile)"):
        assert cell in row1, cell
    row2 = next(line for line in lines if line.startswith("2 "))
    assert "GroundFailure" in row2 and "open" in row2 and "(safety)" in row2
    assert "  connector 1: 16.0 A csms_profile, 32.0 A cable" in lines
    # columns line up: every table row starts its STATUS cell where the header does
    col = header.index("STATUS")
    assert row1[col:].startswith("Charging") and row2[col:].startswith("Faulted")


def test_format_status_hides_credentials_in_the_url() -> None:
    text = format_status({**SNAPSHOT, "csms_url": "wss://CP1:pw-in-url-1@csms.example/ocpp/CP1"})
    assert "pw-in-url-1" not in text and "wss://CP1:***@csms.example" in text


def test_format_status_tolerates_sparse_snapshots() -> None:
    text = format_status({"csms": "offline", "connectors": [{"id": 1, "status": "Available"}]})
    assert "Available" in text and "CSMS: offline" in text
    assert "no connectors" in format_status({"csms": "offline", "queued": 0, "connectors": []})


def test_check_snapshot() -> None:
    assert check_snapshot(SNAPSHOT) == []
    bad = {"csms": "up", "queued": -1, "connectors": [{"id": 1, "contactor": "maybe"}]}
    problems = check_snapshot(bad)
    assert any("csms = 'up'" in p for p in problems)
    assert any("queued = -1" in p for p in problems)
    assert any("lacks status" in p for p in problems)
    assert any("contactor = 'maybe'" in p for p in problems)


class _Changes:
    """A subscription as the status socket sees one (chargepoint.api.Subscription): get() and close()."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.closed = False

    async def get(self) -> Any:
        change = await self.queue.get()
        if change is None:
            raise EOFError("closed")  # as chargepoint.api's subscription ends
        return change

    def close(self) -> None:
        self.closed = True
        self.queue.put_nowait(None)


async def _readline(stream: asyncio.StreamReader) -> str:
    async with asyncio.timeout(20):
        return (await stream.readline()).decode()


@pytest.mark.parametrize("as_json", [False, True])
async def test_status_follow_prints_the_snapshot_then_each_change(sockdir: Path, as_json: bool) -> None:
    import sys

    from chargepoint.api import Change, ChangeKind

    subs: list[_Changes] = []

    def subscribe() -> _Changes:
        subs.append(_Changes())
        return subs[-1]

    path = sockdir / "f.sock"
    server = StatusServer(path, lambda: SNAPSHOT, subscribe=subscribe)
    await server.start()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "chargepoint", "status", "--follow", "--socket", str(path),
        *(["--json"] if as_json else []), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        first = await _readline(proc.stdout)
        if as_json:
            assert json.loads(first) == SNAPSHOT
        else:
            assert first.split() == format_status(SNAPSHOT).splitlines()[0].split()  # the table comes first
        async with asyncio.timeout(10):
            while not subs:
                await asyncio.sleep(0.01)
        subs[0].queue.put_nowait(Change(ChangeKind.PILOT, 1, {"state": "B", "event": "pilot"}, 12.5))
        line = await _readline(proc.stdout)
        while not as_json and not line.startswith("pilot"):  # the rest of the table
            line = await _readline(proc.stdout)
        if as_json:
            assert json.loads(line) == {"kind": "pilot", "connector": 1, "data": {"state": "B", "event": "pilot"},
                                        "at": 12.5}
        else:
            assert line.split()[:4] == ["pilot", "connector", "1", "pilot"] and "state=B" in line
        await server.stop()  # the stream ends: the client exits by itself
        async with asyncio.timeout(20):
            _out, err = await proc.communicate()
    finally:
        await server.stop()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err
    assert subs[0].closed


async def test_follow_without_a_stream_is_a_clear_error(sockdir: Path) -> None:
    from chargepoint.status_socket import follow_status

    async with StatusServer(sockdir / "n.sock", lambda: SNAPSHOT):  # a server with no change stream
        with pytest.raises(StatusUnavailable, match="cannot stream changes: unknown request 'subscribe'"):
            async for _ in follow_status(sockdir / "n.sock"):
                pass

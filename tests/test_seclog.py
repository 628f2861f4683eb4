"""The security log is durable like transaction data: each event is synced to the storage before
``append`` returns (observed through os.fsync: which file, and what it held at that moment)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from chargepoint.security.seclog import SecurityLog

TS = "2026-11-24T10:00:00Z"


@pytest.fixture
def fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, bytes | None]]:
    """Every os.fsync as (path of the descriptor, the file's bytes at that instant; None for a directory)."""
    seen: list[tuple[str, bytes | None]] = []
    real = os.fsync

    def spy(fd: int) -> None:
        target = os.readlink(f"/proc/self/fd/{fd}")
        seen.append((target, None if os.path.isdir(target) else Path(target).read_bytes()))
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    return seen


def test_every_event_is_synced_to_the_file_before_append_returns(tmp_path: Path, fsyncs: list) -> None:
    log = SecurityLog(tmp_path / "security.log")
    log.append("StartupOfTheDevice", TS, "firmware 1.0")
    # the file was new: its content and its directory entry are both synced
    assert (str(log.path), log.path.read_bytes()) in fsyncs and (str(tmp_path), None) in fsyncs
    fsyncs.clear()
    log.append("ResetOrReboot", TS, None)
    synced = [data for path, data in fsyncs if path == str(log.path)]
    assert synced and b"ResetOrReboot" in synced[-1]
    assert [json.loads(x)["type"] for x in log.path.read_text().splitlines()] == [
        "StartupOfTheDevice", "ResetOrReboot"]


def test_a_cleared_log_is_synced_as_a_new_file(tmp_path: Path, fsyncs: list) -> None:
    log = SecurityLog(tmp_path / "security.log", max_bytes=50)
    log.append("StartupOfTheDevice", TS, "x" * 60)
    fsyncs.clear()
    assert log.append("ResetOrReboot", TS, None) is True  # cleared first
    assert (str(tmp_path), None) in fsyncs
    assert any(path == str(log.path) and data and b"ResetOrReboot" in data for path, data in fsyncs)


def test_a_failing_sync_is_logged_not_raised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             caplog: pytest.LogCaptureFixture) -> None:
    def broken(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken)
    assert SecurityLog(tmp_path / "security.log").append("StartupOfTheDevice", TS, None) is False
    assert "Input/output error" in caplog.text

"""The security log (whitepaper: GetLog logType SecurityLog): one JSON line per security event.

Bounded: when the file grows past ``max_bytes`` it is cleared and the caller is told, so that it can report
a SecurityLogWasCleared security event (the whitepaper lists that event; a full disk must not stop charging).

Durable like transaction data: each event is on the storage before ``append`` returns (fsync of the file,
and of the directory when the file was (re)created). The events just before a power cut are the ones a
central system asks for with GetLog; security events are rare, so one fsync each costs nothing that matters.
"""

from __future__ import annotations

import json
import logging
import os
import tarfile
from datetime import datetime
from pathlib import Path

log = logging.getLogger(__name__)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class SecurityLog:
    def __init__(self, path: Path, max_bytes: int = 1_000_000) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes

    def append(self, kind: str, timestamp: str, tech_info: str | None) -> bool:
        """Write one event. Returns True when the log had to be cleared first."""
        cleared = False
        try:
            if self.path.exists() and self.path.stat().st_size > self.max_bytes:
                self.path.unlink()
                cleared = True
            self.path.parent.mkdir(parents=True, exist_ok=True)
            line = json.dumps({"timestamp": timestamp, "type": kind, "techInfo": tech_info}) + "\n"
            created = not self.path.exists()
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                data = line.encode()
                while data:
                    data = data[os.write(fd, data):]
                os.fsync(fd)
            finally:
                os.close(fd)
            if created:
                _fsync_dir(self.path.parent)  # the new file's directory entry, else it may vanish whole
        except OSError as exc:
            log.error("security log %s: %s", self.path, exc)
        return cleared

    def lines(self, since: datetime | None, until: datetime | None) -> list[str]:
        try:
            raw = self.path.read_text().splitlines()
        except OSError:
            return []
        out = []
        for line in raw:
            try:
                t = datetime.fromisoformat(json.loads(line)["timestamp"].replace("Z", "+00:00"))
            except (ValueError, KeyError, TypeError):
                continue
            if (since is None or t >= since) and (until is None or t <= until):
                out.append(line)
        return out

    def archive(self, out_path: Path, since: datetime | None, until: datetime | None) -> Path:
        """A .tar.gz with ``security.log`` (the events in [since, until]) for the GetLog upload."""
        data = ("\n".join(self.lines(since, until)) + "\n").encode()
        tmp = out_path.with_name(out_path.name + ".tmp")
        import io

        with tarfile.open(tmp, "w:gz") as tf:
            info = tarfile.TarInfo("security.log")
            info.size = len(data)
            info.mode = 0o600
            tf.addfile(info, io.BytesIO(data))
        os.replace(tmp, out_path)
        return out_path

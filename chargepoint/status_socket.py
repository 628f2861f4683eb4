"""A local status socket: ``chargepoint status`` asks the running service what it is doing.

The service listens on a Unix stream socket (default
``/run/chargepoint/status.sock``, in systemd's ``RuntimeDirectory=``). Each
connection receives one JSON snapshot followed by a newline, then the server
closes it; the client sends nothing. The snapshot shape is documented in
:mod:`chargepoint.service`.

Access control is the file itself: mode 0660 with the service's group, so only
root and members of that group (``adduser pi chargepoint``) may connect. The
socket is bound under a temporary name, chmod/chown'ed, then renamed into place,
so there is no moment where a wider-open socket exists at the public path.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import inspect
import json
import logging
import os
import socket
import stat
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from chargepoint.logsetup import redact
from chargepoint.service import summary_line

log = logging.getLogger(__name__)

DEFAULT_STATUS_SOCKET = "/run/chargepoint/status.sock"
MAX_SNAPSHOT_BYTES = 1 << 20
CONNECTOR_KEYS = (
    "id", "status", "pilot", "offered_a", "measured_a", "power_w", "energy_wh",
    "contactor", "transaction_id", "limit_a", "limit_source", "error_code",
)

Snapshot = Mapping[str, Any]
SnapshotSource = Callable[[], Snapshot | Awaitable[Snapshot]]


class StatusUnavailable(Exception):
    """The status socket cannot be read; the message says why and what to do."""


class StatusServer:
    """Serves ``snapshot()`` as JSON, one snapshot per connection.

    ``snapshot`` may be a plain function or a coroutine function. ``group`` is
    a group name to own the socket (None: the process's group, which under the
    unit is ``chargepoint``).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        snapshot: SnapshotSource,
        group: str | None = None,
        *,
        mode: int = 0o660,
        write_timeout: float = 5.0,
    ) -> None:
        self.path = Path(path)
        self.snapshot = snapshot
        self.group = group
        self.mode = mode
        self.write_timeout = write_timeout
        self._server: asyncio.AbstractServer | None = None
        self._inode: tuple[int, int] | None = None

    def _gid(self) -> int:
        if self.group is None:
            return -1
        try:
            return grp.getgrnam(self.group).gr_gid
        except KeyError:
            raise ValueError(
                f"status socket group {self.group!r} does not exist (create it, or set no group)"
            ) from None

    def _clear_stale(self) -> None:
        """Remove a socket left by a previous run; refuse to touch anything else."""
        try:
            st = self.path.lstat()
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise RuntimeError(f"{self.path} exists and is not a socket; refusing to replace it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.settimeout(1.0)
            probe.connect(str(self.path))
        except OSError:
            self.path.unlink(missing_ok=True)  # nobody listening: stale
        else:
            raise RuntimeError(f"another process already serves {self.path}")
        finally:
            probe.close()

    async def start(self) -> None:
        if self._server is not None:
            return
        gid = self._gid()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._clear_stale()
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(tmp))
            os.chmod(tmp, 0)  # nobody until ownership and mode are right
            if gid != -1:
                os.chown(tmp, -1, gid)
            os.chmod(tmp, self.mode)
            sock.listen(16)
            os.replace(tmp, self.path)
            st = self.path.stat()
            self._inode = (st.st_dev, st.st_ino)
            self._server = await asyncio.start_unix_server(self._handle, sock=sock)
        except BaseException:
            sock.close()
            tmp.unlink(missing_ok=True)
            raise
        log.info("status socket listening on %s (mode %o)", self.path, self.mode)

    async def _take_snapshot(self) -> Snapshot:
        result = self.snapshot()
        if inspect.isawaitable(result):
            result = await result
        return result

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                snap: Any = await self._take_snapshot()
            except Exception as exc:
                log.exception("status snapshot failed")
                snap = {"error": f"snapshot failed: {type(exc).__name__}: {exc}"}
            payload = json.dumps(snap, default=str, ensure_ascii=False).encode() + b"\n"
            writer.write(payload)
            await asyncio.wait_for(writer.drain(), self.write_timeout)
        except (ConnectionError, TimeoutError) as exc:
            log.debug("status client went away: %s", exc)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), self.write_timeout)

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        await server.wait_closed()
        # Remove the path only if it is still our socket (a new instance may have replaced it).
        with contextlib.suppress(FileNotFoundError):
            st = self.path.stat()
            if (st.st_dev, st.st_ino) == self._inode:
                self.path.unlink()

    async def __aenter__(self) -> StatusServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def fetch_status(path: str | os.PathLike[str] = DEFAULT_STATUS_SOCKET, timeout: float = 5.0) -> dict:
    """Read one snapshot from a running service; raises StatusUnavailable with a helpful message."""
    where = str(path)
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(where), timeout)
    except FileNotFoundError:
        raise StatusUnavailable(
            f"no status socket at {where}: is the service running? (systemctl status chargepoint)"
        ) from None
    except PermissionError:
        raise StatusUnavailable(
            f"permission denied on {where}: run as root or add your user to the service's group "
            "(sudo adduser $USER chargepoint, then log in again)"
        ) from None
    except ConnectionRefusedError:
        raise StatusUnavailable(f"{where} exists but nothing answers: the service is not running") from None
    except TimeoutError:
        raise StatusUnavailable(f"connecting to {where} timed out after {timeout:g} s") from None
    except OSError as exc:
        raise StatusUnavailable(f"cannot connect to {where}: {exc.strerror or exc}") from None
    try:
        data = await asyncio.wait_for(reader.read(MAX_SNAPSHOT_BYTES + 1), timeout)
    except TimeoutError:
        raise StatusUnavailable(f"the service did not answer on {where} within {timeout:g} s") from None
    except OSError as exc:
        raise StatusUnavailable(f"reading {where} failed: {exc}") from None
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    if len(data) > MAX_SNAPSHOT_BYTES:
        raise StatusUnavailable(f"status answer from {where} is larger than {MAX_SNAPSHOT_BYTES} bytes")
    try:
        snap = json.loads(data)
    except ValueError as exc:
        raise StatusUnavailable(f"the service sent something that is not JSON: {exc}") from None
    if not isinstance(snap, dict):
        raise StatusUnavailable(f"the service sent a JSON {type(snap).__name__}, expected an object")
    if "error" in snap and "connectors" not in snap:
        raise StatusUnavailable(f"the service could not build its status: {snap['error']}")
    return snap


def check_snapshot(snapshot: Any) -> list[str]:
    """Problems with a snapshot's shape (empty list = fine). For the controller's tests."""
    problems: list[str] = []
    if not isinstance(snapshot, Mapping):
        return [f"snapshot must be a dict, got {type(snapshot).__name__}"]
    if snapshot.get("csms") not in ("connected", "connecting", "offline"):
        problems.append(f"csms = {snapshot.get('csms')!r}: expected 'connected', 'connecting' or 'offline'")
    queued = snapshot.get("queued")
    if not isinstance(queued, int) or isinstance(queued, bool) or queued < 0:
        problems.append(f"queued = {queued!r}: expected an int >= 0")
    connectors = snapshot.get("connectors")
    if not isinstance(connectors, list):
        return problems + [f"connectors = {connectors!r}: expected a list"]
    for i, conn in enumerate(connectors):
        if not isinstance(conn, Mapping):
            problems.append(f"connectors[{i}] must be a dict")
            continue
        missing = [k for k in CONNECTOR_KEYS if k not in conn]
        if missing:
            problems.append(f"connectors[{i}] lacks {', '.join(missing)}")
        if conn.get("contactor") not in ("open", "closed"):
            problems.append(f"connectors[{i}].contactor = {conn.get('contactor')!r}: expected 'open' or 'closed'")
    json.dumps(snapshot, default=str)  # must serialize
    return problems


# ---------------------------------------------------------------- formatting


def _amps(v: Any) -> str:
    return "-" if not isinstance(v, int | float) or isinstance(v, bool) else f"{v:.1f} A"


def _cell(v: Any) -> str:
    return "-" if v is None or v == "" else str(v)


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return [fmt.format(*headers).rstrip()] + [fmt.format(*r).rstrip() for r in rows]


def format_status(snapshot: Snapshot) -> str:
    """Human-readable status for ``chargepoint status``: header, connector table, active limits."""
    csms = snapshot.get("csms") or "unknown"
    url = redact(str(snapshot["csms_url"])) if snapshot.get("csms_url") else None  # never show credentials
    queued = snapshot.get("queued")
    lines = [
        summary_line(snapshot),
        f"CSMS: {csms}{f' ({url})' if url else ''}    queued messages: {_cell(queued)}",
        "",
    ]
    connectors = list(snapshot.get("connectors") or [])
    if not connectors:
        lines.append("no connectors")
    else:
        rows = []
        for c in connectors:
            power = c.get("power_w")
            energy = c.get("energy_wh")
            limit = _amps(c.get("limit_a"))
            if c.get("limit_source"):
                limit += f" ({c['limit_source']})"
            error = c.get("error_code")
            rows.append([
                _cell(c.get("id")),
                _cell(c.get("status")),
                _cell(c.get("pilot")),
                _amps(c.get("offered_a")),
                _amps(c.get("measured_a")),
                "-" if not isinstance(power, int | float) else f"{power / 1000:.2f} kW",
                "-" if not isinstance(energy, int | float) else f"{energy / 1000:.3f} kWh",
                _cell(c.get("contactor")),
                _cell(c.get("transaction_id")),
                limit,
                "-" if error in (None, "", "NoError") else str(error),
            ])
        lines += _table(
            ["ID", "STATUS", "PILOT", "OFFERED", "MEASURED", "POWER", "ENERGY", "CONTACTOR", "TX", "LIMIT",
             "ERROR"],
            rows,
        )
        claims = [(c.get("id"), c.get("limits")) for c in connectors if c.get("limits")]
        if claims:
            lines += ["", "Active limits (lowest wins):"]
            for cid, limits in claims:
                ordered = sorted(
                    (lim for lim in limits if isinstance(lim, Mapping)),
                    key=lambda lim: (lim.get("limit_a") is None, lim.get("limit_a") or 0.0),
                )
                text = ", ".join(f"{_amps(lim.get('limit_a'))} {_cell(lim.get('source'))}" for lim in ordered)
                lines.append(f"  connector {cid}: {text}")
    return "\n".join(lines)

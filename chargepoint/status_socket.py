"""A local status socket: ``chargepoint status`` asks the running service what it is doing.

The service listens on a Unix stream socket (default
``/run/chargepoint/status.sock``, in systemd's ``RuntimeDirectory=``). A client
sends one request line and gets one answer, then the server closes the
connection:

* ``status`` (or nothing: a client that sends nothing within
  :attr:`StatusServer.request_wait_s` gets the status too, e.g. ``socat -
  UNIX-CONNECT:…``): one JSON snapshot and a newline. The snapshot shape is
  documented in :mod:`chargepoint.service`.
* ``subscribe``: the application API's change stream (:meth:`chargepoint.api.StationApi.subscribe`): one
  JSON snapshot line, then one JSON line per change (``{"kind", "connector", "data", "at"}``, id tags
  masked) until the client closes; for ``chargepoint status --follow``. A client that does not read is
  dropped after the write timeout; its bounded subscription never slows the controller.
* ``store-copy``: a consistent copy of the state store, for ``chargepoint
  diagnostics`` (the store holds an exclusive SQLite lock, so no other process
  can read the file while the controller runs). The answer is a JSON header
  line ``{"ok": true, "files": [{"name": "state.db", "size": N}]}`` followed by
  the files' bytes in that order, or ``{"ok": false, "error": "…"}``.

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
import shutil
import socket
import stat
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
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

#: The longest request line a client may send.
MAX_REQUEST_BYTES = 256
#: Largest file a ``store-copy`` answer may announce (a sanity bound for the client, not a quota).
MAX_STORE_FILE_BYTES = 4 << 30

Snapshot = Mapping[str, Any]
SnapshotSource = Callable[[], Snapshot | Awaitable[Snapshot]]
#: Makes a consistent copy of the state store; returns a directory holding it (removed after sending)
#: or None when no copy could be made.
StoreCopier = Callable[[], Path | None | Awaitable[Path | None]]


class StatusSocketInUse(OSError, RuntimeError):
    """The socket path is taken (another controller serves it, or it is not a socket). An OSError, so that
    the controller logs it and carries on, as for any socket that cannot be bound (``simulate --config``
    with the live service's path while the service runs)."""


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
        store_copy: StoreCopier | None = None,
        request_wait_s: float = 0.5,
        subscribe: Callable[[], Any] | None = None,
    ) -> None:
        self.path = Path(path)
        self.subscribe = subscribe
        self._streams: set[Any] = set()
        self.snapshot = snapshot
        self.group = group
        self.mode = mode
        self.write_timeout = write_timeout
        self.store_copy = store_copy
        self.request_wait_s = request_wait_s
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
            raise StatusSocketInUse(f"{self.path} exists and is not a socket; refusing to replace it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.settimeout(1.0)
            probe.connect(str(self.path))
        except OSError:
            self.path.unlink(missing_ok=True)  # nobody listening: stale
        else:
            raise StatusSocketInUse(f"another process already serves {self.path}")
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

    async def _read_request(self, reader: asyncio.StreamReader) -> str:
        """The client's request word; "status" when it sends nothing (older clients, socat)."""
        try:
            line = await asyncio.wait_for(reader.readline(), self.request_wait_s)
        except TimeoutError:
            return "status"
        except ValueError:  # a line longer than the reader's limit
            return "(too long)"
        if len(line) > MAX_REQUEST_BYTES:
            return "(too long)"
        return line.decode("utf-8", errors="replace").strip().lower() or "status"

    async def _send_json(self, writer: asyncio.StreamWriter, obj: Any) -> None:
        writer.write(json.dumps(obj, default=str, ensure_ascii=False).encode() + b"\n")
        await asyncio.wait_for(writer.drain(), self.write_timeout)

    async def _send_store_copy(self, writer: asyncio.StreamWriter) -> None:
        if self.store_copy is None:
            await self._send_json(writer, {"ok": False, "error": "this controller has no state store to copy"})
            return
        try:
            made = self.store_copy()
            copy_dir = await made if inspect.isawaitable(made) else made
        except Exception as exc:
            log.exception("state store copy for a local client failed")
            await self._send_json(writer, {"ok": False, "error": f"copy failed: {type(exc).__name__}: {exc}"})
            return
        if copy_dir is None:
            await self._send_json(writer, {"ok": False, "error": "the state store could not be copied "
                                                                 "(the service's journal says why)"})
            return
        with contextlib.ExitStack() as files_open:
            try:
                files = sorted(f for f in Path(copy_dir).iterdir() if f.is_file())
                header = [{"name": f.name, "size": f.stat().st_size} for f in files]
                handles = [files_open.enter_context(f.open("rb")) for f in files]
            finally:
                # Removed before the first byte goes out (the open handles keep the data): once a client has
                # read everything no copy of the store is left, nor when it goes away early.
                await asyncio.to_thread(shutil.rmtree, copy_dir, True)
            await self._send_json(writer, {"ok": True, "files": header})
            for fh in handles:
                while chunk := await asyncio.to_thread(fh.read, 1 << 16):
                    writer.write(chunk)
                    await asyncio.wait_for(writer.drain(), self.write_timeout)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await self._read_request(reader)
            if request == "store-copy":
                await self._send_store_copy(writer)
                return
            if request == "subscribe" and self.subscribe is not None:
                await self._stream_changes(reader, writer)
                return
            if request != "status":
                known = "status, subscribe, store-copy" if self.subscribe is not None else "status, store-copy"
                await self._send_json(writer, {"error": f"unknown request {request[:40]!r}; requests: {known}"})
                return
            try:
                snap: Any = await self._take_snapshot()
            except Exception as exc:
                log.exception("status snapshot failed")
                snap = {"error": f"snapshot failed: {type(exc).__name__}: {exc}"}
            await self._send_json(writer, snap)
        except (ConnectionError, TimeoutError, OSError) as exc:
            log.debug("status client went away: %s", exc)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), self.write_timeout)

    async def _stream_changes(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self.subscribe is not None
        sub = self.subscribe()
        self._streams.add(sub)
        gone = asyncio.ensure_future(reader.read(1))  # EOF (or anything) from the client ends the stream
        try:
            await self._send_json(writer, await self._take_snapshot())
            while True:
                get = asyncio.ensure_future(sub.get())
                await asyncio.wait({get, gone}, return_when=asyncio.FIRST_COMPLETED)
                if not get.done():
                    get.cancel()
                    return  # the client went away
                try:
                    change = get.result()
                except EOFError:
                    return  # the server stops
                line = {"kind": change.kind.value, "connector": change.connector_id,
                        "data": dict(change.data), "at": round(change.at, 3)}
                await self._send_json(writer, line)
        finally:
            gone.cancel()
            self._streams.discard(sub)
            sub.close()

    async def stop(self) -> None:
        for sub in list(self._streams):
            sub.close()  # every follower's stream ends
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


async def _connect(
    where: str, timeout: float, request: str, *, limit: int = 1 << 16
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect and send the request line; StatusUnavailable says why that failed and what to do."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(where, limit=limit), timeout)
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
        writer.write(request.encode() + b"\n")
        await asyncio.wait_for(writer.drain(), timeout)
    except (ConnectionError, TimeoutError):
        pass  # a server of an older release answers without reading; its answer is still there to read
    return reader, writer


def _json_object(data: bytes, error_means: str | None) -> dict[str, Any]:
    """One answer line as a JSON object; ``error_means``: how to word an ``{"error": …}`` answer (None: it is
    an ordinary object, e.g. a change)."""
    try:
        obj = json.loads(data)
    except ValueError as exc:
        raise StatusUnavailable(f"the service sent something that is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise StatusUnavailable(f"the service sent a JSON {type(obj).__name__}, expected an object")
    if error_means is not None and "error" in obj and "connectors" not in obj:
        raise StatusUnavailable(f"{error_means}: {obj['error']}")
    return obj


async def fetch_status(path: str | os.PathLike[str] = DEFAULT_STATUS_SOCKET, timeout: float = 5.0) -> dict:
    """Read one snapshot from a running service; raises StatusUnavailable with a helpful message."""
    where = str(path)
    reader, writer = await _connect(where, timeout, "status")
    try:
        data = b""
        while len(data) <= MAX_SNAPSHOT_BYTES:  # until the server closes: one read may return a part
            chunk = await asyncio.wait_for(reader.read(MAX_SNAPSHOT_BYTES + 1 - len(data)), timeout)
            if not chunk:
                break
            data += chunk
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
    snap = _json_object(data, "the service could not build its status")
    return snap


async def fetch_store_copy(
    path: str | os.PathLike[str], dest_dir: str | os.PathLike[str], *, timeout: float = 60.0
) -> list[Path]:
    """Ask the running service for a consistent copy of its state store and write it into ``dest_dir``.

    Returns the files written. Raises StatusUnavailable (the message says why) when nothing answers, the
    service cannot make the copy, or it is a release without the ``store-copy`` request.
    """
    where = str(path)
    dest = Path(dest_dir)
    reader, writer = await _connect(where, timeout, "store-copy")
    written: list[Path] = []
    try:
        try:
            header_line = await asyncio.wait_for(reader.readline(), timeout)
            header = json.loads(header_line)
        except TimeoutError:
            raise StatusUnavailable(f"the service did not answer on {where} within {timeout:g} s") from None
        except (ValueError, OSError) as exc:
            raise StatusUnavailable(f"the service on {where} sent no usable answer: {exc}") from None
        if not isinstance(header, dict) or "ok" not in header:
            raise StatusUnavailable(f"the service on {where} cannot copy its state store (an older release)")
        if header["ok"] is not True:
            raise StatusUnavailable(f"the service could not copy its state store: {header.get('error')}")
        for entry in header.get("files") or []:
            name = str(entry.get("name", "")) if isinstance(entry, dict) else ""
            size = entry.get("size") if isinstance(entry, dict) else None
            if (not name or Path(name).name != name or name.startswith(".") or not isinstance(size, int)
                    or isinstance(size, bool) or not 0 <= size <= MAX_STORE_FILE_BYTES):
                raise StatusUnavailable(f"the service on {where} announced an unusable file: {entry!r}")
            target = dest / name
            written.append(target)
            with target.open("wb") as fh:
                left = size
                while left:
                    chunk = await asyncio.wait_for(reader.read(min(left, 1 << 16)), timeout)
                    if not chunk:
                        raise StatusUnavailable(f"the copy of {name} from {where} ended early")
                    fh.write(chunk)
                    left -= len(chunk)
    except BaseException:
        for target in written:
            target.unlink(missing_ok=True)
        raise
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return written


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


async def follow_status(
    path: str | os.PathLike[str] = DEFAULT_STATUS_SOCKET, timeout: float = 5.0
) -> AsyncIterator[dict[str, Any]]:
    """The snapshot, then every change as it happens (``subscribe``); ends when the service closes."""
    where = str(path)
    reader, writer = await _connect(where, timeout, "subscribe", limit=MAX_SNAPSHOT_BYTES + 1)
    try:
        first = True
        while True:
            try:
                line = await (asyncio.wait_for(reader.readline(), timeout) if first else reader.readline())
            except TimeoutError:
                raise StatusUnavailable(f"the service did not answer on {where} within {timeout:g} s") from None
            except ValueError:  # a line beyond the reader's limit
                raise StatusUnavailable(f"a line from {where} is larger than {MAX_SNAPSHOT_BYTES} bytes") from None
            except OSError as exc:
                raise StatusUnavailable(f"reading {where} failed: {exc}") from None
            if not line:
                return
            if len(line) > MAX_SNAPSHOT_BYTES:
                raise StatusUnavailable(f"a line from {where} is larger than {MAX_SNAPSHOT_BYTES} bytes")
            obj = _json_object(line, "the service cannot stream changes" if first else None)
            first = False
            yield obj
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def format_change(change: Mapping[str, Any]) -> str:
    """One line per change for ``chargepoint status --follow``."""
    data = dict(change.get("data") or {})
    event = data.pop("event", change.get("kind"))
    data.pop("connector", None)
    where = f"connector {change['connector']}" if change.get("connector") is not None else "station"
    detail = " ".join(f"{k}={v}" for k, v in data.items())
    return f"{_cell(change.get('kind')):<13} {where:<12} {event} {detail}".rstrip()


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
    if snapshot.get("kind") == "local-controller":  # the local controller's socket: the site view
        from chargepoint.localcontroller.status import format_site

        return format_site(snapshot)
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
                _amps(c.get("cable_a")).replace(".0 A", " A"),
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
            ["ID", "STATUS", "PILOT", "CABLE", "OFFERED", "MEASURED", "POWER", "ENERGY", "CONTACTOR", "TX",
             "LIMIT", "ERROR"],
            rows,
        )
        # the claims on each connector's current: the API's "claims", the controller's "limit_claims", or an
        # older release's "limits" ({limit_a, source})
        claims = [(c.get("id"), c.get("claims") or c.get("limit_claims") or c.get("limits")) for c in connectors]
        claims = [(cid, lims) for cid, lims in claims if lims]
        if claims:
            lines += ["", "Limit claims (the lowest wins; none = pause):"]
            for cid, limits in claims:
                def amps(lim: Mapping[str, Any]) -> Any:
                    return lim.get("amps", lim.get("limit_a"))

                ordered = sorted(
                    (lim for lim in limits if isinstance(lim, Mapping)),
                    key=lambda lim: (amps(lim) is not None, amps(lim) or 0.0),
                )
                text = ", ".join(
                    f"{_amps(amps(lim)) if amps(lim) is not None else 'none'} {_cell(lim.get('source'))}"
                    for lim in ordered)
                lines.append(f"  connector {cid}: {text}")
    return "\n".join(lines)

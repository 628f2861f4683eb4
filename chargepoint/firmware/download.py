"""File transfer for UpdateFirmware and GetDiagnostics: HTTP(S) and FTP, download and upload.

urllib and ftplib block, so every attempt runs in a worker thread (``asyncio.to_thread``); only the waits
between attempts happen on the event loop.  Failures end in :class:`DownloadFailed` / :class:`UploadFailed`
whose message is written for a person (no traceback, credentials masked).

OCPP 1.6 (UpdateFirmware.req / GetDiagnostics.req, §6.51 / §6.23): ``retries`` is "how many times the
Charge Point must try ... before giving up", so it is read as the total number of attempts (at least one).
"""

from __future__ import annotations

import asyncio
import base64
import ftplib
import hashlib
import http.client
import logging
import os
import re
import shutil
import socket
import ssl
import urllib.error
import urllib.request
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TypeVar
from urllib.parse import parse_qsl, quote, unquote, urlsplit, urlunsplit

log = logging.getLogger(__name__)

SUPPORTED_SCHEMES = ("http", "https", "ftp")
HASH_ALGORITHMS = ("md5", "sha1", "sha224", "sha256", "sha384", "sha512")
CHUNK = 64 * 1024
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
#: Space that must stay free on the disk after the download (logs, SQLite store, journal).
DEFAULT_RESERVE_BYTES = 32 * 1024 * 1024
USER_AGENT = "pi-chargepoint-firmware/1"

DiskUsage = Callable[[Path], Any]  # shutil.disk_usage-like: returns an object with .free
Sleep = Callable[[float], Awaitable[None]]
_T = TypeVar("_T")


class TransferError(Exception):
    """A transfer failed; ``retryable`` says whether another attempt could succeed."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable

    def __str__(self) -> str:
        return self.message


class DownloadFailed(TransferError):
    """Downloading a file did not produce a complete, checksum-verified copy."""


class UploadFailed(TransferError):
    """Uploading a file did not complete."""


async def _with_retries(once: Callable[[int], Awaitable[_T]], error: type[TransferError], *, attempts: int,
                        interval_s: float, sleep: Sleep, label: str, retry_every_failure: bool = False) -> _T:
    """Run ``once(n)`` for n = 1..attempts until it succeeds, waiting ``interval_s`` between attempts.

    Only ``error`` is caught; a non-retryable one ends at once and is raised as it is, unless
    ``retry_every_failure``. When every attempt failed, the last message is raised with "(gave up after N
    attempts)" and ``retryable=False``, since the ``retries`` budget (the total number of attempts, OCPP 1.6
    §5.9 / §5.19) is used up.
    """
    last: TransferError | None = None
    tried = 0
    for n in range(1, attempts + 1):
        tried = n
        try:
            return await once(n)
        except error as e:
            last = e
            log.warning("%s attempt %d/%d failed: %s", label, n, attempts, e)
            if not e.retryable and not retry_every_failure:
                break
            if n < attempts:
                await sleep(interval_s)
    assert last is not None
    if tried == attempts and attempts > 1:
        raise error(f"{last.message} (gave up after {attempts} attempts)", retryable=False)
    raise last


@dataclass(frozen=True)
class DownloadResult:
    path: Path
    size: int
    sha256: str
    #: Which checksum was verified ("sha256 from URL fragment", "sha256 sidecar") or None if none was offered.
    checksum: str | None
    attempts: int


# ---------------------------------------------------------------------------------------------------------
# URL helpers


def safe_url(url: str) -> str:
    """The URL with the password (and fragment) removed, for messages and logs."""
    try:
        p = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    netloc = p.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:***@{host}" if ":" in userinfo else f"{user}@{host}"
    return urlunsplit((p.scheme, netloc, p.path, p.query, ""))


def _check_scheme(url: str, exc: type[TransferError]) -> Any:
    try:
        p = urlsplit(url)
        p.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as e:
        raise exc(f"invalid URL {safe_url(url)!r}: {e}", retryable=False) from None
    if p.scheme.lower() not in SUPPORTED_SCHEMES:
        raise exc(
            f"unsupported URL scheme {p.scheme!r} in {safe_url(url)!r}; allowed: {', '.join(SUPPORTED_SCHEMES)}",
            retryable=False,
        )
    if not p.hostname:
        raise exc(f"URL {safe_url(url)!r} has no host", retryable=False)
    return p


def _strip_fragment_and_userinfo(url: str) -> tuple[str, str | None, str | None]:
    """(url without fragment and credentials, user, password)."""
    p = urlsplit(url)
    host = p.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    netloc = host + (f":{p.port}" if p.port else "")
    user = unquote(p.username) if p.username is not None else None
    password = unquote(p.password) if p.password is not None else None
    return urlunsplit((p.scheme, netloc, p.path, p.query, "")), user, password


def expected_checksum_from_url(url: str) -> tuple[str, str] | None:
    """(algorithm, hex digest) from a fragment like ``#sha256=ab12…``; None when the URL carries none."""
    frag = urlsplit(url).fragment
    if not frag:
        return None
    for key, value in parse_qsl(frag, keep_blank_values=True):
        algo = key.lower().replace("-", "")
        if algo in HASH_ALGORITHMS:
            digest = value.strip().lower()
            if not re.fullmatch(r"[0-9a-f]+", digest) or len(digest) != hashlib.new(algo).digest_size * 2:
                raise DownloadFailed(
                    f"the URL fragment gives {key}={value!r}, which is not a {algo} hex digest", retryable=False
                )
            return algo, digest
    return None


def _join_remote(location: str, name: str) -> str:
    """``location`` is a directory (GetDiagnostics.req): append the file name."""
    p = urlsplit(location)
    path = p.path if p.path.endswith("/") else p.path + "/"
    return urlunsplit((p.scheme, p.netloc, path + quote(name), p.query, ""))


# ---------------------------------------------------------------------------------------------------------
# Disk space


def _check_disk(directory: Path, needed: int | None, reserve: int, disk_usage: DiskUsage) -> None:
    free = int(disk_usage(directory).free)
    need = (needed or 0) + reserve
    if free < need:
        what = f"{needed} bytes for the file + {reserve} reserve" if needed else f"{reserve} bytes reserve"
        raise DownloadFailed(
            f"not enough free disk space in {directory}: {free} bytes free, {need} needed ({what})",
            retryable=False,
        )


# ---------------------------------------------------------------------------------------------------------
# HTTP


def _http_request(url: str, *, method: str = "GET", data: Any = None, headers: dict[str, str] | None = None,
                  timeout: float) -> Any:
    clean, user, password = _strip_fragment_and_userinfo(url)
    hdrs = {"User-Agent": USER_AGENT, **(headers or {})}
    if user is not None:
        token = base64.b64encode(f"{user}:{password or ''}".encode()).decode("ascii")
        hdrs["Authorization"] = f"Basic {token}"
    req = urllib.request.Request(clean, data=data, headers=hdrs, method=method)
    ctx = ssl.create_default_context() if clean.lower().startswith("https:") else None
    return urllib.request.urlopen(req, timeout=timeout, context=ctx)  # noqa: S310 - scheme checked


def _http_error_message(e: urllib.error.HTTPError, url: str) -> str:
    return f"server answered HTTP {e.code} {e.reason} for {safe_url(url)}"


def _reach_error_message(e: BaseException, url: str) -> str:
    reason: Any = getattr(e, "reason", e)
    if isinstance(reason, ConnectionRefusedError):
        reason = "connection refused"
    elif isinstance(reason, (TimeoutError, socket.timeout)):
        reason = "timed out"
    elif isinstance(reason, socket.gaierror):
        reason = f"host name not resolved ({reason.strerror})"
    elif isinstance(reason, ssl.SSLCertVerificationError):
        reason = f"TLS certificate not accepted ({reason.verify_message})"
    return f"cannot reach {urlsplit(url).hostname}: {reason} ({safe_url(url)})"


def _retryable_http(code: int) -> bool:
    return code >= 500 or code in (408, 425, 429)


class _Sink:
    """Writes the body to the part file while hashing and enforcing size and disk limits."""

    def __init__(self, fh: BinaryIO, algos: set[str], max_bytes: int, directory: Path, reserve: int,
                 disk_usage: DiskUsage, length_known: bool) -> None:
        self.fh = fh
        self.hashers = {a: hashlib.new(a) for a in algos | {"sha256"}}
        self.size = 0
        self.max_bytes = max_bytes
        self.directory = directory
        self.reserve = reserve
        self.disk_usage = disk_usage
        self.length_known = length_known
        self._next_disk_check = 8 * 1024 * 1024

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.max_bytes:
            raise DownloadFailed(f"the file is larger than the allowed {self.max_bytes} bytes", retryable=False)
        if not self.length_known and self.size >= self._next_disk_check:
            # Unknown length: keep checking that the reserve stays free while the file grows.
            _check_disk(self.directory, None, self.reserve, self.disk_usage)
            self._next_disk_check += 8 * 1024 * 1024
        try:
            self.fh.write(chunk)
        except OSError as e:
            raise DownloadFailed(f"cannot write the download to {self.directory}: {e.strerror}",
                                 retryable=False) from None
        for h in self.hashers.values():
            h.update(chunk)


def _http_fetch(url: str, part: Path, algos: set[str], *, max_bytes: int, reserve: int,
                disk_usage: DiskUsage, timeout: float) -> _Sink:
    try:
        resp = _http_request(url, timeout=timeout)
    except urllib.error.HTTPError as e:
        raise DownloadFailed(_http_error_message(e, url), retryable=_retryable_http(e.code)) from None
    except (urllib.error.URLError, OSError) as e:
        raise DownloadFailed(_reach_error_message(e, url)) from None
    with resp:
        raw_len = resp.headers.get("Content-Length")
        length = int(raw_len) if raw_len and raw_len.isdigit() else None
        if length is not None and length > max_bytes:
            raise DownloadFailed(f"{safe_url(url)} is {length} bytes, more than the allowed {max_bytes}",
                                 retryable=False)
        _check_disk(part.parent, length, reserve, disk_usage)
        with open(part, "wb") as fh:
            sink = _Sink(fh, algos, max_bytes, part.parent, reserve, disk_usage, length is not None)
            try:
                while chunk := resp.read(CHUNK):
                    sink.write(chunk)
            except (OSError, ValueError, http.client.HTTPException) as e:
                raise DownloadFailed(
                    f"connection lost after {sink.size} bytes of {safe_url(url)} ({type(e).__name__})"
                ) from None
            fh.flush()
            os.fsync(fh.fileno())
    if length is not None and sink.size != length:
        raise DownloadFailed(
            f"download of {safe_url(url)} truncated: received {sink.size} of {length} bytes (Content-Length)"
        )
    return sink


def _http_small(url: str, *, timeout: float, limit: int = 4096) -> bytes | None:
    """GET a small file; None if the server says it does not exist (4xx)."""
    try:
        with _http_request(url, timeout=timeout) as resp:
            return resp.read(limit + 1)[:limit]
    except urllib.error.HTTPError as e:
        if 400 <= e.code < 500:
            return None
        raise DownloadFailed(_http_error_message(e, url), retryable=_retryable_http(e.code)) from None
    except (urllib.error.URLError, OSError) as e:
        raise DownloadFailed(_reach_error_message(e, url)) from None


# ---------------------------------------------------------------------------------------------------------
# FTP


def _ftp_connect(url: str, timeout: float, exc: type[TransferError]) -> tuple[ftplib.FTP, list[str]]:
    """Log in; return the connection and the path segments (RFC 1738: relative to the login directory)."""
    p = urlsplit(url)
    user = unquote(p.username) if p.username else "anonymous"
    password = unquote(p.password) if p.password is not None else "anonymous@"
    ftp = ftplib.FTP(timeout=timeout)
    try:
        ftp.connect(p.hostname or "", p.port or 21)
        ftp.login(user, password)
        ftp.voidcmd("TYPE I")
    except ftplib.error_perm as e:
        ftp.close()
        raise exc(f"FTP server {p.hostname} refused the login as {user!r}: {e}", retryable=False) from None
    except ftplib.all_errors as e:
        ftp.close()
        raise exc(_reach_error_message(e, url) if isinstance(e, OSError) else
                  f"FTP error from {p.hostname}: {e}") from None
    segments = [unquote(s) for s in p.path.split("/") if s]
    return ftp, segments


def _ftp_fetch(url: str, part: Path, algos: set[str], *, max_bytes: int, reserve: int,
               disk_usage: DiskUsage, timeout: float) -> _Sink:
    ftp, segs = _ftp_connect(url, timeout, DownloadFailed)
    if not segs:
        ftp.close()
        raise DownloadFailed(f"{safe_url(url)} names no file", retryable=False)
    path = "/".join(segs)
    try:
        try:
            length: int | None = ftp.size(path)
        except ftplib.error_perm:
            length = None  # SIZE not supported or file missing; RETR tells which
        if length is not None and length > max_bytes:
            raise DownloadFailed(f"{safe_url(url)} is {length} bytes, more than the allowed {max_bytes}",
                                 retryable=False)
        _check_disk(part.parent, length, reserve, disk_usage)
        with open(part, "wb") as fh:
            sink = _Sink(fh, algos, max_bytes, part.parent, reserve, disk_usage, length is not None)
            try:
                ftp.retrbinary(f"RETR {path}", sink.write, blocksize=CHUNK)
            except ftplib.error_perm as e:
                raise DownloadFailed(f"FTP server refused {safe_url(url)}: {e}", retryable=False) from None
            except ftplib.error_temp as e:
                raise DownloadFailed(f"FTP server could not send {safe_url(url)} now: {e}") from None
            except (OSError, EOFError, ftplib.Error) as e:
                raise DownloadFailed(
                    f"FTP transfer of {safe_url(url)} broke after {sink.size} bytes ({e or type(e).__name__})"
                ) from None
            fh.flush()
            os.fsync(fh.fileno())
        if length is not None and sink.size != length:
            raise DownloadFailed(
                f"download of {safe_url(url)} truncated: received {sink.size} of {length} bytes (SIZE)"
            )
        return sink
    finally:
        try:
            ftp.quit()
        except ftplib.all_errors:
            ftp.close()


def _ftp_small(url: str, *, timeout: float, limit: int = 4096) -> bytes | None:
    ftp, segs = _ftp_connect(url, timeout, DownloadFailed)
    buf = bytearray()
    try:
        ftp.retrbinary(f"RETR {'/'.join(segs)}", lambda b: buf.extend(b[: limit - len(buf)]))
        return bytes(buf)
    except ftplib.error_perm:
        return None
    except ftplib.all_errors as e:
        raise DownloadFailed(f"FTP error fetching {safe_url(url)}: {e}") from None
    finally:
        try:
            ftp.quit()
        except ftplib.all_errors:
            ftp.close()


# ---------------------------------------------------------------------------------------------------------
# Download


def _sidecar_checksum(url: str, timeout: float) -> str | None:
    """sha256 from ``<url>.sha256`` if the server has one (``<hex>`` or ``<hex>  name``)."""
    clean = urlunsplit(urlsplit(url)._replace(fragment=""))
    p = urlsplit(clean)
    side = urlunsplit(p._replace(path=p.path + ".sha256"))
    body = _ftp_small(side, timeout=timeout) if p.scheme.lower() == "ftp" else _http_small(side, timeout=timeout)
    if body is None:
        return None
    text = body.decode("ascii", "replace").strip()
    token = text.split()[0].lower() if text else ""
    if not re.fullmatch(r"[0-9a-f]{64}", token):
        # e.g. a web server that answers every path with an HTML page: not a checksum file.
        log.warning("ignoring %s: it does not start with a sha256 hex digest", safe_url(side))
        return None
    return token


def _attempt(url: str, dest: Path, part: Path, *, max_bytes: int, reserve: int, disk_usage: DiskUsage,
             timeout: float) -> tuple[int, str, str | None]:
    expected = expected_checksum_from_url(url)
    algos = {expected[0]} if expected else set()
    fetch = _ftp_fetch if urlsplit(url).scheme.lower() == "ftp" else _http_fetch
    try:
        sink = fetch(url, part, algos, max_bytes=max_bytes, reserve=reserve, disk_usage=disk_usage,
                     timeout=timeout)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    checked: str | None = None
    if expected is None:
        side = _sidecar_checksum(url, timeout)
        if side is not None:
            expected = ("sha256", side)
            checked = "sha256 sidecar"
    else:
        checked = f"{expected[0]} from URL fragment"
    if expected is not None:
        actual = sink.hashers[expected[0]].hexdigest()
        if actual != expected[1]:
            part.unlink(missing_ok=True)
            raise DownloadFailed(
                f"checksum mismatch for {safe_url(url)}: {expected[0]} is {actual}, expected {expected[1]}"
            )
    os.replace(part, dest)
    return sink.size, sink.hashers["sha256"].hexdigest(), checked


async def download(
    url: str,
    dest: Path,
    *,
    retries: int = 1,
    retry_interval_s: float = 0.0,
    max_bytes: int = DEFAULT_MAX_BYTES,
    reserve_bytes: int = DEFAULT_RESERVE_BYTES,
    timeout_s: float = 30.0,
    disk_usage: DiskUsage = shutil.disk_usage,
    sleep: Sleep = asyncio.sleep,
    retry_every_failure: bool = False,
) -> DownloadResult:
    """Download ``url`` to ``dest`` (via ``dest.part``, renamed only when complete and verified).

    ``retries`` is the total number of attempts (OCPP wording), ``retry_interval_s`` the wait between them.
    Not retried unless ``retry_every_failure``: a 4xx answer, an FTP 5xx refusal, a file that is too large,
    a full disk. UpdateFirmware sets it (§6.51: "how many times Charge Point must try to download the
    firmware before giving up"; a 404 may be a file not published yet). A malformed URL is never retried.
    """
    _check_scheme(url, DownloadFailed)
    expected_checksum_from_url(url)  # a malformed fragment is an immediate, clear error
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")

    async def once(n: int) -> DownloadResult:
        _check_disk(dest.parent, None, reserve_bytes, disk_usage)
        size, digest, checked = await asyncio.to_thread(
            _attempt, url, dest, part, max_bytes=max_bytes, reserve=reserve_bytes,
            disk_usage=disk_usage, timeout=timeout_s,
        )
        log.info("downloaded %s (%d bytes, sha256 %s, checksum: %s) in %d attempt(s)",
                 safe_url(url), size, digest, checked or "none offered", n)
        return DownloadResult(dest, size, digest, checked, n)

    return await _with_retries(once, DownloadFailed, attempts=max(1, int(retries)),
                               interval_s=retry_interval_s, sleep=sleep, label="download",
                               retry_every_failure=retry_every_failure)


# ---------------------------------------------------------------------------------------------------------
# Upload


def _multipart(field: str, filename: str, path: Path) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    return head + path.read_bytes() + tail, f"multipart/form-data; boundary={boundary}"


def _http_put(target: str, file: Path, timeout: float) -> None:
    size = file.stat().st_size
    with open(file, "rb") as fh:
        with _http_request(target, method="PUT", data=fh, timeout=timeout,
                           headers={"Content-Length": str(size), "Content-Type": "application/octet-stream"}):
            pass


def _http_post(url: str, file: Path, name: str, field: str, timeout: float) -> None:
    body, ctype = _multipart(field, name, file)
    with _http_request(url, method="POST", data=body, timeout=timeout,
                       headers={"Content-Type": ctype, "Content-Length": str(len(body))}):
        pass


def _ftp_store(location: str, file: Path, name: str, timeout: float) -> None:
    ftp, segs = _ftp_connect(location, timeout, UploadFailed)
    try:
        for seg in segs:
            ftp.cwd(seg)
        with open(file, "rb") as fh:
            ftp.storbinary(f"STOR {name}", fh, blocksize=CHUNK)
    except ftplib.error_perm as e:
        raise UploadFailed(f"FTP server refused the upload of {name} to {safe_url(location)}: {e}",
                           retryable=False) from None
    except ftplib.error_temp as e:
        raise UploadFailed(f"FTP server could not take {name} now: {e}") from None
    except (OSError, EOFError, ftplib.Error) as e:
        raise UploadFailed(f"FTP upload of {name} to {safe_url(location)} broke ({e or type(e).__name__})") from None
    finally:
        try:
            ftp.quit()
        except ftplib.all_errors:
            ftp.close()


def _upload_once(location: str, file: Path, name: str, method: str, field: str, timeout: float) -> str:
    scheme = urlsplit(location).scheme.lower()
    if scheme == "ftp":
        _ftp_store(location, file, name, timeout)
        return _join_remote(location, name)
    target = _join_remote(location, name) if method == "PUT" else location
    try:
        if method == "PUT":
            _http_put(target, file, timeout)
        else:
            _http_post(target, file, name, field, timeout)
    except urllib.error.HTTPError as e:
        raise UploadFailed(_http_error_message(e, target), retryable=_retryable_http(e.code)) from None
    except (urllib.error.URLError, OSError) as e:
        raise UploadFailed(_reach_error_message(e, target)) from None
    return target


async def upload(
    location: str,
    file: Path,
    *,
    remote_name: str | None = None,
    retries: int = 1,
    retry_interval_s: float = 0.0,
    method: str = "PUT",
    field_name: str = "file",
    timeout_s: float = 60.0,
    sleep: Sleep = asyncio.sleep,
) -> str:
    """Upload ``file`` into the directory URL ``location`` (GetDiagnostics.req semantics).

    HTTP(S): ``PUT <location>/<name>``, or with ``method="POST"`` a multipart/form-data POST to ``location``.
    FTP: ``STOR <name>`` in the location directory.  Returns the URL written (without credentials).
    """
    method = method.upper()
    if method not in ("PUT", "POST"):
        raise UploadFailed(f"upload method {method!r} not supported; allowed: PUT, POST", retryable=False)
    _check_scheme(location, UploadFailed)
    file = Path(file)
    if not file.is_file():
        raise UploadFailed(f"nothing to upload: {file} does not exist", retryable=False)
    name = remote_name or file.name

    async def once(n: int) -> str:
        target = await asyncio.to_thread(_upload_once, location, file, name, method, field_name, timeout_s)
        log.info("uploaded %s to %s (attempt %d)", file.name, safe_url(target), n)
        return safe_url(target)

    return await _with_retries(once, UploadFailed, attempts=max(1, int(retries)),
                               interval_s=retry_interval_s, sleep=sleep, label="upload")

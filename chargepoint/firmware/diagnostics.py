"""GetDiagnostics (OCPP 1.6 §5.9 / §6.23): one tar.gz with what a technician needs, without secrets.

Archive members (under ``diagnostics/``): ``manifest.json``, ``journal.log`` (this service's journal in the
requested window), ``state/<db>`` (SQLite copies made with the backup API, so a database in WAL mode with
uncommitted checkpoints is still consistent), ``config.toml`` (secrets redacted), ``versions.json``,
``hardware.json``.  Secrets are removed from every member, including values found in the store.

Id tags are personal data, not secrets the technician may not see: they are replaced by their mask
(:func:`chargepoint.privacy.mask_id_tag`, the value of the journal field ``ID_TAG``), so a session in the
store can still be matched with its journal lines. Masked: every id-tag column (``id_tag``,
``parent_id_tag``, ``stop_id_tag``: transactions, local list, authorization cache, reservations), idTag
fields inside any text (queued OCPP payloads, journal lines, configuration), and, as a safety net, any other
occurrence of a tag found in those columns.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from chargepoint.firmware.download import Sleep, UploadFailed, safe_url, upload
from chargepoint.privacy import is_mask, mask_id_tag, mask_tags_in_text, salt_for_state_dir

log = logging.getLogger(__name__)

REDACTED = "<redacted>"
JournalReader = Callable[[datetime | None, datetime | None], Iterable[str]]
#: (out_path, journal_since, journal_until) -> out_path
ArchiveBuilder = Callable[[Path, datetime | None, datetime | None], Path]

_SECRET_KEY_PATTERNS = [
    r"authori[sz]ation_?key", r"auth_?key", r"passw(or)?d", r"passphrase", r"(^|_)pass$", r"(^|_)pwd$",
    r"secret", r"private_?key", r"api_?key", r"(^|_)(access|auth|bearer|api|refresh|session)_?token$",
    r"^token$", r"credentials?$", r"(^|_)psk$",
]
_SECRET_KEY_RE = re.compile("|".join(_SECRET_KEY_PATTERNS))
_URL_USERINFO_RE = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/@\s\"']+)@")
_PEM_RE = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)", re.S)
_KEY_VALUE_RE = re.compile(
    r"(?P<key>[A-Za-z0-9_-]+|\"[^\"\n]*\"|'[^'\n]*')(?P<eq>\s*=\s*)"
    r"(?P<val>\"\"\"|'''|\"(?:[^\"\\\n]|\\.)*\"|'[^'\n]*'|[^,}\]\s#]+)"
)


def is_secret_key(key: str) -> bool:
    """Key names whose values never leave the charger (AuthorizationKey, password*, *secret*, keys...)."""
    norm = key.strip().strip("\"'").lower().replace("-", "_")
    norm = norm.rsplit(".", 1)[-1]
    return bool(_SECRET_KEY_RE.search(norm))


def _collect_secrets(obj: Any, under_secret: bool = False, out: set[str] | None = None) -> set[str]:
    """All string values under secret keys, plus credentials embedded in URLs anywhere."""
    out = set() if out is None else out
    if isinstance(obj, dict):
        for k, v in obj.items():
            _collect_secrets(v, under_secret or is_secret_key(str(k)), out)
    elif isinstance(obj, list):
        for v in obj:
            _collect_secrets(v, under_secret, out)
    elif isinstance(obj, str):
        if under_secret and obj:
            out.add(obj)
        for m in _URL_USERINFO_RE.finditer(obj):
            userinfo = m["userinfo"]
            if ":" in userinfo:
                out.add(userinfo.split(":", 1)[1])
    elif under_secret and isinstance(obj, (int, float)) and not isinstance(obj, bool):
        out.add(str(obj))
    return out


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """Line-independent redaction: URL credentials, PEM private keys, known secret strings."""
    text = _PEM_RE.sub(REDACTED, text)
    text = _URL_USERINFO_RE.sub(lambda m: f"{m['scheme']}{REDACTED}@", text)
    for s in sorted({s for s in secrets if len(s) >= 3}, key=len, reverse=True):
        text = text.replace(s, REDACTED)
    return text


def _bracket_depth(line: str) -> int:
    """Net opening brackets on a line, ignoring brackets inside strings and comments."""
    depth = 0
    quote = ""
    escaped = False
    for ch in line:
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\" and quote == '"':
                escaped = True
            elif ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch == "#":
            break
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
    return depth


def redact_config_text(text: str) -> tuple[str, list[str]]:
    """Redact a TOML configuration line by line (comments and layout stay readable).

    Returns (redacted text, notes).  As a safety net, every value found under a secret key by parsing the
    TOML is also replaced wherever it still occurs (inline tables, arrays, repeated elsewhere).
    """
    notes: list[str] = []
    try:
        secrets = _collect_secrets(tomllib.loads(text))
    except tomllib.TOMLDecodeError as e:
        notes.append(f"configuration is not valid TOML ({e}); redacted line by line only")
        secrets = set()
    out: list[str] = []
    lines = text.splitlines(keepends=True)
    i = 0
    while i < len(lines):
        line = lines[i]
        m = re.match(r"^(\s*)((?:[A-Za-z0-9_-]+|\"[^\"\n]*\"|'[^'\n]*')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|\"[^\"\n]*\"|"
                     r"'[^'\n]*'))*)(\s*=\s*)(.*)$", line, re.S)
        if m and is_secret_key(re.split(r"\s*\.\s*", m.group(2))[-1]):
            value = m.group(4)
            stripped = value.lstrip()
            end = "\n" if line.endswith("\n") else ""
            cm = re.match(r"^\s*(?:\"(?:[^\"\\\n]|\\.)*\"|'[^'\n]*'|[^\s#\[{\"']+)(\s+#[^\n]*)\n?$", value)
            comment = cm.group(1) if cm else ""  # keep a trailing comment after a one-line value
            out.append(f'{m.group(1)}{m.group(2)}{m.group(3)}"{REDACTED}"{comment}{end}')
            i += 1
            for delim in ('"""', "'''"):
                if stripped.startswith(delim) and stripped.count(delim) == 1:
                    while i < len(lines) and delim not in lines[i]:  # skip the multi-line string body
                        i += 1
                    i += 1
                    break
            else:
                if stripped[:1] in "[{":
                    depth = _bracket_depth(stripped)
                    while depth > 0 and i < len(lines):  # skip the rest of a multi-line array/table
                        depth += _bracket_depth(lines[i])
                        i += 1
            continue

        def inline(km: re.Match[str]) -> str:
            if is_secret_key(km["key"]) and km["val"] not in ('"""', "'''"):
                return f'{km["key"]}{km["eq"]}"{REDACTED}"'
            return km.group(0)

        out.append(_KEY_VALUE_RE.sub(inline, line) if "=" in line else line)
        i += 1
    return redact_text("".join(out), secrets), notes


# ---------------------------------------------------------------------------------------------------------
# Journal


class JournalUnavailable(Exception):
    pass


def journalctl_reader(unit: str = "chargepoint", timeout_s: float = 60.0) -> JournalReader:
    """This service's journal via ``journalctl -u <unit> --since --until -o short-iso``."""

    def read(since: datetime | None, until: datetime | None) -> Iterable[str]:
        exe = shutil.which("journalctl")
        if exe is None:
            raise JournalUnavailable("journalctl is not installed")
        cmd = [exe, "-u", unit, "-o", "short-iso", "--no-pager", "-q"]
        if since is not None:
            cmd += ["--since", _journal_time(since)]
        if until is not None:
            cmd += ["--until", _journal_time(until)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise JournalUnavailable(f"journalctl failed: {e}") from None
        if proc.returncode != 0:
            raise JournalUnavailable(f"journalctl exit {proc.returncode}: {proc.stderr.strip()[:200]}")
        return proc.stdout.splitlines()

    return read


def _journal_time(t: datetime) -> str:
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return t.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


_LINE_TIME_RE = re.compile(r"^(\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:[.,]\d+)?(?:Z|[+-]\d{2}:?\d{2})?)")


def file_log_reader(path: Path) -> JournalReader:
    """Fallback: a plain log file whose lines start with an ISO timestamp (continuation lines follow the
    decision for the line before them; naive timestamps are taken as UTC)."""

    def read(since: datetime | None, until: datetime | None) -> Iterable[str]:
        try:
            text = Path(path).read_text(errors="replace")
        except OSError as e:
            raise JournalUnavailable(f"log file {path} unreadable: {e.strerror}") from None
        keep = since is None
        lines = []
        for line in text.splitlines():
            m = _LINE_TIME_RE.match(line)
            if m:
                try:
                    ts = datetime.fromisoformat(m.group(1).replace(",", ".").replace("Z", "+00:00"))
                except ValueError:
                    ts = None
                if ts is not None:
                    ts = ts if ts.tzinfo else ts.replace(tzinfo=UTC)
                    keep = (since is None or ts >= _aware(since)) and (until is None or ts <= _aware(until))
            if keep:
                lines.append(line)
        return lines

    return read


def _aware(t: datetime) -> datetime:
    return t if t.tzinfo else t.replace(tzinfo=UTC)


# ---------------------------------------------------------------------------------------------------------
# SQLite


_TAG_COLUMN_RE = re.compile(r"^[a-z_]*id_?tag$", re.IGNORECASE)
_TOKEN_RE = re.compile(r"(?<![A-Za-z0-9_-])[A-Za-z0-9][A-Za-z0-9_-]{5,19}(?![A-Za-z0-9_-])")
_MIN_KNOWN_TAG = 6  # shorter values would mask ordinary words and numbers


class TagMasker:
    """Masks id tags in archive members with one installation's secret, and remembers the tags it met in
    id-tag columns so that a stray occurrence elsewhere (a note, an old journal line) is masked too."""

    def __init__(self, salt: bytes) -> None:
        self._salt = salt
        self.known: set[str] = set()
        self.masked = 0

    def tag(self, value: Any) -> Any:
        if not isinstance(value, str) or value == "" or is_mask(value):
            return value
        if len(value) >= _MIN_KNOWN_TAG:
            self.known.add(value.upper())
        self.masked += 1
        return mask_id_tag(value, self._salt)

    def text(self, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        value = mask_tags_in_text(value, self._salt)
        if self.known:
            value = _TOKEN_RE.sub(
                lambda m: mask_id_tag(m.group(0), self._salt) if m.group(0).upper() in self.known else m.group(0),
                value,
            )
        return value


def _mask_tags(dst: sqlite3.Connection, tables: list[str], masker: TagMasker) -> None:
    """Id-tag columns first (they teach the masker the tags), then every other text value."""
    dst.create_function("cp_mask_tag", 1, masker.tag)
    dst.create_function("cp_mask_tags_in_text", 1, masker.text)
    columns: dict[str, list[str]] = {}
    for table in tables:
        q = '"' + table.replace('"', '""') + '"'
        columns[q] = [r[1] for r in dst.execute(f"PRAGMA table_info({q})")]
        for c in columns[q]:
            if _TAG_COLUMN_RE.match(c):
                cq = '"' + c.replace('"', '""') + '"'
                sql = f"UPDATE {q} SET {cq}=cp_mask_tag({cq}) WHERE typeof({cq})='text'"
                try:
                    dst.execute(sql)
                except sqlite3.IntegrityError:  # two tags with one mask (1 in 2**32) in a key column
                    dst.execute(sql.replace("UPDATE", "UPDATE OR REPLACE", 1))
    for q, cols in columns.items():
        for c in cols:
            if not _TAG_COLUMN_RE.match(c):
                cq = '"' + c.replace('"', '""') + '"'
                dst.execute(f"UPDATE {q} SET {cq}=cp_mask_tags_in_text({cq}) WHERE typeof({cq})='text' "
                            f"AND cp_mask_tags_in_text({cq}) IS NOT {cq}")


def _backup_sqlite(src_path: Path, dst_path: Path, secrets: set[str], masker: TagMasker | None = None) -> int:
    """Consistent copy with the online backup API, then scrub secrets, mask id tags and VACUUM (so no old
    page keeps them).  Returns the number of values redacted."""
    src = sqlite3.connect(f"file:{src_path}?mode=ro", uri=True, timeout=10)
    dst = sqlite3.connect(dst_path)
    try:
        src.backup(dst)
    finally:
        src.close()
    redacted = 0
    try:
        dst.execute("PRAGMA journal_mode=DELETE")
        tables = [r[0] for r in dst.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'")]
        for table in tables:
            q = '"' + table.replace('"', '""') + '"'
            cols = [r[1] for r in dst.execute(f"PRAGMA table_info({q})")]
            lower = {c.lower(): c for c in cols}
            key_col = next((lower[c] for c in ("key", "name", "k") if c in lower), None)
            val_col = next((lower[c] for c in ("value", "val", "v") if c in lower), None)
            if key_col and val_col:
                kq, vq = f'"{key_col}"', f'"{val_col}"'
                for (k,) in dst.execute(f"SELECT DISTINCT {kq} FROM {q}").fetchall():
                    if isinstance(k, str) and is_secret_key(k):
                        redacted += dst.execute(f"UPDATE {q} SET {vq}=? WHERE {kq}=? AND {vq} IS NOT NULL",
                                                (REDACTED, k)).rowcount
            for c in cols:
                cq = '"' + c.replace('"', '""') + '"'
                if c.lower() != (key_col or "").lower() and is_secret_key(c):
                    redacted += dst.execute(f"UPDATE {q} SET {cq}=? WHERE {cq} IS NOT NULL", (REDACTED,)).rowcount
                for s in secrets:
                    if len(s) >= 3:
                        redacted += dst.execute(
                            f"UPDATE {q} SET {cq}=replace({cq}, ?, ?) WHERE typeof({cq})='text' "
                            f"AND instr({cq}, ?) > 0", (s, REDACTED, s)).rowcount
        if masker is not None:
            _mask_tags(dst, tables, masker)
        dst.commit()
        dst.execute("VACUUM")
    finally:
        dst.close()
    return redacted


def _is_sqlite(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(16) == b"SQLite format 3\x00"
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------------------
# Archive


def _add_bytes(tf: tarfile.TarFile, name: str, data: bytes, mtime: float) -> None:
    info = tarfile.TarInfo(f"diagnostics/{name}")
    info.size = len(data)
    info.mtime = int(mtime)
    info.mode = 0o600
    tf.addfile(info, io.BytesIO(data))


def _private(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.mode = 0o600
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def build_archive(
    out_path: Path,
    *,
    state_dir: Path | None,
    config_path: Path | None,
    journal_since: datetime | None = None,
    journal_until: datetime | None = None,
    journal_reader: JournalReader | None = None,
    log_file: Path | None = None,
    versions: dict[str, Any] | None = None,
    hardware_summary: dict[str, Any] | str | None = None,
    now: datetime | None = None,
) -> Path:
    """Write the diagnostics tar.gz to ``out_path`` (atomically) and return it.  Each missing part is noted
    in manifest.json instead of failing the whole archive: a partial diagnosis beats none."""
    out_path = Path(out_path)
    now = now or datetime.now(UTC)
    mtime = now.timestamp()
    notes: list[str] = []
    secrets: set[str] = set()

    config_text: str | None = None
    if config_path is not None:
        try:
            raw = Path(config_path).read_text(errors="replace")
            config_text, cnotes = redact_config_text(raw)
            notes += cnotes
            try:
                secrets = _collect_secrets(tomllib.loads(raw))
            except tomllib.TOMLDecodeError:
                pass
        except OSError as e:
            notes.append(f"configuration {config_path} unreadable: {e.strerror}")

    salt, salt_note = salt_for_state_dir(state_dir)
    if salt_note:
        notes.append(salt_note)
    masker = TagMasker(salt)

    journal_lines: list[str] = []
    readers: list[tuple[str, JournalReader]] = []
    if journal_reader is not None:
        readers.append(("injected journal reader", journal_reader))
    else:
        readers.append(("journalctl", journalctl_reader()))
    if log_file is not None:
        readers.append((f"log file {log_file}", file_log_reader(log_file)))
    journal_source = None
    for label, reader in readers:
        try:
            journal_lines = [redact_text(line.rstrip("\n"), secrets) for line in reader(journal_since,
                                                                                         journal_until)]
            journal_source = label
            break
        except JournalUnavailable as e:
            notes.append(f"{label}: {e}")
    if journal_source is None:
        notes.append("no log source available: journal.log is empty")

    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out_path.with_name(out_path.name + ".tmp")
    # 0600: the archive holds the charger's state; it is for the CSMS operator, not for other local users.
    fd = os.open(tmp_out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with tempfile.TemporaryDirectory(prefix="diag-") as tmp, os.fdopen(fd, "wb") as fh, \
            tarfile.open(fileobj=fh, mode="w:gz") as tf:
        manifest: dict[str, Any] = {
            "created": now.isoformat(),
            "journal_window": {"since": journal_since.isoformat() if journal_since else None,
                               "until": journal_until.isoformat() if journal_until else None},
            "journal_source": journal_source,
            "journal_lines": len(journal_lines),
            "databases": [],
            "notes": notes,
        }
        # The stores first: the tags they hold are masked wherever else they occur (journal, hardware).
        copies: list[tuple[str, Path]] = []
        if state_dir is not None and Path(state_dir).is_dir():
            for db in sorted(Path(state_dir).iterdir()):
                if not db.is_file() or db.name.endswith(("-wal", "-shm", "-journal")) or not _is_sqlite(db):
                    continue
                copy = Path(tmp) / db.name
                before = masker.masked
                try:
                    n = _backup_sqlite(db, copy, secrets, masker)
                except sqlite3.Error as e:
                    notes.append(f"database {db.name} could not be copied: {e}")
                    continue
                copies.append((db.name, copy))
                manifest["databases"].append({"name": db.name, "redacted_values": n,
                                              "masked_id_tags": masker.masked - before})
        elif state_dir is not None:
            notes.append(f"state directory {state_dir} does not exist")
        journal_text = "\n".join(masker.text(line) for line in journal_lines) + ("\n" if journal_lines else "")
        _add_bytes(tf, "journal.log", journal_text.encode(), mtime)
        if config_text is not None:
            _add_bytes(tf, "config.toml", masker.text(config_text).encode(), mtime)
        for name, copy in copies:
            tf.add(copy, arcname=f"diagnostics/state/{name}", filter=_private)
        _add_bytes(tf, "versions.json", json.dumps(versions or {}, indent=2, default=str).encode(), mtime)
        hw = hardware_summary if hardware_summary is not None else {}
        hw_text = hw if isinstance(hw, str) else json.dumps(hw, indent=2, default=str)
        _add_bytes(tf, "hardware.json" if not isinstance(hw, str) else "hardware.txt",
                   masker.text(redact_text(hw_text, secrets)).encode(), mtime)
        _add_bytes(tf, "manifest.json", json.dumps(manifest, indent=2).encode(), mtime)
    os.replace(tmp_out, out_path)
    return out_path


def archive_builder(
    *,
    state_dir: Path | None,
    config_path: Path | None,
    versions: dict[str, Any] | None = None,
    hardware_summary: dict[str, Any] | str | Callable[[], dict[str, Any] | str] | None = None,
    journal_reader: JournalReader | None = None,
    log_file: Path | None = None,
) -> ArchiveBuilder:
    """Bind the charger's paths once; the result is what :class:`DiagnosticsUploader` calls."""

    def build(out_path: Path, since: datetime | None, until: datetime | None) -> Path:
        hw = hardware_summary() if callable(hardware_summary) else hardware_summary
        return build_archive(out_path, state_dir=state_dir, config_path=config_path, journal_since=since,
                             journal_until=until, journal_reader=journal_reader, log_file=log_file,
                             versions=versions, hardware_summary=hw)

    return build


# ---------------------------------------------------------------------------------------------------------
# Uploader


Notify = Callable[[str], Awaitable[None]]


class DiagnosticsUploader:
    """GetDiagnostics.req: :meth:`get_diagnostics` returns the file name at once (GetDiagnostics.conf) and
    builds + uploads in the background, reporting DiagnosticsStatusNotification Uploading, then Uploaded or
    UploadFailed.  A new request replaces one still running (its archive is discarded, no status for it)."""

    def __init__(
        self,
        *,
        notify: Notify,
        build: ArchiveBuilder,
        work_dir: Path,
        charge_point_id: str = "chargepoint",
        default_retries: int = 3,
        default_retry_interval_s: float = 60.0,
        method: str = "PUT",
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._notify = notify
        self._build = build
        self.work_dir = Path(work_dir)
        self.charge_point_id = re.sub(r"[^A-Za-z0-9._-]", "_", charge_point_id) or "chargepoint"
        self.default_retries = default_retries
        self.default_retry_interval_s = default_retry_interval_s
        self.method = method
        self._clock = clock
        self._sleep = sleep
        self._status = "Idle"
        self.task: asyncio.Task[None] | None = None
        self.last_error: str | None = None
        self.uploaded_to: str | None = None

    @property
    def last_status(self) -> str:
        """For TriggerMessage(DiagnosticsStatusNotification): Uploading while busy, else Idle (§4.4)."""
        return "Uploading" if self._status == "Uploading" else "Idle"

    def get_diagnostics(self, location: str, retries: int | None = None, retry_interval: float | None = None,
                        start_time: datetime | None = None, stop_time: datetime | None = None) -> str:
        """Must be called on the event loop.  Returns the fileName for GetDiagnostics.conf."""
        now = self._clock()
        name = f"diagnostics-{self.charge_point_id}-{now.astimezone(UTC).strftime('%Y%m%dT%H%M%SZ')}.tar.gz"
        if self.task is not None and not self.task.done():
            self.task.cancel()
        self.task = asyncio.create_task(
            self._run(location, name,
                      self.default_retries if retries is None else retries,
                      self.default_retry_interval_s if retry_interval is None else retry_interval,
                      start_time, stop_time),
            name="diagnostics-upload",
        )
        return name

    async def _report(self, status: str) -> None:
        self._status = status
        await self._notify(status)

    async def _run(self, location: str, name: str, retries: int, retry_interval: float,
                   since: datetime | None, until: datetime | None) -> None:
        self.last_error = None
        self.uploaded_to = None
        self.work_dir.mkdir(parents=True, exist_ok=True)
        path = self.work_dir / name
        try:
            await self._report("Uploading")
            try:
                await asyncio.to_thread(self._build, path, since, until)
            except Exception as e:  # noqa: BLE001 - any build fault must end in UploadFailed, not silence
                self.last_error = f"building the diagnostics archive failed: {e}"
                log.error("%s", self.last_error)
                await self._report("UploadFailed")
                return
            try:
                self.uploaded_to = await upload(location, path, retries=retries, retry_interval_s=retry_interval,
                                                method=self.method, sleep=self._sleep)
            except UploadFailed as e:
                self.last_error = str(e)
                log.error("diagnostics upload to %s failed: %s", safe_url(location), e)
                await self._report("UploadFailed")
                return
            await self._report("Uploaded")
        finally:
            path.unlink(missing_ok=True)
            path.with_name(path.name + ".tmp").unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------------------
# CLI


def cli_diagnostics(
    out_path: Path,
    config_path: Path | None,
    state_dir: Path | None,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    journal_reader: JournalReader | None = None,
    log_file: Path | None = None,
    versions: dict[str, Any] | None = None,
    hardware_summary: dict[str, Any] | str | None = None,
    out: Any = None,
    err: Any = None,
) -> int:
    """``chargepoint diagnostics OUT``: write the archive locally (default window: the last 24 h).
    Exit 0 on success, 1 if the archive could not be written, 2 for a bad argument."""
    out = out or sys.stdout
    err = err or sys.stderr
    out_path = Path(out_path)
    if config_path is not None and not Path(config_path).is_file():
        print(f"error: configuration file {config_path} does not exist", file=err)
        return 2
    if out_path.is_dir():
        out_path = out_path / f"diagnostics-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.tar.gz"
    now = datetime.now(UTC)
    since = since or now - timedelta(hours=24)
    until = until or now
    try:
        build_archive(out_path, state_dir=state_dir, config_path=config_path, journal_since=since,
                      journal_until=until, journal_reader=journal_reader, log_file=log_file,
                      versions=versions, hardware_summary=hardware_summary)
    except (OSError, tarfile.TarError) as e:
        print(f"error: cannot write {out_path}: {getattr(e, 'strerror', None) or e}", file=err)
        return 1
    with tarfile.open(out_path) as tf:
        manifest = json.load(tf.extractfile("diagnostics/manifest.json"))  # type: ignore[arg-type]
    print(f"wrote {out_path} ({out_path.stat().st_size} bytes; journal: {manifest['journal_lines']} lines "
          f"from {manifest['journal_source'] or 'nowhere'}; databases: "
          f"{', '.join(d['name'] for d in manifest['databases']) or 'none'}); secrets removed", file=out)
    for note in manifest["notes"]:
        print(f"note: {note}", file=out)
    return 0

"""Id tags are personal data: one function masks them for every log line, journal field, status output and
diagnostics archive.

An idTag is the UID of a driver's RFID card (or an app's token); together with timestamps it tells when a
person was where. The charger needs the tag in clear only to authorize and to put it into OCPP messages;
everything a maintainer or a technician reads shows :func:`mask_id_tag` of it::

    mask_id_tag("04A2B3C4D5") == "tag:3f9a1c2e"

* **Salted, keyed per installation.** The mask is HMAC-SHA256 under a 32-byte random secret created once in
  the state directory (:data:`SALT_FILE`, mode 0600). A 4- or 7-byte card UID has few enough values that an
  unkeyed hash is reversed by trying them all; without the secret the mask only correlates. The secret
  never leaves the charger (it is not an SQLite file, so the diagnostics archive does not take it).
* **Stable.** The same card gives the same mask on one charger, across restarts and in any letter case
  (idTag is a CiString20, compared case-insensitively: OCPP 1.6 §2.2 / IdToken), so
  ``journalctl ID_TAG=tag:3f9a1c2e`` finds all of a card's sessions. ``chargepoint mask-tag TAG`` prints
  the mask of a card (it reads the secret, so it needs root or the service user).
* **Before the secret is loaded** (tools, tests, a state directory that cannot be written) the process uses
  a random secret of its own: masks are then not comparable with the journal, but never unsalted.

:func:`mask_tags_in_text` masks tags inside text that carries them as fields: OCPP-J frames (JSON), Python
reprs of payloads and dataclasses (``{'idTag': 'X'}``, ``id_tag='X'``). The log handler applies it to every
record (the ``ocpp`` library's frame lines included) and the diagnostics archive to its journal and store.
"""

from __future__ import annotations

import ast
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import sys
from pathlib import Path
from typing import Any, TextIO

log = logging.getLogger(__name__)

SALT_FILE = "id-tag-salt"
SALT_BYTES = 32
MASK_PREFIX = "tag:"
MASK_HEX_DIGITS = 8  # 32 bits: collisions among a charger's cards are negligible, the mask stays readable

_MASK_RE = re.compile(rf"^{MASK_PREFIX}[0-9a-f]{{{MASK_HEX_DIGITS}}}$")
_salt: bytes = secrets.token_bytes(SALT_BYTES)  # until an installation's secret is loaded
_salt_source: Path | None = None


# ------------------------------------------------------------------------------------------------ secret


class SaltUnavailable(Exception):
    """The installation's secret cannot be read (missing, unreadable, damaged); the message says which."""


def salt_path(state_dir: str | Path) -> Path:
    return Path(state_dir) / SALT_FILE


def read_salt(state_dir: str | Path) -> bytes:
    """The installation's secret; :class:`SaltUnavailable` when there is none (never creates one)."""
    path = salt_path(state_dir)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise SaltUnavailable(f"{path} does not exist (the controller creates it at its first start)") from None
    except OSError as exc:
        raise SaltUnavailable(f"{path} cannot be read ({exc.strerror or exc}): run as root or the service user") \
            from None
    if len(data) != SALT_BYTES:
        raise SaltUnavailable(f"{path} holds {len(data)} bytes, expected {SALT_BYTES}: damaged")
    return data


def load_or_create_salt(state_dir: str | Path) -> bytes:
    """Read the installation's secret, creating it the first time.

    Created once and atomically: written to a temporary file, synced, then hard-linked to its name, which
    fails if another process got there first (its secret is then used). A damaged file (wrong size) is moved
    aside and replaced: masks change once, which beats not masking. Raises OSError when the state directory
    cannot be written.
    """
    state_dir = Path(state_dir)
    path = salt_path(state_dir)
    try:
        return read_salt(state_dir)
    except SaltUnavailable:
        if path.exists() and path.is_file() and os.access(path, os.R_OK):
            damaged = path.with_name(f"{SALT_FILE}.damaged")
            log.error("%s is damaged; moved to %s, a new one is created (masks of id tags change)", path, damaged)
            os.replace(path, damaged)
    state_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{SALT_FILE}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(secrets.token_bytes(SALT_BYTES))
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # created meanwhile by another process: use that one
    finally:
        tmp.unlink(missing_ok=True)
    try:
        dir_fd = os.open(state_dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass
    return read_salt(state_dir)


def set_salt(salt: bytes) -> None:
    """Key the masks with ``salt`` (tests; :func:`use_installation_salt` in the controller)."""
    global _salt, _salt_source
    _salt = bytes(salt)
    _salt_source = None


def use_installation_salt(state_dir: str | Path) -> bool:
    """Load (or create) the state directory's secret and mask with it from now on. True on success; on
    failure the process keeps its own random secret and says so once."""
    global _salt, _salt_source
    try:
        _salt = load_or_create_salt(state_dir)
    except (OSError, SaltUnavailable) as exc:
        log.warning(
            "id-tag masks use a one-off secret: the installation secret in %s is not usable (%s); masks in "
            "this run do not match other runs",
            state_dir,
            getattr(exc, "strerror", None) or exc,
        )
        return False
    _salt_source = salt_path(state_dir)
    return True


def salt_for_state_dir(state_dir: str | Path | None) -> tuple[bytes, str | None]:
    """The secret to mask with for ``state_dir``'s installation, plus a note when masks made with it will not
    match the journal's. For the diagnostics archive, which runs in the controller (on a copy of the store,
    the process already masks with the installation's secret) and from the command line (no controller: the
    secret is read from the state directory)."""
    if state_dir is not None:
        try:
            return read_salt(state_dir), None
        except SaltUnavailable as exc:
            if _salt_source is not None:
                return _salt, None
            return _salt, f"id tags masked with a one-off secret, not comparable with the journal: {exc}"
    if _salt_source is not None:
        return _salt, None
    return _salt, "id tags masked with a one-off secret, not comparable with the journal"


# ------------------------------------------------------------------------------------------------ masking


_hmac_base: tuple[bytes, Any] | None = None  # (secret, HMAC keyed with it): copying is faster than keying


def _keyed(salt: bytes) -> Any:
    global _hmac_base
    if _hmac_base is None or _hmac_base[0] != salt:
        _hmac_base = (salt, hmac.new(salt, digestmod=hashlib.sha256))
    return _hmac_base[1].copy()


def mask_id_tag(id_tag: str | None, salt: bytes | None = None) -> str:
    """``"04A2B3C4D5"`` -> ``"tag:3f9a1c2e"``: the one mask of an idTag (``""`` for no tag).

    HMAC-SHA256 of the upper-cased tag (CiString: ``04a2…`` and ``04A2…`` are the same card) under the
    installation's secret, first 8 hex digits.
    """
    if id_tag is None or id_tag == "":
        return ""
    h = _keyed(_salt if salt is None else salt)
    h.update(id_tag.upper().encode("utf-8", "surrogatepass"))
    return MASK_PREFIX + h.hexdigest()[:MASK_HEX_DIGITS]


def is_mask(value: object) -> bool:
    """True for a value :func:`mask_id_tag` produced (masking again would break correlation)."""
    return isinstance(value, str) and _MASK_RE.match(value) is not None


# A field that carries an idTag: its name ends in idTag / id_tag (idTag, parentIdTag, id_tag, stop_id_tag …,
# never idTagInfo), then the name's closing quote if any, ":" or "=", and a quoted value. The match starts
# at "id" (the name's prefix does not matter), which keeps the scan of a long frame fast.
_TAG_FIELD = re.compile(
    r"""id_?tag(?P<kq>\\?["']|)(?P<sep>\s*[:=]\s*)(?:"""
    r""""(?P<dq>(?:[^"\\\n]|\\.)*)"|"""  # JSON, or a Python repr in double quotes: "idTag": "…"
    r"""'(?P<sq>(?:[^'\\\n]|\\.)*)'|"""  # Python repr: 'idTag': '…', id_tag='…'
    r"""\\"(?P<eq>.*?)\\")""",  # a frame inside a JSON string: \"idTag\": \"…\"
    re.IGNORECASE,
)


def _field_value(m: re.Match[str]) -> tuple[str, str, str]:
    """(value as written, the tag it stands for, the quote around it)."""
    if m.group("dq") is not None:
        raw = m.group("dq")
        try:
            return raw, str(json.loads(f'"{raw}"')), '"'
        except ValueError:
            return raw, raw, '"'
    if m.group("sq") is not None:
        raw = m.group("sq")
        try:
            return raw, str(ast.literal_eval(f"'{raw}'")), "'"
        except (ValueError, SyntaxError):
            return raw, raw, "'"
    raw = m.group("eq")
    try:
        return raw, str(json.loads(json.loads(f'"\\"{raw}\\""'))), '\\"'
    except ValueError:
        return raw, raw, '\\"'


def mask_tags_in_text(text: str, salt: bytes | None = None) -> str:
    """Mask every idTag/parentIdTag value written as a field in ``text`` (OCPP-J frames, payload reprs).

    Parse-free on purpose: it runs on every log record and on truncated frames. The mask is that of the tag
    the text stands for (JSON or Python escapes undone), so it equals the journal's ID_TAG. Values that
    already are masks stay as they are.
    """
    if "tag" not in text and "Tag" not in text and "TAG" not in text:
        return text

    def repl(m: re.Match[str]) -> str:
        raw, tag, quote = _field_value(m)
        if raw == "" or is_mask(raw):
            return m.group(0)
        head = m.group(0)[: m.end("sep") - m.start()]
        return f"{head}{quote}{mask_id_tag(tag, salt)}{quote}"

    return _TAG_FIELD.sub(repl, text)


# ------------------------------------------------------------------------------------------------ command


def cli_mask_tag(id_tag: str, state_dir: str | Path, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """``chargepoint mask-tag TAG``: the mask this charger logs for a card (exit 1 without the secret)."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        salt = read_salt(state_dir)
    except SaltUnavailable as exc:
        print(f"chargepoint mask-tag: {exc}", file=err)
        return 1
    print(mask_id_tag(id_tag, salt), file=out)
    return 0

"""Parsers of what a browser sends: connector ids, currents, id tags, switches, dates.

Each raises :class:`FormError` (an HTTP status and a message a person can read) for anything that is not a
well-formed value; nothing here knows the station, so the ranges that depend on it (a connector's minimum
current, which connectors exist) are checked by the API, which raises :class:`chargepoint.api.CommandError`.
Fuzzed in tests/test_web_forms.py: random input gives a FormError, never another exception.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import date

MAX_FIELD = 64  # no field of a control form is longer; a longer one is refused before it is looked at
#: OCPP 1.6 IdToken is a CiString20 (§7.28); printable ASCII without spaces, as card UIDs and app tokens are.
_ID_TAG_RE = re.compile(r"^[\x21-\x7e]{1,20}$")
_INT_RE = re.compile(r"^[0-9]{1,4}$")
_NUMBER_RE = re.compile(r"^[0-9]{1,4}(?:[.,][0-9]{1,3})?$")
#: A current no connector has: refused here already (the API decides the real range of each connector).
MAX_AMPS = 1000.0


class FormError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def field(form: Mapping[str, object], name: str, *, required: bool = False) -> str:
    """One text field, stripped; '' when absent. A file upload or an overlong value is a 400."""
    value = form.get(name, "")
    if not isinstance(value, str):
        raise FormError(400, f"{name}: a text field")
    if len(value) > MAX_FIELD:
        raise FormError(400, f"{name}: at most {MAX_FIELD} characters")
    value = value.strip()
    if required and not value:
        raise FormError(400, f"{name}: required")
    return value


def parse_connector_id(text: str) -> int:
    """A connector id from the URL (1 to 9999); which ones exist is the station's (404 from the API)."""
    if not isinstance(text, str) or not _INT_RE.match(text) or int(text) == 0:
        raise FormError(404, f"no connector {text[:20]!r}: connectors are numbered from 1")
    return int(text)


def parse_amps(text: str) -> float | None:
    """A current in amperes ("16", "10.5", "10,5"), or '' / "none" → None: lift the local limit."""
    if text.lower() in ("", "none", "off"):
        return None
    if not _NUMBER_RE.match(text):
        raise FormError(400, f"current {text[:20]!r}: a number of amperes, e.g. 16 or 10.5 (empty: no limit)")
    amps = float(text.replace(",", "."))
    if not math.isfinite(amps) or not 0 <= amps <= MAX_AMPS:
        raise FormError(400, f"current {text!r}: out of range")
    return amps


def parse_id_tag(text: str) -> str | None:
    """An id tag (1–20 printable ASCII characters, OCPP 1.6 CiString20), or '' → None (free vend)."""
    if text == "":
        return None
    if not _ID_TAG_RE.match(text):
        raise FormError(400, "id tag: 1 to 20 printable characters without spaces (OCPP 1.6 IdToken)")
    return text


def parse_switch(text: str, name: str = "available") -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "on", "yes"):
        return True
    if lowered in ("0", "false", "off", "no"):
        return False
    raise FormError(400, f"{name}: 1 or 0")


def parse_date(text: str, name: str) -> date | None:
    """A YYYY-MM-DD date from a filter, or '' → None."""
    if text == "":
        return None
    if not re.match(r"^\d{4}-\d{2}-\d{2}$", text):
        raise FormError(400, f"{name}: a date as YYYY-MM-DD")
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise FormError(400, f"{name}: {text!r} is not a date") from None

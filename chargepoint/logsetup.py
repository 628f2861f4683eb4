"""Logging: structured journal fields under systemd, plain text elsewhere, secrets redacted.

Under systemd the records go to the journal with fields that make a charge
point's history searchable::

    journalctl -u chargepoint CONNECTOR_ID=2
    journalctl -u chargepoint OCPP_ACTION=StartTransaction -o verbose

Callers attach the fields with ``extra=log_fields(...)``::

    log.info("transaction started", extra=log_fields(connector_id=2, transaction_id=17,
                                                    ocpp_action="StartTransaction", id_tag=tag))

Id tags are personal data (they identify a driver's card), so ``ID_TAG`` only
ever holds :func:`chargepoint.privacy.mask_id_tag` of the tag (``tag:3f9a1c2e``,
a hash keyed with the installation's secret): enough to find one card's
sessions, not enough to recover the card. The filter masks tags inside frames
as well (``"idTag":"…"``, ``'idTag': '…'``, ``id_tag='…'``), whichever logger
wrote them (the ``ocpp`` library's included), and masks an ``ID_TAG`` field a
caller set in clear.

:class:`RedactFilter` sits on the handler, so it sees every record of every
logger: OCPP AuthorizationKey values, passwords and basic-auth credentials in
URLs never reach the journal or stderr (OCPP 1.6 security whitepaper: the
AuthorizationKey is the charge point's basic-auth password).
"""

from __future__ import annotations

import logging
import os
import re
import sys
import traceback
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TextIO

from chargepoint.privacy import is_mask, mask_id_tag, mask_tags_in_text, set_salt

try:  # systemd-python is an optional extra ([systemd])
    from systemd import journal as _sd_journal
except ImportError:  # pragma: no cover - depends on the environment
    _sd_journal = None

SYSLOG_IDENTIFIER = "chargepoint"
REDACTED = "***"

# Journal fields the controller uses; the stderr formatter shows them as short names.
FIELD_NAMES: dict[str, str] = {
    "CONNECTOR_ID": "connector",
    "TRANSACTION_ID": "tx",
    "OCPP_ACTION": "action",
    "ID_TAG": "tag",
    "ENERGY_DIMMING": "dimming",  # §14a control signal active (1) or not (0)
}

_JOURNAL_FIELD = re.compile(r"^[A-Z0-9][A-Z0-9_]{0,63}$")
_LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG")


def set_id_tag_salt(salt: bytes) -> None:
    """Key the id-tag masks with ``salt`` (see :mod:`chargepoint.privacy`; kept for callers of this module)."""
    set_salt(salt)


def log_fields(
    connector_id: int | None = None,
    transaction_id: int | None = None,
    ocpp_action: str | None = None,
    id_tag: str | None = None,
) -> dict[str, Any]:
    """A dict for ``extra=``: journal fields for the given values (None values are left out)."""
    fields: dict[str, Any] = {}
    if connector_id is not None:
        fields["CONNECTOR_ID"] = connector_id
    if transaction_id is not None:
        fields["TRANSACTION_ID"] = transaction_id
    if ocpp_action is not None:
        fields["OCPP_ACTION"] = ocpp_action
    if id_tag is not None:
        fields["ID_TAG"] = mask_id_tag(id_tag)
    return fields


# ---------------------------------------------------------------- redaction

_Q = r"[\"']"  # JSON or Python-repr quote
_SECRET_NAMES = r"authorization_?key|pass(?:word|wd)|secret|api_?key|access_?token"
_PATTERNS: list[tuple[re.Pattern[str], Callable[[re.Match[str]], str]]] = [
    # OCPP ChangeConfiguration / GetConfiguration entries: {"key": "AuthorizationKey", ..., "value": "…"}
    (
        re.compile(rf"({_Q}key{_Q}\s*:\s*{_Q}AuthorizationKey{_Q}[^{{}}]*?{_Q}value{_Q}\s*:\s*{_Q})([^\"']*)",
                   re.IGNORECASE),
        lambda m: m.group(1) + REDACTED,
    ),
    (
        re.compile(rf"({_Q}value{_Q}\s*:\s*{_Q})([^\"']*)({_Q}[^{{}}]*?{_Q}key{_Q}\s*:\s*{_Q}AuthorizationKey{_Q})",
                   re.IGNORECASE),
        lambda m: m.group(1) + REDACTED + m.group(3),
    ),
    # user:password@ in URLs (ws://, wss://, http://, ftp://…)
    (
        re.compile(r"(\b[a-z][a-z0-9+.-]*://[^\s/:@]*):([^\s/@]*)@", re.IGNORECASE),
        lambda m: f"{m.group(1)}:{REDACTED}@",
    ),
    # HTTP Authorization headers ("Authorization: Basic Y3AxOnNlY3JldA==")
    (
        re.compile(rf"(\bauthorization{_Q}?\s*[:=]\s*{_Q}?(?:basic|bearer)\s+)[^\s\"',}}]+", re.IGNORECASE),
        lambda m: m.group(1) + REDACTED,
    ),
    # name=value, name: value, "name": "value", 'name': 'value'
    (
        re.compile(rf"({_Q}?\b(?:{_SECRET_NAMES})\b{_Q}?\s*[:=]\s*)({_Q}?)([^\s\"',;&}})]+)", re.IGNORECASE),
        lambda m: m.group(1) + m.group(2) + REDACTED,
    ),
]


class RedactFilter(logging.Filter):
    """Removes secrets from every record that reaches the handler it is attached to.

    The record is rewritten in place (``msg`` becomes the redacted, formatted
    message and ``args`` is emptied) because handlers such as systemd's
    JournalHandler also send ``record.args`` and the exception as fields.
    Secrets known by value (the configured AuthorizationKey, a basic-auth
    password) are registered with :meth:`add_secret` and redacted wherever they
    appear.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._secrets: set[str] = set()
        for s in secrets:
            self.add_secret(s)

    def add_secret(self, value: str | None) -> None:
        # Very short values would redact ordinary words; they are not plausible keys anyway.
        if value and len(value) >= 4:
            self._secrets.add(value)

    def redact(self, text: str) -> str:
        for secret in sorted(self._secrets, key=len, reverse=True):
            text = text.replace(secret, REDACTED)
        for pattern, repl in _PATTERNS:
            text = pattern.sub(repl, text)
        return mask_tags_in_text(text)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # bad %-args: keep the template, never crash logging
            message = f"{record.msg!s} (unformattable args)"
        record.msg = self.redact(message)
        record.args = ()
        if record.exc_info and record.exc_info[0] is not None:
            text = record.exc_text or "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
            record.exc_text = self.redact(text)
            record.exc_info = None  # the raw exception (with its message) must not be sent as a field
        elif record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        for name in FIELD_NAMES:
            value = getattr(record, name, None)
            if name == "ID_TAG" and value is not None and not is_mask(value):
                setattr(record, name, mask_id_tag(str(value)))  # a caller passed the tag in clear
            elif isinstance(value, str):
                setattr(record, name, self.redact(value))
        return True


_redact_filter = RedactFilter()


def add_secret(value: str | None) -> None:
    """Redact this literal value from all log output (e.g. the configured AuthorizationKey)."""
    _redact_filter.add_secret(value)


def redact(text: str) -> str:
    """The same redaction the log filter applies, for text shown elsewhere (status, diagnostics)."""
    return _redact_filter.redact(text)


# ---------------------------------------------------------------- handlers


class FieldsFormatter(logging.Formatter):
    """Text format that appends the structured fields: ``... [connector=2 tx=17]``."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        shown = [f"{short}={getattr(record, name)}" for name, short in FIELD_NAMES.items()
                 if getattr(record, name, None) is not None]
        if not shown:
            return text
        first, sep, rest = text.partition("\n")  # keep fields on the message line, before a traceback
        return f"{first} [{' '.join(shown)}]{sep}{rest}"


if _sd_journal is not None:

    class ChargepointJournalHandler(_sd_journal.JournalHandler):
        """JournalHandler that forwards only valid upper-case journal fields.

        systemd-python's own emit() sends every LogRecord attribute and
        ``CODE_ARGS=str(record.args)``; this one sends the message, priority,
        code location and the caller's ``extra=`` fields, nothing raw.
        """

        def emit(self, record: logging.LogRecord) -> None:
            try:
                msg = self.format(record)
                fields: dict[str, Any] = dict(self._extra)
                if record.exc_text:
                    fields["EXCEPTION_TEXT"] = record.exc_text
                for key, value in record.__dict__.items():
                    if value is not None and _JOURNAL_FIELD.match(key):
                        fields[key] = value
                self.send(
                    msg,
                    PRIORITY=format(self.map_priority(record.levelno)),
                    LOGGER=record.name,
                    THREAD_NAME=record.threadName,
                    CODE_FILE=record.pathname,
                    CODE_LINE=record.lineno,
                    CODE_FUNC=record.funcName,
                    **fields,
                )
            except Exception:
                self.handleError(record)

else:  # pragma: no cover - depends on the environment
    ChargepointJournalHandler = None  # type: ignore[assignment,misc]


def under_systemd(env: Mapping[str, str] | None = None) -> bool:
    """True when systemd started us: it sets $INVOCATION_ID, and $JOURNAL_STREAM for a journal stdout."""
    env = os.environ if env is None else env
    return bool(env.get("JOURNAL_STREAM") or env.get("INVOCATION_ID"))


def journal_available() -> bool:
    return _sd_journal is not None


def _parse_level(level: int | str) -> int:
    if isinstance(level, bool):
        raise ValueError(f"log level {level!r}: expected one of {', '.join(_LEVELS)} or an int")
    if isinstance(level, int):
        return level
    name = str(level).strip().upper()
    if name == "WARN":
        name = "WARNING"
    if name not in _LEVELS:
        raise ValueError(f"log level {level!r}: expected one of {', '.join(_LEVELS)}")
    return logging.getLevelName(name)


def setup_logging(
    level: int | str = "INFO",
    *,
    journal: bool | None = None,
    stream: TextIO | None = None,
    sender: Callable[..., Any] | None = None,
) -> logging.Handler:
    """Configure the root logger once (calling again replaces the previous handler).

    ``journal=None`` chooses the journal when running under systemd and
    systemd-python is installed; ``True`` asks for it (falls back to stderr
    with a warning when systemd-python is missing); ``False`` forces text.
    ``sender`` replaces ``systemd.journal.send`` (tests). Returns the handler.
    """
    levelno = _parse_level(level)
    if journal is None:
        journal = under_systemd() and journal_available()
    fallback_warning = None
    handler: logging.Handler
    if journal and ChargepointJournalHandler is not None:
        kwargs: dict[str, Any] = {"SYSLOG_IDENTIFIER": SYSLOG_IDENTIFIER}
        if sender is not None:
            kwargs["sender_function"] = sender
        handler = ChargepointJournalHandler(**kwargs)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        if journal:
            fallback_warning = "journal logging requested but systemd-python is not installed; using stderr"
        handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
        # Under systemd, stderr lands in the journal, which adds its own timestamp.
        fmt = "%(levelname)s %(name)s: %(message)s"
        if not under_systemd():
            fmt = "%(asctime)s " + fmt
        handler.setFormatter(FieldsFormatter(fmt))
    handler.addFilter(_redact_filter)
    handler.set_name("chargepoint")

    root = logging.getLogger()
    for old in list(root.handlers):
        if old.get_name() == "chargepoint":
            root.removeHandler(old)
            old.close()
    root.addHandler(handler)
    root.setLevel(levelno)
    # websockets' DEBUG lines dump frames cut in the middle ("…Tag":"04A2…"): the field name may be cut
    # off, so an idTag in them cannot be found and masked. They stay off.
    logging.getLogger("websockets").setLevel(max(logging.WARNING, logging.getLogger("websockets").level))
    if fallback_warning:
        logging.getLogger(__name__).warning(fallback_warning)
    return handler


def setup_command_logging(level: str) -> None:
    """Logging for a ``chargepoint`` command (the service, the simulator, the local controller): journal fields
    under systemd, text on stderr elsewhere, secrets redacted; a bad level falls back to info with a warning;
    the ocpp library's per-frame lines only at debug."""
    try:
        setup_logging(level)
    except ValueError as exc:  # a bad level from the command line or the configuration
        setup_logging("info")
        logging.getLogger("chargepoint").warning("%s; using info", exc)
    logging.getLogger("websockets").setLevel(logging.WARNING)
    if level != "debug":
        logging.getLogger("ocpp").setLevel(logging.WARNING)

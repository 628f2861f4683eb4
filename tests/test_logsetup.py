"""Logging setup: journal fields (through JournalHandler's sender hook), text output, redaction."""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator
from typing import Any

import pytest

from chargepoint import logsetup
from chargepoint.logsetup import (
    RedactFilter,
    log_fields,
    mask_id_tag,
    set_id_tag_salt,
    setup_logging,
)

needs_journal = pytest.mark.skipif(
    not logsetup.journal_available(),
    reason="systemd-python not installed (apt-get install libsystemd-dev pkg-config; pip install systemd-python)",
)

TAG = "04A1B2C3D4E5F6"


@pytest.fixture(autouse=True)
def restore_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    monkeypatch.delenv("INVOCATION_ID", raising=False)
    yield
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
    root.setLevel(level)
    set_id_tag_salt(b"")


class Sent:
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def __call__(self, MESSAGE: str, **fields: Any) -> None:  # noqa: N803 - systemd.journal.send's name
        self.calls.append({"MESSAGE": MESSAGE, **fields})


def test_log_fields_masks_the_tag() -> None:
    fields = log_fields(connector_id=2, transaction_id=17, ocpp_action="StartTransaction", id_tag=TAG)
    assert fields["CONNECTOR_ID"] == 2
    assert fields["TRANSACTION_ID"] == 17
    assert fields["OCPP_ACTION"] == "StartTransaction"
    masked = fields["ID_TAG"]
    assert re.fullmatch(r"tag:[0-9a-f]{8}", masked) and TAG[:4] not in masked  # nothing of the tag itself
    assert masked == mask_id_tag(TAG)  # stable: sessions of one card correlate
    assert mask_id_tag(TAG) != mask_id_tag("04FFFFFFFFFFFF")
    assert log_fields() == {}
    assert log_fields(connector_id=0) == {"CONNECTOR_ID": 0}


def test_salt_changes_the_hash() -> None:
    unsalted = mask_id_tag(TAG)
    set_id_tag_salt(b"per-installation secret")
    assert mask_id_tag(TAG) != unsalted
    assert mask_id_tag(TAG).startswith("tag:") and unsalted.startswith("tag:")


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ('[2,"1","ChangeConfiguration",{"key":"AuthorizationKey","value":"0A1B2C3D4E5F"}]', "0A1B2C3D4E5F"),
        ("{'key': 'AuthorizationKey', 'readonly': False, 'value': 'deadbeefcafe'}", "deadbeefcafe"),
        ('{"value": "s3cretvalue", "readonly": false, "key": "AuthorizationKey"}', "s3cretvalue"),
        ("AuthorizationKey=F00DF00DF00D", "F00DF00DF00D"),
        ("connecting to wss://CP001:hunter2hunter2@csms.example.com/ocpp/CP001", "hunter2hunter2"),
        ("ftp://diag:ftp-pass-99@127.0.0.1:2121/upload", "ftp-pass-99"),
        ("> Authorization: Basic Q1AwMDE6aHVudGVyMg==", "Q1AwMDE6aHVudGVyMg=="),
        ("password=correcthorse user=admin", "correcthorse"),
        ('{"password": "battery staple"}', "battery"),
    ],
)
def test_redaction(text: str, secret: str) -> None:
    out = RedactFilter().redact(text)
    assert secret not in out
    assert "***" in out


def test_redaction_leaves_ordinary_text_alone() -> None:
    f = RedactFilter()
    for text in ["ws://127.0.0.1:9000/ocpp/CP1", "Basic authentication enabled", "key=HeartbeatInterval value=300",
                 "meter 230.1 V 16.0 A"]:
        assert f.redact(text) == text


def test_text_output_redacts_args_and_shows_fields() -> None:
    buf = io.StringIO()
    setup_logging("DEBUG", journal=False, stream=buf)
    log = logging.getLogger("chargepoint.test")
    log.info("url %s", "wss://cp:topsecret1@host/x", extra=log_fields(connector_id=2, id_tag=TAG))
    out = buf.getvalue()
    assert "topsecret1" not in out
    assert "wss://cp:***@host/x" in out
    assert f"[connector=2 tag={mask_id_tag(TAG)}]" in out
    assert TAG not in out


def test_registered_secret_is_redacted_everywhere() -> None:
    buf = io.StringIO()
    setup_logging("INFO", journal=False, stream=buf)
    logsetup.add_secret("Zq8-literal-key")
    logging.getLogger("x").warning("CSMS sent Zq8-literal-key in a weird place")
    assert "Zq8-literal-key" not in buf.getvalue()


def test_exception_text_is_redacted() -> None:
    buf = io.StringIO()
    setup_logging("INFO", journal=False, stream=buf)
    try:
        raise ConnectionError("handshake failed for wss://cp:exc-secret-7@host/ocpp")
    except ConnectionError:
        logging.getLogger("x").exception("link down")
    out = buf.getvalue()
    assert "Traceback" in out and "ConnectionError" in out
    assert "exc-secret-7" not in out


def test_setup_twice_keeps_one_handler_and_validates_level() -> None:
    setup_logging("INFO", journal=False, stream=io.StringIO())
    setup_logging("WARNING", journal=False, stream=io.StringIO())
    ours = [h for h in logging.getLogger().handlers if h.get_name() == "chargepoint"]
    assert len(ours) == 1
    assert logging.getLogger().level == logging.WARNING
    with pytest.raises(ValueError, match="DEBUG"):
        setup_logging("LOUD", journal=False)


def test_stderr_under_systemd_has_no_timestamp(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INVOCATION_ID", "0123456789abcdef0123456789abcdef")
    buf = io.StringIO()
    setup_logging("INFO", journal=False, stream=buf)
    logging.getLogger("chargepoint.x").info("hello")
    assert buf.getvalue() == "INFO chargepoint.x: hello\n"


def test_without_systemd_auto_mode_uses_text() -> None:
    handler = setup_logging("INFO", stream=io.StringIO())
    assert isinstance(handler, logging.StreamHandler)


@needs_journal
def test_auto_mode_under_systemd_uses_the_journal(monkeypatch: pytest.MonkeyPatch) -> None:
    from systemd.journal import JournalHandler

    monkeypatch.setenv("JOURNAL_STREAM", "8:12345")
    handler = setup_logging("INFO", sender=Sent())
    assert isinstance(handler, JournalHandler)


@needs_journal
def test_journal_fields_through_sender_hook() -> None:
    sent = Sent()
    setup_logging("DEBUG", journal=True, sender=sent)
    log = logging.getLogger("chargepoint.protocol")
    log.info(
        "ChangeConfiguration %s",
        {"key": "AuthorizationKey", "value": "AABBCCDDEEFF0011"},
        extra=log_fields(connector_id=2, transaction_id=17, ocpp_action="ChangeConfiguration", id_tag=TAG),
    )
    assert len(sent.calls) == 1
    entry = sent.calls[0]
    assert entry["SYSLOG_IDENTIFIER"] == "chargepoint"
    assert entry["CONNECTOR_ID"] == 2
    assert entry["TRANSACTION_ID"] == 17
    assert entry["OCPP_ACTION"] == "ChangeConfiguration"
    assert entry["ID_TAG"] == mask_id_tag(TAG)
    assert entry["PRIORITY"] == "6"
    assert entry["LOGGER"] == "chargepoint.protocol"
    assert entry["MESSAGE"].startswith("ChangeConfiguration {")
    # nothing raw anywhere in the entry: not in MESSAGE, not as CODE_ARGS, not as a lower-case field
    flat = repr(entry)
    assert "AABBCCDDEEFF0011" not in flat
    assert TAG not in flat
    assert all(k == k.upper() for k in entry), sorted(k for k in entry if k != k.upper())


@needs_journal
def test_journal_exception_is_redacted() -> None:
    sent = Sent()
    setup_logging("INFO", journal=True, sender=sent)
    try:
        raise ValueError("password=very-secret-pw")
    except ValueError:
        logging.getLogger("x").error("boom", exc_info=True)
    entry = sent.calls[0]
    assert entry["PRIORITY"] == "3"
    assert "ValueError" in entry["EXCEPTION_TEXT"]
    assert "very-secret-pw" not in repr(entry)

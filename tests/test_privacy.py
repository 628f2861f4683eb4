"""Id tags never appear in clear: log lines, frames logged by the ``ocpp`` library and by the link, the
journal field ID_TAG, the status snapshot and the diagnostics archive all carry the one mask."""

from __future__ import annotations

import gzip
import io
import logging
import sqlite3
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chargepoint import logsetup
from chargepoint.firmware.diagnostics import build_archive
from chargepoint.logsetup import mask_id_tag, setup_logging

pytest_plugins = ["e2e_helpers"]

TAG = "04C0FFEE1234AB"  # a card UID: 7 bytes
LIST_TAG = "04D00D5EA5E1F0"  # a card in the Local Authorization List
PARENT = "GRP7F3E21AA"  # parentIdTag the central system gives TAG


class Sent:
    """systemd.journal.send stand-in: the entries the journal would store."""

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []

    def __call__(self, MESSAGE: str, **fields: Any) -> None:  # noqa: N803 - systemd.journal.send's name
        self.entries.append({"MESSAGE": MESSAGE, **fields})


@pytest.fixture
def journal() -> Iterator[tuple[Sent, io.StringIO]]:
    """The production log setup, DEBUG, every logger (the ocpp library's too): journal entries through the
    sender hook when systemd-python is there, and the text output (stderr format) in any case."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    sent = Sent()
    text = io.StringIO()
    if logsetup.journal_available():
        handler = setup_logging("DEBUG", journal=True, sender=sent)
    else:  # pragma: no cover - depends on the environment
        handler = setup_logging("DEBUG", journal=False, stream=io.StringIO())
    stream = logging.StreamHandler(text)
    stream.setFormatter(logsetup.FieldsFormatter("%(levelname)s %(name)s: %(message)s"))
    for f in handler.filters:  # the same redaction as the production handler (it also runs first)
        stream.addFilter(f)
    root.addHandler(stream)
    yield sent, text
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
    root.setLevel(level)


def _clear_forms(tag: str) -> list[str]:
    return [tag, tag.lower()]


def _assert_absent(where: str, text: str, *tags: str) -> None:
    for tag in tags:
        for form in _clear_forms(tag):
            assert form not in text, f"id tag {form!r} in clear in {where}"


# --------------------------------------------------------------------------------- the whole session


async def test_a_session_leaves_no_tag_in_clear(e2e_rig: Any, journal: tuple[Sent, io.StringIO], tmp_path: Path) -> None:
    sent, text = journal
    rig = await e2e_rig()
    rig.cs.behaviour.parent_id_tag = lambda tag: PARENT if tag == TAG else None
    answer = await rig.call(
        "SendLocalList",
        {
            "listVersion": 1,
            "updateType": "Full",
            "localAuthorizationList": [{"idTag": LIST_TAG, "idTagInfo": {"status": "Accepted"}}],
        },
    )
    assert answer["status"] == "Accepted"
    rig.bench.ev(1).plug()
    rig.tap(TAG)
    await rig.cs.wait_for_message("StartTransaction")
    await rig.wait(lambda: rig.controller.connectors[1].tx is not None and rig.controller.connectors[1].tx.transaction_id)
    snapshot = rig.controller.snapshot()
    await rig.go_offline()  # the StopTransaction (with the tag) stays queued in the store
    rig.tap(TAG)
    await rig.wait(lambda: rig.controller.connectors[1].tx is None)
    rig.tap(LIST_TAG)  # offline, accepted from the list: a second transaction
    await rig.wait(lambda: rig.controller.connectors[1].tx is not None)
    await rig.stop()  # the store is the running controller's (exclusive lock); the CLI reads it stopped

    mask = mask_id_tag(TAG)
    assert mask and TAG not in mask

    # status output
    _assert_absent("the status snapshot", repr(snapshot), TAG)
    assert snapshot["connectors"][0]["id_tag"] == mask

    # text output (stderr) and journal: nothing in clear, the mask is there
    out = text.getvalue()
    _assert_absent("the log text", out, TAG, LIST_TAG, PARENT)
    assert mask in out and mask_id_tag(PARENT) in out
    if logsetup.journal_available():
        _assert_absent("the journal", repr(sent.entries), TAG, LIST_TAG, PARENT)
        tagged = [e for e in sent.entries if "ID_TAG" in e]
        assert tagged and {e["ID_TAG"] for e in tagged} <= {mask, mask_id_tag(LIST_TAG)}
        for line in ("tag presented", "authorization of", "transaction started"):
            assert any(line in e["MESSAGE"] and e["ID_TAG"] == mask for e in tagged), line
        # each incoming call is logged once by the charge point (not also as the library's raw frame)
        charger_side = [e for e in sent.entries if e["LOGGER"].startswith("chargepoint.") and e["LOGGER"] != "chargepoint.csms"]
        assert len([e for e in charger_side if "SendLocalList" in e["MESSAGE"]]) == 1

    # the diagnostics archive ("secrets removed")
    state_dir = rig.controller.config.state_dir
    archive = build_archive(
        tmp_path / "diag.tar.gz",
        state_dir=state_dir,
        config_path=None,
        journal_reader=lambda since, until: out.splitlines(),
    )
    raw = gzip.decompress(archive.read_bytes()).decode("latin-1")
    _assert_absent("the diagnostics archive", raw, TAG, LIST_TAG, PARENT)
    with tarfile.open(archive) as tf:
        names = tf.getnames()
        dbs = [n for n in names if n.startswith("diagnostics/state/")]
        assert dbs
        tf.extractall(tmp_path / "x", filter="data")
    copy = sqlite3.connect(tmp_path / "x" / dbs[0])
    try:
        tx_tags = {r[0] for r in copy.execute("SELECT id_tag FROM transactions")}
        assert tx_tags == {mask_id_tag(LIST_TAG)}  # the open one (a stopped one lives on in the outbox)
        assert {r[0] for r in copy.execute("SELECT id_tag FROM local_list")} == {mask_id_tag(LIST_TAG)}
        assert {r[:2] for r in copy.execute("SELECT id_tag, parent_id_tag FROM auth_cache")} == {
            (mask, mask_id_tag(PARENT))
        }
        queued = " ".join(r[0] for r in copy.execute("SELECT payload FROM outbox"))
        assert mask in queued  # the queued StopTransaction (and StartTransaction) keep their shape
    finally:
        copy.close()


async def test_the_installation_secret_is_created_once_and_never_archived(e2e_rig: Any, tmp_path: Path) -> None:
    from chargepoint.privacy import SALT_FILE, read_salt

    rig = await e2e_rig(csms=False)
    state_dir = rig.controller.config.state_dir
    salt_file = state_dir / SALT_FILE
    assert stat.S_IMODE(salt_file.stat().st_mode) == 0o600
    salt = read_salt(state_dir)
    first = mask_id_tag(TAG)
    await rig.stop()
    again = await e2e_rig(csms=False, state_dir=state_dir)  # a restart: the same secret, the same mask
    assert read_salt(state_dir) == salt and mask_id_tag(TAG) == first
    await again.stop()
    other = await e2e_rig(csms=False)  # another installation: another secret
    assert read_salt(other.controller.config.state_dir) != salt and mask_id_tag(TAG) != first
    archive = build_archive(tmp_path / "d.tar.gz", state_dir=state_dir, config_path=None,
                            journal_reader=lambda since, until: [])
    raw = gzip.decompress(archive.read_bytes())
    assert salt not in raw and salt.hex().encode() not in raw
    with tarfile.open(archive) as tf:
        assert not any(SALT_FILE in n for n in tf.getnames())


# --------------------------------------------------------------------------------- refusals say why


async def test_an_offline_refusal_logs_the_real_reason(e2e_rig: Any, caplog: pytest.LogCaptureFixture) -> None:
    rig = await e2e_rig(csms=False, ocpp_keys={"AllowOfflineTxForUnknownId": "false"})
    rig.bench.ev(1).plug()
    with caplog.at_level(logging.INFO):
        rig.tap(TAG)
        await rig.wait_event("refused")
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert refusals and all("no free connector" not in m for m in refusals), refusals
    assert any("offline and not locally authorized" in m for m in refusals), refusals


async def test_no_free_connector_is_said_only_when_true(e2e_rig: Any, caplog: pytest.LogCaptureFixture) -> None:
    rig = await e2e_rig(csms=False, ocpp_keys={"AllowOfflineTxForUnknownId": "true"})
    await rig.controller.availability.change_availability(1, False)
    with caplog.at_level(logging.INFO):
        rig.tap(TAG)
        await rig.wait_event("refused")
    assert any("refused (no free connector)" in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------------- the masking function


def test_the_mask_is_stable_salted_and_case_insensitive() -> None:
    from chargepoint.privacy import is_mask

    salt_a, salt_b = b"a" * 32, b"b" * 32
    m = mask_id_tag(TAG, salt_a)
    assert is_mask(m) and TAG[:4] not in m
    assert mask_id_tag(TAG.lower(), salt_a) == m  # CiString20: the same card
    assert mask_id_tag(TAG, salt_b) != m  # another installation
    assert mask_id_tag(LIST_TAG, salt_a) != m
    assert mask_id_tag(None) == mask_id_tag("") == ""


@pytest.mark.parametrize(
    ("text", "clear"),
    [
        (f'[2,"1","Authorize",{{"idTag":"{TAG}"}}]', TAG),  # OCPP-J frame, compact
        (f'[2, "1", "Authorize", {{"idTag": "{TAG}"}}]', TAG),  # json.dumps default separators
        (f'{{"idTagInfo":{{"status":"Accepted","parentIdTag":"{PARENT}"}}}}', PARENT),
        (f"{{'idTag': '{TAG}', 'connectorId': 1}}", TAG),  # Python repr of a payload dict
        (f"Call(unique_id='1', action='ReserveNow', payload={{'idTag': '{TAG}'}})", TAG),
        (f"IdTagInfo(status='Accepted', expiry_date=None, parent_id_tag='{PARENT}')", PARENT),
        (f"ReserveNow.req idTag='{TAG}' must be 1..20 printable ASCII characters", TAG),
        (f'{{"payload": "{{\\"idTag\\": \\"{TAG}\\"}}"}}', TAG),  # a frame inside a JSON string
        ('{"idTag":"O\'NEIL-CARD-9"}', "O'NEIL-CARD-9"),
        ("{'idTag': \"O'NEIL-CARD-9\"}", "O'NEIL-CARD-9"),
        ('{"idTag":"QUO\\"TE-CARD"}', 'QUO\\"TE-CARD'),
    ],
)
def test_tags_inside_frames_and_reprs_are_masked(text: str, clear: str) -> None:
    from chargepoint.privacy import mask_tags_in_text

    salt = b"s" * 32
    out = mask_tags_in_text(text, salt)
    assert clear not in out
    real = clear.replace('\\"', '"')
    assert mask_id_tag(real, salt) in out  # the same mask as ID_TAG: the frame and the journal correlate
    assert mask_tags_in_text(out, salt) == out  # masking twice changes nothing


def test_text_without_tags_is_left_alone() -> None:
    from chargepoint.privacy import mask_tags_in_text

    for text in ['{"idTagInfo":{"status":"Accepted"}}', '{"idTag": null}', "tag presented", "validity=3",
                 '[2,"1","Heartbeat",{}]']:
        assert mask_tags_in_text(text) == text


def test_the_log_handler_masks_frames_of_any_logger_and_a_clear_id_tag_field(journal: tuple[Sent, io.StringIO]) -> None:
    sent, text = journal
    logging.getLogger("ocpp").info("%s: receive message %s", "CP-1", f'[2,"1","Authorize",{{"idTag":"{TAG}"}}]')
    logging.getLogger("chargepoint.somewhere").info("careless", extra={"ID_TAG": TAG})
    out = text.getvalue()
    _assert_absent("the log text", out, TAG)
    assert out.count(mask_id_tag(TAG)) == 2
    if logsetup.journal_available():
        _assert_absent("the journal", repr(sent.entries), TAG)
        assert sent.entries[-1]["ID_TAG"] == mask_id_tag(TAG)


def test_mask_tag_command_prints_the_chargers_mask(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from chargepoint.cli import main
    from chargepoint.privacy import load_or_create_salt, use_installation_salt

    state = tmp_path / "state"
    assert main(["mask-tag", TAG, "--state-dir", str(state)]) == 1  # no secret yet: says so, creates none
    assert "does not exist" in capsys.readouterr().err
    assert not state.exists()
    salt = load_or_create_salt(state)
    assert main(["mask-tag", TAG.lower(), "--state-dir", str(state)]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed == mask_id_tag(TAG, salt)
    assert use_installation_salt(state) and printed == mask_id_tag(TAG)  # what the controller logs


def test_a_damaged_secret_is_replaced_and_an_unwritable_dir_still_masks(tmp_path: Path) -> None:
    from chargepoint.privacy import SALT_FILE, load_or_create_salt, read_salt, use_installation_salt

    state = tmp_path / "state"
    state.mkdir()
    (state / SALT_FILE).write_bytes(b"short")
    salt = load_or_create_salt(state)
    assert len(salt) == 32 and read_salt(state) == salt and (state / f"{SALT_FILE}.damaged").exists()
    blocked = tmp_path / "file-not-dir"
    blocked.write_text("")
    assert use_installation_salt(blocked / "state") is False  # cannot be created: a one-off secret
    assert TAG not in mask_id_tag(TAG) and mask_id_tag(TAG).startswith("tag:")


def test_authorization_messages_name_a_tag_by_its_mask() -> None:
    from chargepoint.auth import LocalAuthList, apply_send_local_list

    entry = {"idTag": TAG, "idTagInfo": {"status": "Accepted"}}
    result = apply_send_local_list(LocalAuthList(), 1, "Full", [entry, dict(entry)], max_length=10,
                                   send_max_length=10, enabled=True)
    assert result.status == "Failed" and "more than once" in result.reason
    _assert_absent("the SendLocalList reason", result.reason, TAG)
    assert mask_id_tag(TAG) in result.reason


async def test_get_diagnostics_masks_tags_like_the_journal(e2e_rig: Any) -> None:
    """GetDiagnostics builds the archive inside the controller, from a copy of the store that has no secret
    file next to it: the masks must still be the journal's (the installation's secret)."""
    from fakes_firmware import HttpServer

    with HttpServer() as http:
        rig = await e2e_rig()
        rig.bench.ev(1).plug()
        rig.tap(TAG)
        await rig.cs.wait_for_message("StartTransaction")
        await rig.wait(lambda: rig.controller.connectors[1].tx is not None)
        conf = await rig.call("GetDiagnostics", {"location": f"{http.base}/diag/", "retries": 1})
        name = conf["fileName"]
        await rig.wait(lambda: f"/diag/{name}" in http.received, timeout=20)
        body = http.received[f"/diag/{name}"]
    raw = gzip.decompress(body).decode("latin-1")
    _assert_absent("the uploaded diagnostics archive", raw, TAG)
    with tarfile.open(fileobj=io.BytesIO(body), mode="r:gz") as tf:
        db_member = next(m for m in tf.getmembers() if m.name.startswith("diagnostics/state/"))
        data = tf.extractfile(db_member).read()  # type: ignore[union-attr]
        manifest = tf.extractfile("diagnostics/manifest.json").read().decode()  # type: ignore[union-attr]
    assert "one-off" not in manifest
    copy = Path(rig.controller.config.state_dir).parent / "copy.db"
    copy.write_bytes(data)
    c = sqlite3.connect(copy)
    try:
        assert {r[0] for r in c.execute("SELECT id_tag FROM transactions")} == {mask_id_tag(TAG)}
    finally:
        c.close()

"""Diagnostics archive (no secret survives, consistent SQLite copy, journal window) and GetDiagnostics upload."""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import os
import sqlite3
import tarfile
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fakes_firmware import FakeClock, FtpServer, HttpServer, Recorder, closed_port
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chargepoint.firmware.diagnostics import (
    DiagnosticsUploader,
    JournalUnavailable,
    archive_builder,
    build_archive,
    cli_diagnostics,
    journalctl_reader,
    redact_config_text,
)
from chargepoint.logsetup import mask_id_tag

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)

SECRETS = [
    "AKEY0011223344556677",  # AuthorizationKey
    "hunter2-basic",  # basic auth in the CSMS URL
    "s3cr3t-inline",  # password in an inline table
    "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC",  # PEM body
    "ftp-pass-xyz",  # password key
    "client-secret-99",  # *secret*
    "array-secret-1",
    "array-secret-2",
    "token-abc-123",
    "wifi-psk-777",
]

CONFIG = f"""\
# charger configuration
[charge_point]
id = "CP-0042"
vendor = "PiCharge"

[ocpp]
url = "wss://CP-0042:{SECRETS[1]}@csms.example.org/ocpp/CP-0042"
AuthorizationKey = "{SECRETS[0]}"   # security profile 1/2
heartbeat_interval = 300
basic = {{ user = "CP-0042", password = "{SECRETS[2]}" }}

[tls]
ca_file = "/etc/chargepoint/ca.pem"
private_key = \"\"\"
-----BEGIN PRIVATE KEY-----
{SECRETS[3]}
-----END PRIVATE KEY-----
\"\"\"

[diagnostics]
ftp_password = '{SECRETS[4]}'
client_secret = "{SECRETS[5]}"
secrets = [
  "{SECRETS[6]}",
  "{SECRETS[7]}",
]
api_token = "{SECRETS[8]}"

[network]
wifi.psk = "{SECRETS[9]}"
ssid = "garage"
"""


def make_store(path: Path) -> sqlite3.Connection:
    """A store in WAL mode with rows still only in the -wal file (no checkpoint yet); connection kept open."""
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA wal_autocheckpoint=0")
    db.execute("CREATE TABLE config_keys (key TEXT PRIMARY KEY, value TEXT, readonly INTEGER)")
    db.execute("CREATE TABLE tx (id INTEGER PRIMARY KEY, id_tag TEXT, meter_start INTEGER, note TEXT)")
    db.execute("CREATE TABLE creds (id INTEGER PRIMARY KEY, api_secret TEXT)")
    db.commit()
    db.executemany("INSERT INTO config_keys VALUES (?, ?, 0)",
                   [("AuthorizationKey", SECRETS[0]), ("HeartbeatInterval", "300"), ("MeterValueSampleInterval", "60")])
    db.execute("INSERT INTO tx VALUES (1, 'TAG-1', 1000, ?)", (f"sent with ftp password {SECRETS[4]}",))
    db.execute("INSERT INTO tx VALUES (2, 'TAG-2', 2000, 'ok')")
    db.execute("INSERT INTO creds VALUES (1, 'colsecret-555')")
    db.commit()
    return db


def read_all(archive: Path) -> tuple[dict[str, bytes], bytes]:
    raw = gzip.decompress(archive.read_bytes())
    with tarfile.open(archive) as tf:
        members = {m.name: tf.extractfile(m).read() for m in tf.getmembers() if m.isfile()}
    return members, raw


@pytest.fixture
def charger(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    db = make_store(state / "chargepoint.db")
    cfg = tmp_path / "chargepoint.toml"
    cfg.write_text(CONFIG)
    yield state, cfg
    db.close()


def test_archive_contents_and_no_secret_survives(charger, tmp_path):
    state, cfg = charger
    assert os.path.getsize(state / "chargepoint.db-wal") > 0  # rows only in the WAL: a raw copy misses them
    calls = []

    def journal(since, until):
        calls.append((since, until))
        return [f"2025-03-01T11:00:00+0000 cp chargepoint[1]: connecting to wss://CP-0042:{SECRETS[1]}@csms/x",
                f"2025-03-01T11:00:01+0000 cp chargepoint[1]: AuthorizationKey set to {SECRETS[0]}",
                "2025-03-01T11:00:02+0000 cp chargepoint[1]: BootNotification accepted"]

    out = build_archive(tmp_path / "out" / "d.tar.gz", state_dir=state, config_path=cfg,
                        journal_since=T0 - timedelta(hours=2), journal_until=T0, journal_reader=journal,
                        versions={"pi-chargepoint": "1.2.3", "python": "3.11"},
                        hardware_summary={"board": "rapi", "meter": "SDM630"}, now=T0)
    assert calls == [(T0 - timedelta(hours=2), T0)]
    members, raw = read_all(out)
    assert set(members) == {"diagnostics/" + n for n in (
        "manifest.json", "journal.log", "config.toml", "state/chargepoint.db", "versions.json", "hardware.json")}
    for secret in [*SECRETS, "colsecret-555"]:
        assert secret.encode() not in raw, f"secret {secret!r} leaked into the archive"
    # what is not secret is still there
    cfg_out = tomllib.loads(members["diagnostics/config.toml"].decode())
    assert cfg_out["charge_point"]["id"] == "CP-0042" and cfg_out["network"]["ssid"] == "garage"
    assert cfg_out["ocpp"]["url"] == "wss://<redacted>@csms.example.org/ocpp/CP-0042"
    assert cfg_out["ocpp"]["heartbeat_interval"] == 300 and cfg_out["tls"]["ca_file"] == "/etc/chargepoint/ca.pem"
    assert cfg_out["ocpp"]["basic"] == {"user": "CP-0042", "password": "<redacted>"}
    assert "# security profile 1/2" in members["diagnostics/config.toml"].decode()  # comments kept
    journal_text = members["diagnostics/journal.log"].decode()
    assert "BootNotification accepted" in journal_text and journal_text.count("\n") == 3
    assert json.loads(members["diagnostics/versions.json"]) == {"pi-chargepoint": "1.2.3", "python": "3.11"}
    assert json.loads(members["diagnostics/hardware.json"])["meter"] == "SDM630"

    # the store copy is consistent (WAL content included) and scrubbed
    copy = tmp_path / "copy.db"
    copy.write_bytes(members["diagnostics/state/chargepoint.db"])
    c = sqlite3.connect(copy)
    assert c.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert dict(c.execute("SELECT key, value FROM config_keys")) == {
        "AuthorizationKey": "<redacted>", "HeartbeatInterval": "300", "MeterValueSampleInterval": "60"}
    # id tags are personal data: masked as in the journal's ID_TAG field, the rest of the row kept
    assert c.execute("SELECT id, id_tag, meter_start FROM tx ORDER BY id").fetchall() == [
        (1, mask_id_tag("TAG-1"), 1000), (2, mask_id_tag("TAG-2"), 2000)]
    assert c.execute("SELECT note FROM tx WHERE id=1").fetchone() == ("sent with ftp password <redacted>",)
    c.close()
    manifest = json.loads(members["diagnostics/manifest.json"])
    assert manifest["journal_source"] == "injected journal reader" and manifest["journal_lines"] == 3
    assert manifest["databases"][0]["name"] == "chargepoint.db" and manifest["databases"][0]["redacted_values"] >= 3
    # the source store was not modified
    src = sqlite3.connect(state / "chargepoint.db")
    assert src.execute("SELECT value FROM config_keys WHERE key='AuthorizationKey'").fetchone() == (SECRETS[0],)
    src.close()
    with tarfile.open(out) as tf:
        assert all(m.mode == 0o600 for m in tf.getmembers())
    assert os.stat(out).st_mode & 0o077 == 0  # not readable by other local users


def test_file_log_fallback_filters_the_window(tmp_path):
    log = tmp_path / "chargepoint.log"
    log.write_text("2025-03-01T09:59:59Z early\n"
                   "2025-03-01 10:00:00,123 in window\n"
                   "  continuation of the line above\n"
                   "2025-03-01T11:30:00+01:00 also in (10:30 UTC)\n"
                   "2025-03-01T12:00:01Z late\n")

    def no_journal(since, until):
        raise JournalUnavailable("journalctl is not installed")

    out = build_archive(tmp_path / "d.tar.gz", state_dir=None, config_path=None,
                        journal_since=T0 - timedelta(hours=2), journal_until=T0,
                        journal_reader=no_journal, log_file=log)
    members, _ = read_all(out)
    assert members["diagnostics/journal.log"].decode().splitlines() == [
        "2025-03-01 10:00:00,123 in window", "  continuation of the line above",
        "2025-03-01T11:30:00+01:00 also in (10:30 UTC)"]
    manifest = json.loads(members["diagnostics/manifest.json"])
    assert manifest["journal_source"].startswith("log file")
    assert "injected journal reader: journalctl is not installed" in manifest["notes"]


def test_missing_sources_are_noted_not_fatal(tmp_path):
    def broken(since, until):
        raise JournalUnavailable("no journal")

    out = build_archive(tmp_path / "d.tar.gz", state_dir=tmp_path / "nostate", config_path=tmp_path / "none.toml",
                        journal_reader=broken)
    members, _ = read_all(out)
    notes = json.loads(members["diagnostics/manifest.json"])["notes"]
    assert any("none.toml unreadable" in n for n in notes)
    assert any("nostate does not exist" in n for n in notes)
    assert "no log source available: journal.log is empty" in notes


def test_journalctl_reader_runs_journalctl(tmp_path, monkeypatch):
    """A real journalctl if present is not guaranteed here; a stand-in executable on PATH records argv."""
    fake = tmp_path / "bin" / "journalctl"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\nfor a in "$@"; do echo "arg:$a"; done\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
    lines = list(journalctl_reader("chargepoint")(T0 - timedelta(hours=1), T0))
    args = [ln[4:] for ln in lines]
    assert args[:2] == ["-u", "chargepoint"] and "short-iso" in args
    assert args[args.index("--since") + 1] == "2025-03-01 11:00:00 UTC"
    assert args[args.index("--until") + 1] == "2025-03-01 12:00:00 UTC"
    fake.write_text("#!/bin/sh\necho 'No journal files were found.' >&2\nexit 1\n")
    with pytest.raises(JournalUnavailable, match="No journal files"):
        journalctl_reader()(None, None)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(JournalUnavailable, match="not installed"):
        journalctl_reader()(None, None)


_secret_text = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="\"'\\@/:"),
                       min_size=6, max_size=30)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(secret=_secret_text, key=st.sampled_from(["password", "AuthorizationKey", "db_password", "my_secret",
                                                 "private_key", "secret_token", "api_key", "Passphrase"]),
       style=st.sampled_from(["top", "inline", "multiline", "url", "array", "dotted", "literal"]))
def test_no_secret_survives_redaction(secret, key, style):
    body = {
        "top": f'{key} = "{secret}"\n',
        "inline": f'auth = {{ user = "u", {key} = "{secret}" }}\n',
        "multiline": f'{key} = """\n{secret}\n"""\n',
        "url": f'url = "https://user:{secret}@host.example/path"\n',
        "array": f'{key} = [\n  "{secret}",\n  "x",\n]\n',
        "dotted": f'creds.{key} = "{secret}"\n',
        "literal": f"{key} = '{secret}'\n",
    }[style]
    text = f'[section]\nname = "visible-name"\n{body}other = 1\n'
    tomllib.loads(text)  # the input is valid TOML
    out, notes = redact_config_text(text)
    assert secret not in out
    parsed = tomllib.loads(out)  # and so is the output
    assert parsed["section"]["name"] == "visible-name" and parsed["section"]["other"] == 1
    assert notes == []


def test_invalid_toml_is_still_redacted_line_by_line():
    out, notes = redact_config_text('password = "p4ss-word-1"\nbroken = = =\n')
    assert "p4ss-word-1" not in out and notes and "not valid TOML" in notes[0]


# ---------------------------------------------------------------------------------------------------------
# Id tags


def test_id_tags_are_masked_in_every_member(tmp_path):
    """Store columns, queued OCPP payloads, old journal lines (frames, free text), hardware summary: the tag
    is nowhere in clear, its mask (the journal's ID_TAG value, with the installation's secret) is."""
    from chargepoint.privacy import SALT_FILE, load_or_create_salt, mask_id_tag

    tag, parent, listed = "04AB12CD34EF56", "GROUP-77AA01", "04FF00EE11DD22"
    state = tmp_path / "state"
    salt = load_or_create_salt(state)  # as the controller created it
    db = sqlite3.connect(state / "state.db")
    db.executescript(
        "CREATE TABLE auth_cache (id_tag TEXT PRIMARY KEY, status TEXT, parent_id_tag TEXT) WITHOUT ROWID;"
        "CREATE TABLE local_list (id_tag TEXT PRIMARY KEY, status TEXT) WITHOUT ROWID;"
        "CREATE TABLE outbox (seq INTEGER PRIMARY KEY, action TEXT, payload TEXT);"
        "CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT);")
    db.execute("INSERT INTO auth_cache VALUES (?, 'Accepted', ?)", (tag, parent))
    db.execute("INSERT INTO local_list VALUES (?, 'Accepted')", (listed,))
    db.execute("INSERT INTO outbox VALUES (1, 'StopTransaction', ?)",
               (json.dumps({"idTag": tag.lower(), "meterStop": 1200, "transactionId": 7}),))
    db.execute("INSERT INTO notes VALUES (1, ?)", (f"card {tag} seen twice",))
    db.commit()
    db.close()
    journal = [
        f'2025-03-01T11:00:00+0000 cp chargepoint[1]: CP-1: receive message [2,"u1","RemoteStartTransaction",'
        f'{{"idTag":"{tag}"}}]',
        f"2025-03-01T11:00:01+0000 cp chargepoint[1]: Error while handling request 'Call(unique_id='u2', "
        f"action='ReserveNow', payload={{'idTag': '{listed}', 'parentIdTag': '{parent}'}})'",
        f"2025-03-01T11:00:02+0000 cp chargepoint[1]: tag presented: {tag[:4]}… (an old release)",
        f"2025-03-01T11:00:03+0000 cp chargepoint[1]: stray {tag} in a message",
        "2025-03-01T11:00:04+0000 cp chargepoint[1]: meter 1234567 Wh",
    ]
    out = build_archive(tmp_path / "d.tar.gz", state_dir=state, config_path=None,
                        journal_reader=lambda since, until: journal,
                        hardware_summary={"snapshot": {"id_tag": tag}}, now=T0)
    members, raw = read_all(out)
    text = raw.decode("latin-1")
    for clear in (tag, tag.lower(), parent, listed):
        assert clear not in text, clear
    assert salt not in raw and SALT_FILE not in text
    log = members["diagnostics/journal.log"].decode()
    assert log.count(mask_id_tag(tag, salt)) == 2 and mask_id_tag(parent, salt) in log
    assert mask_id_tag(listed, salt) in log and "meter 1234567 Wh" in log
    assert mask_id_tag(tag, salt) in members["diagnostics/hardware.json"].decode()
    copy = tmp_path / "copy.db"
    copy.write_bytes(members["diagnostics/state/state.db"])
    c = sqlite3.connect(copy)
    assert c.execute("SELECT * FROM auth_cache").fetchall() == [
        (mask_id_tag(tag, salt), "Accepted", mask_id_tag(parent, salt))]
    assert c.execute("SELECT id_tag FROM local_list").fetchall() == [(mask_id_tag(listed, salt),)]
    assert json.loads(c.execute("SELECT payload FROM outbox").fetchone()[0]) == {
        "idTag": mask_id_tag(tag, salt), "meterStop": 1200, "transactionId": 7}
    assert c.execute("SELECT text FROM notes").fetchone() == (f"card {mask_id_tag(tag, salt)} seen twice",)
    c.close()
    manifest = json.loads(members["diagnostics/manifest.json"])
    assert manifest["databases"][0]["masked_id_tags"] == 3
    assert not any("one-off" in n for n in manifest["notes"])


def test_without_the_installation_secret_the_archive_says_so(charger, tmp_path):
    from chargepoint.privacy import set_salt

    state, cfg = charger  # no secret in this state directory
    set_salt(os.urandom(32))  # and no controller in this process (chargepoint diagnostics)
    out = build_archive(tmp_path / "d.tar.gz", state_dir=state, config_path=cfg,
                        journal_reader=lambda s, u: [], now=T0)
    members, raw = read_all(out)
    assert b"TAG-1" not in raw
    assert any("one-off secret" in n for n in json.loads(members["diagnostics/manifest.json"])["notes"])


# ---------------------------------------------------------------------------------------------------------
# DiagnosticsUploader


@pytest.fixture
def uploader_env(charger, tmp_path):
    state, cfg = charger
    clock = FakeClock(T0)
    builder = archive_builder(state_dir=state, config_path=cfg, versions={"pi-chargepoint": "1.0.0"},
                              hardware_summary=lambda: {"board": "sim"},
                              journal_reader=lambda s, u: ["2025-03-01T11:00:00Z line"])
    rec = Recorder()
    up = DiagnosticsUploader(notify=rec, build=builder, work_dir=tmp_path / "work", charge_point_id="CP/0042",
                             clock=clock.now, sleep=clock.sleep, default_retry_interval_s=20)
    return up, rec, clock, tmp_path


async def test_get_diagnostics_http_put(uploader_env):
    up, rec, clock, tmp = uploader_env
    statuses_seen = []
    inner = up._notify

    async def notify(s: str) -> None:
        statuses_seen.append(up.last_status)
        await inner(s)

    up._notify = notify
    with HttpServer() as http:
        name = up.get_diagnostics(f"{http.base}/diag/", start_time=T0 - timedelta(days=1), stop_time=T0)
        assert name == "diagnostics-CP_0042-20250301T120000Z.tar.gz"  # returned before anything was done
        assert not up.task.done()
        await up.task
        body = http.received[f"/diag/{name}"]
    assert rec.statuses == ["Uploading", "Uploaded"]
    assert statuses_seen == ["Uploading", "Idle"]  # TriggerMessage while uploading / after
    with tarfile.open(fileobj=io.BytesIO(body)) as tf:
        assert "diagnostics/state/chargepoint.db" in tf.getnames()
        assert json.load(tf.extractfile("diagnostics/hardware.json")) == {"board": "sim"}
    for secret in SECRETS:
        assert secret.encode() not in gzip.decompress(body)
    assert list((tmp / "work").iterdir()) == []  # nothing left on the charger's disk
    assert up.uploaded_to == f"{http.base}/diag/{name}"


async def test_get_diagnostics_ftp_ok_and_refused(uploader_env):
    up, rec, clock, tmp = uploader_env
    root = tmp / "ftproot"
    (root / "incoming").mkdir(parents=True)
    with FtpServer(root) as ftp:
        name = up.get_diagnostics(ftp.url("up", "uppass", "incoming"))
        await up.task
        assert (root / "incoming" / name).stat().st_size > 0
        assert rec.statuses == ["Uploading", "Uploaded"]

        rec.statuses.clear()
        name2 = up.get_diagnostics(ftp.url("ro", "ropass", "incoming/"), retries=3)
        await up.task
    assert rec.statuses == ["Uploading", "UploadFailed"]
    assert "refused the upload" in up.last_error and "ropass" not in up.last_error
    assert clock.sleeps == []
    assert up.last_status == "Idle"
    assert name2 == name or not (root / "incoming" / name2).exists()


async def test_get_diagnostics_unreachable_retries_then_fails(uploader_env):
    up, rec, clock, tmp = uploader_env
    up.get_diagnostics(f"http://127.0.0.1:{closed_port()}/diag/", retries=3, retry_interval=15)
    await up.task
    assert rec.statuses == ["Uploading", "UploadFailed"]
    assert clock.sleeps == [15, 15] and "connection refused" in up.last_error


async def test_build_failure_is_upload_failed(tmp_path):
    def broken(out, since, until):
        raise OSError(28, "No space left on device")

    rec = Recorder()
    up = DiagnosticsUploader(notify=rec, build=broken, work_dir=tmp_path / "w")
    up.get_diagnostics("ftp://127.0.0.1:1/x/")
    await up.task
    assert rec.statuses == ["Uploading", "UploadFailed"] and "No space left" in up.last_error


async def test_new_request_replaces_running_one(uploader_env):
    up, rec, clock, tmp = uploader_env
    hang = True

    async def sleep(s: float) -> None:
        if hang:
            await asyncio.Event().wait()  # the first request waits "an hour" between retries
        await clock.sleep(s)

    up._sleep = sleep
    with HttpServer() as http:
        http.upload_status = 503
        up.get_diagnostics(f"{http.base}/a/", retries=5, retry_interval=3600)
        first = up.task
        for _ in range(200):
            if any(p.startswith("/a/") for p in http.hits):
                break
            await asyncio.sleep(0.02)
        http.upload_status = None
        hang = False
        up.get_diagnostics(f"{http.base}/b/")
        await up.task
        assert first.cancelled()
        assert any(p.startswith("/b/") for p in http.received)
        assert not any(p.startswith("/a/") for p in http.received)
    assert rec.statuses == ["Uploading", "Uploading", "Uploaded"]


def test_cli_diagnostics(charger, tmp_path, capsys):
    state, cfg = charger
    out = tmp_path / "outdir"
    out.mkdir()
    rc = cli_diagnostics(out, cfg, state, journal_reader=lambda s, u: ["a line"])
    text = capsys.readouterr().out
    assert rc == 0 and "secrets removed" in text and "databases: chargepoint.db" in text
    archives = list(out.glob("diagnostics-*.tar.gz"))
    assert len(archives) == 1
    _, raw = read_all(archives[0])
    assert all(s.encode() not in raw for s in SECRETS)

    assert cli_diagnostics(tmp_path / "x.tar.gz", tmp_path / "missing.toml", state) == 2
    assert "missing.toml does not exist" in capsys.readouterr().err
    assert cli_diagnostics(Path("/proc/forbidden/x.tar.gz"), cfg, state,
                           journal_reader=lambda s, u: []) == 1
    assert "cannot write" in capsys.readouterr().err

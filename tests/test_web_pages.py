"""Sessions and installer pages, [web] configuration, passwords and set-password."""

from __future__ import annotations

import csv
import io
import subprocess
import sys
from pathlib import Path

import pytest

from chargepoint.config import ConfigError, load_config, parse_config
from chargepoint.frontends.web.app import WebContext
from chargepoint.frontends.web.auth import LoginLimiter, SessionStore, hash_password, verify_password
from chargepoint.frontends.web.config import parse_web_config
from chargepoint.frontends.web.installer import RecentLog, check_config_text, restore_hidden
from chargepoint.frontends.web.setpassword import set_key_in_web_table
from tests.web_fakes import FakeApi, history
from tests.web_helpers import USER_PW, client_for, csrf_of, login

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "deploy" / "chargepoint.example.toml"


# ------------------------------------------------------------------------------------------------ sessions


async def test_sessions_page_filters_and_csv() -> None:
    h = history()
    async with client_for(FakeApi(), WebContext(history=h)) as client:
        assert (await client.get("/sessions", allow_redirects=False)).status == 401
        await login(client, USER_PW)
        text = await (await client.get("/sessions")).text()
        assert "3 session(s), 25.250 kWh" in text and "EVDisconnected" in text
        text = await (await client.get("/sessions?connector=1&card=04A2B3C4&from=2024-05-01&to=2024-05-31")).text()
        assert "1 session(s), 18.250 kWh" in text
        assert h.queries[-1]["id_tag"] == "04A2B3C4"
        resp = await client.get("/sessions.csv?connector=1")
        assert resp.status == 200 and resp.content_type == "text/csv"
        assert "attachment" in resp.headers["Content-Disposition"]
        rows = list(csv.DictReader(io.StringIO(await resp.text())))
        assert [r["transaction_id"] for r in rows] == ["12", "10"]
        assert rows[0]["energy_kwh"] == "18.250" and rows[0]["duration_min"] == "150.0"
        assert rows[0]["id_tag"] == "mask-of-04A2B3C4"
        for bad in ("from=2024-13-01", "connector=x", "card=a%20b", "to=yesterday"):
            resp = await client.get("/sessions.csv?" + bad)
            assert resp.status in (400, 404), bad
    async with client_for(FakeApi()) as client:
        await login(client)
        assert "not available" in await (await client.get("/sessions")).text()


# ------------------------------------------------------------------------------------------------ installer


def _config_file(tmp_path: Path) -> Path:
    text = EXAMPLE.read_text()
    text = text.replace('password = ""', 'password = "s3cret-basic-auth-key"', 1)
    path = tmp_path / "chargepoint.toml"
    path.write_text(text)
    return path


async def test_installer_pages_are_admin_only_and_hide_secrets(tmp_path: Path) -> None:
    path = _config_file(tmp_path)
    ctx = WebContext(config_path=str(path), state_dir=str(tmp_path))
    async with client_for(FakeApi(), ctx) as client:
        await login(client, USER_PW)
        for p in ("/installer", "/installer/config", "/installer/logs", "/installer/hardware",
                  "/installer/diagnostics.tar.gz"):
            assert (await client.get(p)).status == 403, p
    async with client_for(FakeApi(), ctx) as client:
        await login(client)
        text = await (await client.get("/installer/config")).text()
        assert "s3cret-basic-auth-key" not in text and "&lt;redacted&gt;" in text
        assert "CP-0001" in text
        (tmp_path / "check-hardware.txt").write_text("[PASS] contactor closes\n")
        assert "[PASS] contactor closes" in await (await client.get("/installer/hardware")).text()
        import logging

        logging.getLogger("chargepoint.test").warning("tapped %s", {'idTag': '04A2B3C4D5'})
        logs = await (await client.get("/installer/logs")).text()
        assert "tapped" in logs and "04A2B3C4D5" not in logs


async def test_config_edit_is_checked_like_check_config(tmp_path: Path) -> None:
    path = _config_file(tmp_path)
    path.chmod(0o640)
    ctx = WebContext(config_path=str(path), state_dir=str(tmp_path))
    async with client_for(FakeApi(), ctx) as client:
        await login(client)
        token = await csrf_of(client, "/installer/config")
        shown = (await (await client.get("/installer/config")).text())
        import html
        import re

        text = html.unescape(re.search(r'<textarea name="config" id="config" spellcheck="false">(.*?)</textarea>',
                                       shown, re.S).group(1))
        before = path.read_text()
        bad = text.replace("max_current_a = 32", "max_curent_a = 16", 1)
        resp = await client.post("/installer/config", data={"csrf": token, "config": bad})
        assert resp.status == 400
        body = await resp.text()
        assert "did you mean" in body and "max_current_a" in body
        assert path.read_text() == before  # nothing applied
        resp = await client.post("/installer/config", data={"csrf": token, "config": "not = [toml"})
        assert resp.status == 400 and path.read_text() == before
        good = text.replace("level = \"info\"", "level = \"debug\"", 1)
        resp = await client.post("/installer/config", data={"csrf": token, "config": good})
        assert resp.status == 200, await resp.text()
        assert "restart is needed" in await resp.text()
        after = path.read_text()
        assert 'level = "debug"' in after and "s3cret-basic-auth-key" in after  # the hidden value kept
        # a hidden value changed in place cannot be guessed back: refused
        resp = await client.post("/installer/config", data={"csrf": token, "config": good.replace(
            'password = "<redacted>"', 'password = "<redacted>x"', 1)})
        assert resp.status == 400
        # without the token: refused
        resp = await client.post("/installer/config", data={"config": good})
        assert resp.status == 403


def test_check_config_text_agrees_with_the_cli(tmp_path: Path) -> None:
    cases = [EXAMPLE.read_text(), EXAMPLE.read_text().replace('driver = "pwm"', 'driver = "laser"'),
             EXAMPLE.read_text().replace("relay_pin = 17", "relay_pn = 17"), "x = [", "[web]\nport = 0\n"]
    for i, text in enumerate(cases):
        path = tmp_path / f"c{i}.toml"
        path.write_text(text)
        proc = subprocess.run([sys.executable, "-m", "chargepoint", "check-config", str(path)],
                              capture_output=True, text=True, timeout=60)
        problems = check_config_text(text, str(path))
        assert (proc.returncode == 0) == (not problems), (i, proc.stderr, problems)
        for p in problems:
            assert p in proc.stderr, (p, proc.stderr)


def test_restore_hidden_keeps_secrets() -> None:
    original = 'a = 1\npassword = "pw-1"\n[ocpp]\nAuthorizationKey = "00112233"\n'
    from chargepoint.frontends.web.installer import redacted_config

    shown = redacted_config(original)
    assert "pw-1" not in shown and "00112233" not in shown
    assert restore_hidden(shown.replace("a = 1", "a = 2"), original) == original.replace("a = 1", "a = 2")


def test_recent_log_keeps_the_last_hour() -> None:
    import logging

    h = RecentLog(window_s=10, max_lines=3)
    for i in range(5):
        h.emit(logging.LogRecord("x", logging.INFO, __file__, 1, f"line {i}", (), None))
    assert [line.split()[-1] for line in h.recent()] == ["2", "3", "4"]
    assert h.recent(now=h.lines[-1][0] + 11) == []


# ------------------------------------------------------------------------------------------------ [web] config


def test_web_config_defaults_and_problems(tmp_path: Path) -> None:
    cfg, problems = parse_web_config(None)
    assert problems == [] and cfg.enabled is False and cfg.listen == "127.0.0.1"
    cfg, problems = parse_web_config({"enabled": True, "listen": "0.0.0.0", "port": 8443, "viewer": True})
    assert problems == [] and cfg.port == 8443 and cfg.viewer
    _, problems = parse_web_config({"enabled": "yes", "port": 70000, "listen": "my-lan", "tls_cert": "/x.pem",
                                    "password_hash": "plain", "prot": 1})
    keys = [p[0] for p in problems]
    assert keys == ["web.prot", "web.enabled", "web.listen", "web.port", "web.tls_key", "web.tls_cert",
                    "web.password_hash"]
    assert "did you mean 'port'" in problems[0][2]
    assert all("plain" not in str(p[1]) for p in problems)  # a password-ish value is never echoed
    with pytest.raises(ConfigError) as exc:
        parse_config({**_minimal(), "web": {"port": "80"}})
    assert "web.port = '80': a whole number" in str(exc.value)
    assert load_config(EXAMPLE).web.enabled is True


def _minimal() -> dict:
    sim = {"driver": "sim"}
    return {"chargepoint": {"id": "CP-1"}, "csms": {"url": "ws://127.0.0.1:1/ocpp"},
            "connectors": [{"pilot": sim, "contactor": sim, "meter": sim}]}


# ------------------------------------------------------------------------------------------------ passwords


def test_password_hash_round_trip_and_damage() -> None:
    stored = hash_password("a long password", n=2**10)
    assert stored.startswith("scrypt$n=1024,r=8,p=1$")
    assert verify_password("a long password", stored)
    assert not verify_password("a long passwore", stored)
    assert not verify_password("a long password", stored[:-4])
    assert not verify_password("x" * 5000, stored)
    assert hash_password("a long password", n=2**10) != stored  # salted
    with pytest.raises(ValueError):
        hash_password("short")


def test_session_store_and_limiter_bounds() -> None:
    store = SessionStore(max_sessions=3, idle_s=10)
    sessions = [store.new(0.0) for _ in range(5)]
    assert len(store) == 3 and store.get(sessions[0].sid, 1.0) is None
    assert store.get(sessions[4].sid, 5.0) is sessions[4]
    assert store.get(sessions[4].sid, 16.0) is None  # idle
    lim = LoginLimiter(per_client=2, overall=3, window_s=60)
    lim.failed("a", 0)
    assert lim.retry_after("a", 1) == 0
    lim.failed("a", 1)
    assert lim.retry_after("a", 2) == pytest.approx(58)
    assert lim.retry_after("b", 2) == 0
    lim.failed("b", 2)
    assert lim.retry_after("c", 3) == pytest.approx(57)  # the overall bound
    assert lim.retry_after("a", 61) == 0


def test_set_password_edits_one_line(tmp_path: Path) -> None:
    assert set_key_in_web_table("", "password_hash", "H") == '[web]\npassword_hash = "H"\n'
    text = '[web]\nenabled = true\npassword_hash = "old" # x\n[ocpp]\n'
    assert set_key_in_web_table(text, "password_hash", "H") == '[web]\nenabled = true\npassword_hash = "H"\n[ocpp]\n'
    path = tmp_path / "c.toml"
    path.write_text(EXAMPLE.read_text())
    path.chmod(0o640)
    proc = subprocess.run([sys.executable, "-m", "chargepoint", "set-password", "--stdin", "--config", str(path)],
                          input="a good password\n", capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "a good password" not in path.read_text() and oct(path.stat().st_mode & 0o777) == "0o640"
    cfg = load_config(path)
    assert verify_password("a good password", cfg.web.password_hash)
    assert EXAMPLE.read_text().replace("[web]\n", "") in path.read_text().replace("[web]\n", "").replace(
        f'password_hash = "{cfg.web.password_hash}"\n', "")
    proc = subprocess.run([sys.executable, "-m", "chargepoint", "set-password", "--stdin", "--config", str(path)],
                          input="short\n", capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "8 to 1024" in proc.stderr

"""The web UI's HTTP behaviour over a fake StationApi: roles, login, CSRF, commands, live updates."""

from __future__ import annotations

import asyncio

import pytest

from chargepoint.api import Role
from tests.web_fakes import FakeApi, faulted
from tests.web_helpers import ADMIN_PW, USER_PW, client_for, csrf_of, login, post


async def test_status_page_needs_a_login_unless_the_viewer_role_is_on() -> None:
    api = FakeApi()
    async with client_for(api) as client:
        resp = await client.get("/", allow_redirects=False)
        assert resp.status == 303 and resp.headers["Location"].startswith("/login")
        assert (await client.get("/status.json")).status == 401
        assert (await client.get("/events")).status == 401
    async with client_for(api, viewer=True) as client:
        resp = await client.get("/")
        text = await resp.text()
        assert resp.status == 200
        assert "Connector 1" in text and "Connector 2" in text and "CP-WEB" in text
        assert 'action="/connectors/1/start"' not in text  # a viewer gets no control forms
        assert "Log in" in text
        assert resp.headers["Content-Security-Policy"].startswith("default-src 'self'")
        assert resp.headers["X-Frame-Options"] == "DENY"
        # a viewer cannot command
        token = await csrf_of(client, "/")
        r = await post(client, "/connectors/1/stop", token)
        assert r.status == 401
    assert api.calls == []


async def test_status_page_shows_what_the_snapshot_says() -> None:
    api = FakeApi()
    api.update(1, status="Charging", pilot="C", cable_a=20.0, offered_a=16.0, measured_a=15.8, power_w=10900.0,
               session_energy_wh=2500.0, limit_a=16.0, limit_source="local", local_limit_a=16.0,
               transaction_id=42, id_tag="tag:1234abcd")
    faulted(api, 2)
    async with client_for(api) as client:
        await login(client)
        text = await (await client.get("/")).text()
    for expected in ("Charging", "C — charging", "20.0 A", "16.0 A", "15.8 A", "10.90 kW", "2.500 kWh",
                     "from local", "transaction 42", "tag:1234abcd", "GroundFailure",
                     "Find the earth fault; then clear it here.", "(latched)", "Accepted", "0.1.0",
                     "Clear latched fault"):
        assert expected in text, expected


async def test_login_sets_a_strict_httponly_cookie_and_rotates_the_session() -> None:
    api = FakeApi()
    async with client_for(api) as client:
        before = await csrf_of(client)
        resp = await client.post("/login", data={"csrf": before, "password": ADMIN_PW}, allow_redirects=False)
        assert resp.status == 303
        cookie = resp.headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
        after = await csrf_of(client, "/")
        assert after != before  # new session, new token
        # the old token is worth nothing now
        assert (await post(client, "/connectors/1/limit", before, amps="10")).status == 403
        assert (await post(client, "/connectors/1/limit", after, amps="10")).status == 200


async def test_wrong_password_and_the_login_rate_limit() -> None:
    api = FakeApi()
    async with client_for(api) as client:
        token = await csrf_of(client)
        for _ in range(5):
            resp = await client.post("/login", data={"csrf": token, "password": "wrong password"})
            assert resp.status == 401
            assert "Wrong password" in await resp.text()
        resp = await client.post("/login", data={"csrf": token, "password": ADMIN_PW})
        assert resp.status == 429 and int(resp.headers["Retry-After"]) > 0
        assert "Too many failed logins" in await resp.text()
        # login without a token is refused before the password is looked at
        resp = await client.post("/login", data={"password": ADMIN_PW})
        assert resp.status == 403


async def test_a_forged_cross_site_post_is_refused_and_nothing_switches() -> None:
    api = FakeApi()
    async with client_for(api) as client:
        token = await login(client)
        assert (await post(client, "/connectors/1/available", None, available="0")).status == 403
        assert (await post(client, "/connectors/1/available", "x" * 43, available="0")).status == 403
        resp = await client.post("/connectors/1/available", data={"csrf": token, "available": "0"},
                                 headers={"Origin": "http://evil.example"})
        assert resp.status == 403 and "cross-site" in await resp.text()
        resp = await client.post("/connectors/1/available", data=b'{"available": 0}',
                                 headers={"Content-Type": "application/json", "X-CSRF-Token": token})
        assert resp.status == 415
        assert api.calls == []
        # the same request from the page itself works (header token, same origin)
        resp = await client.post("/connectors/1/available", data={"available": "0"},
                                 headers={"X-CSRF-Token": token, "Origin": str(client.make_url("")).rstrip("/"),
                                          "Accept": "application/json"})
        assert resp.status == 200, await resp.text()
        assert api.calls == [("available", (1, False, Role.ADMIN))]


async def test_commands_and_their_errors() -> None:
    api = FakeApi()
    async with client_for(api) as client:
        token = await login(client, USER_PW)
        r = await post(client, "/connectors/1/start", token, id_tag="04A2B3C4")
        assert r.status == 200 and (await r.json())["ok"] is True
        assert api.calls[-1] == ("start", (1, "04A2B3C4", Role.USER))
        r = await post(client, "/connectors/1/start", token, id_tag="04A2B3C4")
        assert r.status == 409 and "running" in (await r.json())["message"]
        r = await post(client, "/connectors/2/start", token, id_tag="")
        assert r.status == 400 and "free vend" in (await r.json())["message"]
        r = await post(client, "/connectors/2/start", token, id_tag="has space")
        assert r.status == 400 and "id tag" in (await r.json())["message"]
        r = await post(client, "/connectors/1/stop", token)
        assert r.status == 200
        r = await post(client, "/connectors/1/stop", token)
        assert r.status == 409 and "no session" in (await r.json())["message"]
        for amps, status in (("10", 200), ("10,5", 200), ("", 200), ("40", 400), ("-3", 400), ("nan", 400),
                             ("1e3", 400), ("3", 400)):
            r = await post(client, "/connectors/1/limit", token, amps=amps)
            assert r.status == status, (amps, await r.text())
        assert api.view.connector(1).local_limit_a is None  # the last accepted one ("") lifted it
        for path, status in (("/connectors/9/stop", 404), ("/connectors/abc/stop", 404),
                             ("/connectors/0/stop", 404), ("/connectors/1/explode", 404)):
            r = await post(client, path, token)
            assert r.status == status, path
            assert "message" in await r.json()
        r = await post(client, "/connectors/1/available", token, available="maybe")
        assert r.status == 400
        # clearing a fault is the admin's
        faulted(api, 1)
        r = await post(client, "/connectors/1/clear-fault", token)
        assert r.status == 403
        text = await (await client.get("/")).text()
        assert "Clear latched fault" not in text
    async with client_for(api) as client:
        token = await login(client)
        r = await post(client, "/connectors/1/clear-fault", token)
        assert r.status == 200
        assert api.calls[-1] == ("clear", (1, Role.ADMIN))


async def test_an_html_form_without_javascript_gets_a_page() -> None:
    api = FakeApi()
    async with client_for(api) as client:
        token = await login(client)
        resp = await client.post("/connectors/1/limit", data={"csrf": token, "amps": "99"})
        assert resp.status == 400
        text = await resp.text()
        assert resp.content_type == "text/html"
        assert 'id="message"' in text and "Back" in text


async def test_free_vend_start_without_a_tag_when_enabled() -> None:
    api = FakeApi(free_vend=True)
    async with client_for(api) as client:
        token = await login(client)
        assert "free vend" in await (await client.get("/")).text()
        r = await post(client, "/connectors/1/start", token, id_tag="")
        assert r.status == 200
        assert api.calls[-1] == ("start", (1, None, Role.ADMIN))


async def test_logout_ends_the_session() -> None:
    api = FakeApi()
    async with client_for(api) as client:
        token = await login(client)
        r = await client.post("/logout", data={"csrf": token}, allow_redirects=False)
        assert r.status == 303
        assert (await client.get("/", allow_redirects=False)).status == 303
        assert (await post(client, "/connectors/1/stop", token)).status == 403


async def test_open_redirect_after_login_is_not_possible() -> None:
    api = FakeApi()
    async with client_for(api) as client:
        token = await csrf_of(client)
        for nxt in ("//evil.example/", "https://evil.example", "/\\evil", "javascript:alert(1)"):
            resp = await client.post("/login", data={"csrf": token, "password": ADMIN_PW, "next": nxt},
                                     allow_redirects=False)
            assert resp.headers["Location"] == "/", nxt
            token = await csrf_of(client)


async def _next_event(stream: asyncio.StreamReader | object, timeout: float = 3.0) -> str:
    buf = ""
    async with asyncio.timeout(timeout):
        while "\n\n" not in buf:
            chunk = await stream.readany()  # type: ignore[attr-defined]
            assert chunk, "stream ended"
            buf += chunk.decode()
    return buf


async def test_live_updates_follow_the_change_stream() -> None:
    api = FakeApi()
    async with client_for(api) as client:
        await login(client)
        resp = await client.get("/events")
        assert resp.status == 200 and resp.headers["Content-Type"] == "text/event-stream"
        first = await _next_event(resp.content)
        assert first.startswith("event: snapshot") and "Available" in first
        api.update(1, status="Charging", pilot="C")
        second = await _next_event(resp.content)
        assert "Charging" in second
        # a burst of changes is coalesced into few events
        for i in range(50):
            api.update(2, power_w=float(i))
        await asyncio.sleep(0.3)
        assert len(api.subs) == 1
        resp.close()


async def test_a_browser_that_does_not_read_never_blocks_the_api() -> None:
    api = FakeApi()
    async with client_for(api) as client:
        await login(client)
        resp = await client.get("/events")
        await _next_event(resp.content)
        # the client reads nothing more; the API publishes far more than the subscription holds
        for i in range(2000):
            api.update(1, power_w=float(i))  # never blocks: the fake drops oldest like the real one
        assert api.subs[0].queue.qsize() <= 64
        resp.close()


@pytest.mark.parametrize("body", [b"\xff\xfe\x00garbage", b"a=" + b"%" * 100, b"csrf=&&&==&"])
async def test_malformed_bodies_are_4xx(body: bytes) -> None:
    api = FakeApi()
    async with client_for(api) as client:
        await login(client)
        resp = await client.post("/connectors/1/stop", data=body,
                                 headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert 400 <= resp.status < 500
        resp = await client.post("/connectors/1/stop", data=body,
                                 headers={"Content-Type": "multipart/form-data; boundary=zz"})
        assert 400 <= resp.status < 500
    assert api.calls == []

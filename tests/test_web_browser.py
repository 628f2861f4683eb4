"""The web UI in a real browser (Debian's headless chromium + chromedriver via Selenium) against a server
on 127.0.0.1: login, live status, start/stop, a forged cross-site POST, screenshots.

Selenium blocks, so its calls run in a worker thread while the event loop serves the page and the API."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from aiohttp import web

pytest.importorskip("selenium")
from selenium.webdriver.common.by import By  # noqa: E402

from chargepoint.api import LimitClaimView  # noqa: E402
from chargepoint.frontends.web.server import WebServer  # noqa: E402
from tests.web_browser import browser, log_in, needs_browser, wait_for  # noqa: E402
from tests.web_fakes import FakeApi  # noqa: E402
from tests.web_helpers import ADMIN_PW, web_config  # noqa: E402

pytestmark = [needs_browser, pytest.mark.timeout(120)]


async def _server(api: FakeApi) -> WebServer:
    server = WebServer(api, web_config())
    await server.start()
    return server


async def test_login_live_update_and_start_stop_in_a_browser() -> None:
    api = FakeApi()
    server = await _server(api)
    base = f"http://127.0.0.1:{server.port}"
    loop = asyncio.get_running_loop()
    try:
        with browser() as driver:
            # a login is required before anything can be controlled
            await asyncio.to_thread(driver.get, base + "/")
            assert "/login" in driver.current_url
            assert not driver.find_elements(By.CSS_SELECTOR, "form.ctl")
            await asyncio.to_thread(log_in, driver, base, ADMIN_PW)
            live = await asyncio.to_thread(driver.find_element, By.CSS_SELECTOR, '[data-live="c1"]')
            assert "Available" in live.text and "A — no car" in live.text
            await asyncio.to_thread(wait_for, driver, lambda d: d.find_element(By.ID, "live-dot")
                                    .get_attribute("class") == "dot on")
            # the car plugs in: the page changes without a reload
            api.update(1, pilot="B", status="Preparing", cable_a=32.0)
            await asyncio.to_thread(wait_for, driver, lambda d: "B — car connected" in
                                    d.find_element(By.CSS_SELECTOR, '[data-live="c1"]').text)
            # start a session with an id tag
            form = driver.find_element(By.CSS_SELECTOR, 'form[action="/connectors/1/start"]')
            form.find_element(By.NAME, "id_tag").send_keys("04A2B3C4")
            await asyncio.to_thread(form.find_element(By.TAG_NAME, "button").click)
            await asyncio.to_thread(wait_for, driver, lambda d: "waiting for the car" in d.find_element(
                By.ID, "flash").text)
            assert api.calls[-1][0] == "start" and api.calls[-1][1][:2] == (1, "04A2B3C4")
            await asyncio.to_thread(wait_for, driver, lambda d: "transaction 7" in d.find_element(
                By.CSS_SELECTOR, '[data-live="c1"]').text)
            # stop it
            stop = driver.find_element(By.CSS_SELECTOR, 'form[action="/connectors/1/stop"] button')
            await asyncio.to_thread(stop.click)
            await asyncio.to_thread(wait_for, driver, lambda d: d.find_element(By.ID, "flash").text == "stopped")
            assert api.calls[-1][0] == "stop"
            # an out-of-range limit is refused with a message
            form = driver.find_element(By.CSS_SELECTOR, 'form[action="/connectors/1/limit"]')
            amps = form.find_element(By.NAME, "amps")
            amps.clear()
            amps.send_keys("99")
            await asyncio.to_thread(form.find_element(By.TAG_NAME, "button").click)
            await asyncio.to_thread(wait_for, driver, lambda d: "6 to 32 A" in d.find_element(By.ID, "flash").text)
            assert driver.find_element(By.ID, "flash").get_attribute("class") == "error"
            assert all(c[0] != "limit" for c in api.calls)
        assert loop.is_running()
    finally:
        await server.stop()


async def test_a_forged_cross_site_post_from_another_origin_is_refused() -> None:
    """A page on another origin (another port: same site, so SameSite alone would not stop it) submits a
    form to the charger while the victim is logged in: refused (Origin / CSRF), nothing switched."""
    api = FakeApi()
    api.update(1, transaction_id=5, status="Charging")
    server = await _server(api)
    base = f"http://127.0.0.1:{server.port}"

    async def evil_page(request: web.Request) -> web.Response:
        return web.Response(content_type="text/html", text=(
            f'<form id="f" method="post" action="{base}/connectors/1/stop"><input name="csrf" value="guess">'
            '<button id="go" type="submit">win a prize</button></form>'))

    evil = web.Application()
    evil.router.add_get("/", evil_page)
    runner = web.AppRunner(evil)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    evil_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        with browser() as driver:
            await asyncio.to_thread(log_in, driver, base, ADMIN_PW)
            await asyncio.to_thread(driver.get, f"http://127.0.0.1:{evil_port}/")
            await asyncio.to_thread(driver.find_element(By.ID, "go").click)
            await asyncio.to_thread(wait_for, driver, lambda d: d.find_elements(By.ID, "message"))
            text = driver.find_element(By.ID, "message").text
            assert "cross-site request refused" in text or "CSRF" in text
        assert api.calls == [] and api.view.connector(1).transaction_id == 5
    finally:
        await runner.cleanup()
        await server.stop()


async def test_the_sessions_csv_downloads_and_parses(tmp_path: Path) -> None:
    import csv

    from chargepoint.frontends.web.app import WebContext
    from tests.web_fakes import history

    server = WebServer(FakeApi(), web_config(), WebContext(history=history()))
    await server.start()
    base = f"http://127.0.0.1:{server.port}"
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    try:
        with browser(downloads=str(downloads)) as driver:
            await asyncio.to_thread(log_in, driver, base, ADMIN_PW)
            await asyncio.to_thread(driver.get, base + "/sessions?connector=1")
            assert "2 session(s)" in driver.find_element(By.TAG_NAME, "main").text
            await asyncio.to_thread(driver.find_element(By.ID, "csv").click)
            files = await asyncio.to_thread(wait_for, driver, lambda d: [
                f for f in downloads.iterdir() if f.suffix == ".csv"])
        rows = list(csv.DictReader(files[0].open(encoding="utf-8")))
        assert [r["transaction_id"] for r in rows] == ["12", "10"] and rows[0]["energy_kwh"] == "18.250"
    finally:
        await server.stop()


async def test_screenshots_of_the_status_page_desktop_and_phone(tmp_path: Path) -> None:
    """PNG screenshots of a charging station (docs/ has the ones README shows: set WEB_SCREENSHOTS_DIR=docs
    to renew them)."""
    api = FakeApi(connectors=2)
    api.update(1, status="Charging", pilot="C", cable_a=32.0, offered_a=16.0, measured_a=15.9, power_w=10970.0,
               session_energy_wh=7420.0, energy_wh=1834220.0, contactor="closed", transaction_id=1187,
               id_tag="tag:3f9a1c2e", session_started="2024-05-01T17:02:11Z", limit_a=16.0,
               limit_source="local", local_limit_a=16.0,
               claims=(LimitClaimView("connector", 32.0), LimitClaimView("fuse", 25.0),
                       LimitClaimView("cable", 32.0), LimitClaimView("local", 16.0, detail="owner's limit")))
    api.update(2, status="Preparing", pilot="B", cable_a=20.0, limit_a=20.0, limit_source="cable")
    server = await _server(api)
    base = f"http://127.0.0.1:{server.port}"
    out = Path(os.environ.get("WEB_SCREENSHOTS_DIR") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    try:
        for name, (w, h) in (("desktop", (1280, 860)), ("phone", (390, 1500))):
            with browser(w, h) as driver:
                await asyncio.to_thread(log_in, driver, base, ADMIN_PW)
                await asyncio.to_thread(wait_for, driver, lambda d: d.find_element(By.ID, "live-dot")
                                        .get_attribute("class") == "dot on")
                path = out / f"web-status-{name}.png"
                await asyncio.to_thread(driver.save_screenshot, str(path))
                assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        await server.stop()


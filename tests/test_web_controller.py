"""The web UI in a real browser against the real controller (simulated hardware, loopback central system):
the page follows a simulated car live, and a session started and stopped on the page reaches the central
system. Selenium blocks, so its calls run in a worker thread while the loop serves the page and the API."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

pytest.importorskip("selenium")
from selenium.webdriver.common.by import By  # noqa: E402

from chargepoint.frontends.web.server import WebServer, station_api  # noqa: E402
from tests.web_browser import browser, log_in, needs_browser, wait_for  # noqa: E402
from tests.web_helpers import ADMIN_PW, web_config  # noqa: E402

pytestmark = [needs_browser, pytest.mark.timeout(120)]
pytest_plugins = ["e2e_helpers"]


def live_text(driver: Any) -> str:
    return str(driver.find_element(By.CSS_SELECTOR, '[data-live="c1"]').text)


async def test_a_session_on_the_real_controller_from_the_browser(e2e_rig: Any) -> None:
    rig = await e2e_rig()
    server = WebServer(station_api(rig.controller), web_config())
    await server.start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        with browser() as driver:
            await asyncio.to_thread(log_in, driver, base, ADMIN_PW)
            assert "Available" in live_text(driver)
            rig.bench.ev(1).plug()  # the page changes without a reload
            await asyncio.to_thread(wait_for, driver, lambda d: "Preparing" in live_text(d))
            form = driver.find_element(By.CSS_SELECTOR, 'form[action="/connectors/1/start"]')
            form.find_element(By.NAME, "id_tag").send_keys("04A2B3C4")
            await asyncio.to_thread(form.find_element(By.TAG_NAME, "button").click)
            start = await rig.cs.wait_for_message("StartTransaction", timeout=10)
            assert start["idTag"] == "04A2B3C4" and start["connectorId"] == 1
            await asyncio.to_thread(wait_for, driver, lambda d: "Charging" in live_text(d))
            assert "04A2B3C4" not in driver.page_source  # the page shows the tag's mask only
            stop = driver.find_element(By.CSS_SELECTOR, 'form[action="/connectors/1/stop"] button')
            await asyncio.to_thread(stop.click)
            assert (await rig.cs.wait_for_message("StopTransaction", timeout=10))["reason"] == "Local"
            await asyncio.to_thread(wait_for, driver, lambda d: "Charging" not in live_text(d))
            assert not rig.controller.connectors[1].hw.contactor.is_closed
    finally:
        await server.stop()

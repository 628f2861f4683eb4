"""The local controller's site view: SiteApi (change stream), the site page over aiohttp's test client
(login, read-only, live updates over SSE) and in a real browser against a running local controller with a
downstream box connected. Loopback only."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from lc_site_helpers import RawBox, box_view, running_site
from web_browser import needs_browser
from web_helpers import ADMIN_PW, USER_PW, csrf_of, login, web_config

from chargepoint.localcontroller.api import SiteApi
from chargepoint.localcontroller.config import LocalControllerConfigError, parse
from chargepoint.localcontroller.web import SiteWebServer, make_site_app

pytestmark = pytest.mark.timeout(90)
ROOT = Path(__file__).resolve().parents[1]


class FakeSite:
    """What SiteApi needs of the controller: ``on_plan`` and ``snapshot()``."""

    def __init__(self) -> None:
        self.on_plan: list[Any] = []
        self.value = 0
        self.snapshots = 0

    def snapshot(self) -> dict[str, Any]:
        self.snapshots += 1
        return {"id": "LC", "value": self.value}

    def change(self, value: int) -> float:
        """A plan with a new value; returns how long the controller's notification took."""
        self.value = value
        t0 = time.perf_counter()
        for notify in self.on_plan:
            notify()
        return time.perf_counter() - t0


async def _next(sub: Any, timeout: float = 5.0) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        return await anext(sub)  # type: ignore[no-any-return]


# ------------------------------------------------------------------------------------------------ SiteApi
async def test_a_subscriber_gets_the_snapshot_then_each_change_once() -> None:
    src = FakeSite()
    api = SiteApi(src, min_interval_s=0.01)
    sub = api.subscribe()
    assert (await _next(sub))["value"] == 0
    src.change(1)
    assert (await _next(sub))["value"] == 1
    src.change(1)  # a plan that changed nothing: nothing new to read
    with pytest.raises(TimeoutError):
        await _next(sub, 0.3)
    src.change(2)
    assert (await _next(sub))["value"] == 2
    sub.close()
    with pytest.raises(StopAsyncIteration):
        await _next(sub)
    await asyncio.sleep(0)
    assert api._task is None  # no subscriber left: no snapshots taken any more
    taken = src.snapshots
    src.change(3)
    await asyncio.sleep(0.1)
    assert src.snapshots == taken
    await api.close()
    assert src.on_plan == []


async def test_a_slow_subscriber_loses_intermediate_snapshots_not_the_latest_and_blocks_nobody() -> None:
    src = FakeSite()
    api = SiteApi(src, min_interval_s=0.005)
    slow, fast = api.subscribe(), api.subscribe()
    seen_fast: list[int] = []

    async def read_fast() -> None:
        async for snap in fast:
            seen_fast.append(snap["value"])

    reader = asyncio.create_task(read_fast())
    notify_times = []
    for v in range(1, 101):  # 100 plans; the slow subscriber reads none of them meanwhile
        notify_times.append(src.change(v))
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)
    assert max(notify_times) < 0.005  # the controller only sets an event
    latest = await _next(slow)
    assert latest["value"] == 100  # the newest, not the first one missed
    assert slow.skipped >= 50
    with pytest.raises(TimeoutError):
        await _next(slow, 0.2)  # and nothing stale queued behind it
    assert seen_fast[-1] == 100 and len(seen_fast) > 50  # the fast one was not held up by the slow one
    assert seen_fast == sorted(seen_fast)
    reader.cancel()
    slow.close()
    fast.close()


async def test_snapshot_is_json_safe_and_a_copy() -> None:
    src = FakeSite()
    api = SiteApi(src)
    snap = api.snapshot()
    snap["value"] = 99
    assert api.snapshot()["value"] == 0
    json.dumps(api.snapshot())


# ------------------------------------------------------------------------------------------------ config
def test_config_web_and_mqtt_sections_use_the_charge_point_keys() -> None:
    base = {"id": "LC-1", "csms_url": "ws://127.0.0.1:1/ocpp", "site_limit_a": 32, "charge_points": [{"id": "A"}]}
    cfg = parse({"local_controller": {**base, "web": {"listen": "127.0.0.1", "viewer": True},
                                      "mqtt": {"host": "127.0.0.1"}}})
    assert cfg.web is not None and cfg.web.enabled and cfg.web.port == 8081 and cfg.web.viewer
    assert cfg.mqtt is not None and cfg.mqtt.enabled and cfg.mqtt.topic_prefix == "chargepoint/LC-1"
    off = parse({"local_controller": {**base, "web": {"enabled": False}}})
    assert off.web is not None and not off.web.enabled and off.mqtt is None
    with pytest.raises(LocalControllerConfigError) as exc:
        parse({"local_controller": {**base, "web": {"port": 99999, "pasword_hash": "x"},
                                    "mqtt": {"hots": "b"}, "webb": {}}})
    problems = exc.value.problems
    assert "local_controller.webb: unknown key" in problems
    assert any(p.startswith("local_controller.web.pasword_hash: unknown key") for p in problems), problems
    assert any(p.startswith("local_controller.web.port = 99999") for p in problems), problems
    assert any(p.startswith("local_controller.mqtt.hots: unknown key; did you mean 'host'") for p in problems)


# ------------------------------------------------------------------------------------------------ web
async def _events(resp: Any) -> Any:
    """Server-sent ``snapshot`` events as dicts, one per call of ``__anext__``."""
    data = None
    while True:
        line = await resp.content.readline()
        if not line:
            return
        if line.startswith(b"data: "):
            data = json.loads(line[6:])
        elif line == b"\n" and data is not None:
            yield data
            data = None


async def test_site_page_needs_a_login_is_read_only_and_streams_changes() -> None:
    async with running_site() as lc:
        api = SiteApi(lc)
        app = make_site_app(api, web_config())
        async with TestClient(TestServer(app)) as client:
            resp = await client.get("/", allow_redirects=False)
            assert resp.status == 303 and resp.headers["Location"].startswith("/login")
            assert (await client.get("/events")).status == 401
            assert (await client.get("/status.json")).status == 401
            bad = await client.post("/login", data={"csrf": await csrf_of(client), "password": "wrong-password"})
            assert bad.status == 401
            token = await login(client, USER_PW)
            page = await (await client.get("/")).text()
            assert 'data-cp="BOX-1"' in page and 'data-cp="BOX-2"' in page
            assert "Site limit per phase" in page and "site fuse" in page
            assert "/installer" not in page and "/sessions" not in page  # the site's own navigation
            assert "<form" not in page.split("</header>")[1]  # shows, does not command
            refused = await client.post("/connectors/1/start", data={"csrf": token},
                                        headers={"Accept": "application/json"})
            assert refused.status == 404
            assert (await client.get("/status.json")).status == 200

            events = await client.get("/events")
            assert events.headers["Content-Type"].startswith("text/event-stream")
            stream = _events(events)
            async with asyncio.timeout(20):
                first = await anext(stream)
                assert 'data-cp="BOX-1"' in first["boxes"] and "40.0 / 40.0 / 40.0" in first["site"]
                assert '<td data-k="link"><span class="badge link-offline">down' in first["boxes"]
                box = await RawBox.connect(lc.url, "BOX-1")  # a change: the box connects and charges
                await box.start_charging(9.5)
                while True:
                    ev = await anext(stream)
                    row = ev["boxes"].split('data-cp="BOX-1"')[1].split("</tr>")[0]
                    if ">up</span>" in row and "L1 9.5" in row:
                        break
            snap = await (await client.get("/status.json")).json()
            assert box_view(lc, "BOX-1")["measured_a"][0] == 9.5
            assert next(b for b in snap["charge_points"] if b["id"] == "BOX-1")["connected"] is True
            assert "SECRET-TAG" not in json.dumps(snap) and "SECRET-TAG" not in ev["boxes"]
            events.close()
            await box.close()
        await api.close()


async def _allocation(lc: Any, cp: str, not_: float | None = None, timeout: float = 20.0) -> float:
    """The box's allocation once the site policy gave one (other than ``not_``)."""
    async with asyncio.timeout(timeout):
        while True:
            a = box_view(lc, cp)["allocation_a"]
            if a is not None and a > 0 and a != not_:
                return float(a)
            await asyncio.sleep(0.05)


@needs_browser
async def test_site_page_in_a_browser_with_a_box_connected() -> None:
    pytest.importorskip("selenium")
    from selenium.webdriver.common.by import By
    from web_browser import browser, wait_for

    async with running_site() as lc:
        api = SiteApi(lc)
        server = SiteWebServer(api, web_config())
        await server.start()
        base = f"http://127.0.0.1:{server.port}"
        box = await RawBox.connect(lc.url, "BOX-1")
        try:
            await box.start_charging(7.0)
            a1 = await _allocation(lc, "BOX-1")  # BOX-2 has never been seen: counted at its maximum
            with browser() as driver:
                await asyncio.to_thread(driver.get, base + "/")
                assert "/login" in driver.current_url
                driver.find_element(By.ID, "password").send_keys(ADMIN_PW)
                await asyncio.to_thread(driver.find_element(By.ID, "login-button").click)
                await asyncio.to_thread(wait_for, driver, lambda d: d.find_elements(By.ID, "charge-points"))
                await asyncio.to_thread(wait_for, driver, lambda d: d.find_element(By.ID, "live-dot")
                                        .get_attribute("class") == "dot on")

                def text(d: Any, selector: str) -> str:
                    """Read in one script: a live update may replace the element between a find and a read."""
                    return str(d.execute_script("var el = document.querySelector(arguments[0]); "
                                                "return el ? el.innerText : '';", selector))

                def cell(d: Any, cp: str, k: str) -> str:
                    return text(d, f'tr[data-cp="{cp}"] td[data-k="{k}"]')

                assert cell(driver, "BOX-1", "link") == "up" and cell(driver, "BOX-2", "link") == "down"
                assert "1: Charging" in cell(driver, "BOX-1", "status")
                await asyncio.to_thread(wait_for, driver, lambda d: cell(d, "BOX-1", "allocation")
                                        .startswith(f"{a1:.1f}"), 15)
                assert "L1 7.0" in cell(driver, "BOX-1", "measured")
                assert "Log out (admin)" in driver.find_element(By.TAG_NAME, "header").text
                # a live change without a reload: the box measures more current
                await box.meter(12.5)
                await asyncio.to_thread(wait_for, driver, lambda d: "L1 12.5" in cell(d, "BOX-1", "measured"), 15)
                # the second box connects: its row goes up, the site is shared
                box2 = await RawBox.connect(lc.url, "BOX-2")
                await box2.start_charging(3.0)
                await asyncio.to_thread(wait_for, driver, lambda d: cell(d, "BOX-2", "link") == "up", 15)
                a2 = await _allocation(lc, "BOX-1", not_=a1)
                await asyncio.to_thread(wait_for, driver, lambda d: cell(d, "BOX-1", "allocation")
                                        .startswith(f"{a2:.1f}"), 20)
                site = lc.snapshot()["site"]
                await asyncio.to_thread(wait_for, driver, lambda d: f"{site['committed_a'][0]:.1f}" in text(
                    d, '[data-k="committed"]'), 15)
                assert "SECRET-TAG" not in driver.page_source
                shot = os.environ.get("SITE_SCREENSHOT")  # a look at the page: SITE_SCREENSHOT=/tmp/site.png
                if shot:
                    await asyncio.to_thread(driver.save_screenshot, shot)
                await box2.close()
        finally:
            await box.close()
            await server.stop()
            await api.close()


async def test_the_local_controller_command_serves_the_site_page(tmp_path: Path) -> None:
    """``chargepoint local-controller --config FILE`` with [local_controller.web]: the page answers, and
    SIGTERM ends the process cleanly."""
    import aiohttp
    from mqtt_helpers import free_port

    from chargepoint.csms import CentralSystem

    async with CentralSystem() as cs:
        port = free_port()
        cfg = tmp_path / "lc.toml"
        cfg.write_text(f'''[local_controller]
id = "LC-CLI"
csms_url = "{cs.url}"
listen = "127.0.0.1:0"
site_limit_a = 32
state_dir = "{tmp_path / 'state'}"

[[local_controller.charge_points]]
id = "BOX-1"

[local_controller.web]
listen = "127.0.0.1"
port = {port}
viewer = true
''')
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "chargepoint", "local-controller", "--config", str(cfg),
            stdout=asyncio.subprocess.PIPE, stderr=(tmp_path / "lc.log").open("wb"), cwd=ROOT)
        try:
            assert proc.stdout is not None
            async with asyncio.timeout(30):
                while not (line := (await proc.stdout.readline()).decode()).startswith("site page: "):
                    assert line, (tmp_path / "lc.log").read_text()[-2000:]
            assert line.strip() == f"site page: http://127.0.0.1:{port}"
            async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/") as resp:
                assert resp.status == 200  # viewer = true: no login for the read-only page
                page = await resp.text()
            assert 'data-cp="BOX-1"' in page and "LC-CLI" in page and "Log in" in page
        finally:
            proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(20):
                assert await proc.wait() == 0

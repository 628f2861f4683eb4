"""The local controller's site view on MQTT, against a real mosquitto (127.0.0.1, password file) and a real
local controller with raw-websocket boxes: retained site state, Home Assistant discovery, coalescing to one
publish per topic per second, the last will, and no command topic."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from lc_site_helpers import RawBox, running_site
from mqtt_helpers import PASSWORD, USER, Mosquitto, Subscriber, publish, run_broker

from chargepoint.frontends.mqtt import MqttConfig
from chargepoint.localcontroller.api import SiteApi
from chargepoint.localcontroller.mqtt import SiteMqtt, cp_level, site_values, start_site_mqtt

pytestmark = pytest.mark.timeout(90)

P = "chargepoint/LC-GARAGE"
D = "homeassistant"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    yield from run_broker(tmp_path)


def _config(broker: Mosquitto, **kw: object) -> MqttConfig:
    base: dict[str, object] = {"enabled": True, "host": "127.0.0.1", "port": broker.port, "username": USER,
                               "password": PASSWORD, "topic_prefix": P, "keepalive_s": 5}
    return MqttConfig(**{**base, **kw})  # type: ignore[arg-type]


def test_topics_of_a_site_snapshot() -> None:
    snap = {"csms": "connected", "queued": 2, "site": {"limit_a": [16.0, 20.0, 20.0], "committed_a": [6.0, 0, 0],
                                                       "fuse_a": [20.0] * 3, "limit_source": "site meter"},
            "charge_points": [{"id": "A+B", "connected": True, "upstream": "connected", "allocation_a": None,
                               "safe_default_a": 6.0, "queued": 0, "why": "no car wants current",
                               "phases": ["L2"], "measured_a": [5.96]}]}
    v = site_values(snap)
    assert v["site/L1/limit"] == "16" and v["site/L1/committed"] == "6" and v["site/L3/fuse"] == "20"
    assert v["site/limit_source"] == "site meter" and v["queued"] == "2"
    t = f"cp/{cp_level('A+B')}/"
    assert t == "cp/A_B/"  # '+' is a wildcard in MQTT, not a topic character
    assert v[t + "allocation"] == "None" and v[t + "measured/L2"] == "6" and v[t + "link"] == "up"
    assert t + "measured/L1" not in v  # a one-phase box on site phase L2


async def test_retained_site_state_and_discovery_reach_a_late_subscriber(broker: Mosquitto) -> None:
    async with running_site() as lc:
        api = SiteApi(lc)
        fe = await start_site_mqtt(api, _config(broker), "LC-GARAGE", reconnect_min_s=0.1, reconnect_max_s=1.0)
        assert fe is not None
        box = await RawBox.connect(lc.url, "BOX-1")
        try:
            await box.start_charging(9.5)
            await fe.wait_idle()
            async with Subscriber(broker) as sub:  # everything retained: a late subscriber sees the site
                await sub.wait_value(f"{P}/status", "online")
                assert (await sub.wait_for(f"{P}/site/L1/limit")).retain
                await sub.wait_value(f"{P}/site/L1/limit", "40")
                await sub.wait_value(f"{P}/site/L2/fuse", "40")
                await sub.wait_value(f"{P}/site/limit_source", "site fuse")
                await sub.wait_value(f"{P}/cp/BOX-1/link", "up", timeout=15)
                await sub.wait_value(f"{P}/cp/BOX-1/measured/L1", "9.5", timeout=15)
                await sub.wait_value(f"{P}/cp/BOX-2/link", "down")
                alloc = await sub.wait_for(f"{P}/cp/BOX-1/allocation", lambda m: m.text not in ("None", "0"), 15)
                assert float(alloc.text) > 0
                await sub.wait_for(f"{P}/cp/BOX-1/why", lambda m: m.text.startswith("site fuse"), 15)
                # Home Assistant: one device, the site sensors and each box's allocation and currents
                limit = json.loads((await sub.wait_for(f"{D}/sensor/lc_LC-GARAGE/L1_limit/config")).payload)
                assert limit["state_topic"] == f"{P}/site/L1/limit"
                assert (limit["device_class"], limit["unit_of_measurement"]) == ("current", "A")
                assert limit["availability_topic"] == f"{P}/status"
                committed = json.loads((await sub.wait_for(f"{D}/sensor/lc_LC-GARAGE/L3_committed/config")).payload)
                assert committed["state_topic"] == f"{P}/site/L3/committed"
                for cp in ("BOX-1", "BOX-2"):
                    a = json.loads((await sub.wait_for(f"{D}/sensor/lc_LC-GARAGE/cp_{cp}_allocation/config")).payload)
                    assert a["state_topic"] == f"{P}/cp/{cp}/allocation" and a["unit_of_measurement"] == "A"
                    m = json.loads((await sub.wait_for(
                        f"{D}/sensor/lc_LC-GARAGE/cp_{cp}_measured_L2/config")).payload)
                    assert m["state_topic"] == f"{P}/cp/{cp}/measured/L2"
                devices = {json.dumps(json.loads(x.payload)["device"], sort_keys=True)
                           for x in sub.messages if x.topic.startswith(D + "/") and x.payload}
                assert len(devices) == 1
                assert json.loads(devices.pop())["model"] == "local-controller"
                tracked = json.loads((await sub.wait_for(f"{P}/discovery")).payload)
                assert f"{D}/sensor/lc_LC-GARAGE/cp_BOX-1_allocation/config" in tracked
                assert "SECRET-TAG" not in json.dumps([x.text for x in sub.messages])
                # read-only: the charge point's command topics are not subscribed to (it would answer on /error)
                await publish(broker, f"{P}/1/set/enabled", "OFF")
                await publish(broker, f"{P}/1/stop", "PRESS")
                await asyncio.sleep(0.5)
                assert sub.last(f"{P}/error") is None and fe.stats.commands == 0 and fe.stats.refused == 0
        finally:
            await box.close()
            await fe.stop()
            await api.close()


async def test_state_is_coalesced_to_one_publish_a_second_and_the_will_says_offline(broker: Mosquitto) -> None:
    async with running_site() as lc:
        api = SiteApi(lc)
        fe = SiteMqtt(api, _config(broker), "LC-GARAGE", reconnect_min_s=0.1, reconnect_max_s=1.0)
        await fe.start()
        box = await RawBox.connect(lc.url, "BOX-1")
        topic = f"{P}/cp/BOX-1/measured/L1"
        try:
            async with Subscriber(broker, f"{P}/#") as sub:
                await box.start_charging(6.0)
                await sub.wait_value(topic, "6", timeout=15)
                start = len(sub.messages)
                loop = asyncio.get_running_loop()
                t0 = loop.time()
                for i in range(20):  # 20 readings in about 2 s
                    await box.meter(10.0 + i)
                    await asyncio.sleep(0.1)
                await sub.wait_value(topic, "29", timeout=5)  # the last one always arrives
                burst = [m for m in sub.messages[start:] if m.topic == topic]
                elapsed = loop.time() - t0
                assert 2 <= len(burst) <= elapsed + 2, [m.text for m in burst]
                gaps = [b.at - a.at for a, b in zip(burst, burst[1:], strict=False)]
                assert min(gaps) >= 0.9, gaps
                # the connection dies without a DISCONNECT: the broker publishes the last will
                await sub.wait_value(f"{P}/status", "online")
                fe._client._client.socket().shutdown(socket.SHUT_RDWR)
                await sub.wait_value(f"{P}/status", "offline", timeout=15)
                await sub.wait_value(f"{P}/status", "online", timeout=15)  # and it comes back
        finally:
            await box.close()
            await fe.stop()
            await api.close()

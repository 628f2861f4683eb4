"""The MQTT front end against a real mosquitto (password file, 127.0.0.1), with a fake StationApi: discovery,
state flow and coalescing, commands and their errors, broker restarts, and a loop that a broker that is away
never slows."""

from __future__ import annotations

import asyncio
import json
import socket
import statistics
from collections.abc import Iterator
from pathlib import Path

import pytest
from mqtt_helpers import (
    FakeApi,
    Mosquitto,
    Subscriber,
    connector_view,
    loop_lag,
    publish,
    run_broker,
    running_frontend,
)

from chargepoint.api import ChangeKind, Role
from chargepoint.frontends.mqtt import DeviceInfo, MqttConfig, MqttFrontend


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    yield from run_broker(tmp_path)


P = "chargepoint/CP-MQTT"
D = "homeassistant"


async def test_discovery_and_state_are_retained_under_one_device(broker: Mosquitto) -> None:
    api = FakeApi()
    async with running_frontend(api, broker) as fe:
        await fe.wait_idle()
        async with Subscriber(broker) as sub:  # a late subscriber gets everything retained
            await sub.wait_value(f"{P}/status", "online")
            power = await sub.wait_for(f"{D}/sensor/CP-MQTT/c1_power/config")
            assert power.retain
            cfg = json.loads(power.payload)
            assert cfg["device_class"] == "power" and cfg["state_class"] == "measurement"
            assert cfg["unit_of_measurement"] == "W" and cfg["state_topic"] == f"{P}/1/power"
            assert cfg["availability_topic"] == f"{P}/status"
            assert cfg["device"]["identifiers"] == ["pi-chargepoint_CP-MQTT"]
            assert cfg["device"]["sw_version"] == "1.2.3" and cfg["device"]["manufacturer"] == "OpenWallbox"
            energy = json.loads((await sub.wait_for(f"{D}/sensor/CP-MQTT/c1_energy/config")).payload)
            assert (energy["device_class"], energy["state_class"], energy["unit_of_measurement"]) == (
                "energy", "total_increasing", "kWh")
            current = json.loads((await sub.wait_for(f"{D}/sensor/CP-MQTT/c1_current/config")).payload)
            assert (current["device_class"], current["unit_of_measurement"]) == ("current", "A")
            switch = json.loads((await sub.wait_for(f"{D}/switch/CP-MQTT/c1_enabled/config")).payload)
            assert switch["command_topic"] == f"{P}/1/set/enabled"
            number = json.loads((await sub.wait_for(f"{D}/number/CP-MQTT/c1_current_limit/config")).payload)
            assert (number["min"], number["max"], number["command_topic"]) == (6, 32.0, f"{P}/1/set/current_limit")
            button = json.loads((await sub.wait_for(f"{D}/button/CP-MQTT/c1_stop/config")).payload)
            assert button["command_topic"] == f"{P}/1/stop"
            ids = {json.dumps(json.loads(m.payload)["device"], sort_keys=True)
                   for m in sub.messages if m.topic.startswith(D + "/") and m.payload}
            assert len(ids) == 1  # one device
            await sub.wait_value(f"{P}/1/energy", "1")
            await sub.wait_value(f"{P}/1/status", "Available")
            await sub.wait_value(f"{P}/1/enabled", "ON")
            await sub.wait_value(f"{P}/link", "connected")
            await sub.wait_value(f"{P}/firmware_version", "1.2.3")
            tracked = json.loads((await sub.wait_for(f"{P}/discovery")).payload)
            assert f"{D}/button/CP-MQTT/c1_stop/config" in tracked


async def test_state_changes_are_published_and_coalesced_to_one_per_second(broker: Mosquitto) -> None:
    api = FakeApi()
    async with Subscriber(broker, f"{P}/#") as sub, running_frontend(api, broker) as fe:
        await fe.wait_idle()
        await sub.wait_value(f"{P}/1/power", "0")
        start = len(sub.messages)
        for watts in range(1, 201):  # 200 readings in about a second
            api.update(1, power_w=float(watts), measured_a=watts / 230.0)
            await asyncio.sleep(0.005)
        await sub.wait_value(f"{P}/1/power", "200", timeout=5)
        powers = [m for m in sub.messages[start:] if m.topic == f"{P}/1/power"]
        assert 1 <= len(powers) <= 4, [m.text for m in powers]
        gaps = [b.at - a.at for a, b in zip(powers, powers[1:], strict=False)]
        assert all(g >= 0.9 for g in gaps), gaps
        api.update(1, ChangeKind.STATUS, status="Charging", pilot="C")
        await sub.wait_value(f"{P}/1/status", "Charging")
        await sub.wait_value(f"{P}/1/pilot", "C")


async def test_commands_go_through_the_api_as_user(broker: Mosquitto) -> None:
    api = FakeApi()
    async with Subscriber(broker, f"{P}/#") as sub, running_frontend(api, broker) as fe:
        await fe.wait_idle()
        await publish(broker, f"{P}/1/set/current_limit", "10")
        await sub.wait_value(f"{P}/1/current_limit", "10")
        await publish(broker, f"{P}/1/set/current_limit", "none")
        await sub.wait_value(f"{P}/1/current_limit", "None")
        await publish(broker, f"{P}/1/set/enabled", "OFF")
        await sub.wait_value(f"{P}/1/enabled", "OFF")
        await publish(broker, f"{P}/1/start", "")
        await publish(broker, f"{P}/1/start", "04A2B3C4")
        await asyncio.sleep(0.3)
        assert [(c[0], c[2]) for c in api.calls] == [
            ("limit", 10.0), ("limit", None), ("available", False), ("start", None), ("start", "04A2B3C4")]
        assert all(c[3] is Role.USER for c in api.calls)


async def test_bad_payloads_are_answered_on_the_error_topic_and_switch_nothing(broker: Mosquitto) -> None:
    api = FakeApi()
    async with Subscriber(broker, f"{P}/error") as sub, running_frontend(api, broker) as fe:
        await fe.wait_idle()
        cases = [
            (f"{P}/1/set/current_limit", "sixteen", "bad_value"),
            (f"{P}/1/set/current_limit", "nan", "bad_value"),
            (f"{P}/1/set/current_limit", "-5", "bad_value"),
            (f"{P}/1/set/current_limit", "99", "bad_value"),
            (f"{P}/1/set/current_limit", "3", "bad_value"),  # the API refuses: below 6 A
            (f"{P}/7/set/enabled", "ON", "unknown_connector"),
            (f"{P}/1/set/enabled", "maybe", "bad_value"),
            (f"{P}/1/set/colour", "red", "unknown_command"),
            (f"{P}/1/start", "X" * 500, "payload_too_large"),
            (f"{P}/1/start", "has space", "bad_value"),
            (f"{P}/1/stop", "", "not_possible"),  # no session: the API says so
        ]
        for i, (topic, payload, code) in enumerate(cases):
            await publish(broker, topic, payload)
            m = await sub.wait_for(f"{P}/error", after=i)
            body = json.loads(m.payload)
            assert (body["topic"], body["error"]) == (topic, code), body
            assert body["message"]
            assert len(body["payload"]) <= 41
        assert [c for c in api.calls if c[0] != "stop"] == []
        await publish(broker, f"{P}/1/start", "BADTAG!", retain=False)  # valid tag: executed
        await publish(broker, f"{P}/1/start", "RETAINED1", retain=True)
        m = await sub.wait_for(f"{P}/error", where=lambda m: json.loads(m.payload)["error"] == "retained")
        assert "RETAINED1" not in m.text  # an id tag is shown masked only
        assert [c[2] for c in api.calls if c[0] == "start"] == ["BADTAG!"]
        await publish(broker, f"{P}/1/start", "", retain=True)  # clear the retained message again
        await sub.wait_for(f"{P}/error", where=lambda m: json.loads(m.payload)["payload"] == ""
                           and json.loads(m.payload)["error"] == "retained")
        assert [c[2] for c in api.calls if c[0] == "start"] == ["BADTAG!"]  # an empty one is free vend: not run


async def test_a_stored_retained_command_is_never_executed(broker: Mosquitto) -> None:
    await publish(broker, f"{P}/1/set/enabled", "OFF", retain=True)  # left by some tool before we start
    api = FakeApi()
    async with running_frontend(api, broker) as fe:
        await fe.wait_idle()
        await asyncio.sleep(0.3)
        assert api.calls == []
    await publish(broker, f"{P}/1/set/enabled", "", retain=True)


async def _limit_applied(api: FakeApi, amps: float) -> None:
    async with asyncio.timeout(10):
        while not any(c[:3] == ("limit", 1, amps) for c in api.calls):
            await asyncio.sleep(0.02)


async def _connects(fe: MqttFrontend, n: int) -> None:
    async with asyncio.timeout(10):
        while fe.stats.connects < n or not fe.stats.connected:
            await asyncio.sleep(0.02)


async def test_no_acknowledged_command_is_lost_across_broker_restarts_and_link_losses(broker: Mosquitto) -> None:
    api = FakeApi()
    async with running_frontend(api, broker, reconnect_min_s=0.3, reconnect_max_s=0.6) as fe:
        await fe.wait_idle()
        await publish(broker, f"{P}/1/set/current_limit", "10")  # acknowledged (QoS 1) …
        await asyncio.to_thread(broker.stop)  # … and the broker goes down right after
        await asyncio.to_thread(broker.start)
        await _limit_applied(api, 10.0)
        await _connects(fe, 2)  # subscriptions are made again on the new connection
        await publish(broker, f"{P}/1/set/current_limit", "12")
        await _limit_applied(api, 12.0)
        # the controller's connection dies while the broker stays: the persistent session keeps the command
        fe._client._client.socket().shutdown(socket.SHUT_RDWR)
        await publish(broker, f"{P}/1/set/current_limit", "14")
        await _limit_applied(api, 14.0)
        await _connects(fe, 3)
        assert [c[2] for c in api.calls] == [10.0, 12.0, 14.0]  # each exactly once


async def test_state_and_discovery_are_republished_after_a_broker_lost_everything(broker: Mosquitto) -> None:
    api = FakeApi()
    async with running_frontend(api, broker) as fe:
        await fe.wait_idle()
        api.update(1, ChangeKind.STATUS, status="Charging", power_w=7400.0)
        await asyncio.sleep(0.5)
        await asyncio.to_thread(broker.stop, forget=True)  # no retained messages survive
        await asyncio.sleep(0.3)
        await asyncio.to_thread(broker.start)
        async with Subscriber(broker) as sub:
            await sub.wait_value(f"{P}/1/status", "Charging")
            await sub.wait_value(f"{P}/1/power", "7400")
            await sub.wait_value(f"{P}/status", "online")
            await sub.wait_for(f"{D}/sensor/CP-MQTT/c1_power/config")
        assert fe.stats.connects >= 2


async def test_discovery_off_removes_what_an_earlier_run_published(broker: Mosquitto) -> None:
    api = FakeApi(connectors={1: connector_view(1), 2: connector_view(2)})
    async with running_frontend(api, broker) as fe:
        await fe.wait_idle()
        async with Subscriber(broker, f"{D}/#") as sub:
            await sub.wait_for(f"{D}/button/CP-MQTT/c2_stop/config")
    # the next run has one connector and discovery off: every config of the earlier run goes
    api = FakeApi()
    async with running_frontend(api, broker, discovery=False) as fe:
        await fe.wait_idle()
        await asyncio.sleep(0.5)
    async with Subscriber(broker, "#") as sub:
        await asyncio.sleep(0.5)
        left = [m.topic for m in sub.messages if m.topic.startswith(D + "/") and m.payload]
        assert left == []
        assert sub.last(f"{P}/discovery") is None
        assert sub.last(f"{P}/1/status") is not None  # state stays


async def test_stop_publishes_offline_and_the_will_says_offline_when_the_link_dies(broker: Mosquitto) -> None:
    api = FakeApi()
    async with Subscriber(broker, f"{P}/status") as sub:
        async with running_frontend(api, broker) as fe:
            await fe.wait_idle()
            await sub.wait_value(f"{P}/status", "online")
        await sub.wait_value(f"{P}/status", "offline")
        fe2 = MqttFrontend(api, MqttConfig(enabled=True, host="127.0.0.1", port=broker.port, username="chargepoint",
                                           password="s3cret-broker-pw", topic_prefix=P, keepalive_s=5),
                           DeviceInfo("CP-MQTT"))
        await fe2.start()
        await fe2.wait_connected()
        await sub.wait_value(f"{P}/status", "online")
        fe2._client._client.socket().shutdown(socket.SHUT_RDWR)  # the connection dies without a DISCONNECT
        await sub.wait_value(f"{P}/status", "offline", timeout=15)
        await fe2.stop()


async def test_wrong_password_is_retried_and_never_crashes(broker: Mosquitto) -> None:
    api = FakeApi()
    async with running_frontend(api, broker, password="wrong") as fe:
        await asyncio.sleep(0.5)
        assert fe.stats.connects == 0 and fe.stats.last_error


async def test_a_broker_that_is_away_or_stalled_never_slows_the_loop(broker: Mosquitto) -> None:
    api = FakeApi()
    async with running_frontend(api, broker, reconnect_min_s=0.05, reconnect_max_s=0.2) as fe:
        await fe.wait_idle()
        await asyncio.to_thread(broker.stop)

        async def churn() -> None:
            for i in range(400):
                api.update(1, power_w=float(i))
                await asyncio.sleep(0.005)

        churner = asyncio.create_task(churn())
        lags = await loop_lag(2.0)
        await churner
        assert fe.stats.connected is False
        assert max(lags) < 0.1, max(lags)
        assert fe._coalescer.pending() < 100
    # a listener that accepts the TCP connection and never answers (a half-dead broker)
    with socket.socket() as stalled:
        stalled.bind(("127.0.0.1", 0))
        stalled.listen(16)
        port = stalled.getsockname()[1]
        cfg = MqttConfig(enabled=True, host="127.0.0.1", port=port, topic_prefix=P)
        fe = MqttFrontend(api, cfg, DeviceInfo("CP-MQTT"), reconnect_min_s=0.05, reconnect_max_s=0.2)
        await fe.start()
        lags = await loop_lag(1.5)
        await fe.stop()
        assert max(lags) < 0.1, max(lags)
        assert statistics.median(lags) < 0.01


async def test_tls_with_the_configured_ca_and_never_without_trust(tmp_path: Path) -> None:
    import shutil

    import trustme

    if shutil.which("mosquitto") is None:
        pytest.skip("needs Debian's mosquitto (scripts/test.sh installs it)")
    ca = trustme.CA()
    b = Mosquitto(tmp_path / "tls", tls=ca)
    b.start()
    try:
        api = FakeApi()
        ca_file = str(b.dir / "ca.pem")
        async with running_frontend(api, b, tls=True, ca_file=ca_file) as fe:
            await fe.wait_idle()
            assert fe.stats.connected
        other = tmp_path / "other-ca.pem"
        trustme.CA().cert_pem.write_to_path(str(other))
        async with running_frontend(api, b, tls=True, ca_file=str(other)) as fe:
            lags = await loop_lag(1.0)
            assert fe.stats.connects == 0 and fe.stats.last_error  # an untrusted broker: never connected
            assert max(lags) < 0.1
    finally:
        b.stop()

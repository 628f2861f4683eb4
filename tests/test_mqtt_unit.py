"""The MQTT front end's pure parts: [mqtt] configuration, the command parser (fuzzed), the coalescer, state
payloads and Home Assistant discovery configs."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mqtt_helpers import FakeApi, connector_view

from chargepoint.api import FaultView, LimitClaimView
from chargepoint.config import ConfigError, parse_config
from chargepoint.frontends.mqtt import (
    COMMANDS,
    Coalescer,
    Command,
    CommandProblem,
    DeviceInfo,
    MqttConfig,
    discovery_configs,
    error_message,
    mqtt_config_for_address,
    parse_command,
    state_values,
    tracked_topics,
)

P = "chargepoint/CP1"
MAXIMA = {1: 32.0, 2: 16.0}


def base_config(**mqtt: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "chargepoint": {"id": "CP1", "state_dir": "/tmp/x"},
        "csms": {"url": "ws://127.0.0.1:9000/ocpp"},
        "connectors": [{"pilot": {"driver": "sim"}, "contactor": {"driver": "sim"}, "meter": {"driver": "sim"}}],
    }
    if mqtt:
        data["mqtt"] = mqtt
    return data


def problems(**mqtt: Any) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        parse_config(base_config(**mqtt))
    return [p.key for p in exc.value.problems]


# ------------------------------------------------------------------------------------------ configuration
def test_mqtt_is_off_by_default_with_documented_defaults() -> None:
    cfg = parse_config(base_config()).mqtt
    assert cfg == MqttConfig(topic_prefix="chargepoint/CP1")
    assert cfg.enabled is False and cfg.discovery is True and cfg.discovery_prefix == "homeassistant"


def test_mqtt_section_is_read(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    cfg = parse_config(base_config(enabled=True, host="broker.lan", username="cp", password="pw", tls=True,
                                   ca_file=str(ca), topic_prefix="garage/wallbox", discovery=False)).mqtt
    assert (cfg.host, cfg.port, cfg.tls, cfg.ca_file) == ("broker.lan", 8883, True, str(ca))
    assert (cfg.topic_prefix, cfg.discovery, cfg.username, cfg.password) == ("garage/wallbox", False, "cp", "pw")


def test_mqtt_keys_are_strict_and_checked(tmp_path: Path) -> None:
    assert problems(enabled=True, hots="x") == ["mqtt.hots"]
    assert problems(port=0) == ["mqtt.port"]
    assert problems(port="1883") == ["mqtt.port"]
    assert problems(topic_prefix="a/+/b") == ["mqtt.topic_prefix"]
    assert problems(topic_prefix="a//b") == ["mqtt.topic_prefix"]
    assert problems(discovery_prefix="ha/#") == ["mqtt.discovery_prefix"]
    assert problems(password="pw") == ["mqtt.password"]
    assert problems(tls=True, ca_file=str(tmp_path / "missing.pem")) == ["mqtt.ca_file"]
    assert problems(ca_file=__file__) == ["mqtt.ca_file"]  # without tls = true
    assert problems(tls=True, key_file=__file__) == ["mqtt.key_file"]  # without cert_file
    assert problems(enabled=True, host=" ") == ["mqtt.host"]
    with pytest.raises(ConfigError) as exc:
        parse_config(base_config(hots="x"))
    assert "did you mean 'host'" in str(exc.value)


def test_a_plus_in_the_charge_point_id_is_not_a_wildcard_in_the_default_prefix() -> None:
    data = base_config()
    data["chargepoint"]["id"] = "CP+1"
    assert parse_config(data).mqtt.topic_prefix == "chargepoint/CP_1"


def test_simulate_address() -> None:
    cfg = mqtt_config_for_address("127.0.0.1:18831", "CP1")
    assert (cfg.enabled, cfg.host, cfg.port, cfg.topic_prefix) == (True, "127.0.0.1", 18831, "chargepoint/CP1")
    for bad in ("127.0.0.1", "127.0.0.1:0", ":1883", "host:port"):
        with pytest.raises(ValueError):
            mqtt_config_for_address(bad, "CP1")


# ---------------------------------------------------------------------------------------------- commands
def test_commands_parse() -> None:
    def parse(rel: str, payload: bytes) -> Command | CommandProblem:
        return parse_command(P, f"{P}/{rel}", payload, MAXIMA)

    assert parse("1/set/current_limit", b"16") == Command("set/current_limit", 1, 16.0)
    assert parse("1/set/current_limit", b" 10.5\n") == Command("set/current_limit", 1, 10.5)
    assert parse("2/set/current_limit", b"None") == Command("set/current_limit", 2, None)
    assert parse("1/set/enabled", b"off") == Command("set/enabled", 1, False)
    assert parse("1/set/enabled", b"ON") == Command("set/enabled", 1, True)
    assert parse("1/start", b"") == Command("start", 1, None)
    assert parse("1/start", b"04A2B3C4") == Command("start", 1, "04A2B3C4")
    assert parse("1/stop", b"PRESS") == Command("stop", 1, None)
    refused = {
        ("2/set/current_limit", b"17"): "bad_value",  # above connector 2's maximum
        ("1/set/current_limit", b"nan"): "bad_value",
        ("1/set/current_limit", b"inf"): "bad_value",
        ("1/set/current_limit", b"1e1"): "bad_value",
        ("1/set/current_limit", b"-6"): "bad_value",
        ("1/set/current_limit", b""): "bad_value",  # an empty payload never lifts a limit
        ("1/set/current_limit", "١٦".encode()): "bad_value",  # Arabic-Indic digits: not for int()
        ("1/set/current_limit", b"\xff\xfe"): "bad_value",
        ("3/stop", b""): "unknown_connector",
        ("01/stop", b""): "unknown_connector",
        ("+1/stop", b""): "unknown_connector",
        ("1/set/limit", b"6"): "unknown_command",
        ("1/start", b"A" * 21): "bad_value",
        ("1/start", b"A" * 65): "payload_too_large",
        ("1", b""): "unknown_command",
    }
    for (rel, payload), code in refused.items():
        result = parse(rel, payload)
        assert isinstance(result, CommandProblem) and result.code == code, (rel, payload, result)
    assert parse_command(P, "other/1/stop", b"", MAXIMA).code == "unknown_command"


topics = st.one_of(
    st.text(max_size=40).map(lambda t: f"{P}/{t}"),
    st.builds(lambda c, a: f"{P}/{c}/{a}", st.text(max_size=4), st.sampled_from(COMMANDS)),
    st.builds(lambda c, a: f"{P}/{c}/{a}", st.integers(-3, 20).map(str), st.sampled_from(COMMANDS)),
)
payloads = st.one_of(
    st.binary(max_size=100),
    st.text(max_size=80).map(str.encode),
    st.floats(allow_nan=True, allow_infinity=True).map(lambda f: repr(f).encode()),
    st.sampled_from([b"none", b"ON", b"off", b"6", b"32", b"32.001", b"0", b"  16  ", b"1_6", b"0x10"]),
)


@settings(max_examples=3000, deadline=None)
@given(topic=topics, payload=payloads)
def test_fuzz_command_parser_never_raises_and_only_accepts_sane_values(topic: str, payload: bytes) -> None:
    result = parse_command(P, topic, payload, MAXIMA)
    if isinstance(result, CommandProblem):
        assert result.code and result.message
        body = json.loads(error_message(topic, payload, result.code, result.message))
        assert len(body["payload"]) <= 41 and len(body["topic"]) <= 160
        return
    assert result.action in COMMANDS and result.connector_id in MAXIMA
    assert len(payload) <= 64
    if result.action == "set/current_limit" and result.value is not None:
        assert math.isfinite(result.value) and 0 <= result.value <= MAXIMA[result.connector_id]
    if result.action == "set/enabled":
        assert isinstance(result.value, bool)
    if result.action == "start" and result.value is not None:
        assert 1 <= len(result.value) <= 20 and result.value.isascii() and " " not in result.value


def test_an_id_tag_in_an_error_message_is_masked() -> None:
    body = json.loads(error_message(f"{P}/1/start", b"04A2B3C4", "bad_value", "x"))
    assert body["payload"].startswith("tag:") and "04A2B3C4" not in json.dumps(body)


# ------------------------------------------------------------------------------------------- coalescing
def test_coalescer_sends_each_topic_at_most_once_per_interval_with_the_newest_value() -> None:
    c = Coalescer(1.0)
    c.set("a", "1")
    assert c.due(0.0) == ([("a", "1", 0)], None)
    c.set("a", "2")
    c.set("a", "3")
    c.set("b", "x")
    assert c.due(0.5) == ([("b", "x", 0)], 1.0)  # a is held back until 1.0
    assert c.due(1.0) == ([("a", "3", 0)], None)
    c.set("a", "3")
    assert c.due(5.0) == ([], None)  # unchanged: nothing
    c.resend_all()
    assert sorted(t for t, _, _ in c.due(5.1)[0]) == ["a", "b"]
    for i in range(10000):
        c.set("a", str(i))
    assert c.pending() == 1  # bounded by the topics, not by the changes


# ------------------------------------------------------------------------------------ payloads, discovery
def test_state_values() -> None:
    api = FakeApi(connectors={1: connector_view(
        1, status="Charging", power_w=7360.4, measured_a=10.04, energy_wh=1234567.0, session_energy_wh=1500.0,
        limit_a=16.0, limit_source="local", local_limit_a=16.0, cable_a=20.0, available=True,
        faults=(FaultView("rcm", True, "Press the RCD test button"),))})
    v = state_values(api.snapshot())
    assert v["1/power"] == "7360" and v["1/current"] == "10" and v["1/energy"] == "1234.567"
    assert v["1/session_energy"] == "1.5" and v["1/limit"] == "16" and v["1/limit_source"] == "local"
    assert v["1/cable"] == "20" and v["1/enabled"] == "ON" and v["1/status"] == "Charging"
    assert json.loads(v["1/faults"]) == [{"kind": "rcm", "latched": True, "action": "Press the RCD test button"}]
    assert v["link"] == "connected" and v["firmware_version"] == "1.2.3"
    none = state_values(FakeApi(connectors={1: connector_view(1, power_w=None, energy_wh=None)}).snapshot())
    assert none["1/power"] == "None" and none["1/energy"] == "None" and none["1/current_limit"] == "None"


def test_discovery_configs_for_two_connectors() -> None:
    api = FakeApi(connectors={1: connector_view(1), 2: connector_view(2, claims=(LimitClaimView("connector", 16.0),))})
    cfg = MqttConfig(enabled=True, topic_prefix=P)
    configs = {t: json.loads(p) for t, p in discovery_configs(cfg, DeviceInfo("CP 1/x"), api.snapshot()).items()}
    assert all(t.startswith("homeassistant/") and t.endswith("/config") for t in configs)
    assert "homeassistant/number/CP_1_x/c2_current_limit/config" in configs
    assert configs["homeassistant/number/CP_1_x/c2_current_limit/config"]["max"] == 16.0
    assert configs["homeassistant/number/CP_1_x/c1_current_limit/config"]["max"] == 32.0
    assert len({c["unique_id"] for c in configs.values()}) == len(configs)
    assert {c["device"]["identifiers"][0] for c in configs.values()} == {"pi-chargepoint_CP_1_x"}
    names = [c["name"] for c in configs.values()]
    assert "Connector 2 power" in names
    session = configs["homeassistant/sensor/CP_1_x/c1_session_energy/config"]
    assert (session["device_class"], session["state_class"], session["unit_of_measurement"]) == (
        "energy", "total_increasing", "kWh")
    assert tracked_topics(json.dumps(sorted(configs)).encode(), cfg) == sorted(configs)
    assert tracked_topics(b'["elsewhere/x/config", 3, "homeassistant/a/b/c/config"]', cfg) == [
        "homeassistant/a/b/c/config"]
    assert tracked_topics(b"\xff not json", cfg) == []

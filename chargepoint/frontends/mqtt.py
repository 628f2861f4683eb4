"""MQTT and Home Assistant discovery: a client of the application API (:mod:`chargepoint.api`) only.

Topics under the prefix (default ``chargepoint/<charge point id>``)::

    <prefix>/status                    online | offline (retained; offline is the last will)
    <prefix>/link                      connected | connecting | offline       (retained state …)
    <prefix>/registration              Accepted | Pending | Rejected | Unknown
    <prefix>/firmware_version
    <prefix>/<c>/status                OCPP ChargePointStatus of connector <c>
    <prefix>/<c>/pilot                 IEC 61851-1 state letter
    <prefix>/<c>/power                 W           <prefix>/<c>/current      A (measured)
    <prefix>/<c>/offered               A (pilot)   <prefix>/<c>/cable        A (cable rating)
    <prefix>/<c>/energy                kWh (meter register)
    <prefix>/<c>/session_energy        kWh (the running transaction)
    <prefix>/<c>/limit                 A in force  <prefix>/<c>/limit_source the claim that decided it
    <prefix>/<c>/current_limit         the owner's local limit (A, or None)
    <prefix>/<c>/enabled               ON | OFF (availability)
    <prefix>/<c>/faults                JSON list of {kind, latched, action}
    <prefix>/<c>/set/current_limit     ← amps, or "none" to lift the local limit
    <prefix>/<c>/set/enabled           ← ON | OFF
    <prefix>/<c>/set/charge_now        ← ON | OFF   (override the off-peak schedule for this session)
    <prefix>/<c>/start                 ← an id tag, or empty for free vend
    <prefix>/<c>/stop                  ← anything (Home Assistant's button sends PRESS)
    <prefix>/error                     → JSON {topic, payload, error, message} for a refused command
    <prefix>/discovery                 the Home Assistant config topics last published (retained), so that a
                                         controller started with discovery off can remove them

Unknown values are published as ``None`` (Home Assistant's "unknown"). State is retained, published when
it changes and at most once per second per topic (:class:`Coalescer`); after a reconnect everything is
published again.

Why it never slows the control loop: the change stream is read by a task that only marks the state dirty
(the API's subscription is bounded and drops the oldest state change); the state to publish is a dict keyed
by topic, so what waits for a broker that is away is bounded by the number of topics (the newest value wins)
and refused-command messages are a deque that drops the oldest. The network is written by one sender task;
the connection (DNS, TCP, TLS) is made in an executor thread by aiomqtt.

Commands arrive with QoS 1 on a persistent MQTT 5 session (clean start only on the process's first connection,
session expiry :data:`SESSION_EXPIRY_S`): a command the broker acknowledged while the controller was
reconnecting is delivered once the controller is back, and the subscriptions are made again on every
connection in case the broker lost the session. A *retained* command is never executed (it would run again
on every reconnect): published live it is answered on the error topic, a stored copy is not even delivered
(MQTT 5 subscription options retain-as-published and retain handling 2). Every command goes through the API with
``Role.USER``, the same checks the web UI gets.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import math
import random
import re
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chargepoint.api import CommandError, CommandResult, ConnectorView, Role, StationApi, StationView
from chargepoint.privacy import mask_id_tag

if TYPE_CHECKING:  # pragma: no cover
    from chargepoint.config import Config, _Reader

log = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------------------ config
MQTT_KEYS = ("enabled", "host", "port", "username", "password", "tls", "ca_file", "cert_file", "key_file",
             "topic_prefix", "discovery", "discovery_prefix", "keepalive_s")


@dataclass(frozen=True)
class MqttConfig:
    """``[mqtt]``: the broker and the topics. Off unless ``enabled = true``."""

    enabled: bool = False
    host: str = "localhost"
    port: int = 1883  # 8883 when tls = true and no port is given
    username: str | None = None
    password: str | None = None
    tls: bool = False
    ca_file: str | None = None  # None with tls: the system's CA certificates
    cert_file: str | None = None  # client certificate (PEM), optional
    key_file: str | None = None  # its private key, when not inside cert_file
    topic_prefix: str = "chargepoint"  # parse_mqtt_config makes the default chargepoint/<id>
    discovery: bool = True
    discovery_prefix: str = "homeassistant"
    keepalive_s: int = 30


_TOPIC_LEVEL_PROBLEM = "a topic without '+', '#', empty levels or a leading/trailing '/' (at most 200 characters)"


def topic_problem(topic: str) -> str | None:
    """Why ``topic`` cannot be a prefix we publish under (MQTT 3.1.1 §4.7: no wildcards in a topic name)."""
    if (not topic or len(topic) > 200 or "+" in topic or "#" in topic or "\0" in topic
            or any(level == "" for level in topic.split("/"))):
        return _TOPIC_LEVEL_PROBLEM
    return None


def default_topic_prefix(charge_point_id: str) -> str:
    # A charge point id may hold '+' (OCPP allows it, a topic name does not): it becomes '_'.
    return "chargepoint/" + (charge_point_id or "chargepoint").replace("+", "_")


def parse_mqtt_config(r: _Reader, table: dict[str, Any], charge_point_id: str | None) -> MqttConfig:
    """Read ``[mqtt]`` with the configuration's reader (every problem is collected, none is fatal here)."""
    r.unknown_keys(table, MQTT_KEYS, "mqtt")
    d = MqttConfig()
    enabled = r.get(table, "enabled", "mqtt.enabled", bool, False)
    tls = r.get(table, "tls", "mqtt.tls", bool, False)
    host = r.get(table, "host", "mqtt.host", str, d.host)
    if enabled and not (host or "").strip():
        r.problem("mqtt.host", host, "the broker's host name or address")
    port = r.get(table, "port", "mqtt.port", int, 8883 if tls else 1883, minimum=1, maximum=65535)
    username = r.get(table, "username", "mqtt.username", str, None) or None
    password = r.get(table, "password", "mqtt.password", str, None) or None
    if password and not username:
        r.problem("mqtt.password", "(set)", "only with mqtt.username (MQTT sends a password with a user name)")
    files: dict[str, str | None] = {}
    for name in ("ca_file", "cert_file", "key_file"):
        value = r.get(table, name, f"mqtt.{name}", str, None) or None
        if value and not tls:
            r.problem(f"mqtt.{name}", value, "only with mqtt.tls = true")
        elif value and not Path(value).is_file():
            r.problem(f"mqtt.{name}", value, "an existing PEM file")
        files[name] = value
    if files["key_file"] and not files["cert_file"]:
        r.problem("mqtt.key_file", files["key_file"], "only with mqtt.cert_file (the client certificate)")
    prefix = r.get(table, "topic_prefix", "mqtt.topic_prefix", str, None)
    if prefix is not None and (problem := topic_problem(prefix)):
        r.problem("mqtt.topic_prefix", prefix, problem)
    discovery_prefix = r.get(table, "discovery_prefix", "mqtt.discovery_prefix", str, d.discovery_prefix)
    if discovery_prefix is not None and (problem := topic_problem(discovery_prefix)):
        r.problem("mqtt.discovery_prefix", discovery_prefix, problem)
    return MqttConfig(
        enabled=bool(enabled), host=(host or d.host).strip(), port=port or d.port,
        username=username, password=password, tls=bool(tls), ca_file=files["ca_file"],
        cert_file=files["cert_file"], key_file=files["key_file"],
        topic_prefix=prefix or default_topic_prefix(charge_point_id or ""),
        discovery=bool(r.get(table, "discovery", "mqtt.discovery", bool, True)),
        discovery_prefix=discovery_prefix or d.discovery_prefix,
        keepalive_s=r.get(table, "keepalive_s", "mqtt.keepalive_s", int, d.keepalive_s, minimum=5, maximum=3600)
        or d.keepalive_s,
    )


def mqtt_config_for_address(address: str, charge_point_id: str, **overrides: Any) -> MqttConfig:
    """``simulate --mqtt HOST:PORT``: an anonymous plain connection with the default topics."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"--mqtt: HOST:PORT, e.g. 127.0.0.1:1883, not {address!r}")
    return MqttConfig(enabled=True, host=host.strip("[]"), port=int(port_text),
                      topic_prefix=default_topic_prefix(charge_point_id), **overrides)


# ------------------------------------------------------------------------------------------------ state
def mqtt_number(value: float | None, digits: int) -> str:
    """A number as MQTT text: fixed point (never 1e+06), trailing zeros dropped; None → "None"."""
    if value is None or not math.isfinite(value):
        return "None"
    text = f"{value:.{digits}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def connector_maximum(c: ConnectorView) -> float:
    """The connector's own maximum: its "connector" claim (config max_current_a), else 32 A."""
    for claim in c.claims:
        if claim.source == "connector" and claim.amps is not None:
            return claim.amps
    return 32.0


def state_values(view: StationView) -> dict[str, str]:
    """Relative topic → payload for everything retained about the station (pure)."""
    out = {
        "link": view.link.state,
        "registration": view.link.registration,
        "firmware_version": view.firmware_version or "None",
    }
    for c in view.connectors:
        p = f"{c.id}/"
        out[p + "status"] = c.status
        out[p + "pilot"] = c.pilot
        out[p + "power"] = mqtt_number(c.power_w, 0)
        out[p + "current"] = mqtt_number(c.measured_a, 1)
        out[p + "offered"] = mqtt_number(c.offered_a, 1)
        out[p + "cable"] = mqtt_number(c.cable_a, 0)
        out[p + "energy"] = mqtt_number(None if c.energy_wh is None else c.energy_wh / 1000.0, 3)
        out[p + "session_energy"] = mqtt_number(None if c.session_energy_wh is None else c.session_energy_wh / 1000.0, 3)
        out[p + "limit"] = mqtt_number(c.limit_a, 1)
        out[p + "limit_source"] = c.limit_source or "None"
        out[p + "current_limit"] = mqtt_number(c.local_limit_a, 1)
        out[p + "enabled"] = "ON" if c.available else "OFF"
        out[p + "faults"] = json.dumps([{"kind": f.kind, "latched": f.latched, "action": f.action}
                                        for f in c.faults], separators=(",", ":"))
    return out


class Coalescer:
    """What to publish: the newest payload per topic, at most once per ``interval`` per topic (pure: time
    is an argument).

    Bounded by the number of topics, whatever the broker does: a value that changes ten times while the
    broker is away is sent once, with its last payload.
    """

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self._desired: dict[str, tuple[str, int]] = {}  # topic → (payload, qos)
        self._sent: dict[str, str] = {}
        self._last: dict[str, float] = {}

    def set(self, topic: str, payload: str, qos: int = 0) -> None:
        """The topic's newest payload (an empty one removes a retained message)."""
        self._desired[topic] = (payload, qos)

    def resend_all(self) -> None:
        """After a (re)connection: everything again, now (the broker may have lost its retained copies)."""
        self._sent.clear()
        self._last.clear()

    def pending(self) -> int:
        return sum(1 for t, (p, _) in self._desired.items() if self._sent.get(t) != p)

    def due(self, now: float) -> tuple[list[tuple[str, str, int]], float | None]:
        """(topic, payload, qos) to send now, marked as sent, and when the next held-back one is due."""
        out: list[tuple[str, str, int]] = []
        next_at: float | None = None
        for topic, (payload, qos) in list(self._desired.items()):
            if self._sent.get(topic) == payload:
                continue
            at = self._last.get(topic, -math.inf) + self.interval
            if now >= at:
                out.append((topic, payload, qos))
                self._sent[topic] = payload
                self._last[topic] = now
            else:
                next_at = at if next_at is None else min(next_at, at)
        return out, next_at

    def unsend(self, topic: str) -> None:
        """A publish that failed: send it again after the reconnection."""
        self._sent.pop(topic, None)


# --------------------------------------------------------------------------------------------- commands
MAX_PAYLOAD = 64  # bytes; an id tag is 20 characters, a current a few
MAX_EXCERPT = 40
_CONNECTOR_RE = re.compile(r"[1-9][0-9]?")
_AMPS_RE = re.compile(r"[0-9]{1,4}(?:\.[0-9]{1,3})?")
_ID_TAG_RE = re.compile(r"[\x21-\x7e]{1,20}")  # CiString20, printable ASCII (no spaces: they are cut off)
COMMANDS = ("set/current_limit", "set/enabled", "set/charge_now", "start", "stop")


@dataclass(frozen=True)
class Command:
    action: str  # one of COMMANDS
    connector_id: int
    value: Any = None  # amps | None, bool, id tag | None


@dataclass(frozen=True)
class CommandProblem:
    code: str  # CommandError codes, plus "unknown_command", "payload_too_large", "retained"
    message: str


UNKNOWN_COMMAND = "unknown_command"
PAYLOAD_TOO_LARGE = "payload_too_large"
RETAINED = "retained"
BUSY = "busy"
NOT_ACCEPTED = "not_accepted"
INTERNAL = "internal_error"


def parse_command(prefix: str, topic: str, payload: bytes, maxima: Mapping[int, float]) -> Command | CommandProblem:
    """One command message → a :class:`Command`, or the :class:`CommandProblem` to answer (pure; never raises).

    ``maxima``: connector id → its maximum current (the connectors that exist). The API checks again (limits,
    roles, sessions); this refuses what is not even a well-formed request.
    """
    if not topic.startswith(prefix + "/"):
        return CommandProblem(UNKNOWN_COMMAND, "not a command topic of this charge point")
    connector_word, sep, action = topic[len(prefix) + 1:].partition("/")
    if not sep or action not in COMMANDS:
        return CommandProblem(UNKNOWN_COMMAND, "commands: <connector>/" + ", <connector>/".join(COMMANDS))
    if not _CONNECTOR_RE.fullmatch(connector_word) or int(connector_word) not in maxima:
        known = ", ".join(str(c) for c in sorted(maxima))
        return CommandProblem(CommandError.UNKNOWN_CONNECTOR, f"no connector {connector_word[:8]!r}; connectors: {known}")
    cid = int(connector_word)
    if len(payload) > MAX_PAYLOAD:
        return CommandProblem(PAYLOAD_TOO_LARGE, f"a command payload has at most {MAX_PAYLOAD} bytes")
    try:
        text = payload.decode("utf-8").strip()
    except UnicodeDecodeError:
        return CommandProblem(CommandError.BAD_VALUE, "the payload is not UTF-8 text")
    if action == "set/current_limit":
        if text.lower() in ("none", "null", "off"):
            return Command(action, cid, None)
        if not _AMPS_RE.fullmatch(text):
            return CommandProblem(CommandError.BAD_VALUE, 'a current in amps (e.g. 16 or 10.5), or "none" to lift the limit')
        amps = float(text)
        if amps > maxima[cid]:
            return CommandProblem(CommandError.BAD_VALUE, f"at most {maxima[cid]:g} A on connector {cid}")
        return Command(action, cid, amps)
    if action in ("set/enabled", "set/charge_now"):
        word = text.upper()
        if word in ("ON", "TRUE", "1"):
            return Command(action, cid, True)
        if word in ("OFF", "FALSE", "0"):
            return Command(action, cid, False)
        return CommandProblem(CommandError.BAD_VALUE, "ON or OFF")
    if action == "start":
        if not text:
            return Command(action, cid, None)  # free vend (the API refuses it where it is not enabled)
        if not _ID_TAG_RE.fullmatch(text):
            return CommandProblem(CommandError.BAD_VALUE,
                                  "an id tag (1 to 20 printable ASCII characters), or empty for free vend")
        return Command(action, cid, text)
    return Command(action, cid, None)  # stop: the payload does not matter


def excerpt(topic: str, payload: bytes) -> str:
    """What the error message shows of a payload: a short, printable excerpt; an id tag only masked."""
    text = payload[:MAX_EXCERPT * 4].decode("utf-8", errors="replace")
    if topic.endswith("/start") and text.strip():
        return mask_id_tag(text.strip()[:20]) or ""
    text = "".join(ch if ch.isprintable() else "\ufffd" for ch in text)
    return text[:MAX_EXCERPT] + ("…" if len(text) > MAX_EXCERPT or len(payload) > MAX_EXCERPT * 4 else "")


def error_message(topic: str, payload: bytes, code: str, message: str) -> str:
    shown_topic = "".join(ch if ch.isprintable() else "\ufffd" for ch in topic[:160])
    return json.dumps({"topic": shown_topic, "payload": excerpt(topic, payload), "error": code,
                       "message": message}, ensure_ascii=False)


# -------------------------------------------------------------------------------------------- discovery
OCPP_STATUSES = ("Available", "Preparing", "Charging", "SuspendedEVSE", "SuspendedEV", "Finishing", "Reserved",
                 "Unavailable", "Faulted")


def node_id(charge_point_id: str) -> str:
    """Home Assistant's node_id: letters, digits, '_' and '-' only."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", charge_point_id) or "chargepoint"


@dataclass(frozen=True)
class DeviceInfo:
    charge_point_id: str
    vendor: str = "OpenWallbox"
    model: str = "PiEVSE"
    serial_number: str | None = None


def discovery_configs(cfg: MqttConfig, device: DeviceInfo, view: StationView) -> dict[str, str]:
    """Home Assistant discovery topic → config JSON, for every entity of the station (pure).

    One device (identifiers, manufacturer, model, sw_version = the firmware version) holds all entities; every
    entity is unavailable when ``<prefix>/status`` says offline (the last will).
    """
    node = node_id(device.charge_point_id)
    prefix = cfg.topic_prefix
    dev: dict[str, Any] = {
        "identifiers": [f"pi-chargepoint_{node}"],
        "name": f"Charge point {device.charge_point_id}",
        "manufacturer": device.vendor,
        "model": device.model,
        "sw_version": view.firmware_version,
    }
    if device.serial_number:
        dev["serial_number"] = device.serial_number
    common = {
        "availability_topic": f"{prefix}/status", "payload_available": "online",
        "payload_not_available": "offline", "device": dev,
        "origin": {"name": "pi-chargepoint"},
    }
    out: dict[str, str] = {}

    def add(component: str, obj: str, name: str, **fields: Any) -> None:
        body = {"name": name, "unique_id": f"{node}_{obj}", **fields, **common}
        out[f"{cfg.discovery_prefix}/{component}/{node}/{obj}/config"] = json.dumps(body, separators=(",", ":"))

    add("sensor", "link", "Central system link", state_topic=f"{prefix}/link", device_class="enum",
        options=["connected", "connecting", "offline"], entity_category="diagnostic")
    add("sensor", "firmware_version", "Firmware version", state_topic=f"{prefix}/firmware_version",
        entity_category="diagnostic")
    several = len(view.connectors) > 1
    for c in view.connectors:
        t = f"{prefix}/{c.id}"
        o = f"c{c.id}_"

        def label(what: str, cid: int = c.id) -> str:
            return f"Connector {cid} {what.lower()}" if several else what

        add("sensor", o + "status", label("Status"), state_topic=f"{t}/status", device_class="enum",
            options=list(OCPP_STATUSES))
        add("sensor", o + "power", label("Power"), state_topic=f"{t}/power", device_class="power",
            state_class="measurement", unit_of_measurement="W")
        add("sensor", o + "current", label("Current"), state_topic=f"{t}/current", device_class="current",
            state_class="measurement", unit_of_measurement="A")
        add("sensor", o + "energy", label("Energy"), state_topic=f"{t}/energy", device_class="energy",
            state_class="total_increasing", unit_of_measurement="kWh")
        # Starts again at 0 with every session: total_increasing takes a decrease as a new cycle.
        add("sensor", o + "session_energy", label("Session energy"), state_topic=f"{t}/session_energy",
            device_class="energy", state_class="total_increasing", unit_of_measurement="kWh")
        add("sensor", o + "limit", label("Current limit in force"), state_topic=f"{t}/limit",
            device_class="current", state_class="measurement", unit_of_measurement="A")
        add("sensor", o + "limit_source", label("Limit source"), state_topic=f"{t}/limit_source",
            entity_category="diagnostic")
        add("sensor", o + "cable", label("Cable rating"), state_topic=f"{t}/cable", device_class="current",
            unit_of_measurement="A", entity_category="diagnostic")
        add("sensor", o + "pilot", label("Pilot state"), state_topic=f"{t}/pilot", entity_category="diagnostic")
        add("binary_sensor", o + "fault", label("Fault"), state_topic=f"{t}/faults", device_class="problem",
            value_template="{{ 'ON' if value_json | length > 0 else 'OFF' }}",
            json_attributes_topic=f"{t}/faults", json_attributes_template="{{ {'faults': value_json} | tojson }}")
        add("switch", o + "enabled", label("Enabled"), state_topic=f"{t}/enabled",
            command_topic=f"{t}/set/enabled", payload_on="ON", payload_off="OFF", qos=1)
        add("number", o + "current_limit", label("Local current limit"), state_topic=f"{t}/current_limit",
            command_topic=f"{t}/set/current_limit", min=6, max=connector_maximum(c), step=1, mode="box",
            device_class="current", unit_of_measurement="A", payload_reset="None", qos=1)
        add("button", o + "stop", label("Stop session"), command_topic=f"{t}/stop", payload_press="PRESS", qos=1)
    return out


def tracked_topics(payload: bytes, cfg: MqttConfig) -> list[str]:
    """The config topics a retained ``<prefix>/discovery`` lists (only plausible ones: nothing else is
    removed, whatever the topic says)."""
    try:
        topics = json.loads(payload.decode("utf-8")) if payload else []
    except (UnicodeDecodeError, ValueError):
        return []
    if not isinstance(topics, list):
        return []
    head = cfg.discovery_prefix + "/"
    return [t for t in topics[:500] if isinstance(t, str) and t.startswith(head) and t.endswith("/config")
            and topic_problem(t) is None]


# ---------------------------------------------------------------------------------------------- client
SESSION_EXPIRY_S = 300  # a command waits at most this long at the broker for a controller that is away
STATE_INTERVAL_S = 1.0
PUBLISH_TIMEOUT_S = 10.0
COMMAND_TIMEOUT_S = 15.0


@dataclass
class MqttStats:
    """Counters for tests, the benchmark and the log."""

    connects: int = 0
    published: int = 0
    commands: int = 0
    refused: int = 0
    errors_dropped: int = 0
    snapshots: int = 0
    last_error: str | None = None
    connected: bool = False
    by_topic: collections.Counter[str] = field(default_factory=collections.Counter)


class MqttFrontend:
    """The station on an MQTT broker. ``await start()``; ``await stop()`` publishes ``offline`` and leaves."""

    #: Command topics subscribed to, under the prefix (none for the local controller's read-only site view).
    COMMAND_PATTERNS: tuple[str, ...] = ("+/set/+", "+/start", "+/stop")

    def __init__(
        self,
        api: StationApi,
        config: MqttConfig,
        device: DeviceInfo,
        *,
        reconnect_min_s: float = 1.0,
        reconnect_max_s: float = 60.0,
        state_interval_s: float = STATE_INTERVAL_S,
        client_factory: Callable[..., Any] | None = None,
    ) -> None:
        self.api = api
        self.config = config
        self.device = device
        self.prefix = config.topic_prefix
        self.reconnect_min_s = reconnect_min_s
        self.reconnect_max_s = reconnect_max_s
        self.stats = MqttStats()
        self._coalescer = Coalescer(state_interval_s)
        self._errors: collections.deque[str] = collections.deque(maxlen=20)
        self._commands: asyncio.Queue[tuple[Command, str, bytes]] = asyncio.Queue(maxsize=32)
        self._wake = asyncio.Event()
        self._dirty = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self._subscription: Any = None
        self._client: Any = None
        self._client_factory = client_factory
        self._stopping = False
        self._connected_event = asyncio.Event()
        self._maxima: dict[int, float] = {}
        self._discovery_topics: set[str] = set()
        self._sending = 0  # publishes of the current batch not yet handed to the socket
        self._discovery_key: Any = None
        self._configs: dict[str, str] = {}

    # ---------------------------------------------------------------- life cycle
    async def start(self) -> None:
        self._subscription = self.api.subscribe(maxsize=64)
        self._dirty.set()  # the first snapshot is taken by the state task (a failure there is only logged)
        self._tasks = [
            asyncio.create_task(self._read_changes(), name="mqtt-changes"),
            asyncio.create_task(self._refresh_loop(), name="mqtt-state"),
            asyncio.create_task(self._execute_commands(), name="mqtt-commands"),
            asyncio.create_task(self._connection_loop(), name="mqtt-connection"),
        ]

    async def stop(self) -> None:
        self._stopping = True
        client = self._client
        if client is not None and self.stats.connected:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.publish(f"{self.prefix}/status", "offline", qos=1, retain=True), 2.0)
        for task in self._tasks:
            task.cancel()
        # A stalled broker must not hold the controller's shutdown: aiomqtt's goodbye waits up to its timeout.
        _, pending = await asyncio.wait(self._tasks, timeout=3.0)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=1.0)
        self._tasks = []
        if self._subscription is not None:
            self._subscription.close()

    async def wait_connected(self, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            await self._connected_event.wait()

    async def wait_idle(self, timeout: float = 10.0) -> None:
        """Connected, and everything known so far sent (tests, the benchmark)."""
        async with asyncio.timeout(timeout):
            while not (self.stats.connected and self._coalescer.pending() == 0 and not self._errors
                       and not self._sending):
                await asyncio.sleep(0.01)

    # ---------------------------------------------------------------- state
    async def _read_changes(self) -> None:
        """Only marks the state dirty: this task must keep up with the change stream whatever the broker does."""
        async for _change in self._subscription:
            self._dirty.set()

    async def _refresh_loop(self) -> None:
        """At most 10 snapshots a second (a value goes out at most once a second anyway); a periodic one
        covers a change the subscription dropped."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5.0):
                    await self._dirty.wait()
            self._dirty.clear()
            try:
                self._refresh()
            except Exception:  # a bad snapshot must not end the state publishing
                log.exception("MQTT: could not take the station's snapshot")
            await asyncio.sleep(0.1)

    def _compose(self) -> tuple[dict[str, str], dict[str, str]]:
        """(topic under the prefix → retained payload, discovery config topic → config JSON) now. The local
        controller's site front end (chargepoint.localcontroller.mqtt) composes its own."""
        view = self.api.snapshot()
        self.stats.snapshots += 1
        self._maxima = {c.id: connector_maximum(c) for c in view.connectors}
        values = state_values(view)
        key = (view.firmware_version, tuple((c.id, self._maxima[c.id]) for c in view.connectors))
        if key != self._discovery_key:  # the configs change only with these: not rebuilt on every reading
            self._discovery_key = key
            self._configs = discovery_configs(self.config, self.device, view)
        return values, self._configs

    def _refresh(self) -> None:
        values, configs = self._compose()
        for rel, payload in values.items():
            self._coalescer.set(f"{self.prefix}/{rel}", payload)
        tracking = f"{self.prefix}/discovery"
        if self.config.discovery:
            for topic, payload in configs.items():
                self._coalescer.set(topic, payload, qos=1)
            if set(configs) != self._discovery_topics:
                self._discovery_topics = set(configs)
                self._coalescer.set(tracking, json.dumps(sorted(configs)), qos=1)
        elif new := set(configs) - self._discovery_topics:
            # Discovery off: remove whatever this station's entities would be (an earlier run may have
            # published them); the retained tracking topic adds any that this run would not compute.
            self._discovery_topics |= new
            for topic in new:
                self._coalescer.set(topic, "", qos=1)
            self._coalescer.set(tracking, "", qos=1)
        self._wake.set()

    def _on_tracked(self, payload: bytes) -> None:
        """The retained list of config topics (from this or an earlier run): remove those not current."""
        current = self._discovery_topics if self.config.discovery else set()
        stale = [t for t in tracked_topics(payload, self.config) if t not in current]
        if stale:
            log.info("MQTT: removing %d Home Assistant discovery config(s) no longer published", len(stale))
            for topic in stale:
                self._coalescer.set(topic, "", qos=1)
            self._coalescer.set(f"{self.prefix}/discovery",
                                json.dumps(sorted(current)) if self.config.discovery else "", qos=1)
            self._wake.set()

    def _report(self, topic: str, payload: bytes, code: str, message: str) -> None:
        self.stats.refused += 1
        if len(self._errors) == self._errors.maxlen:
            self.stats.errors_dropped += 1
        self._errors.append(error_message(topic, payload, code, message))
        log.info("MQTT: command on %s refused: %s (%s)", topic[:160], message, code)
        self._wake.set()

    # ---------------------------------------------------------------- commands
    def _on_message(self, topic: str, payload: bytes, retain: bool) -> None:
        if topic == f"{self.prefix}/discovery":
            self._on_tracked(payload)
            return
        if retain:
            # A retained command would run again on every reconnect: never executed.
            self._report(topic, payload, RETAINED, "a retained command is ignored; publish commands without retain")
            return
        parsed = parse_command(self.prefix, topic, payload, self._maxima)
        if isinstance(parsed, CommandProblem):
            self._report(topic, payload, parsed.code, parsed.message)
            return
        try:
            self._commands.put_nowait((parsed, topic, payload))
        except asyncio.QueueFull:
            self._report(topic, payload, BUSY, "too many commands at once; this one was not executed")

    async def _execute_commands(self) -> None:
        while True:
            command, topic, payload = await self._commands.get()
            self.stats.commands += 1
            try:
                async with asyncio.timeout(COMMAND_TIMEOUT_S):
                    result = await self._execute(command)
            except CommandError as exc:
                self._report(topic, payload, exc.code, exc.message)
            except TimeoutError:
                self._report(topic, payload, INTERNAL, "the command took too long")
            except Exception as exc:  # nothing from outside may take the charger down
                log.exception("MQTT: command on %s failed", topic[:160])
                self._report(topic, payload, INTERNAL, f"the command failed: {type(exc).__name__}")
            else:
                if not result.accepted:
                    self._report(topic, payload, NOT_ACCEPTED, result.message or "not accepted")
            self._dirty.set()

    async def _execute(self, command: Command) -> CommandResult:
        cid = command.connector_id
        if command.action == "set/current_limit":
            return await self.api.set_local_limit(cid, command.value, role=Role.USER)
        if command.action == "set/enabled":
            return await self.api.set_available(cid, command.value, role=Role.USER)
        if command.action == "set/charge_now":
            return await self.api.charge_now(cid, command.value, role=Role.USER)  # type: ignore[attr-defined]
        if command.action == "start":
            return await self.api.start_session(cid, command.value, role=Role.USER)
        return await self.api.stop_session(cid, role=Role.USER)

    # ---------------------------------------------------------------- network
    def _make_client(self, *, clean_start: bool) -> Any:
        import aiomqtt
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        cfg = self.config
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = SESSION_EXPIRY_S
        tls = None
        if cfg.tls:
            tls = aiomqtt.TLSParameters(ca_certs=cfg.ca_file, certfile=cfg.cert_file, keyfile=cfg.key_file,
                                        cert_reqs=ssl.CERT_REQUIRED)
        factory = self._client_factory or aiomqtt.Client
        return factory(
            cfg.host, cfg.port, username=cfg.username, password=cfg.password,
            identifier=f"pi-chargepoint-{node_id(self.device.charge_point_id)}",
            protocol=aiomqtt.ProtocolVersion.V5, properties=props, clean_start=clean_start,
            will=aiomqtt.Will(f"{self.prefix}/status", "offline", qos=1, retain=True),
            keepalive=cfg.keepalive_s, timeout=PUBLISH_TIMEOUT_S, tls_params=tls,
            max_queued_incoming_messages=100, max_queued_outgoing_messages=200,
            logger=logging.getLogger("chargepoint.frontends.mqtt.paho"),
        )

    async def _connection_loop(self) -> None:
        """Connect, serve, and on any loss try again with a growing, jittered delay.

        A new aiomqtt client per attempt (aiomqtt's reused client may report a stale CONNACK); the MQTT 5
        clean-start flag is set only until the first connection succeeds, so a reconnection resumes the
        session and gets the commands the broker queued for it.
        """
        attempt = 0
        while not self._stopping:
            try:
                client = self._make_client(clean_start=self.stats.connects == 0)
                self._client = client
                async with client:
                    attempt = 0
                    await self._connected(client)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # broker away, refused, TLS, timeouts: keep trying, never crash
                while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
                    exc = exc.exceptions[0]
                self._lost(exc)
            finally:
                self.stats.connected = False
                self._connected_event.clear()
            if self._stopping:
                return
            attempt += 1
            cap = min(self.reconnect_max_s, self.reconnect_min_s * 2 ** min(attempt, 16))
            await asyncio.sleep(random.uniform(self.reconnect_min_s, max(self.reconnect_min_s, cap)))

    def _lost(self, exc: BaseException) -> None:
        text = str(exc) or type(exc).__name__
        if self.stats.last_error != text or self.stats.connected:
            log.warning("MQTT: broker %s:%d: %s; trying again", self.config.host, self.config.port, text)
        self.stats.last_error = text

    async def _connected(self, client: Any) -> None:
        self.stats.connects += 1
        self.stats.connected = True
        log.info("MQTT: connected to %s:%d as %s", self.config.host, self.config.port, self.prefix)
        await client.publish(f"{self.prefix}/status", "online", qos=1, retain=True)
        from paho.mqtt.subscribeoptions import SubscribeOptions

        # Commands: the publisher's retain flag as sent (a retained command is refused, it would run again on
        # every reconnect), and no stored retained copy on subscribing (that one is never executed).
        commands = SubscribeOptions(qos=1, retainAsPublished=True, retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND)
        for pattern in self.COMMAND_PATTERNS:
            await client.subscribe(f"{self.prefix}/{pattern}", options=commands)
        await client.subscribe(f"{self.prefix}/discovery", qos=1)  # its retained copy is what we want here
        self._coalescer.resend_all()
        self._refresh()
        self._connected_event.set()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._receive(client))
            tg.create_task(self._send(client))

    async def _receive(self, client: Any) -> None:
        async for message in client.messages:
            payload = message.payload if isinstance(message.payload, bytes | bytearray) else str(
                message.payload if message.payload is not None else "").encode()
            try:
                self._on_message(str(message.topic), bytes(payload), bool(message.retain))
            except Exception:  # pragma: no cover - a parser bug must not end the subscription
                log.exception("MQTT: message on %s", str(message.topic)[:160])

    async def _send(self, client: Any) -> None:
        """The one writer: refused-command messages first, then the state that is due."""
        loop = asyncio.get_running_loop()
        while True:
            self._wake.clear()  # before looking: a change made while publishing wakes the next round
            while self._errors:
                await client.publish(f"{self.prefix}/error", self._errors.popleft(), qos=0)
                self.stats.published += 1
            batch, next_at = self._coalescer.due(loop.time())
            for i, (topic, payload, qos) in enumerate(batch):
                self._sending = len(batch) - i
                try:
                    await client.publish(topic, payload, qos=qos, retain=True)
                except BaseException:
                    for t, _, _ in batch[i:]:
                        self._coalescer.unsend(t)
                    raise
                finally:
                    self._sending = 0
                self.stats.published += 1
                self.stats.by_topic[topic] += 1
            if self._wake.is_set():
                continue
            timeout = None if next_at is None else max(0.0, next_at - loop.time())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()


async def start_mqtt(api: StationApi | None, config: Config, **kwargs: Any) -> MqttFrontend | None:
    """Start the MQTT front end if ``[mqtt] enabled``; None otherwise. The caller awaits ``stop()`` at exit.

    Never raises for a broker that is away: the front end connects in the background and keeps trying."""
    mq: MqttConfig | None = getattr(config, "mqtt", None)
    if mq is None or not mq.enabled:
        return None
    if api is None:
        log.error("MQTT: [mqtt] is enabled but this controller has no application API; MQTT stays off")
        return None
    device = DeviceInfo(config.charge_point_id, config.vendor, config.model, config.serial_number)
    frontend = MqttFrontend(api, mq, device, **kwargs)
    await frontend.start()
    return frontend


__all__ = [
    "Coalescer", "Command", "CommandProblem", "DeviceInfo", "MqttConfig", "MqttFrontend", "discovery_configs",
    "mqtt_config_for_address", "parse_command", "parse_mqtt_config", "start_mqtt", "state_values",
]

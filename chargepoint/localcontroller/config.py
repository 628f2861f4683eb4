"""The ``[local_controller]`` section of a configuration file.

::

    [local_controller]
    id = "LC-GARAGE"                       # its own identity at the central system (group limit)
    csms_url = "wss://csms.example.com/ocpp"
    password = "…"                         # its own Basic password upstream (optional)
    listen = "0.0.0.0:9100"                # the OCPP 1.6J server for the charge points
    tls_cert = "/etc/chargepoint/lc.pem"   # optional: wss:// downstream (with tls_key)
    tls_key = "/etc/chargepoint/lc.key"
    upstream_ca = "/etc/ssl/certs/ca.pem"  # optional: CA file for a wss:// central system
    site_limit_a = 63                      # fuse per phase: a number or [L1, L2, L3]
    state_dir = "/var/lib/chargepoint-lc"
    status_socket = "/run/chargepoint-lc/status.sock"
    stack_level = 8                        # safe default; allocations use stack_level + 1
    lease_s = 120                          # allocation validTo; then the safe default applies
    follow_s = 12                          # time a box needs to follow a lower limit
    allow_unknown_offline = false          # Authorize of an unknown tag while the CSMS is unreachable
    transaction_message_attempts = 3       # queued messages the CSMS answers with a CALLERROR: tries
    transaction_message_retry_interval_s = 60  # wait before retry k: k x this (OCPP 1.6 §4.10)

    [local_controller.site_meter]          # optional; same drivers as [station.grid]
    meter = { driver = "modbus", model = "sdm630", port = "/dev/ttyUSB0", device_id = 1 }
    margin_a = 1.0
    poll_s = 2.0

    [[local_controller.charge_points]]
    id = "CP-1"
    password = "…"                         # Basic auth downstream (the box's AuthorizationKey)
    upstream_password = "…"                # default: the same password, as the box's own profile upstream
    phases = [1, 2, 3]                     # site phase of the box's L1, L2, L3 (rotated wiring: [2, 3, 1])
    max_current_a = 32
    min_current_a = 6
    priority = 1                           # turn-taking weight

    [local_controller.web]                 # optional: the site page (read-only); the keys of the charge point's [web]
    listen = "0.0.0.0"                     # an IP address; port default 8081 (the charge point's own UI has 8080)
    port = 8081
    password_hash = "scrypt$…"             # admin (chargepoint set-password --config FILE); user_password_hash
                                           # optional; viewer = true: no login needed
    # tls_cert / tls_key: HTTPS; enabled = false turns the page off without removing the table

    [local_controller.mqtt]                # optional: the site on MQTT (read-only); the keys of the charge point's [mqtt]
    host = "broker.lan"                    # port, username, password, tls, ca_file, cert_file, key_file,
    topic_prefix = "chargepoint/LC-GARAGE" # discovery, discovery_prefix, keepalive_s; enabled = false: off
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chargepoint.localcontroller.site import ChargePointSpec, SiteSettings

if TYPE_CHECKING:  # pragma: no cover
    from chargepoint.frontends.mqtt import MqttConfig
    from chargepoint.frontends.web.config import WebConfig

KEYS = {"id", "csms_url", "password", "listen", "tls_cert", "tls_key", "upstream_ca", "site_limit_a",
        "state_dir", "status_socket", "stack_level", "lease_s", "follow_s", "allow_unknown_offline",
        "site_meter", "charge_points", "response_timeout_s", "transaction_message_attempts",
        "transaction_message_retry_interval_s", "web", "mqtt"}
WEB_DEFAULT_PORT = 8081  # not the charge point's 8080: both may run on one machine
CP_KEYS = {"id", "password", "upstream_password", "phases", "max_current_a", "min_current_a", "priority"}
METER_KEYS = {"meter", "margin_a", "poll_s"}


class LocalControllerConfigError(ValueError):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class DownstreamConfig:
    spec: ChargePointSpec
    password: str | None
    upstream_password: str | None


@dataclass(frozen=True)
class SiteMeterConfig:
    meter: dict[str, Any]
    margin_a: float = 1.0
    poll_s: float = 2.0


@dataclass(frozen=True)
class LocalControllerConfig:
    id: str
    csms_url: str
    listen_host: str
    listen_port: int
    site_limit_a: tuple[float, float, float]
    charge_points: tuple[DownstreamConfig, ...]
    password: str | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    upstream_ca: Path | None = None
    state_dir: Path | None = None
    status_socket: Path | None = None
    stack_level: int = 8
    lease_s: float = 120.0
    follow_s: float = 12.0
    response_timeout_s: float = 30.0
    allow_unknown_offline: bool = False
    transaction_message_attempts: int = 3
    transaction_message_retry_interval_s: float = 60.0
    site_meter: SiteMeterConfig | None = None
    web: WebConfig | None = None  # [local_controller.web]: the site page
    mqtt: MqttConfig | None = None  # [local_controller.mqtt]: the site on MQTT
    extra: dict[str, Any] = field(default_factory=dict)

    def settings(self) -> SiteSettings:
        return SiteSettings(fuse_a=self.site_limit_a, follow_s=self.follow_s, lease_s=self.lease_s,
                            renew_s=self.lease_s / 3,
                            meter_margin_a=self.site_meter.margin_a if self.site_meter else 1.0,
                            meter_stale_s=max(10.0, 5 * self.site_meter.poll_s) if self.site_meter else 10.0)

    def downstream(self, cp_id: str) -> DownstreamConfig | None:
        for c in self.charge_points:
            if c.spec.id == cp_id:
                return c
        return None


def _num(problems: list[str], d: dict[str, Any], key: str, where: str, default: float, lo: float,
         hi: float) -> float:
    v = d.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int | float) or not lo <= v <= hi:
        problems.append(f"{where}.{key} = {v!r}: a number from {lo:g} to {hi:g}")
        return default
    return float(v)


def _problem_text(problem: Any, section: str) -> str:
    """A problem of the charge point's [web]/[mqtt] parsers, named in this section and in its style."""
    key = f"local_controller.{section}" + problem.key[len(section):]
    if problem.allowed.startswith("unknown key"):
        return f"{key}: {problem.allowed}"
    return str(type(problem)(key, problem.value, problem.allowed))


def _frontends(p: list[str], lc: dict[str, Any], cid: Any) -> tuple[WebConfig | None, MqttConfig | None]:
    """``[local_controller.web]`` and ``[local_controller.mqtt]``, parsed by the charge point's own parsers
    (same keys, same checks). A table that is there is on unless it says ``enabled = false``."""
    web = mqtt = None
    raw_web, raw_mqtt = lc.get("web"), lc.get("mqtt")
    if raw_web is not None:
        if not isinstance(raw_web, dict):
            p.append("local_controller.web: a table [local_controller.web] with listen, port, password_hash …")
        else:
            from chargepoint.config import ConfigProblem
            from chargepoint.frontends.web.config import parse_web_config

            web, problems = parse_web_config({"enabled": True, "port": WEB_DEFAULT_PORT, **raw_web})
            p.extend(_problem_text(ConfigProblem(*x), "web") for x in problems)
    if raw_mqtt is not None:
        if not isinstance(raw_mqtt, dict):
            p.append("local_controller.mqtt: a table [local_controller.mqtt] with host, port, username …")
        else:
            from chargepoint.config import _Reader
            from chargepoint.frontends.mqtt import parse_mqtt_config

            r = _Reader()
            mqtt = parse_mqtt_config(r, {"enabled": True, **raw_mqtt}, cid if isinstance(cid, str) else None)
            p.extend(_problem_text(x, "mqtt") for x in r.problems)
    return web, mqtt


def parse(data: dict[str, Any]) -> LocalControllerConfig:
    """The section as a typed config; LocalControllerConfigError lists every problem at once."""
    p: list[str] = []
    lc = data.get("local_controller")
    if not isinstance(lc, dict):
        raise LocalControllerConfigError(["[local_controller]: the section is missing"])
    w = "local_controller"
    for k in sorted(set(lc) - KEYS):
        p.append(f"{w}.{k}: unknown key")
    cid = lc.get("id")
    if not isinstance(cid, str) or not 1 <= len(cid) <= 48:
        p.append(f"{w}.id = {cid!r}: the local controller's identity (1-48 characters)")
    url = lc.get("csms_url")
    if not isinstance(url, str) or not url.startswith(("ws://", "wss://")):
        p.append(f"{w}.csms_url = {url!r}: a ws:// or wss:// URL")
    listen = str(lc.get("listen", "127.0.0.1:9100"))
    host, _, port_s = listen.rpartition(":")
    port = int(port_s) if port_s.isdigit() and int(port_s) < 65536 else -1
    if not host or port < 0:
        p.append(f"{w}.listen = {listen!r}: HOST:PORT, e.g. 0.0.0.0:9100")
    raw_limit = lc.get("site_limit_a")
    limits: tuple[float, float, float] = (0.0, 0.0, 0.0)
    if isinstance(raw_limit, int | float) and not isinstance(raw_limit, bool) and raw_limit > 0:
        limits = (float(raw_limit),) * 3  # type: ignore[assignment]
    elif (isinstance(raw_limit, list) and len(raw_limit) == 3
          and all(isinstance(x, int | float) and not isinstance(x, bool) and x > 0 for x in raw_limit)):
        limits = tuple(float(x) for x in raw_limit)  # type: ignore[assignment]
    else:
        p.append(f"{w}.site_limit_a = {raw_limit!r}: the site fuse in A per phase, a number or [L1, L2, L3]")
    cps: list[DownstreamConfig] = []
    seen: set[str] = set()
    raw_cps = lc.get("charge_points", [])
    if not isinstance(raw_cps, list) or not raw_cps:
        p.append(f"{w}.charge_points: at least one [[local_controller.charge_points]] with an id")
        raw_cps = []
    for i, c in enumerate(raw_cps):
        cw = f"{w}.charge_points[{i}]"
        if not isinstance(c, dict):
            p.append(f"{cw}: a table")
            continue
        for k in sorted(set(c) - CP_KEYS):
            p.append(f"{cw}.{k}: unknown key")
        cpid = c.get("id")
        if not isinstance(cpid, str) or not 1 <= len(cpid) <= 48 or "/" in cpid:
            p.append(f"{cw}.id = {cpid!r}: the charge point's identity (1-48 characters, no '/')")
            continue
        if cpid in seen or cpid == cid:
            p.append(f"{cw}.id = {cpid!r}: used twice")
        seen.add(cpid)
        phases = c.get("phases", [1, 2, 3])
        if (not isinstance(phases, list) or not 1 <= len(phases) <= 3
                or not all(x in (1, 2, 3) and not isinstance(x, bool) for x in phases)
                or len(set(phases)) != len(phases)):
            p.append(f"{cw}.phases = {phases!r}: site phases of the box's L1..L3, e.g. [1, 2, 3] or [2]")
            phases = [1, 2, 3]
        pw = c.get("password")
        if pw is not None and not isinstance(pw, str):
            p.append(f"{cw}.password: a string")
            pw = None
        upw = c.get("upstream_password", pw)
        spec = ChargePointSpec(
            id=cpid, phases=tuple(x - 1 for x in phases),
            max_current_a=_num(p, c, "max_current_a", cw, 32.0, 6, 500),
            min_current_a=_num(p, c, "min_current_a", cw, 6.0, 0, 80),
            priority=_num(p, c, "priority", cw, 1.0, 0.01, 100),
        )
        cps.append(DownstreamConfig(spec, pw, upw if isinstance(upw, str) else None))
    meter = None
    raw_meter = lc.get("site_meter")
    if raw_meter is not None:
        mw = f"{w}.site_meter"
        if not isinstance(raw_meter, dict) or not isinstance(raw_meter.get("meter"), dict):
            p.append(f"{mw}: a table with meter = {{ driver = \"modbus\", model = \"sdm630\", … }}")
        else:
            for k in sorted(set(raw_meter) - METER_KEYS):
                p.append(f"{mw}.{k}: unknown key")
            meter = SiteMeterConfig(dict(raw_meter["meter"]), _num(p, raw_meter, "margin_a", mw, 1.0, 0, 100),
                                    _num(p, raw_meter, "poll_s", mw, 2.0, 0.5, 60))
    tls_cert, tls_key = lc.get("tls_cert"), lc.get("tls_key")
    if (tls_cert is None) != (tls_key is None):
        p.append(f"{w}.tls_cert / tls_key: both or neither")
    stack = lc.get("stack_level", 8)
    if not isinstance(stack, int) or isinstance(stack, bool) or not 0 <= stack <= 99:
        p.append(f"{w}.stack_level = {stack!r}: an integer 0-99 (allocations use stack_level + 1)")
        stack = 8
    lease = _num(p, lc, "lease_s", w, 120.0, 10, 86400)
    follow = _num(p, lc, "follow_s", w, 12.0, 0, 600)
    rt = _num(p, lc, "response_timeout_s", w, 30.0, 1, 600)
    attempts = lc.get("transaction_message_attempts", 3)
    if not isinstance(attempts, int) or isinstance(attempts, bool) or not 1 <= attempts <= 100:
        p.append(f"{w}.transaction_message_attempts = {attempts!r}: an integer 1-100 (like the charge point's "
                 "TransactionMessageAttempts)")
        attempts = 3
    retry = _num(p, lc, "transaction_message_retry_interval_s", w, 60.0, 0, 86400)
    auo = lc.get("allow_unknown_offline", False)
    if not isinstance(auo, bool):
        p.append(f"{w}.allow_unknown_offline = {auo!r}: true or false")
        auo = False
    web, mqtt = _frontends(p, lc, cid)
    if p:
        raise LocalControllerConfigError(p)

    def path(key: str) -> Path | None:
        v = lc.get(key)
        return Path(v) if isinstance(v, str) else None

    return LocalControllerConfig(
        id=str(cid), csms_url=str(url).rstrip("/"), listen_host=host, listen_port=port, site_limit_a=limits,
        charge_points=tuple(cps), password=lc.get("password"), tls_cert=path("tls_cert"),
        tls_key=path("tls_key"), upstream_ca=path("upstream_ca"), state_dir=path("state_dir"),
        status_socket=path("status_socket"), stack_level=stack, lease_s=lease, follow_s=follow,
        response_timeout_s=rt, allow_unknown_offline=auo, site_meter=meter, web=web, mqtt=mqtt,
        transaction_message_attempts=attempts, transaction_message_retry_interval_s=retry,
    )


def is_local_controller_file(data: dict[str, Any]) -> bool:
    """A parsed configuration file that is a local controller's (``[local_controller]``, no ``[chargepoint]``):
    check-config and set-password treat it as such."""
    return "local_controller" in data and "chargepoint" not in data


def load(path: Path) -> LocalControllerConfig:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise LocalControllerConfigError([f"{path}: {exc}"]) from exc
    return parse(data)

"""The TOML configuration file, loaded into typed objects.

Every problem is reported as ``key = value: what is allowed`` and all problems
of a file are reported together, before anything is switched. See
``deploy/chargepoint.example.toml`` for every key.
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from hal.registry import DRIVERS

DEVICE_KINDS = ("pilot", "contactor", "meter", "lock", "rcm", "indicator")
REQUIRED_DEVICE_KINDS = ("pilot", "contactor", "meter")


@dataclass(frozen=True)
class ConfigProblem:
    key: str
    value: object
    allowed: str

    def __str__(self) -> str:
        # TOML has no null: a None here always means "not given" (never show Python's None to an installer).
        shown = "(missing)" if self.value is _MISSING or self.value is None else repr(self.value)
        return f"{self.key} = {shown}: {self.allowed}"


class ConfigError(Exception):
    def __init__(self, source: str, problems: list[ConfigProblem]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source}: {len(problems)} problem(s) in the configuration:\n{lines}")


_MISSING = object()

KNOWN_SECTIONS = ("chargepoint", "csms", "station", "connectors", "readers", "indicator", "ocpp", "logging", "mqtt",
                  "web", "sessions", "energy")
CHARGEPOINT_KEYS = ("id", "vendor", "model", "serial_number", "state_dir", "status_socket", "free_vend_id_tag")
CSMS_KEYS = ("url", "password", "ca_file", "response_timeout_s", "reconnect_min_s", "reconnect_max_s")
STATION_KEYS = ("max_current_a", "nominal_voltage_v", "grid")
GRID_KEYS = ("enabled", "meter", "limit_a", "margin_a", "poll_s")
CONNECTOR_KEYS = ("id", "max_current_a", "min_current_a", "phases", "ventilation", *DEVICE_KINDS, "pp", "temperature")
LOGGING_KEYS = ("level",)


#: Read-only OCPP keys (§9) that are capacity limits or site policy: the [ocpp] table may lower them.
INSTALLER_REDUCIBLE_KEYS = frozenset({
    "LocalAuthListMaxLength", "SendLocalListMaxLength", "ReserveConnectorZeroSupported",
    "ChargeProfileMaxStackLevel", "ChargingScheduleMaxPeriods", "MaxChargingProfilesInstalled",
    "CertificateStoreMaxLength",
})


def did_you_mean(name: str, known: Iterable[str]) -> str | None:
    """The known name closest to a misspelt one (``max_curent_a`` → ``max_current_a``), or None."""
    known = list(known)
    match = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    if match:
        return match[0]
    by_lower = {k.lower(): k for k in known}  # OCPP keys are CamelCase: heartbeatinterval → HeartbeatInterval
    match = difflib.get_close_matches(name.lower(), list(by_lower), n=1, cutoff=0.6)
    return by_lower[match[0]] if match else None


def unknown_key_text(name: str, known: Iterable[str], what: str = "unknown key") -> str:
    known = sorted(known)
    guess = did_you_mean(name, known)
    if guess is not None:
        return f"{what}; did you mean {guess!r}?"
    return f"{what}; allowed: " + ", ".join(known)


@dataclass(frozen=True)
class CsmsConfig:
    url: str
    password: str | None = None
    ca_file: str | None = None
    response_timeout_s: float = 30.0
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 60.0  # full jitter: a central system that comes back is reached within a minute


@dataclass(frozen=True)
class CableConfig:
    """How a connector learns its cable's rating: a socket reads PP, a tethered cable is configured."""

    socket: bool = False  # True: Type 2 socket, the [connectors.pp] device reads the plugged cable
    tethered_rating_a: float | None = None  # tethered: the fixed cable's rating (None: max_current_a)


@dataclass(frozen=True)
class TemperatureConfig:
    """Derating and stop thresholds (chargepoint/thermal.py) for the connector's NTC and its meter."""

    derate_c: float = 60.0
    stop_c: float = 70.0
    hysteresis_c: float = 5.0
    derate_current_a: float | None = None  # None: half of max_current_a, at least min_current_a


@dataclass(frozen=True)
class ConnectorConfig:
    id: int
    max_current_a: float = 32.0
    min_current_a: float = 6.0
    phases: int = 3
    ventilation: bool = False  # IEC 61851-1: energize in state D only where ventilation is provided
    devices: dict[str, dict[str, Any]] = field(default_factory=dict)
    cable: CableConfig = CableConfig()
    temperature: TemperatureConfig = TemperatureConfig()


@dataclass(frozen=True)
class GridConfig:
    """Optional grid (whole-house) meter: the charger takes only what the house leaves under ``limit_a``."""

    meter: dict[str, Any]
    limit_a: float  # the house's main fuse per phase
    margin_a: float = 1.0
    poll_s: float = 2.0


@dataclass(frozen=True)
class StationConfig:
    max_current_a: float = 32.0  # the installation's fuse limit, per phase
    nominal_voltage_v: float = 230.0
    grid: GridConfig | None = None


@dataclass(frozen=True)
class Config:
    charge_point_id: str
    csms: CsmsConfig
    connectors: list[ConnectorConfig]
    station: StationConfig = StationConfig()
    vendor: str = "OpenWallbox"
    model: str = "PiEVSE"
    serial_number: str | None = None
    firmware_version: str | None = None
    state_dir: Path = Path("/var/lib/chargepoint")
    readers: list[dict[str, Any]] = field(default_factory=list)
    indicator: dict[str, Any] | None = None
    ocpp_keys: dict[str, Any] = field(default_factory=dict)
    log_level: str = "info"
    status_socket: str | None = None
    #: Free vend (local policy; OCPP 1.6 has no such notion): a car plugged in without a card starts a
    #: session with this id tag. None: off.
    free_vend_id_tag: str | None = None
    #: How long the session history keeps a session, in days ([sessions] retention_days, parsed in
    #: chargepoint.sessions).
    session_history_days: int = 730
    source: str = "<config>"
    web: Any = None  # chargepoint.frontends.web.config.WebConfig: [web], the local web UI
    mqtt: Any = None  # chargepoint.frontends.mqtt.MqttConfig ([mqtt]; parsed there)
    energy: Any = None  # chargepoint.energy.config.EnergyConfig ([energy]; parsed there)


class _Reader:
    """Reads typed values from a TOML table and remembers every problem."""

    def __init__(self) -> None:
        self.problems: list[ConfigProblem] = []

    def problem(self, key: str, value: object, allowed: str) -> None:
        self.problems.append(ConfigProblem(key, value, allowed))

    def unknown_keys(self, table: dict[str, Any], known: Iterable[str], prefix: str) -> None:
        """Every section rejects keys it does not know: a typo must not fall back to a default silently
        (``max_curent_a = 16`` would leave a 32 A fuse limit in place)."""
        known = tuple(known)
        for name in table:
            if name not in known:
                self.problem(f"{prefix}.{name}" if prefix else name, table[name], unknown_key_text(name, known))

    def table(self, data: dict[str, Any], name: str, key: str) -> dict[str, Any]:
        value = data.get(name, {})
        if not isinstance(value, dict):
            self.problem(key, value, "a table, e.g. [" + key + "]")
            return {}
        return value

    def get(
        self,
        data: dict[str, Any],
        name: str,
        key: str,
        kind: type,
        default: Any = _MISSING,
        *,
        minimum: float | None = None,
        maximum: float | None = None,
        choices: tuple[Any, ...] | None = None,
    ) -> Any:
        value = data.get(name, _MISSING)
        if value is _MISSING:
            if default is _MISSING:
                self.problem(key, _MISSING, f"required: a {_kind_name(kind)}")
            return None if default is _MISSING else default
        ok = isinstance(value, kind) and not (kind in (int, float) and isinstance(value, bool))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        if not ok:
            self.problem(key, value, f"a {_kind_name(kind)}")
            return None if default is _MISSING else default
        if choices is not None and value not in choices:
            self.problem(key, value, "one of " + ", ".join(repr(c) for c in choices))
            return None if default is _MISSING else default
        if minimum is not None and value < minimum or maximum is not None and value > maximum:
            self.problem(key, value, _range_text(minimum, maximum))
            return None if default is _MISSING else default
        return value


def _range_text(minimum: float | None, maximum: float | None) -> str:
    if minimum is not None and maximum is not None:
        return f"a number from {minimum:g} to {maximum:g}"
    if minimum is not None:
        return f"a number of at least {minimum:g}"
    return f"a number of at most {maximum:g}"


OPTIONAL_INPUT_KINDS = ("pp", "temperature")  # driver "none" (or no table) means no device
TEMPERATURE_KEYS = ("derate_c", "stop_c", "hysteresis_c", "derate_current_a")


def _input_table(r: _Reader, raw: dict[str, Any], kind: str, base: str) -> dict[str, Any] | None:
    table = raw.get(kind)
    if table is None:
        return None
    if not isinstance(table, dict):
        r.problem(f"{base}.{kind}", table, 'a table, e.g. { driver = "none" }')
        return None
    driver = table.get("driver", "sim")
    allowed = sorted([*DRIVERS[kind], "none"])
    if driver not in allowed:
        r.problem(f"{base}.{kind}.driver", driver, "one of " + ", ".join(repr(d) for d in allowed))
        return None
    return dict(table)


def _parse_cable(r: _Reader, raw: dict[str, Any], base: str, devices: dict[str, dict[str, Any]]) -> CableConfig:
    """``[connectors.pp]``: a socket's PP input (IEC 61851-1 Annex B), or ``driver = "none"`` for a tethered
    cable with ``rating_a``. No table: tethered, rated ``max_current_a``."""
    table = _input_table(r, raw, "pp", base)
    if table is None:
        return CableConfig()
    if table.get("driver", "sim") == "none":
        rating = r.get(table, "rating_a", f"{base}.pp.rating_a", float, None, minimum=6, maximum=80)
        for name in table:
            if name not in ("driver", "rating_a"):
                r.problem(f"{base}.pp.{name}", table[name], "unknown key (driver none: only rating_a)")
        return CableConfig(socket=False, tethered_rating_a=rating)
    devices["pp"] = table
    return CableConfig(socket=True)


def _parse_temperature(r: _Reader, raw: dict[str, Any], base: str, devices: dict[str, dict[str, Any]],
                       max_a: float, min_a: float) -> TemperatureConfig:
    """``[connectors.temperature]``: thresholds (also applied to the meter's temperature) plus an optional
    sensor driver; the remaining keys are the driver's options."""
    table = _input_table(r, raw, "temperature", base)
    if table is None:
        return TemperatureConfig()
    key = f"{base}.temperature"
    d = TemperatureConfig()
    derate = r.get(table, "derate_c", f"{key}.derate_c", float, d.derate_c, minimum=20, maximum=120)
    stop = r.get(table, "stop_c", f"{key}.stop_c", float, d.stop_c, minimum=25, maximum=150)
    hyst = r.get(table, "hysteresis_c", f"{key}.hysteresis_c", float, d.hysteresis_c, minimum=0.5, maximum=30)
    derate_a = r.get(table, "derate_current_a", f"{key}.derate_current_a", float, None, minimum=min_a,
                     maximum=max_a)
    if derate is not None and stop is not None and stop <= derate:
        r.problem(f"{key}.stop_c", stop, f"above derate_c ({derate:g})")
    if table.get("driver", "sim") != "none":
        devices["temperature"] = {k: v for k, v in table.items() if k not in TEMPERATURE_KEYS}
    return TemperatureConfig(derate_c=derate or d.derate_c, stop_c=stop or d.stop_c,
                             hysteresis_c=hyst or d.hysteresis_c, derate_current_a=derate_a)


def _kind_name(kind: type) -> str:
    return {str: "string", int: "whole number", float: "number", bool: "true or false", list: "list"}.get(
        kind, kind.__name__
    )


def _charge_point_id_problem(cp_id: str) -> str | None:
    if not cp_id or len(cp_id) > 48 or any(c in cp_id for c in "/?# "):
        return "1 to 48 characters, no '/', '?', '#' or spaces (it becomes part of the URL)"
    return None


def _csms_url_problem(url: str) -> str | None:
    parsed = urlparse(url)
    if parsed.scheme not in ("ws", "wss") or not parsed.hostname:
        return "a ws:// or wss:// URL, e.g. wss://csms.example.com/ocpp"
    return None


def parse_config(data: dict[str, Any], source: str = "<config>") -> Config:
    r = _Reader()
    for name in data:
        if name not in KNOWN_SECTIONS:
            r.problem(name, data[name], unknown_key_text(name, KNOWN_SECTIONS, "unknown section"))

    cp = r.table(data, "chargepoint", "chargepoint")
    r.unknown_keys(cp, CHARGEPOINT_KEYS, "chargepoint")
    cp_id = r.get(cp, "id", "chargepoint.id", str)
    if cp_id is not None and (problem := _charge_point_id_problem(cp_id)):
        r.problem("chargepoint.id", cp_id, problem)
    vendor = r.get(cp, "vendor", "chargepoint.vendor", str, "OpenWallbox")
    model = r.get(cp, "model", "chargepoint.model", str, "PiEVSE")
    for k, limit in (("vendor", 20), ("model", 20)):
        v = cp.get(k)
        if isinstance(v, str) and len(v) > limit:
            r.problem(f"chargepoint.{k}", v, f"at most {limit} characters (OCPP 1.6 BootNotification)")
    serial = r.get(cp, "serial_number", "chargepoint.serial_number", str, None)
    state_dir = r.get(cp, "state_dir", "chargepoint.state_dir", str, "/var/lib/chargepoint")
    status_socket = r.get(cp, "status_socket", "chargepoint.status_socket", str, None)
    free_vend = r.get(cp, "free_vend_id_tag", "chargepoint.free_vend_id_tag", str, None)
    from chargepoint.sessions import parse_sessions_config  # the session history owns [sessions]
    history_days = parse_sessions_config(r, r.table(data, "sessions", "sessions")).retention_days
    if free_vend is not None and not (0 < len(free_vend) <= 20 and free_vend.isascii() and free_vend.isprintable()
                                      and free_vend.strip(" ") == free_vend):
        r.problem("chargepoint.free_vend_id_tag", free_vend,
                  "1–20 printable ASCII characters without surrounding spaces (OCPP 1.6 IdToken, CiString20)")

    cs = r.table(data, "csms", "csms")
    url = r.get(cs, "url", "csms.url", str)
    if url is not None and (problem := _csms_url_problem(url)):
        r.problem("csms.url", url, problem)
    csms = CsmsConfig(
        url=url or "",
        password=r.get(cs, "password", "csms.password", str, None) or None,
        ca_file=r.get(cs, "ca_file", "csms.ca_file", str, None) or None,
        response_timeout_s=r.get(
            cs, "response_timeout_s", "csms.response_timeout_s", float, 30.0, minimum=1, maximum=600
        ),
        reconnect_min_s=r.get(
            cs, "reconnect_min_s", "csms.reconnect_min_s", float, 1.0, minimum=0.01, maximum=600
        ),
        reconnect_max_s=r.get(
            cs, "reconnect_max_s", "csms.reconnect_max_s", float, 60.0, minimum=0.1, maximum=3600
        ),
    )
    if csms.ca_file and not Path(csms.ca_file).is_file():
        r.problem("csms.ca_file", csms.ca_file, "an existing PEM file with the CA certificate(s)")
    r.unknown_keys(cs, CSMS_KEYS, "csms")

    st = r.table(data, "station", "station")
    r.unknown_keys(st, STATION_KEYS, "station")
    grid: GridConfig | None = None
    raw_grid = st.get("grid")
    if raw_grid is not None:
        if not isinstance(raw_grid, dict):
            r.problem("station.grid", raw_grid, "a table: [station.grid] with meter, limit_a")
        elif raw_grid.get("enabled", True) is not False:
            meter = raw_grid.get("meter", _MISSING)
            if not isinstance(meter, dict):
                r.problem("station.grid.meter", meter, 'a table, e.g. { driver = "modbus", model = "sdm630", … }')
                meter = {}
            elif meter.get("driver", "sim") not in DRIVERS["meter"]:
                r.problem("station.grid.meter.driver", meter.get("driver"),
                          "one of " + ", ".join(repr(d) for d in sorted(DRIVERS["meter"])))
            grid = GridConfig(
                meter=dict(meter),
                limit_a=r.get(raw_grid, "limit_a", "station.grid.limit_a", float, minimum=6, maximum=1000) or 6.0,
                margin_a=r.get(raw_grid, "margin_a", "station.grid.margin_a", float, 1.0, minimum=0, maximum=100),
                poll_s=r.get(raw_grid, "poll_s", "station.grid.poll_s", float, 2.0, minimum=0.5, maximum=60),
            )
            r.unknown_keys(raw_grid, GRID_KEYS, "station.grid")
    station = StationConfig(
        max_current_a=r.get(
            st, "max_current_a", "station.max_current_a", float, 32.0, minimum=6, maximum=630
        ),
        nominal_voltage_v=r.get(
            st, "nominal_voltage_v", "station.nominal_voltage_v", float, 230.0, minimum=100, maximum=400
        ),
        grid=grid,
    )

    connectors: list[ConnectorConfig] = []
    raw_connectors = data.get("connectors", _MISSING)
    if raw_connectors is _MISSING or not isinstance(raw_connectors, list) or not raw_connectors:
        r.problem("connectors", raw_connectors, "at least one [[connectors]] table")
        raw_connectors = []
    for index, raw in enumerate(raw_connectors):
        base = f"connectors[{index}]"
        if not isinstance(raw, dict):
            r.problem(base, raw, "a [[connectors]] table")
            continue
        cid = r.get(raw, "id", f"{base}.id", int, index + 1, minimum=1, maximum=16)
        if cid is not None and cid != index + 1:
            r.problem(f"{base}.id", cid, f"connectors are numbered 1, 2, … in order: expected {index + 1}")
        max_a = r.get(raw, "max_current_a", f"{base}.max_current_a", float, 32.0, minimum=6, maximum=80)
        min_a = r.get(raw, "min_current_a", f"{base}.min_current_a", float, 6.0, minimum=6, maximum=80)
        if max_a is not None and min_a is not None and min_a > max_a:
            r.problem(f"{base}.min_current_a", min_a, f"at most max_current_a ({max_a})")
        phases = r.get(raw, "phases", f"{base}.phases", int, 3, choices=(1, 3))
        ventilation = r.get(raw, "ventilation", f"{base}.ventilation", bool, False)
        devices: dict[str, dict[str, Any]] = {}
        for kind in DEVICE_KINDS:
            table = raw.get(kind, _MISSING)
            if table is _MISSING:
                if kind in REQUIRED_DEVICE_KINDS:
                    r.problem(
                        f"{base}.{kind}",
                        _MISSING,
                        f"required: a table with driver = one of {sorted(DRIVERS[kind])}",
                    )
                continue
            if not isinstance(table, dict):
                r.problem(f"{base}.{kind}", table, 'a table, e.g. { driver = "sim" }')
                continue
            driver = table.get("driver", "sim")
            if driver not in DRIVERS[kind]:
                r.problem(
                    f"{base}.{kind}.driver",
                    driver,
                    "one of " + ", ".join(repr(d) for d in sorted(DRIVERS[kind])),
                )
            devices[kind] = dict(table)
        cable = _parse_cable(r, raw, base, devices)
        temperature = _parse_temperature(r, raw, base, devices, max_a or 32.0, min_a or 6.0)
        r.unknown_keys(raw, CONNECTOR_KEYS, base)
        connectors.append(
            ConnectorConfig(
                id=cid or index + 1,
                max_current_a=max_a or 32.0,
                min_current_a=min_a or 6.0,
                phases=phases or 3,
                ventilation=bool(ventilation),
                devices=devices,
                cable=cable,
                temperature=temperature,
            )
        )

    readers: list[dict[str, Any]] = []
    raw_readers = data.get("readers", [])
    if not isinstance(raw_readers, list):
        r.problem("readers", raw_readers, "a list of [[readers]] tables")
        raw_readers = []
    for index, raw in enumerate(raw_readers):
        if not isinstance(raw, dict):
            r.problem(f"readers[{index}]", raw, "a [[readers]] table")
            continue
        driver = raw.get("driver", "sim")
        if driver not in DRIVERS["reader"]:
            r.problem(
                f"readers[{index}].driver",
                driver,
                "one of " + ", ".join(repr(d) for d in sorted(DRIVERS["reader"])),
            )
        readers.append(dict(raw))

    indicator = data.get("indicator")
    if indicator is not None and not isinstance(indicator, dict):
        r.problem("indicator", indicator, 'a table, e.g. { driver = "gpio" }')
        indicator = None
    elif indicator is not None and indicator.get("driver", "sim") not in DRIVERS["indicator"]:
        r.problem("indicator.driver", indicator.get("driver"),
                  "one of " + ", ".join(repr(d) for d in sorted(DRIVERS["indicator"])))

    ocpp_keys = r.table(data, "ocpp", "ocpp")
    for key, value, allowed in _ocpp_key_problems(ocpp_keys, number_of_connectors=len(connectors)):
        r.problem(f"ocpp.{key}", value, allowed)

    lg = r.table(data, "logging", "logging")
    r.unknown_keys(lg, LOGGING_KEYS, "logging")
    level = r.get(lg, "level", "logging.level", str, "info", choices=("debug", "info", "warning", "error"))
    _check_security_profile_transport(r, url, ocpp_keys.get("SecurityProfile"))
    from chargepoint.frontends.web.config import parse_web_config  # the web UI's own keys
    web, web_problems = parse_web_config(data.get("web"))
    r.problems += [ConfigProblem(*p) for p in web_problems]
    from chargepoint.frontends.mqtt import parse_mqtt_config  # the front end owns its section's keys
    mqtt = parse_mqtt_config(r, r.table(data, "mqtt", "mqtt"), cp_id)
    from chargepoint.energy.config import parse_energy_config  # [energy]: its own module owns its keys
    energy = parse_energy_config(r, r.table(data, "energy", "energy"), data)

    if r.problems:
        raise ConfigError(source, r.problems)
    return Config(
        charge_point_id=cp_id,
        csms=csms,
        connectors=connectors,
        station=station,
        vendor=vendor,
        model=model,
        serial_number=serial,
        state_dir=Path(state_dir),
        readers=readers,
        indicator=indicator,
        ocpp_keys=dict(ocpp_keys),
        log_level=level,
        status_socket=status_socket,
        free_vend_id_tag=free_vend or None,
        session_history_days=history_days,
        source=source,
        web=web,
        mqtt=mqtt,
        energy=energy,
    )


def _ocpp_key_problems(values: dict[str, Any], *, number_of_connectors: int) -> list[tuple[str, Any, str]]:
    """[ocpp]: only keys this charge point knows and the central system could change too.

    OCPP 1.6 §9 marks keys such as NumberOfConnectors or SupportedFeatureProfiles read-only (R): they
    describe what this charge point *is*, so a value in the file would be a lie told to the central system
    (and ConfigurationKeys would take it as the initial value). They are refused like unknown keys.

    The exception, as on commercial wallboxes, are read-only keys that are capacity limits or site policy
    (:data:`INSTALLER_REDUCIBLE_KEYS`): an installer may *lower* them (a smaller local list, no
    reservation of connector 0), never raise them above what this implementation is built for.
    """
    from chargepoint.keys import ConfigurationKeys, validate_initial_keys  # keys imports config types lazily

    specs = ConfigurationKeys(number_of_connectors=number_of_connectors).specs
    problems: list[tuple[str, Any, str]] = []
    settable: dict[str, Any] = {}
    for name, value in values.items():
        spec = specs.get(name)
        if spec is None:
            configurable = [n for n, sp in specs.items() if not sp.readonly or n in INSTALLER_REDUCIBLE_KEYS]
            guess = did_you_mean(name, configurable)
            hint = f"; did you mean {guess!r}?" if guess else ""
            problems.append((name, value, f"not an OCPP 1.6 configuration key this charge point knows{hint}"))
        elif spec.readonly and name not in INSTALLER_REDUCIBLE_KEYS:
            problems.append((name, value, "read-only (OCPP 1.6 §9): fixed by this charge point, not configurable"))
        elif spec.readonly and spec.kind == "int" and not 1 <= _whole_number(value, 0) <= int(spec.default):
            problems.append((name, value, f"a whole number from 1 to {spec.default} (read-only: may only be "
                                          "lowered below what this charge point supports)"))
        else:
            settable[name] = value
    problems += validate_initial_keys(settable, number_of_connectors=number_of_connectors)
    return problems


def _whole_number(value: Any, otherwise: int) -> int:
    """A TOML integer or, from ``--key NAME=VALUE``, its decimal text; ``otherwise`` for anything else."""
    if isinstance(value, bool):
        return otherwise
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return otherwise


def read_config_data(path: str | Path) -> dict[str, Any]:
    """The parsed TOML of a configuration file; ConfigError when it cannot be read or is not TOML."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            str(path), [ConfigProblem("(file)", str(path), "the file does not exist")]
        ) from None
    except OSError as exc:
        raise ConfigError(
            str(path), [ConfigProblem("(file)", str(path), f"cannot be read: {exc.strerror}")]
        ) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            str(path), [ConfigProblem("(file)", str(path), f"UTF-8 text ({exc.reason} at byte {exc.start})")]
        ) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            str(path), [ConfigProblem("(syntax)", str(exc), "valid TOML (https://toml.io)")]
        ) from None


def load_config(path: str | Path) -> Config:
    return parse_config(read_config_data(path), str(path))


def _device_tables(data: dict[str, Any]) -> list[tuple[str, str, int, dict[str, Any]]]:
    """(kind, key, connector id, options) of every device table with a known driver, in the order
    ``build_hardware`` builds them (shared resources such as pins are claimed in that order)."""
    out: list[tuple[str, str, int, dict[str, Any]]] = []

    def add(kind: str, key: str, connector_id: int, table: Any) -> None:
        if isinstance(table, dict) and table.get("driver", "sim") in DRIVERS[kind]:
            out.append((kind, key, connector_id, table))

    connectors = data.get("connectors")
    for index, raw in enumerate(connectors if isinstance(connectors, list) else []):
        if isinstance(raw, dict):
            cid = raw.get("id", index + 1)
            cid = cid if isinstance(cid, int) and not isinstance(cid, bool) else index + 1
            for kind in DEVICE_KINDS:
                add(kind, f"connectors[{index}].{kind}", cid, raw.get(kind))
    readers = data.get("readers")
    for index, raw in enumerate(readers if isinstance(readers, list) else []):
        add("reader", f"readers[{index}]", 0, raw)
    add("indicator", "indicator", 0, data.get("indicator"))
    station = data.get("station")
    grid = station.get("grid") if isinstance(station, dict) else None
    if isinstance(grid, dict) and grid.get("enabled", True) is not False:
        add("meter", "station.grid.meter", 0, grid.get("meter"))
    from chargepoint.energy.config import energy_device_tables
    out += energy_device_tables(data)
    return out


def hardware_problems(data: dict[str, Any]) -> list[ConfigProblem]:
    """Every device's driver options, checked by building the driver against mock GPIO pins.

    Nothing is opened or switched (a running service may own the hardware). Each device is built on its
    own, so one wrong option does not hide the problems of the others; pin and bus conflicts are still
    found because all devices share one build context, as in ``build_hardware``.
    """
    from hal.interfaces import HardwareConfigError
    from hal.registry import BuildContext, build

    try:
        from gpiozero.pins.mock import MockFactory

        ctx = BuildContext(gpio_pin_factory=MockFactory())
    except ImportError:
        ctx = BuildContext()
    problems: list[ConfigProblem] = []
    for kind, key, connector_id, options in _device_tables(data):
        try:
            build(kind, options, key, connector_id, ctx)
        except HardwareConfigError as exc:
            problems.append(hardware_problem(exc))
        except Exception as exc:  # a driver that cannot even be constructed: say which
            problems.append(ConfigProblem(key, options.get("driver", "sim"),
                                          f"the driver could not be set up: {type(exc).__name__}: {exc}"))
    return problems


_UNKNOWN_OPTION = "unknown option; known: "


def hardware_problem(exc: Any) -> ConfigProblem:
    """A driver's HardwareConfigError as a ConfigProblem: "(missing)" instead of None, and a
    "did you mean" for a misspelt driver option (``relay_pn`` → ``relay_pin``)."""
    allowed = str(exc.allowed)
    if allowed.startswith(_UNKNOWN_OPTION):
        known = [k.strip() for k in allowed[len(_UNKNOWN_OPTION):].split(",") if k.strip()]
        guess = did_you_mean(str(exc.key).rsplit(".", 1)[-1], known)
        if guess is not None:
            allowed = f"unknown option; did you mean {guess!r}?"
    return ConfigProblem(str(exc.key), _MISSING if exc.value is None else exc.value, allowed)


def _check_security_profile_transport(r: _Reader, url: str | None, profile: Any) -> None:
    """Security profiles 2 and 3 are TLS (OCPP 1.6 security whitepaper ed. 2, §1.3): a ws:// URL with one
    of them is a mistake to fix in the file (at run time the link would use the wss:// form of the URL)."""
    try:
        level = int(profile) if profile is not None and not isinstance(profile, bool) else 0
    except (TypeError, ValueError):
        return  # the [ocpp] check reports the value itself
    if level >= 2 and url and urlparse(url).scheme == "ws":
        r.problem("csms.url", url, f"a wss:// URL: [ocpp] SecurityProfile = {level} connects only over TLS")


def simulated_config(
    *,
    charge_point_id: str,
    csms_url: str,
    connectors: int = 1,
    state_dir: str | Path,
    ev_reaction_s: float = 0.05,
    ocpp_keys: dict[str, Any] | None = None,
    password: str | None = None,
    grid: dict[str, Any] | None = None,
    max_current_a: float = 32.0,
    status_socket: str | None = None,
) -> Config:
    """The configuration ``chargepoint simulate`` and the demo use: every device simulated."""
    sim = {"driver": "sim"}
    data: dict[str, Any] = {
        "chargepoint": {"id": charge_point_id, "state_dir": str(state_dir)},
        "csms": {"url": csms_url, "reconnect_min_s": 0.2, "reconnect_max_s": 5.0},
        "station": {"max_current_a": max_current_a},
        "connectors": [
            {
                "id": i + 1,
                "pilot": {"driver": "sim", "ev_reaction_s": ev_reaction_s},
                "contactor": dict(sim),
                # The simulated register survives a restart (kill tests), as a real meter's does.
                "meter": {**sim, "persist_path": str(Path(state_dir) / f"sim-meter-{i + 1}.wh")},
                "lock": dict(sim),
                "rcm": dict(sim),
                "indicator": dict(sim),
                "pp": dict(sim),  # a Type 2 socket: `plug C AMPS` chooses the cable's rating
                "temperature": dict(sim),
            }
            for i in range(connectors)
        ],
        "readers": [dict(sim)],
        "ocpp": dict(ocpp_keys or {}),
    }
    if password:
        data["csms"]["password"] = password
    if grid is not None:
        data["station"]["grid"] = grid
    if status_socket:
        data["chargepoint"]["status_socket"] = status_socket
    return parse_config(data, "<simulate>")


def simulated_from(
    config: Config,
    *,
    state_dir: str | Path,
    csms_url: str | None = None,
    charge_point_id: str | None = None,
    password: str | None = None,
    ocpp_keys: dict[str, Any] | None = None,
    status_socket: str | None = None,
    ev_reaction_s: float = 0.05,
) -> Config:
    """An installer's own configuration with every device simulated (``chargepoint simulate --config``).

    Everything else stays as the file says: identity, central system, password, CA file, station and
    connector limits, phases, ventilation, OCPP keys, log level, status socket — so the rehearsal behaves
    as the wallbox will. The same devices exist (a lock only where the file has one, as many readers),
    but never the file's state directory: that is the live service's store. The overrides are checked
    like the file (ConfigError).
    """
    problems: list[ConfigProblem] = []
    if csms_url is not None and (problem := _csms_url_problem(csms_url)):
        problems.append(ConfigProblem("--csms", csms_url, problem))
    if charge_point_id is not None and (problem := _charge_point_id_problem(charge_point_id)):
        problems.append(ConfigProblem("--id", charge_point_id, problem))
    keys = {**config.ocpp_keys, **(ocpp_keys or {})}
    for key, value, allowed in _ocpp_key_problems(ocpp_keys or {}, number_of_connectors=len(config.connectors)):
        problems.append(ConfigProblem(f"--key {key}", value, allowed))
    if problems:
        raise ConfigError("simulate", problems)
    sim: dict[str, Any] = {"driver": "sim"}
    state = Path(state_dir)
    connectors = []
    for c in config.connectors:
        devices: dict[str, dict[str, Any]] = {}
        for kind in c.devices:
            if kind == "pilot":
                devices[kind] = {**sim, "ev_reaction_s": ev_reaction_s}
            elif kind == "meter":
                devices[kind] = {**sim, "phases": c.phases, "persist_path": str(state / f"sim-meter-{c.id}.wh")}
            else:
                devices[kind] = dict(sim)
        connectors.append(replace(c, devices=devices))
    grid = config.station.grid
    return replace(
        config,
        charge_point_id=charge_point_id or config.charge_point_id,
        csms=replace(config.csms, url=csms_url or config.csms.url,
                     password=password if password is not None else config.csms.password),
        connectors=connectors,
        station=replace(config.station, grid=replace(grid, meter=dict(sim)) if grid is not None else None),
        readers=[dict(sim) for _ in config.readers],
        indicator=dict(sim) if config.indicator is not None else None,
        ocpp_keys=keys,
        state_dir=state,
        status_socket=status_socket or config.status_socket,
        energy=config.energy.simulated() if config.energy is not None else None,
        mqtt=None,  # a rehearsal never publishes under the live wallbox's topics (simulate --mqtt does)
    )

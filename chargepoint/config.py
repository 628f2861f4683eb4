"""The TOML configuration file, loaded into typed objects.

Every problem is reported as ``key = value: what is allowed`` and all problems
of a file are reported together, before anything is switched. See
``deploy/chargepoint.example.toml`` for every key.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
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
        shown = "(missing)" if self.value is _MISSING else repr(self.value)
        return f"{self.key} = {shown}: {self.allowed}"


class ConfigError(Exception):
    def __init__(self, source: str, problems: list[ConfigProblem]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source}: {len(problems)} problem(s) in the configuration:\n{lines}")


_MISSING = object()


@dataclass(frozen=True)
class CsmsConfig:
    url: str
    password: str | None = None
    ca_file: str | None = None
    response_timeout_s: float = 30.0
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 300.0


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
    source: str = "<config>"


class _Reader:
    """Reads typed values from a TOML table and remembers every problem."""

    def __init__(self) -> None:
        self.problems: list[ConfigProblem] = []

    def problem(self, key: str, value: object, allowed: str) -> None:
        self.problems.append(ConfigProblem(key, value, allowed))

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
            self.problem(key, value, f"a number from {minimum} to {maximum}")
            return None if default is _MISSING else default
        return value


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


def parse_config(data: dict[str, Any], source: str = "<config>") -> Config:
    r = _Reader()
    known_top = {"chargepoint", "csms", "station", "connectors", "readers", "indicator", "ocpp", "logging"}
    for name in data:
        if name not in known_top:
            r.problem(name, data[name], "unknown section; allowed: " + ", ".join(sorted(known_top)))

    cp = r.table(data, "chargepoint", "chargepoint")
    cp_id = r.get(cp, "id", "chargepoint.id", str)
    if cp_id is not None and (not cp_id or len(cp_id) > 48 or any(c in cp_id for c in "/?# ")):
        r.problem(
            "chargepoint.id",
            cp_id,
            "1 to 48 characters, no '/', '?', '#' or spaces (it becomes part of the URL)",
        )
    vendor = r.get(cp, "vendor", "chargepoint.vendor", str, "OpenWallbox")
    model = r.get(cp, "model", "chargepoint.model", str, "PiEVSE")
    for k, limit in (("vendor", 20), ("model", 20)):
        v = cp.get(k)
        if isinstance(v, str) and len(v) > limit:
            r.problem(f"chargepoint.{k}", v, f"at most {limit} characters (OCPP 1.6 BootNotification)")
    serial = r.get(cp, "serial_number", "chargepoint.serial_number", str, None)
    state_dir = r.get(cp, "state_dir", "chargepoint.state_dir", str, "/var/lib/chargepoint")
    status_socket = r.get(cp, "status_socket", "chargepoint.status_socket", str, None)

    cs = r.table(data, "csms", "csms")
    url = r.get(cs, "url", "csms.url", str)
    if url is not None:
        parsed = urlparse(url)
        if parsed.scheme not in ("ws", "wss") or not parsed.hostname:
            r.problem("csms.url", url, "a ws:// or wss:// URL, e.g. wss://csms.example.com/ocpp")
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
            cs, "reconnect_max_s", "csms.reconnect_max_s", float, 300.0, minimum=0.1, maximum=3600
        ),
    )
    if csms.ca_file and not Path(csms.ca_file).is_file():
        r.problem("csms.ca_file", csms.ca_file, "an existing PEM file with the CA certificate(s)")
    for name in cs:
        if name not in (
            "url",
            "password",
            "ca_file",
            "response_timeout_s",
            "reconnect_min_s",
            "reconnect_max_s",
        ):
            r.problem(f"csms.{name}", cs[name], "unknown key")

    st = r.table(data, "station", "station")
    grid: GridConfig | None = None
    raw_grid = st.get("grid")
    if raw_grid is not None:
        if not isinstance(raw_grid, dict):
            r.problem("station.grid", raw_grid, "a table: [station.grid] with meter, limit_a")
        elif raw_grid.get("enabled", True) is not False:
            meter = raw_grid.get("meter")
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
            for name in raw_grid:
                if name not in ("enabled", "meter", "limit_a", "margin_a", "poll_s"):
                    r.problem(f"station.grid.{name}", raw_grid[name], "unknown key")
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
        r.problem(
            "connectors",
            None if raw_connectors is _MISSING else raw_connectors,
            "at least one [[connectors]] table",
        )
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
        for name in raw:
            if name not in ("id", "max_current_a", "min_current_a", "phases", "ventilation", *DEVICE_KINDS,
                            *OPTIONAL_INPUT_KINDS):
                r.problem(f"{base}.{name}", raw[name], "unknown key")
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
        r.problem("indicator", indicator, "a table")
        indicator = None

    ocpp_keys = r.table(data, "ocpp", "ocpp")
    from chargepoint.keys import validate_initial_keys  # local import: keys imports config types lazily

    for key, value, allowed in validate_initial_keys(ocpp_keys, number_of_connectors=len(connectors)):
        r.problem(f"ocpp.{key}", value, allowed)

    lg = r.table(data, "logging", "logging")
    level = r.get(lg, "level", "logging.level", str, "info", choices=("debug", "info", "warning", "error"))

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
        source=source,
    )


def load_config(path: str | Path) -> Config:
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
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            str(path), [ConfigProblem("(syntax)", str(exc), "valid TOML (https://toml.io)")]
        ) from None
    return parse_config(data, str(path))


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
    return parse_config(data, "<simulate>")

"""``[energy]``: PV surplus, phase switching, off-peak schedule, grid-operator dimming (issue 16).

Parsed with the configuration's reader (chargepoint/config.py) so every problem is reported with the others;
the keys are strict. Example::

    [energy]
    mode = "surplus"            # "off" | "surplus" | "minpv" (min + PV)
    connector = 1               # the connector the surplus follows
    start_delay_s = 60          # surplus ≥ minimum this long before starting (≤ 3600)
    stop_delay_s = 300          # below the minimum this long before stopping (≤ 3600)
    margin_w = 100

    [energy.phase_switch]       # a relay / second contactor for L2+L3 on `connector`
    driver = "gpio"             # "gpio" | "sim"
    pin = 26                    # energized = 3 phases (de-energized, the safe state: 1 phase)
    settle_s = 5                # ≥ 5 s with everything open between the phases
    phase_delay_s = 120
    phase_hysteresis_w = 500

    [energy.schedule]
    windows = ["mon-fri 22:00-06:00", "sat,sun 00:00-08:00"]
    timezone = "Europe/London"
    random_delay_s = 600        # SI 2021/1467 reg. 11; 0-3600

    [energy.dimming]            # §14a EnWG control input
    power_w = 4200
    input = { driver = "gpio", pin = 13 }
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from chargepoint.energy.schedule import DEFAULT_RANDOM_DELAY_S, Window, overlaps, parse_window
from hal.registry import DRIVERS

ENERGY_KEYS = ("mode", "connector", "start_delay_s", "stop_delay_s", "margin_w", "max_switches_per_hour",
               "phase_switch", "schedule", "dimming")
PHASE_SWITCH_KEYS = ("settle_s", "pause_timeout_s", "phase_delay_s", "phase_hysteresis_w")  # + driver options
SCHEDULE_KEYS = ("windows", "timezone", "random_delay_s")
DIMMING_KEYS = ("power_w", "input")
MODES = ("off", "surplus", "minpv")
MAX_DELAY_S = 3600


@dataclass(frozen=True)
class PhaseSwitchSettings:
    device: dict[str, Any]  # driver and its options (hal/registry.py kind "phase_switch")
    settle_s: float = 5.0
    pause_timeout_s: float = 10.0
    phase_delay_s: float = 120.0
    phase_hysteresis_w: float = 500.0


@dataclass(frozen=True)
class ScheduleSettings:
    windows: list[Window]
    timezone: str = "UTC"
    random_delay_s: float = DEFAULT_RANDOM_DELAY_S


@dataclass(frozen=True)
class DimmingSettings:
    device: dict[str, Any]
    power_w: float = 4200.0


@dataclass(frozen=True)
class EnergyConfig:
    mode: str = "off"
    connector: int = 1
    start_delay_s: float = 60.0
    stop_delay_s: float = 300.0
    margin_w: float = 100.0
    max_switches_per_hour: int = 6
    phase_switch: PhaseSwitchSettings | None = None
    schedule: ScheduleSettings | None = None
    dimming: DimmingSettings | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def enabled(self) -> bool:
        return self.mode != "off" or self.phase_switch is not None or self.schedule is not None \
            or self.dimming is not None

    def simulated(self) -> EnergyConfig:
        """Every energy device simulated (``chargepoint simulate --config``)."""
        ps = replace(self.phase_switch, device={"driver": "sim"}) if self.phase_switch else None
        dim = replace(self.dimming, device={"driver": "sim"}) if self.dimming else None
        return replace(self, phase_switch=ps, dimming=dim)


def _device(r: Any, table: Any, key: str, kind: str) -> dict[str, Any]:
    if not isinstance(table, dict):
        r.problem(key, table, 'a table, e.g. { driver = "gpio", pin = 26 }')
        return {"driver": "sim"}
    driver = table.get("driver", "sim")
    if driver not in DRIVERS[kind]:
        r.problem(f"{key}.driver", driver, "one of " + ", ".join(repr(d) for d in sorted(DRIVERS[kind])))
    return dict(table)


def parse_energy_config(r: Any, table: dict[str, Any], data: dict[str, Any]) -> EnergyConfig:
    """``r`` is chargepoint.config's reader; ``data`` the whole file (for the grid meter and the connectors)."""
    r.unknown_keys(table, ENERGY_KEYS, "energy")
    d = EnergyConfig()
    mode = r.get(table, "mode", "energy.mode", str, d.mode, choices=MODES) or d.mode
    connectors = data.get("connectors")
    n = len(connectors) if isinstance(connectors, list) else 1
    connector = r.get(table, "connector", "energy.connector", int, 1, minimum=1, maximum=max(n, 1)) or 1
    delays = {}
    for name, default in (("start_delay_s", d.start_delay_s), ("stop_delay_s", d.stop_delay_s)):
        delays[name] = r.get(table, name, f"energy.{name}", float, default, minimum=0, maximum=MAX_DELAY_S)
    margin = r.get(table, "margin_w", "energy.margin_w", float, d.margin_w, minimum=0, maximum=5000)
    switches = r.get(table, "max_switches_per_hour", "energy.max_switches_per_hour", int, 6, minimum=1, maximum=60)
    station = data.get("station")
    grid = station.get("grid") if isinstance(station, dict) else None
    has_grid = isinstance(grid, dict) and grid.get("enabled", True) is not False
    if mode in ("surplus", "minpv") and not has_grid:
        r.problem("energy.mode", mode, "a grid meter: surplus needs [station.grid] (the export it follows)")

    phase_switch = None
    raw_ps = table.get("phase_switch")
    if raw_ps is not None:
        key = "energy.phase_switch"
        if not isinstance(raw_ps, dict):
            r.problem(key, raw_ps, 'a table, e.g. { driver = "gpio", pin = 26 }')
        else:
            phase_switch = PhaseSwitchSettings(
                device=_device(r, {k: v for k, v in raw_ps.items() if k not in PHASE_SWITCH_KEYS}, key,
                               "phase_switch"),
                settle_s=r.get(raw_ps, "settle_s", f"{key}.settle_s", float, 5.0, minimum=5, maximum=120) or 5.0,
                pause_timeout_s=r.get(raw_ps, "pause_timeout_s", f"{key}.pause_timeout_s", float, 10.0,
                                      minimum=7, maximum=120) or 10.0,
                phase_delay_s=r.get(raw_ps, "phase_delay_s", f"{key}.phase_delay_s", float, 120.0, minimum=10,
                                    maximum=MAX_DELAY_S) or 120.0,
                phase_hysteresis_w=r.get(raw_ps, "phase_hysteresis_w", f"{key}.phase_hysteresis_w", float,
                                         500.0, minimum=0, maximum=5000) or 0.0,
            )
            cons = connectors[connector - 1] if isinstance(connectors, list) and len(connectors) >= connector \
                else None
            if isinstance(cons, dict) and cons.get("phases", 3) != 3:
                r.problem(key, "(set)", f"a 3-phase connector: connectors[{connector - 1}].phases is 1")

    schedule = None
    raw_s = table.get("schedule")
    if raw_s is not None:
        key = "energy.schedule"
        if not isinstance(raw_s, dict):
            r.problem(key, raw_s, 'a table with windows = ["mon-fri 22:00-06:00"]')
        else:
            r.unknown_keys(raw_s, SCHEDULE_KEYS, key)
            windows: list[Window] = []
            raw_w = raw_s.get("windows")
            if not isinstance(raw_w, list) or not raw_w:
                r.problem(f"{key}.windows", raw_w, 'a list of windows, e.g. ["mon-fri 22:00-06:00"]')
                raw_w = []
            for i, text in enumerate(raw_w):
                try:
                    windows.append(parse_window(str(text)))
                except ValueError as exc:
                    r.problem(f"{key}.windows[{i}]", text, str(exc))
            for text in overlaps(windows):
                r.problem(f"{key}.windows", text, "windows that do not overlap (the schedule overlaps itself)")
            tz = r.get(raw_s, "timezone", f"{key}.timezone", str, "UTC") or "UTC"
            try:
                ZoneInfo(tz)
            except (ZoneInfoNotFoundError, ValueError):
                r.problem(f"{key}.timezone", tz, "an IANA time zone, e.g. 'Europe/London'")
                tz = "UTC"
            delay = r.get(raw_s, "random_delay_s", f"{key}.random_delay_s", float, DEFAULT_RANDOM_DELAY_S,
                          minimum=0, maximum=MAX_DELAY_S)
            schedule = ScheduleSettings(windows, tz, DEFAULT_RANDOM_DELAY_S if delay is None else delay)

    dimming = None
    raw_d = table.get("dimming")
    if raw_d is not None:
        key = "energy.dimming"
        if not isinstance(raw_d, dict):
            r.problem(key, raw_d, 'a table with power_w and input = { driver = "gpio", pin = 13 }')
        else:
            r.unknown_keys(raw_d, DIMMING_KEYS, key)
            power = r.get(raw_d, "power_w", f"{key}.power_w", float, 4200.0, minimum=1380, maximum=50000)
            dimming = DimmingSettings(_device(r, raw_d.get("input", {"driver": "sim"}), f"{key}.input", "dimming"),
                                      power or 4200.0)

    return EnergyConfig(mode=mode, connector=connector, start_delay_s=delays["start_delay_s"] or 0.0,
                        stop_delay_s=delays["stop_delay_s"] if delays["stop_delay_s"] is not None else 300.0,
                        margin_w=margin if margin is not None else 100.0, max_switches_per_hour=switches or 6,
                        phase_switch=phase_switch, schedule=schedule, dimming=dimming)


def energy_device_tables(data: dict[str, Any]) -> list[tuple[str, str, int, dict[str, Any]]]:
    """(kind, key, connector, options) of the energy devices, for check-config's driver checks (pins in use)."""
    table = data.get("energy")
    if not isinstance(table, dict):
        return []
    out: list[tuple[str, str, int, dict[str, Any]]] = []
    ps = table.get("phase_switch")
    connector = table.get("connector", 1)
    connector = connector if isinstance(connector, int) and not isinstance(connector, bool) else 1
    if isinstance(ps, dict) and ps.get("driver", "sim") in DRIVERS["phase_switch"]:
        out.append(("phase_switch", "energy.phase_switch", connector,
                    {k: v for k, v in ps.items() if k not in PHASE_SWITCH_KEYS}))
    dim = table.get("dimming")
    inp = dim.get("input") if isinstance(dim, dict) else None
    if isinstance(inp, dict) and inp.get("driver", "sim") in DRIVERS["dimming"]:
        out.append(("dimming", "energy.dimming.input", 0, inp))
    return out

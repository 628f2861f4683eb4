"""Which driver implements which device, by the name used in the TOML file.

Factories are named by import path so that a driver's library (pyscard, lgpio …)
is imported only when a configuration actually selects that driver.

A factory has the signature ``build(options, key, connector_id, ctx) -> device``:
``options`` is the TOML table of that device (with ``driver`` removed), ``key`` its
dotted path for error messages (raise ``HardwareConfigError(key + ".pin", …)``),
``connector_id`` 0 for station devices, and ``ctx`` a ``BuildContext`` through
which devices on one physical resource (a serial bus, a pilot board, the
simulated car) share it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

from hal.interfaces import HardwareConfigError

Factory = Callable[[Mapping[str, Any], str, int, "BuildContext"], Any]

DRIVERS: dict[str, dict[str, str]] = {
    "pilot": {
        "sim": "hal.sim.board:build_pilot",
        "pwm": "hal.pilot_pwm:build_pilot",  # sysfs hardware PWM + MCP3008 peak-hold
        "rapi": "hal.rapi:build_pilot",  # OpenEVSE board over a serial line
    },
    "contactor": {
        "sim": "hal.sim.board:build_contactor",
        "gpio": "hal.gpio:build_contactor",
        "rapi": "hal.rapi:build_contactor",
    },
    "meter": {
        "sim": "hal.sim.meter:build_meter",
        "modbus": "hal.modbus:build_meter",
    },
    "reader": {
        "sim": "hal.sim.reader:build_reader",
        "pcsc": "hal.pcsc:build_reader",
        "rdm6300": "hal.rdm6300:build_reader",
    },
    "lock": {
        "sim": "hal.sim.board:build_lock",
        "gpio": "hal.gpio:build_lock",
    },
    "rcm": {
        "sim": "hal.sim.board:build_rcm",
        "gpio": "hal.gpio:build_rcm",
    },
    "indicator": {
        "sim": "hal.sim.board:build_indicator",
        "gpio": "hal.gpio:build_indicator",
    },
    # Cable rating of a socket (proximity pilot). A tethered cable has no device: `driver = "none"`.
    "pp": {
        "sim": "hal.sim.cable:build_cable_input",
        "mcp3008": "hal.pp:build_cable_input",
    },
    "temperature": {
        "sim": "hal.sim.cable:build_temperature",
        "ntc": "hal.temperature:build_ntc",
    },
    # Energy management ([energy], issue 16): the 1p/3p relay of a connector, the grid operator's input.
    "phase_switch": {"sim": "hal.sim.energy:build_phase_switch", "gpio": "hal.energy_io:build_phase_switch"},
    "dimming": {"sim": "hal.sim.energy:build_control_input", "gpio": "hal.energy_io:build_control_input"},
}


class BuildContext:
    """Shared resources while building the hardware of one station."""

    def __init__(self, **initial: Any) -> None:
        self.shared: dict[str, Any] = dict(initial)

    def get_or_create(self, name: str, create: Callable[[], Any]) -> Any:
        if name not in self.shared:
            self.shared[name] = create()
        return self.shared[name]


def driver_names(kind: str) -> list[str]:
    return sorted(DRIVERS[kind])


def resolve(kind: str, driver: str, key: str) -> Factory:
    try:
        target = DRIVERS[kind][driver]
    except KeyError:
        raise HardwareConfigError(
            key + ".driver", driver, "one of " + ", ".join(repr(n) for n in driver_names(kind))
        ) from None
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise HardwareConfigError(
            key + ".driver", driver, f"driver cannot be loaded on this machine ({exc}); install its extra"
        ) from exc
    return getattr(module, attr)


def build(kind: str, options: Mapping[str, Any], key: str, connector_id: int, ctx: BuildContext) -> Any:
    opts = dict(options)
    driver = opts.pop("driver", "sim")
    return resolve(kind, str(driver), key)(opts, key, connector_id, ctx)

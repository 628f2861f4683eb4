"""Temperature derating and over-temperature stop of one connector (pure: no I/O, no clock).

Socket terminals, the cable's plug and the contactor heat up, most of all with a worn contact. Open
chargers derate and then stop: OpenEVSE throttles at 65 °C and stops at 68-71 °C, SmartEVSE stops at
its configured maximum (HARDWARE-FACTS "Timing"). Here every sensor of a connector (the socket's NTC,
the meter's own temperature where its register map has one) feeds one guard; the hottest sensor counts:

* at or above ``derate_c``: the connector's limit steps down to ``derate_current_a`` (one visible limit
  claim, "temperature derating …");
* at or above ``stop_c``: nothing is offered and the connector is faulted (OVERTEMP → OCPP
  HighTemperature); the transaction stays open (SuspendedEVSE is not enough: the CSMS must see why);
* each level is left only ``hysteresis_c`` below its threshold, so a terminal at the threshold does not
  make the pilot flap (and the 5 s duty rate limit never has to hold a safety step back).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class ThermalLevel(str, enum.Enum):
    NORMAL = "normal"
    DERATED = "derated"
    STOPPED = "stopped"


@dataclass(frozen=True)
class ThermalLimits:
    derate_c: float = 60.0
    stop_c: float = 70.0
    hysteresis_c: float = 5.0
    derate_current_a: float | None = None  # None: half the connector's maximum, at least its minimum

    def derated_a(self, max_current_a: float, min_current_a: float) -> float:
        if self.derate_current_a is not None:
            return self.derate_current_a
        return max(max_current_a / 2.0, min_current_a)


def next_level(level: ThermalLevel, celsius: float, limits: ThermalLimits) -> ThermalLevel:
    """The level after a reading of ``celsius`` (the hottest sensor), with hysteresis."""
    if celsius >= limits.stop_c or (level == ThermalLevel.STOPPED
                                    and celsius > limits.stop_c - limits.hysteresis_c):
        return ThermalLevel.STOPPED
    if celsius >= limits.derate_c or (level != ThermalLevel.NORMAL
                                      and celsius > limits.derate_c - limits.hysteresis_c):
        return ThermalLevel.DERATED
    return ThermalLevel.NORMAL


@dataclass
class ThermalGuard:
    """The temperatures of one connector's sensors and the level they put it in."""

    limits: ThermalLimits = field(default_factory=ThermalLimits)
    level: ThermalLevel = ThermalLevel.NORMAL
    readings: dict[str, float] = field(default_factory=dict)

    def update(self, sensor: str, celsius: float) -> ThermalLevel:
        """A new reading of ``sensor``. Returns the new level."""
        self.readings[sensor] = celsius
        self.level = next_level(self.level, max(self.readings.values()), self.limits)
        return self.level

    def forget(self, sensor: str) -> ThermalLevel:
        """``sensor`` no longer reports (its own fault handles that); the others decide."""
        self.readings.pop(sensor, None)
        hottest = max(self.readings.values(), default=None)
        self.level = ThermalLevel.NORMAL if hottest is None else next_level(self.level, hottest, self.limits)
        return self.level

    @property
    def hottest(self) -> tuple[str, float] | None:
        if not self.readings:
            return None
        sensor = max(self.readings, key=lambda k: self.readings[k])
        return sensor, self.readings[sensor]

    def describe(self) -> str:
        hot = self.hottest
        where = f"{hot[0]} {hot[1]:.1f} °C" if hot else "no reading"
        if self.level == ThermalLevel.STOPPED:
            return f"over-temperature stop ({where}, stop at {self.limits.stop_c:g} °C)"
        if self.level == ThermalLevel.DERATED:
            return f"temperature derating ({where}, derate at {self.limits.derate_c:g} °C)"
        return f"temperature normal ({where})"

    def claim(self, max_current_a: float, min_current_a: float) -> tuple[float | None, str] | None:
        """The limit claim of this guard (None: it does not limit now)."""
        if self.level == ThermalLevel.STOPPED:
            return None, self.describe()
        if self.level == ThermalLevel.DERATED:
            return self.limits.derated_a(max_current_a, min_current_a), self.describe()
        return None

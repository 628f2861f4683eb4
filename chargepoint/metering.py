"""Meter readings → OCPP 1.6 sampledValue lists (§7.43 SampledValue, §9.1 metering keys)."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

from hal.interfaces import MeterReading

PHASES = ("L1", "L2", "L3")


def iso(ts: datetime) -> str:
    """UTC timestamp with milliseconds and a Z, the form central systems parse most reliably."""
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"


def next_clock_boundary(now: datetime, interval_s: int, after: datetime | None = None) -> datetime:
    """The next clock-aligned boundary strictly after ``now`` (and after ``after``, the last one sampled).

    OCPP 1.6 §9.1 ClockAlignedDataInterval: evenly spaced intervals per day starting at 00:00:00 (UTC, the
    time every OCPP timestamp is in). An interval that does not divide the day restarts at midnight.
    """
    if interval_s <= 0:
        raise ValueError("the interval must be positive")
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    elapsed = (now - midnight).total_seconds()
    boundary = midnight + timedelta(seconds=(math.floor(elapsed / interval_s) + 1) * interval_s)
    boundary = min(boundary, midnight + timedelta(days=1))
    if after is not None and boundary <= after:
        return next_clock_boundary(after, interval_s)
    return boundary


def sampled_values(
    reading: MeterReading,
    measurands: list[str],
    *,
    context: str,
    offered_a: float | None = None,
    phases: int = 3,
) -> list[dict[str, Any]]:
    """The values of ``measurands`` this reading has. A measurand the meter lacks is left out."""
    out: list[dict[str, Any]] = []

    def add(measurand: str, value: float, unit: str | None, phase: str | None = None) -> None:
        sv: dict[str, Any] = {
            "value": f"{value:.3f}".rstrip("0").rstrip(".") if value != int(value) else str(int(value)),
            "context": context,
            "format": "Raw",
            "measurand": measurand,
            "location": "Outlet",
        }
        if unit:
            sv["unit"] = unit
        if phase:
            sv["phase"] = phase
        out.append(sv)

    for measurand in measurands:
        if measurand == "Energy.Active.Import.Register":
            add(measurand, round(reading.energy_wh), "Wh")
        elif measurand == "Power.Active.Import" and reading.power_w is not None:
            add(measurand, round(reading.power_w, 1), "W")
        elif measurand == "Current.Import":
            for i, amps in enumerate(reading.current_a[:phases]):
                if amps is not None:
                    add(measurand, round(amps, 2), "A", PHASES[i])
        elif measurand == "Current.Offered":
            add(measurand, round(offered_a or 0.0, 1), "A")
        elif measurand == "Voltage":
            for i, volts in enumerate(reading.voltage_v[:phases]):
                if volts is not None:
                    add(measurand, round(volts, 1), "V", PHASES[i] + "-N")
        elif measurand == "Frequency" and reading.frequency_hz is not None:
            add(measurand, round(reading.frequency_hz, 2), None)
    return out


def measured_current(reading: MeterReading) -> float | None:
    """The highest phase current, which is what a per-phase limit constrains."""
    values = [a for a in reading.current_a if a is not None]
    return max(values) if values else None

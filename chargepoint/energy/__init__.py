"""Local energy management (issue 16): PV surplus, 1p/3p switching, off-peak schedule, grid-operator dimming.

Each model here is pure (no I/O, time is an argument) and yields at most one :class:`EnergyClaim` per
connector; the service (:mod:`chargepoint.energy.service`) registers them with the limit arbiter
(chargepoint/services/limits.py), where a central system's profiles and every other claim still cap them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EnergyClaim:
    """A model's claim on a connector: ``amps`` per phase (None pauses), who makes it and why, in words."""

    amps: float | None
    source: str  # "surplus", "schedule", "dimming", "phase-switch"
    detail: str

    def as_claim(self) -> tuple[float | None, str]:
        """The arbiter's ``(amps, source)`` form; the source text carries the detail (shown in `status`)."""
        return self.amps, f"{self.source}: {self.detail}"


def amps_for_power(power_w: float, phases: int, voltage_v: float) -> float:
    """Current per phase for a power on ``phases`` phases at the nominal phase voltage."""
    return power_w / (phases * voltage_v)
